//! One lock per task, shared by workspace creation, use and removal.
//!
//! A task holds its lock (an exclusive `flock` on
//! `workspaces/<project>/locks/<task-id>.lock`) from before its worktree is
//! created until its workspace has been dealt with. Cleanup only ever
//! removes a workspace whose lock it could take without waiting, so it can
//! never remove one being created or in use. The kernel drops the lock when
//! its holder dies, however it dies, so a crashed task's workspace becomes
//! removable by itself.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, flock};

use crate::{Error, Layout};

/// A held task lock; released on drop.
#[derive(Debug)]
pub struct TaskLock {
    file: File,
    path: PathBuf,
}

impl TaskLock {
    /// Takes the lock of `task_id`, waiting if another process holds it.
    pub fn acquire(layout: &Layout, project: &str, task_id: &str) -> Result<TaskLock, Error> {
        Self::take(layout, project, task_id, FlockOperation::LockExclusive)?.ok_or_else(|| {
            Error::io(
                "lock",
                PathBuf::from(task_id),
                std::io::ErrorKind::WouldBlock.into(),
            )
        })
    }

    /// Takes the lock of `task_id` if nobody holds it; `None` if a live
    /// task (or a creation in progress) does.
    pub fn try_acquire(
        layout: &Layout,
        project: &str,
        task_id: &str,
    ) -> Result<Option<TaskLock>, Error> {
        Self::take(
            layout,
            project,
            task_id,
            FlockOperation::NonBlockingLockExclusive,
        )
    }

    fn take(
        layout: &Layout,
        project: &str,
        task_id: &str,
        operation: FlockOperation,
    ) -> Result<Option<TaskLock>, Error> {
        let dir = layout.locks_dir(project)?;
        crate::layout::private_dir(&dir)?;
        let path = layout.lock_path(project, task_id)?;
        take_file_lock(&path, operation).map(|taken| taken.map(|file| TaskLock { file, path }))
    }

    /// Releases the lock and deletes its file: the task is over and its
    /// workspace dealt with.
    pub fn release_and_delete(self) {
        // Deleting while still holding the lock: anyone who opened the old
        // file sees the inode change and retries on a fresh one.
        let _ = std::fs::remove_file(&self.path);
        drop(self.file);
    }
}

/// Locks the file at `path` (created 0600), following it if its holder
/// deletes it while we wait; `None` if non-blocking and held.
fn take_file_lock(path: &Path, operation: FlockOperation) -> Result<Option<File>, Error> {
    loop {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io("open", path, e))?;
        match flock(&file, operation) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => return Ok(None),
            Err(e) => return Err(Error::io("lock", path, e.into())),
        }
        // The holder we waited for may have deleted the file on release;
        // then our lock is on a dead inode and we must lock the new one.
        let same = match (file.metadata(), std::fs::metadata(path)) {
            (Ok(held), Ok(named)) => held.ino() == named.ino() && held.dev() == named.dev(),
            _ => false,
        };
        if same {
            return Ok(Some(file));
        }
    }
}

/// orch's lock on one user repository, held around the short metadata
/// steps orch takes on it (creating, moving and deleting task branches,
/// pruning entries of older versions), so that many tasks starting and
/// ending on one repository at once queue instead of tripping over git's
/// own lock files. Released on drop.
#[derive(Debug)]
pub(crate) struct RepoLock {
    file: File,
}

/// How long a task waits for its turn on a repository.
const REPO_LOCK_WAIT: Duration = Duration::from_secs(120);

impl RepoLock {
    /// Takes the lock of the repository whose common git directory is
    /// `common_dir`.
    pub(crate) fn acquire(layout: &Layout, common_dir: &Path) -> Result<RepoLock, Error> {
        let dir = layout.home().join("locks").join("repos");
        crate::layout::private_dir(&dir)?;
        let path = dir.join(format!(
            "{:016x}.lock",
            fnv1a(common_dir.as_os_str().as_encoded_bytes())
        ));
        let started = Instant::now();
        loop {
            if let Some(file) = take_file_lock(&path, FlockOperation::NonBlockingLockExclusive)? {
                return Ok(RepoLock { file });
            }
            if started.elapsed() > REPO_LOCK_WAIT {
                return Err(Error::io(
                    "lock the repository",
                    common_dir,
                    std::io::ErrorKind::TimedOut.into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl RepoLock {
    /// Takes the lock of `common_dir` if no one holds it; `None` if someone
    /// does.
    pub(crate) fn try_acquire(
        layout: &Layout,
        common_dir: &Path,
    ) -> Result<Option<RepoLock>, Error> {
        let dir = layout.home().join("locks").join("repos");
        crate::layout::private_dir(&dir)?;
        let path = dir.join(format!(
            "{:016x}.lock",
            fnv1a(common_dir.as_os_str().as_encoded_bytes())
        ));
        Ok(
            take_file_lock(&path, FlockOperation::NonBlockingLockExclusive)?
                .map(|file| RepoLock { file }),
        )
    }

    /// The lock's descriptor, for a git child to share the hold.
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.file)
    }
}

/// FNV-1a, 64 bits: a stable file name for a path.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Layout {
    /// `<home>/workspaces/<project>/locks`.
    pub fn locks_dir(&self, project: &str) -> Result<PathBuf, Error> {
        crate::validate_project_name(project)?;
        Ok(self.workspaces_root().join(project).join("locks"))
    }

    fn lock_path(&self, project: &str, task_id: &str) -> Result<PathBuf, Error> {
        // task_dir validates the id.
        let dir = self.task_dir(project, task_id)?;
        let id = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        Ok(self.locks_dir(project)?.join(format!("{id}.lock")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_and_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path());
        let held = TaskLock::acquire(&layout, "p", "01ab").unwrap();
        assert!(
            TaskLock::try_acquire(&layout, "p", "01ab")
                .unwrap()
                .is_none()
        );
        assert!(
            TaskLock::try_acquire(&layout, "p", "02cd")
                .unwrap()
                .is_some()
        );
        drop(held);
        let again = TaskLock::try_acquire(&layout, "p", "01ab")
            .unwrap()
            .unwrap();
        again.release_and_delete();
        assert!(!layout.locks_dir("p").unwrap().join("01ab.lock").exists());
        assert!(
            TaskLock::try_acquire(&layout, "p", "01ab")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_waiter_follows_a_deleted_lock_file() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path());
        let held = TaskLock::acquire(&layout, "p", "01ab").unwrap();
        let waiter = {
            let layout = layout.clone();
            std::thread::spawn(move || TaskLock::acquire(&layout, "p", "01ab").unwrap())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        held.release_and_delete();
        let got = waiter.join().unwrap();
        // The waiter holds a lock on the file that exists now.
        assert!(
            TaskLock::try_acquire(&layout, "p", "01ab")
                .unwrap()
                .is_none()
        );
        drop(got);
    }
}
