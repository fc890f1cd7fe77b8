//! Projects from a git server: a mirror of each repository URL under
//! `$ORCH_HOME/mirrors/`, made and fetched before each task, from which the
//! task's repository is made exactly as from a local one; and the push of a
//! task's branch back to the URL when it ends.
//!
//! A mirror is named by a hash of its URL (`<hash>.git`, the URL beside it
//! in `<hash>.url`), never by text from the URL. A first clone goes to a
//! private name and is renamed into place, so a failed one leaves nothing.
//! Fetches and pushes take the mirror's repository lock, so concurrent
//! tasks of one URL share one mirror. They go through the same hardened git
//! as every other call (no hook runs, no config of the task's repository is
//! read), with the host user's own git setup for the network (credential
//! helpers, `url.*.insteadOf`, ssh keys and agent): orch never stores,
//! prints or logs a credential, and refuses a URL that carries a password.
//! Branches `orch/*` are never fetched from the server, so a fetch never
//! touches work waiting to be pushed.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::git::{Git, HEAVY_TIMEOUT, Repo};
use crate::lock::RepoLock;
use crate::{Error, Layout};

/// The schemes a project URL may use.
const SCHEMES: [&str; 5] = ["file://", "git://", "ssh://", "https://", "http://"];

/// The most of a file read from a mirror as data (`orch.toml`).
const MAX_FILE: usize = 1 << 20;

/// Whether `text` names a repository by URL rather than a path: a scheme
/// orch speaks (`file://`, `git://`, `ssh://`, `https://`, `http://`) or
/// git's scp-like `user@host:path`.
pub fn is_url(text: &str) -> bool {
    if let Some((scheme, _)) = text.split_once("://") {
        return !scheme.is_empty() && !scheme.contains('/');
    }
    // git's `<transport>::<address>`: a URL, if one orch refuses.
    if let Some((transport, _)) = text.split_once("::") {
        return !transport.is_empty() && !transport.contains('/');
    }
    scp_like(text)
}

/// git's scp-like syntax: `[user@]host:path`, a `:` before any `/`. Only
/// with a user, so that a path with a colon in it stays a path.
fn scp_like(text: &str) -> bool {
    match (text.find(':'), text.find('/'), text.find('@')) {
        (Some(colon), slash, Some(at)) => at < colon && slash.is_none_or(|s| colon < s),
        _ => false,
    }
}

/// Checks a project URL: a scheme orch speaks (no `ext::` or other
/// transports that run commands), no password in it (credentials belong
/// to the node's git setup), nothing git would take for an option.
pub fn check_url(url: &str) -> Result<(), Error> {
    let bad = |why: &str| Error::BadUrl {
        url: shown(url),
        why: why.to_owned(),
    };
    if url.starts_with('-') || url.contains(char::is_control) || url.contains(char::is_whitespace) {
        return Err(bad(
            "it holds a space, a control character or a leading '-'",
        ));
    }
    // `<transport>::<address>`; a `::` inside brackets is an IPv6 host.
    if url.find("::").is_some_and(|at| !url[..at].contains('[')) {
        return Err(bad(
            "git's transport helpers (`<transport>::`) are not allowed",
        ));
    }
    if scp_like(url) {
        return Ok(());
    }
    let Some(scheme) = SCHEMES.iter().find(|s| url.starts_with(**s)) else {
        return Err(bad(
            "use file://, git://, ssh://, https:// or http://, or user@host:path",
        ));
    };
    let rest = &url[scheme.len()..];
    let authority = rest.split('/').next().unwrap_or("");
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if userinfo.contains(':') {
            return Err(bad(
                "it holds a password: give credentials to git (a credential helper, ssh keys), not in the URL",
            ));
        }
        // Over http(s) a token often sits where the user name goes.
        if *scheme != "ssh://" {
            return Err(bad(
                "it holds a user name or token: give credentials to git (a credential helper), not in the URL",
            ));
        }
    }
    if matches!(*scheme, "https://" | "http://") && rest.contains(['?', '#']) {
        return Err(bad(
            "it holds a query or fragment (where tokens hide): give credentials to git (a credential helper), not in the URL",
        ));
    }
    if *scheme != "file://" && authority.is_empty() {
        return Err(bad("it names no host"));
    }
    Ok(())
}

/// A URL as messages show it: what may be a credential in it (refused
/// anyway) hidden: a password, a user name other than ssh's, a query.
fn shown(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.split(['?', '#']).next().unwrap_or(rest);
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            match authority.rsplit_once('@') {
                Some((userinfo, host)) if scheme == "ssh" => {
                    let user = userinfo.split(':').next().unwrap_or("");
                    format!("{scheme}://{user}@{host}/{path}")
                }
                Some((_, host)) => format!("{scheme}://***@{host}/{path}"),
                None => format!("{scheme}://{rest}"),
            }
        }
        None => url.to_owned(),
    }
}

/// The name a URL suggests for its project: its last path segment without
/// `.git` (checked by the caller).
pub fn name_of(url: &str) -> String {
    let path = url.trim_end_matches('/');
    let last = path.rsplit(['/', ':']).next().unwrap_or(path);
    last.strip_suffix(".git").unwrap_or(last).to_owned()
}

/// The mirror of one repository URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// The URL.
    pub url: String,
    /// Its bare repository: `<home>/mirrors/<hash>.git`.
    pub path: PathBuf,
}

impl Mirror {
    /// The mirror of `url` under `layout` (made or not).
    pub fn of(layout: &Layout, url: &str) -> Result<Mirror, Error> {
        check_url(url)?;
        Ok(Mirror {
            url: url.to_owned(),
            path: layout
                .mirrors_dir()
                .join(format!("{:016x}.git", fnv1a(url.as_bytes()))),
        })
    }

    /// The mirror as a repository tasks' repositories are made from.
    pub fn repo(&self) -> Repo {
        Repo::stored(&self.path, &self.path)
    }

    /// Brings the mirror up to date with its URL, making it first if there
    /// is none: every branch and tag (never `orch/*`), under its lock. A
    /// first clone that fails leaves nothing behind.
    pub fn fetch(&self, layout: &Layout) -> Result<(), Error> {
        layout.prepare()?;
        crate::layout::private_dir(&layout.mirrors_dir())?;
        let lock = RepoLock::acquire(layout, &self.path)?;
        if self.path.join("HEAD").exists() {
            Git::at(layout, &self.path)
                .network()
                .holding(&lock)
                .timeout(HEAVY_TIMEOUT)
                .run(
                    "fetch the project's repository",
                    &[
                        "fetch",
                        "--quiet",
                        "--no-tags",
                        "--no-write-fetch-head",
                        "--",
                        &self.url,
                        "+refs/heads/*:refs/heads/*",
                        "^refs/heads/orch/*",
                        "+refs/tags/*:refs/tags/*",
                    ],
                )?;
            self.follow_head(layout, &lock)?;
        } else {
            let fresh = self
                .path
                .with_extension(format!("new-{}", std::process::id()));
            crate::fsgit::remove_dir_if_present(&fresh)?;
            self.remove_abandoned_clones();
            let template = format!("--template={}", layout.empty_dir().display());
            // Into a directory of its own: if orch dies (Ctrl+C while a
            // server stalls), the clone dies with it.
            let cloned = Git::bare(layout)
                .network()
                .dies_with_orch()
                .timeout(HEAVY_TIMEOUT)
                .run(
                    "clone the project's repository",
                    &[
                        "clone",
                        "--quiet",
                        "--bare",
                        &template,
                        "--",
                        &self.url,
                        &fresh.to_string_lossy(),
                    ],
                );
            if let Err(e) = cloned {
                let _ = crate::fsgit::remove_dir_if_present(&fresh);
                return Err(e);
            }
            std::fs::rename(&fresh, &self.path).map_err(|e| Error::io("move", &fresh, e))?;
            let url_file = self.path.with_extension("url");
            std::fs::write(&url_file, &self.url).map_err(|e| Error::io("write", &url_file, e))?;
        }
        self.touch();
        drop(lock);
        Ok(())
    }

    /// Removes first clones of this mirror that processes no longer alive
    /// left (`<mirror>.new-<pid>`).
    fn remove_abandoned_clones(&self) {
        let (Some(dir), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return;
        };
        let prefix = format!("{}.new-", name.to_string_lossy());
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(pid) = file
                .to_str()
                .and_then(|f| f.strip_prefix(&prefix))
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
            if !alive {
                let _ = crate::fsgit::remove_dir_if_present(&entry.path());
            }
        }
    }

    /// Points the mirror's HEAD where the server's points (its default
    /// branch may have changed since the mirror was made).
    fn follow_head(&self, layout: &Layout, lock: &RepoLock) -> Result<(), Error> {
        let said = Git::at(layout, &self.path).network().holding(lock).run(
            "read the server's default branch",
            &["ls-remote", "--symref", "--", &self.url, "HEAD"],
        )?;
        let target = said.lines().find_map(|line| {
            let (head, name) = line.strip_prefix("ref: ")?.split_once('\t')?;
            (name == "HEAD" && head.starts_with("refs/heads/")).then(|| head.to_owned())
        });
        if let Some(target) = target {
            let git = Git::at(layout, &self.path).holding(lock);
            if git
                .run(
                    "check the default branch",
                    &["rev-parse", "--verify", "--quiet", &target],
                )
                .is_ok()
            {
                git.run(
                    "follow the default branch",
                    &["symbolic-ref", "HEAD", &target],
                )?;
            }
        }
        Ok(())
    }

    /// Pushes `branch` (`orch/<id>`) to the URL, as it is in the mirror:
    /// never forced, so a branch of that name the server holds with other
    /// commits is not overwritten.
    pub fn push(&self, layout: &Layout, branch: &str) -> Result<(), Error> {
        let lock = RepoLock::acquire(layout, &self.path)?;
        let refspec = format!("refs/heads/{branch}:refs/heads/{branch}");
        Git::at(layout, &self.path)
            .network()
            .holding(&lock)
            .timeout(HEAVY_TIMEOUT)
            .run(
                "push the task's branch",
                &["push", "--quiet", "--", &self.url, &refspec],
            )
            .map(drop)
    }

    /// The file `name` at `git_ref` in the mirror, read as data (`None` if
    /// there is none).
    pub fn file(
        &self,
        layout: &Layout,
        git_ref: &str,
        name: &str,
    ) -> Result<Option<Vec<u8>>, Error> {
        // The ref first: a file of a commit there is not is no file.
        self.repo().resolve(layout, git_ref).map_err(|_| Error::Git {
            action: "resolve the start of the workspace",
            dir: PathBuf::from(&self.url),
            args: vec!["rev-parse".into(), git_ref.into()],
            stderr: if git_ref == "HEAD" {
                "the server's HEAD names no commit (an empty repository, or a default branch that does not exist): pass --ref".into()
            } else {
                format!("{git_ref:?} names no commit of this repository")
            },
        })?;
        let spec = format!("{git_ref}:{name}");
        let git = Git::at(layout, &self.path).isolated();
        let Ok(size) = git.run("measure a file of the project", &["cat-file", "-s", &spec]) else {
            return Ok(None);
        };
        if size.parse::<usize>().is_ok_and(|s| s > MAX_FILE) {
            return Err(Error::io(
                "read",
                Path::new(name),
                std::io::Error::other("larger than 1 MiB"),
            ));
        }
        let kind = git.run("inspect a file of the project", &["cat-file", "-t", &spec])?;
        if kind != "blob" {
            return Ok(None);
        }
        git.run_bytes("read a file of the project", &["cat-file", "blob", &spec])
            .map(Some)
    }

    /// Marks the mirror used now (retention removes those unused long).
    fn touch(&self) {
        let stamp = self.path.with_extension("used");
        let _ = std::fs::write(&stamp, b"");
    }

    /// When the mirror was last fetched for a task.
    pub fn last_used(&self) -> Option<SystemTime> {
        std::fs::metadata(self.path.with_extension("used"))
            .and_then(|m| m.modified())
            .ok()
    }

    /// Removes the mirror, if no one holds it now; false if someone does.
    pub fn remove(&self, layout: &Layout) -> Result<bool, Error> {
        let Some(lock) = RepoLock::try_acquire(layout, &self.path)? else {
            return Ok(false);
        };
        crate::fsgit::remove_dir_if_present(&self.path)?;
        for extension in ["url", "used"] {
            let _ = std::fs::remove_file(self.path.with_extension(extension));
        }
        drop(lock);
        Ok(true)
    }
}

/// Every mirror under `layout`, with its URL.
pub fn mirrors(layout: &Layout) -> Vec<Mirror> {
    let Ok(entries) = std::fs::read_dir(layout.mirrors_dir()) else {
        return Vec::new();
    };
    let mut found: Vec<Mirror> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".git"))
        .filter_map(|e| {
            let path = e.path();
            let url = std::fs::read_to_string(path.with_extension("url")).ok()?;
            Some(Mirror {
                url: url.trim().to_owned(),
                path,
            })
        })
        .collect();
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

/// How old a mirror may grow unused before retention removes it
/// (`ORCH_MIRROR_MAX_AGE` overrides).
pub const MIRROR_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// FNV-1a, 64 bits: a stable name for a URL.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_paths_and_checked() {
        for url in [
            "file:///srv/repo.git",
            "git://host/repo.git",
            "ssh://git@host:22/repo.git",
            "https://host/org/repo",
            "git@github.com:org/repo.git",
            "git://[::1]:9418/repo.git",
            "ssh://git@[::1]:22/repo.git",
        ] {
            assert!(is_url(url), "{url}");
            check_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        for path in ["./repo", "/srv/repo", "repo", "a:b/c", "dir/with:colon"] {
            assert!(!is_url(path), "{path}");
        }
        for (url, says) in [
            ("https://user:secret@host/repo", "password"),
            ("https://ghp_secret@host/repo", "token"),
            ("https://host/repo?private_token=secret", "query"),
            ("ext::sh -c touch% /tmp/x", "space"),
            ("ext::true", "transport"),
            ("ftp://host/repo", "use file://"),
            ("https:///repo", "no host"),
            ("-uhost:x", "leading"),
        ] {
            let err = check_url(url).unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
        assert_eq!(name_of("git://host/org/api.git"), "api");
        assert_eq!(name_of("git@host:org/web"), "web");
        assert_eq!(name_of("file:///srv/tools/"), "tools");
    }
}
