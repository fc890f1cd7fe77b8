//! Where workspaces live under `$ORCH_HOME`.

use std::path::{Path, PathBuf};

use crate::Error;

/// The directory layout of workspaces inside one orch home.
///
/// `<home>/workspaces/<project>/tasks/<task-id>` is a task's workspace; the
/// `tasks/` directory of a project is the root that every removal is checked
/// against.
#[derive(Debug, Clone)]
pub struct Layout {
    home: PathBuf,
}

impl Layout {
    /// A layout rooted at an orch home (`$ORCH_HOME`).
    pub fn new(home: impl Into<PathBuf>) -> Self {
        Layout { home: home.into() }
    }

    /// The orch home this layout is rooted at.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// `<home>/git-empty`: an empty directory orch owns, that every host-side
    /// git call uses as its hooks directory and its template.
    pub fn empty_dir(&self) -> PathBuf {
        self.home.join("git-empty")
    }

    /// `<home>/mirrors`: a bare mirror of each project repository URL.
    pub fn mirrors_dir(&self) -> PathBuf {
        self.home.join("mirrors")
    }

    /// Creates the directories git calls rely on ([`Layout::empty_dir`]),
    /// private.
    pub fn prepare(&self) -> Result<(), Error> {
        private_dir(&self.empty_dir())
    }

    /// `<home>/workspaces/<project>/shadow/<task_id>.git`: the git directory
    /// orch saves a task's work through; the task never sees it.
    pub fn shadow_dir(&self, project: &str, task_id: &str) -> Result<PathBuf, Error> {
        let dir = self.task_dir(project, task_id)?;
        let id = dir.file_name().unwrap_or_default().to_string_lossy();
        Ok(self
            .workspaces_root()
            .join(project)
            .join("shadow")
            .join(format!("{id}.git")))
    }

    /// `<home>/workspaces/<project>/kept/<task_id>.git`: where the git
    /// directory of a kept workspace's task goes, so that the workspace
    /// handed back to the user holds a git directory of orch's making (one
    /// the task never wrote) and is safe to use with plain git. Its saves
    /// still read the task's repository here.
    pub fn kept_git_dir(&self, project: &str, task_id: &str) -> Result<PathBuf, Error> {
        let dir = self.task_dir(project, task_id)?;
        let id = dir.file_name().unwrap_or_default().to_string_lossy();
        Ok(self
            .workspaces_root()
            .join(project)
            .join("kept")
            .join(format!("{id}.git")))
    }

    /// `<home>/workspaces`: every project's workspaces.
    pub fn workspaces_root(&self) -> PathBuf {
        self.home.join("workspaces")
    }

    /// `<home>/workspaces/<project>/tasks`: the only directory under which
    /// removal of a project's workspaces is allowed.
    pub fn tasks_root(&self, project: &str) -> Result<PathBuf, Error> {
        validate_project_name(project)?;
        Ok(self.workspaces_root().join(project).join("tasks"))
    }

    /// `<home>/workspaces/<project>/tasks/<task_id>`: one task's workspace.
    pub fn task_dir(&self, project: &str, task_id: &str) -> Result<PathBuf, Error> {
        if task_id.is_empty() || !task_id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(Error::InvalidTaskId {
                id: task_id.to_owned(),
            });
        }
        Ok(self.tasks_root(project)?.join(task_id))
    }
}

/// Creates `dir` and its missing parents, 0700 whatever the umask.
pub(crate) fn private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("create", dir, e))
}

/// A directory under some project's `tasks/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDir {
    /// The project's name.
    pub project: String,
    /// The directory's name: a task id, if orch made it.
    pub task_id: String,
    /// Its path.
    pub path: PathBuf,
}

impl Layout {
    /// Every directory under `workspaces/<project>/tasks/`, of every project,
    /// sorted by project then name. Entries whose names orch would never
    /// have made are skipped.
    pub fn task_dirs(&self) -> Result<Vec<TaskDir>, Error> {
        let mut dirs = Vec::new();
        for project in read_names(&self.workspaces_root())? {
            if validate_project_name(&project).is_err() {
                continue;
            }
            let root = self.tasks_root(&project)?;
            for task_id in read_names(&root)? {
                if let Ok(path) = self.task_dir(&project, &task_id) {
                    dirs.push(TaskDir {
                        project: project.clone(),
                        task_id,
                        path,
                    });
                }
            }
        }
        dirs.sort_by(|a, b| (&a.project, &a.task_id).cmp(&(&b.project, &b.task_id)));
        Ok(dirs)
    }
}

/// Names of the subdirectories of `dir` (symlinks and files are not orch's
/// and are skipped); none if it does not exist or is not a directory.
fn read_names(dir: &Path) -> Result<Vec<String>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(Vec::new());
        }
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if let (true, Some(name)) = (is_dir, entry.file_name().to_str()) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Checks that a project name can be used in paths and Docker labels: letters,
/// digits, `.`, `_` and `-`, not empty and not starting with `.`.
pub fn validate_project_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidProjectName {
            name: name.to_owned(),
        })
    }
}

/// What the task workspace at `path` (`<home>/workspaces/<project>/tasks/
/// <id>`) takes on disk: its directory, and the task's git directory moved
/// out of it (`.../<project>/kept/<id>.git`) when it was kept.
pub fn workspace_size(path: &Path) -> Result<crate::du::Size, Error> {
    let mut size = crate::du::measure(path)?;
    let kept = path
        .parent()
        .and_then(Path::parent)
        .zip(path.file_name())
        .map(|(project, id)| {
            let mut name = id.to_os_string();
            name.push(".git");
            project.join("kept").join(name)
        });
    if let Some(kept) = kept.filter(|k| k.symlink_metadata().is_ok()) {
        size += crate::du::measure(&kept)?;
    }
    Ok(size)
}

/// Opens a workspace to a task that runs as another uid (`--user
/// UID:GID`): every directory gains `o+rwx` and every file `o+rw` (and
/// `o+x` where its owner has `x`), links untouched and never followed.
/// Others on the host still cannot reach it: the orch home is 0700.
pub fn open_to_others(root: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let meta = std::fs::symlink_metadata(&dir).map_err(|e| Error::io("open", &dir, e))?;
        let mode = meta.permissions().mode();
        std::fs::set_permissions(
            &dir,
            std::fs::Permissions::from_mode((mode & 0o7777) | 0o007),
        )
        .map_err(|e| Error::io("open", &dir, e))?;
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io("read", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("read", &dir, e))?;
            let kind = entry
                .file_type()
                .map_err(|e| Error::io("read", entry.path(), e))?;
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let mode = entry
                    .metadata()
                    .map_err(|e| Error::io("read", &path, e))?
                    .permissions()
                    .mode();
                let exec = if mode & 0o100 != 0 { 0o001 } else { 0 };
                std::fs::set_permissions(
                    &path,
                    std::fs::Permissions::from_mode((mode & 0o7777) | 0o006 | exec),
                )
                .map_err(|e| Error::io("open", &path, e))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names() {
        for good in ["demo", "my-project_2", "a.b", "X"] {
            assert!(validate_project_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "ü",
            "a\0b",
            &"x".repeat(129),
        ] {
            assert!(validate_project_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn task_dirs_skip_what_orch_would_not_have_made() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path());
        let root = layout.tasks_root("p").unwrap();
        std::fs::create_dir_all(root.join("0123abcd")).unwrap();
        std::fs::write(root.join("0456"), "a file").unwrap();
        std::fs::create_dir_all(root.join("not-hex!")).unwrap();
        std::fs::write(layout.workspaces_root().join("notes.txt"), "x").unwrap();
        std::fs::create_dir_all(layout.workspaces_root().join(".hidden/tasks/0789")).unwrap();
        let dirs = layout.task_dirs().unwrap();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        assert_eq!(dirs[0].task_id, "0123abcd");
    }

    #[test]
    fn paths() {
        let layout = Layout::new("/h");
        assert_eq!(
            layout.task_dir("p", "0192-ab").unwrap(),
            Path::new("/h/workspaces/p/tasks/0192-ab")
        );
        assert!(layout.task_dir("p", "../x").is_err());
        assert!(layout.task_dir("p", "").is_err());
        assert!(layout.tasks_root("../p").is_err());
    }
}
