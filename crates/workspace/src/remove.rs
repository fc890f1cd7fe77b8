//! Path-validated removal of task directories.
//!
//! The checks run on the canonical path, so `..`, symlinked ancestors and
//! prefixes that only look like the root (`/home/u/orchx` next to
//! `/home/u/orch`) cannot pass. The target itself must not be a symlink;
//! `std::fs::remove_dir_all` then never follows the symlinks inside it.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use crate::{Error, Layout};

/// What a removal did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// The directory existed and is gone now.
    Removed(PathBuf),
    /// There was nothing at that path: removal is idempotent.
    Missing(PathBuf),
}

impl Layout {
    /// Checks that `path` may be removed as a workspace of `project`.
    ///
    /// Returns the canonical path if it exists, `None` if nothing is there
    /// (and the path lies inside the root as written), or an error naming the
    /// path if it is outside the project's `tasks/` root or is a symlink.
    pub fn check_removable(&self, project: &str, path: &Path) -> Result<Option<PathBuf>, Error> {
        let root = self.tasks_root(project)?;
        let outside = || Error::OutsideRoot {
            path: path.to_path_buf(),
            root: root.clone(),
        };
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return if lexically_inside(path, &root) {
                    Ok(None)
                } else {
                    Err(outside())
                };
            }
            Err(e) => return Err(Error::io("inspect", path, e)),
        };
        if meta.file_type().is_symlink() {
            return Err(Error::Symlink {
                path: path.to_path_buf(),
            });
        }
        let canonical_root = match root.canonicalize() {
            Ok(root) => root,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(outside()),
            Err(e) => return Err(Error::io("resolve", &root, e)),
        };
        let canonical = path
            .canonicalize()
            .map_err(|e| Error::io("resolve", path, e))?;
        if canonical != canonical_root && canonical.starts_with(&canonical_root) {
            Ok(Some(canonical))
        } else {
            Err(outside())
        }
    }

    /// Removes a task directory of `project` after [`Layout::check_removable`]
    /// allowed it. Symlinks inside are removed, never followed.
    pub fn remove_task_dir(&self, project: &str, path: &Path) -> Result<Removal, Error> {
        let Some(canonical) = self.check_removable(project, path)? else {
            return Ok(Removal::Missing(path.to_path_buf()));
        };
        match std::fs::remove_dir_all(&canonical) {
            Ok(()) => Ok(Removal::Removed(canonical)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Removal::Missing(canonical)),
            Err(e) => Err(Error::io("remove", &canonical, e)),
        }
    }
}

/// True if `path`, with `.` and `..` resolved lexically, lies strictly inside
/// `root`. Used only for paths that do not exist, to name them in errors.
fn lexically_inside(path: &Path, root: &Path) -> bool {
    fn normalize(path: &Path) -> Option<PathBuf> {
        let mut out = PathBuf::new();
        for component in path.components() {
            match component {
                Component::CurDir => {}
                Component::ParentDir => {
                    if !out.pop() {
                        return None;
                    }
                }
                other => out.push(other),
            }
        }
        Some(out)
    }
    match (normalize(path), normalize(root)) {
        (Some(path), Some(root)) => path != root && path.starts_with(&root),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use proptest::prelude::*;

    use super::*;

    /// A home with one project root, a look-alike sibling `orchx`, and a
    /// victim directory outside that must survive everything.
    struct Fixture {
        _tmp: tempfile::TempDir,
        base: PathBuf,
        layout: Layout,
        root: PathBuf,
        victim: PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let layout = Layout::new(base.join("orch"));
        let root = layout.tasks_root("p").unwrap();
        std::fs::create_dir_all(root.join("t1/sub")).unwrap();
        std::fs::write(root.join("t1/sub/f"), "x").unwrap();
        let victim = base.join("victim");
        std::fs::create_dir_all(&victim).unwrap();
        std::fs::write(victim.join("precious"), "keep").unwrap();
        std::fs::create_dir_all(base.join("orchx/workspaces/p/tasks/t9")).unwrap();
        symlink(&victim, root.join("t1/link-to-victim")).unwrap();
        symlink(&victim, root.join("tlink")).unwrap();
        symlink(
            base.join("orchx/workspaces/p/tasks/t9"),
            root.join("t9link"),
        )
        .unwrap();
        Fixture {
            _tmp: tmp,
            base,
            layout,
            root,
            victim,
        }
    }

    #[test]
    fn removes_a_task_dir_without_following_symlinks_inside() {
        let f = fixture();
        let removal = f.layout.remove_task_dir("p", &f.root.join("t1")).unwrap();
        assert_eq!(removal, Removal::Removed(f.root.join("t1")));
        assert!(!f.root.join("t1").exists());
        assert_eq!(
            std::fs::read_to_string(f.victim.join("precious")).unwrap(),
            "keep"
        );
        // Idempotent.
        let again = f.layout.remove_task_dir("p", &f.root.join("t1")).unwrap();
        assert!(matches!(again, Removal::Missing(_)));
    }

    #[test]
    fn refuses_the_root_itself_and_paths_outside() {
        let f = fixture();
        for path in [
            f.root.clone(),
            f.root.join("."),
            f.root.join("t1/../.."),
            f.victim.clone(),
            f.base.join("orchx/workspaces/p/tasks/t9"),
            f.root.join("../../../../orchx/workspaces/p/tasks/t9"),
            PathBuf::from("/"),
        ] {
            let err = f.layout.remove_task_dir("p", &path).unwrap_err();
            assert!(matches!(err, Error::OutsideRoot { .. }), "{path:?}: {err}");
            assert!(err.to_string().contains(&path.display().to_string()));
        }
        assert!(f.victim.join("precious").exists());
        assert!(f.base.join("orchx/workspaces/p/tasks/t9").exists());
    }

    #[test]
    fn refuses_a_symlink_target() {
        let f = fixture();
        for link in ["tlink", "t9link"] {
            let err = f
                .layout
                .remove_task_dir("p", &f.root.join(link))
                .unwrap_err();
            assert!(matches!(err, Error::Symlink { .. }), "{err}");
        }
        assert!(f.victim.join("precious").exists());
    }

    #[test]
    fn refuses_a_path_through_a_symlinked_ancestor() {
        let f = fixture();
        // root/tlink/precious resolves into the victim directory.
        let err = f
            .layout
            .check_removable("p", &f.root.join("tlink").join("precious"))
            .unwrap_err();
        assert!(matches!(err, Error::OutsideRoot { .. }), "{err}");
    }

    #[test]
    fn missing_paths_are_fine_only_inside() {
        let f = fixture();
        assert_eq!(
            f.layout.check_removable("p", &f.root.join("nope")).unwrap(),
            None
        );
        assert!(f.layout.check_removable("p", &f.base.join("nope")).is_err());
        assert!(
            f.layout
                .check_removable("p", &f.root.join("../nope"))
                .is_err()
        );
    }

    #[test]
    fn lexical_prefix_is_by_component() {
        assert!(lexically_inside(
            Path::new("/h/orch/x"),
            Path::new("/h/orch")
        ));
        assert!(!lexically_inside(
            Path::new("/h/orchx/x"),
            Path::new("/h/orch")
        ));
        assert!(!lexically_inside(
            Path::new("/h/orch"),
            Path::new("/h/orch")
        ));
        assert!(!lexically_inside(
            Path::new("/h/orch/x/../.."),
            Path::new("/h/orch")
        ));
    }

    fn component() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "..",
            ".",
            "t1",
            "t1",
            "sub",
            "f",
            "tlink",
            "t9link",
            "link-to-victim",
            "tasks",
            "p",
            "workspaces",
            "orch",
            "orchx",
            "victim",
            "nope",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever path is generated, removal either refuses or removes
        /// something strictly inside the root, and the victim and the
        /// look-alike root always survive.
        #[test]
        fn removal_never_escapes_the_root(
            from_base in prop::bool::weighted(0.2),
            parts in prop::collection::vec(component(), 0..7),
        ) {
            let f = fixture();
            let mut path = if from_base { f.base.clone() } else { f.root.clone() };
            for part in &parts {
                path.push(part);
            }
            let canonical_root = f.root.canonicalize().unwrap();
            let was_symlink = std::fs::symlink_metadata(&path)
                .is_ok_and(|m| m.file_type().is_symlink());
            match f.layout.remove_task_dir("p", &path) {
                Ok(Removal::Removed(gone)) => {
                    prop_assert!(gone.starts_with(&canonical_root) && gone != canonical_root);
                    prop_assert!(!was_symlink);
                    prop_assert!(!gone.exists());
                }
                Ok(Removal::Missing(_)) | Err(_) => {}
            }
            prop_assert!(f.victim.join("precious").exists());
            prop_assert!(f.base.join("orchx/workspaces/p/tasks/t9").exists());
            prop_assert!(canonical_root.exists());
        }
    }
}
