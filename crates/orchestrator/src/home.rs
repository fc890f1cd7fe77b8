//! The orch home (`$ORCH_HOME`): one instance, with its own random id.
//!
//! The instance id goes into the ownership of every object orch creates,
//! and orch only ever touches objects carrying its own: two homes on one
//! host (two users, two parallel test runs) never reap each other.
//!
//! The home is private: task logs hold task output, which may hold secrets.
//! It is 0700 and every file orch makes in it 0600, whatever the umask; a
//! looser existing home is tightened when opened.

use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use orch_workspace::Layout;

use crate::Error;

const INSTANCE_FILE: &str = "instance-id";
/// The file holding the home's node id in a cluster.
const NODE_FILE: &str = "node-id";

/// An opened orch home with its instance id.
#[derive(Debug, Clone)]
pub struct Home {
    path: PathBuf,
    instance_id: String,
    tightened: Option<String>,
}

impl Home {
    /// The default home: `$ORCH_HOME`, else `$XDG_DATA_HOME/orch`, else
    /// `~/.local/share/orch`.
    pub fn default_path() -> Option<PathBuf> {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        var("ORCH_HOME")
            .or_else(|| var("XDG_DATA_HOME").map(|d| d.join("orch")))
            .or_else(|| var("HOME").map(|h| h.join(".local/share/orch")))
    }

    /// Opens the home at `path`, creating it and its instance id on first use.
    ///
    /// Concurrent first uses agree on one id: the id is written to a private
    /// file and linked into place, and whoever loses the race reads the
    /// winner's.
    pub fn open(path: impl Into<PathBuf>) -> Result<Home, Error> {
        // Absolute: the paths under it go to git and the engine, which run
        // elsewhere.
        let given = path.into();
        let path = std::path::absolute(&given).map_err(|e| Error::io("resolve", &given, e))?;
        let tightened = make_private_dir(&path)?;
        for dir in [path.join("logs"), path.join("workspaces")] {
            make_private_dir(&dir)?;
        }
        let file = path.join(INSTANCE_FILE);
        let instance_id = id_in(&path, INSTANCE_FILE)?;
        if tightened.is_some() {
            // What an older orch made under a looser umask.
            let db = path.join("orch.db");
            for file in [
                file.clone(),
                db.clone(),
                PathBuf::from(format!("{}-wal", db.display())),
                PathBuf::from(format!("{}-shm", db.display())),
                path.join("api-token"),
            ] {
                tighten(&file, 0o600);
            }
            tighten(&path.join("logs"), 0o700);
            tighten(&path.join("workspaces"), 0o700);
        }
        Ok(Home {
            path,
            instance_id,
            tightened,
        })
    }

    /// Opens an existing home without creating anything; `None` if there is
    /// no home at `path` yet.
    pub fn open_existing(path: impl Into<PathBuf>) -> Result<Option<Home>, Error> {
        let given = path.into();
        let path = std::path::absolute(&given).map_err(|e| Error::io("resolve", &given, e))?;
        if read_id(&path.join(INSTANCE_FILE))?.is_none() {
            return Ok(None);
        }
        Home::open(path).map(Some)
    }

    /// If the home was readable by others and has just been made private:
    /// a note saying so, to show the user once.
    pub fn tightened(&self) -> Option<&str> {
        self.tightened.as_deref()
    }

    /// The home directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This instance's id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// This home's node id in a cluster (`node-id`), made on first use the
    /// way the instance id is.
    pub fn node_id(&self) -> Result<String, Error> {
        id_in(&self.path, NODE_FILE)
    }

    /// The workspace layout of this home.
    pub fn layout(&self) -> Layout {
        Layout::new(&self.path)
    }

    /// The registry database.
    pub fn registry_path(&self) -> PathBuf {
        self.path.join("orch.db")
    }

    /// Where a task's output log goes.
    pub fn log_path(&self, task_id: &uuid::Uuid) -> PathBuf {
        self.path.join("logs").join(format!("{task_id}.log"))
    }
}

/// Creates `dir` (and its parents) 0700 if missing; if it exists with
/// access for others, makes it 0700 and says so.
fn make_private_dir(dir: &Path) -> Result<Option<String>, Error> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(Error::io("create", dir, e)),
    }
    let meta = std::fs::metadata(dir).map_err(|e| Error::io("inspect", dir, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("make private", dir, e))?;
    Ok(Some(format!(
        "{} was readable by other users (mode {mode:o}); made it private (700)",
        dir.display()
    )))
}

/// Makes an existing file or directory no looser than `mode`.
fn tighten(path: &Path, mode: u32) {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_symlink() && meta.permissions().mode() & 0o077 != 0 {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
        }
    }
}

/// Opens `path` for appending, creating it 0600 whatever the umask.
pub(crate) async fn open_private_append(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .await
}

/// The id in file `name` of the home at `home`, made on first use:
/// written to a private file and linked into place, so that concurrent
/// first uses agree (whoever loses the race reads the winner's).
fn id_in(home: &Path, name: &str) -> Result<String, Error> {
    let file = home.join(name);
    if let Some(id) = read_id(&file)? {
        return Ok(id);
    }
    let fresh = uuid::Uuid::new_v4().simple().to_string();
    let tmp = home.join(format!(".{name}.{fresh}"));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(fresh.as_bytes()).and_then(|()| f.sync_all()));
    written.map_err(|e| Error::io("write", &tmp, e))?;
    let linked = std::fs::hard_link(&tmp, &file);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(fresh),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            read_id(&file)?.ok_or_else(|| Error::io("read", &file, ErrorKind::InvalidData.into()))
        }
        Err(e) => Err(Error::io("create", &file, e)),
    }
}

fn read_id(file: &Path) -> Result<Option<String>, Error> {
    match std::fs::read_to_string(file) {
        Ok(text) => {
            let id = text.trim();
            if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(Some(id.to_owned()))
            } else {
                Err(Error::io(
                    "read the instance id in",
                    file,
                    ErrorKind::InvalidData.into(),
                ))
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", file, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_id_is_created_once_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::open(tmp.path().join("h")).unwrap();
        let again = Home::open(tmp.path().join("h")).unwrap();
        assert_eq!(home.instance_id(), again.instance_id());
        assert_eq!(home.instance_id().len(), 32);
        let other = Home::open(tmp.path().join("other")).unwrap();
        assert_ne!(home.instance_id(), other.instance_id());
        assert!(
            Home::open_existing(tmp.path().join("none"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn concurrent_first_use_agrees() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("h");
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| Home::open(&path).unwrap().instance_id().to_owned()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    }

    #[test]
    fn the_home_is_private_and_a_loose_one_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
        let home = Home::open(tmp.path().join("h")).unwrap();
        rustix::process::umask(old);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(home.path()), 0o700);
        assert_eq!(mode(&home.path().join("logs")), 0o700);
        assert_eq!(mode(&home.path().join(INSTANCE_FILE)), 0o600);
        assert!(home.tightened().is_none());

        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            home.path().join(INSTANCE_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let reopened = Home::open(home.path()).unwrap();
        assert!(reopened.tightened().unwrap().contains("made it private"));
        assert_eq!(mode(home.path()), 0o700);
        assert_eq!(mode(&home.path().join(INSTANCE_FILE)), 0o600);
        assert!(
            Home::open(home.path()).unwrap().tightened().is_none(),
            "once"
        );
    }
}
