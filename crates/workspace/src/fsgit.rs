//! Git directories orch writes itself, without running git (a shadow, a
//! kept workspace's `.git`), and removing the ones it made.

use std::path::Path;

use crate::Error;

/// The object format of the user's repository, as the length of the base
/// commit's id (which git gave orch) says.
pub(crate) fn object_format(base: &str) -> &'static str {
    if base.len() == 64 { "sha256" } else { "sha1" }
}

/// Makes an empty bare repository at `dir` without running git: nothing of
/// a template, and one process fewer per saved task.
/// `object_format` is the user's repository's (`sha1` or `sha256`), whose
/// objects it borrows and takes back.
pub(crate) fn make_bare_repo(dir: &Path, object_format: &str) -> Result<(), Error> {
    for sub in ["objects/info", "refs/heads", "refs/tags"] {
        crate::layout::private_dir(&dir.join(sub))?;
    }
    let config = match object_format {
        "sha1" => "[core]\n\trepositoryformatversion = 0\n\tbare = true\n".to_owned(),
        other => format!(
            "[core]\n\trepositoryformatversion = 1\n\tbare = true\n[extensions]\n\tobjectformat = {other}\n"
        ),
    };
    for (file, text) in [
        ("HEAD", "ref: refs/heads/result\n"),
        ("config", config.as_str()),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|e| Error::io("write", &path, e))?;
    }
    Ok(())
}

/// Removes a directory orch made for itself (a shadow git directory), if
/// it is there.
pub(crate) fn remove_dir_if_present(dir: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", dir, e)),
    }
}
