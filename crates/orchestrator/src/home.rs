//! The orch home (`$ORCH_HOME`): one instance, with its own random id.
//!
//! The instance id goes into the `orch.instance` label of every object orch
//! creates, and orch only ever touches objects carrying its own: two homes on
//! one host (two users, two parallel test runs) never reap each other.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use orch_workspace::Layout;

use crate::Error;

const INSTANCE_FILE: &str = "instance-id";

/// An opened orch home with its instance id.
#[derive(Debug, Clone)]
pub struct Home {
    path: PathBuf,
    instance_id: String,
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
        // Absolute: the paths under it go to git and Docker, which run
        // elsewhere.
        let given = path.into();
        let path = std::path::absolute(&given).map_err(|e| Error::io("resolve", &given, e))?;
        for dir in [path.clone(), path.join("logs"), path.join("workspaces")] {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        }
        let file = path.join(INSTANCE_FILE);
        let instance_id = match read_id(&file)? {
            Some(id) => id,
            None => {
                let fresh = uuid::Uuid::new_v4().simple().to_string();
                let tmp = path.join(format!(".{INSTANCE_FILE}.{fresh}"));
                let written = std::fs::File::create(&tmp)
                    .and_then(|mut f| f.write_all(fresh.as_bytes()).and_then(|()| f.sync_all()));
                written.map_err(|e| Error::io("write", &tmp, e))?;
                let linked = std::fs::hard_link(&tmp, &file);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => fresh,
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => read_id(&file)?
                        .ok_or_else(|| Error::io("read", &file, ErrorKind::InvalidData.into()))?,
                    Err(e) => return Err(Error::io("create", &file, e)),
                }
            }
        };
        Ok(Home { path, instance_id })
    }

    /// Opens an existing home without creating anything; `None` if there is
    /// no home at `path` yet.
    pub fn open_existing(path: impl Into<PathBuf>) -> Result<Option<Home>, Error> {
        let given = path.into();
        let path = std::path::absolute(&given).map_err(|e| Error::io("resolve", &given, e))?;
        Ok(read_id(&path.join(INSTANCE_FILE))?.map(|instance_id| Home { path, instance_id }))
    }

    /// The home directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This instance's id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
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
}
