//! The one place that runs git on the host.
//!
//! Every call is hardened the same way, because a task may have written
//! things that git would otherwise obey:
//!
//! - an explicit `--git-dir` (and `--work-tree` where one is needed), never
//!   discovery through a `.git` file or `commondir` a task could have
//!   written; the only discovery left is [`Repo::discover`] on the user's
//!   own project directory, once, before anything exists;
//! - hooks off (`core.hooksPath` is an empty directory orch owns),
//!   `core.fsmonitor=false`, no untracked cache, no signing, no automatic
//!   gc;
//! - for calls that read files a task wrote (the work tree's
//!   `.gitattributes` and `.gitignore`), no system or global config at all,
//!   so no filter, textconv or diff driver is defined anywhere: an
//!   attribute that names one does nothing;
//! - no inherited `GIT_*` variable, no prompt, no pager, stdin closed;
//! - a timeout, after which the child is killed, and for a series of
//!   calls (a save) one deadline for them all; work inside orch's own
//!   directories also dies with orch;
//! - an address-space limit (`RLIMIT_AS`, [`GIT_MEMORY`]) and small pack
//!   windows, so data a task made (a tree that expands without end, a
//!   delta chain) cannot make a host git grow until the machine swaps;
//! - no global excludes or attributes file of the user's: what a task's
//!   save holds does not depend on the host's `~/.config/git`;
//! - git's own lock files ("Unable to create '…lock'") retried with a
//!   bounded, jittered backoff, since another process may hold them for a
//!   moment.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Layout};

/// Metadata steps: rev-parse, update-ref, config, read-tree.
pub(crate) const META_TIMEOUT: Duration = Duration::from_secs(30);
/// Steps that may touch every file: clone, checkout, add, fetch.
pub(crate) const HEAVY_TIMEOUT: Duration = Duration::from_secs(600);
/// The subject a snapshot of the working tree starts with (`orch task
/// --from-worktree`), and its author and committer.
const SNAPSHOT_SUBJECT: &str = "orch: the working tree of ";
const SNAPSHOT_AUTHOR: (&str, &str) = ("orch", "orch@localhost");
/// How long git's lock files are waited for in all.
const LOCK_RETRY: Duration = Duration::from_secs(10);
/// The address space one host git may take: far more than any step orch
/// asks of git needs (pack windows are kept small below), far less than a
/// machine's memory. `ORCH_GIT_MEMORY` (bytes, or with a k/m/g suffix)
/// changes it.
pub(crate) const GIT_MEMORY: u64 = 4 << 30;

/// The address-space limit of host git: [`GIT_MEMORY`] unless
/// `ORCH_GIT_MEMORY` says otherwise (read once).
fn git_memory() -> u64 {
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("ORCH_GIT_MEMORY")
            .ok()
            .and_then(|text| parse_size(&text))
            .unwrap_or(GIT_MEMORY)
    })
}

/// `123`, `512k`, `64m`, `4g` as bytes.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let (digits, shift) = match text.chars().last()? {
        'k' => (&text[..text.len() - 1], 10),
        'm' => (&text[..text.len() - 1], 20),
        'g' => (&text[..text.len() - 1], 30),
        _ => (text.as_str(), 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|n| *n >= 64 << 20)
}

/// One deadline shared by a series of git calls (a save): each call gets
/// what is left of it, at most its own timeout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    /// When the series must be over.
    pub(crate) at: Instant,
    /// Its whole length, for messages.
    pub(crate) length: Duration,
}

impl Deadline {
    pub(crate) fn after(length: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + length,
            length,
        }
    }

    /// True once it has passed.
    pub(crate) fn passed(&self) -> bool {
        Instant::now() >= self.at
    }
}

/// One git invocation, built up and then run.
#[derive(Debug, Clone)]
pub(crate) struct Git {
    hooks: PathBuf,
    git_dir: Option<PathBuf>,
    work_tree: Option<PathBuf>,
    index: Option<PathBuf>,
    dir: Option<PathBuf>,
    isolated: bool,
    env: Vec<(String, String)>,
    timeout: Duration,
    dies_with_orch: bool,
    holding: Option<std::os::fd::RawFd>,
    stdin_file: Option<PathBuf>,
    deadline: Option<Deadline>,
    memory: u64,
    network: bool,
    /// `-c` settings of this call, after orch's own.
    settings: Vec<String>,
}

impl Git {
    /// git on the repository at `git_dir`, with orch's empty hooks
    /// directory under `layout`.
    pub(crate) fn at(layout: &Layout, git_dir: &Path) -> Git {
        Git {
            git_dir: Some(git_dir.to_path_buf()),
            ..Git::bare(layout)
        }
    }

    /// git on no repository yet (`clone`, `init`).
    pub(crate) fn bare(layout: &Layout) -> Git {
        Git {
            hooks: layout.empty_dir(),
            git_dir: None,
            work_tree: None,
            index: None,
            dir: None,
            isolated: false,
            env: Vec::new(),
            timeout: META_TIMEOUT,
            dies_with_orch: false,
            holding: None,
            stdin_file: None,
            deadline: None,
            memory: git_memory(),
            network: false,
            settings: Vec::new(),
        }
    }

    /// Runs in `dir` and lets git discover the repository from there: only
    /// for the user's own project directory.
    pub(crate) fn discover_in(layout: &Layout, dir: &Path) -> Git {
        Git {
            dir: Some(dir.to_path_buf()),
            ..Git::bare(layout)
        }
    }

    /// Runs from `dir` (with the git directory still given explicitly: no
    /// discovery), so pathspecs are relative to it.
    pub(crate) fn in_dir(mut self, dir: &Path) -> Git {
        self.dir = Some(dir.to_path_buf());
        self
    }

    pub(crate) fn work_tree(mut self, path: &Path) -> Git {
        self.work_tree = Some(path.to_path_buf());
        self
    }

    pub(crate) fn index(mut self, path: &Path) -> Git {
        self.index = Some(path.to_path_buf());
        self
    }

    /// Config settings (`key=value`) for this call alone, over any file's.
    pub(crate) fn settings(mut self, settings: &[String]) -> Git {
        self.settings.extend_from_slice(settings);
        self
    }

    /// No system or global config: for calls that read what a task wrote.
    pub(crate) fn isolated(mut self) -> Git {
        self.isolated = true;
        self
    }

    /// A call that reaches a git server (a mirror's fetch or push): the host
    /// user's own git setup for the network holds (credential helpers,
    /// `url.*.insteadOf`, ssh and its keys and agent); git never prompts.
    pub(crate) fn network(mut self) -> Git {
        self.network = true;
        self
    }

    pub(crate) fn env(mut self, key: &str, value: &str) -> Git {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The git process is killed if orch dies: for work inside orch's own
    /// directories (a clone or checkout into a workspace), which a killed
    /// orch's reconciliation may be removing. Never for writes to the
    /// user's repository: a git killed there would leave its lock files.
    pub(crate) fn dies_with_orch(mut self) -> Git {
        self.dies_with_orch = true;
        self
    }

    /// The git process shares orch's hold on `lock`: if orch dies while
    /// git writes the user's repository, the repository stays locked until
    /// that git is done, so no one else (a reconciliation undoing what the
    /// dead orch made) steps in half-way.
    pub(crate) fn holding(mut self, lock: &crate::lock::RepoLock) -> Git {
        self.holding = Some(lock.raw_fd());
        self
    }

    /// Feeds git this file on its standard input.
    pub(crate) fn stdin_file(mut self, path: &Path) -> Git {
        self.stdin_file = Some(path.to_path_buf());
        self
    }

    pub(crate) fn timeout(mut self, timeout: Duration) -> Git {
        self.timeout = timeout;
        self
    }

    /// The address space git may take (default [`GIT_MEMORY`]).
    #[cfg(test)]
    pub(crate) fn memory(mut self, bytes: u64) -> Git {
        self.memory = bytes;
        self
    }

    /// The call is one of a series that must be over by `deadline`: it gets
    /// what is left of it (at most its own timeout), and fails with
    /// [`Error::SaveDeadline`] once it has passed.
    pub(crate) fn deadline(mut self, deadline: Deadline) -> Git {
        self.deadline = Some(deadline);
        self
    }

    /// How long this call may take now, and whether that is the series'
    /// deadline rather than its own timeout.
    fn time_left(&self) -> (Duration, bool) {
        match &self.deadline {
            Some(d) => {
                let left = d.at.saturating_duration_since(Instant::now());
                if left < self.timeout {
                    (left, true)
                } else {
                    (self.timeout, false)
                }
            }
            None => (self.timeout, false),
        }
    }

    fn command<A: AsRef<std::ffi::OsStr>>(&self, args: &[A]) -> Command {
        let mut cmd = Command::new("git");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("GIT_") {
                cmd.env_remove(&key);
            }
        }
        if let Some(dir) = &self.dir {
            cmd.arg("-C").arg(dir);
        }
        if let Some(git_dir) = &self.git_dir {
            cmd.arg(format!("--git-dir={}", git_dir.display()));
        }
        if let Some(work_tree) = &self.work_tree {
            cmd.arg(format!("--work-tree={}", work_tree.display()));
        }
        if !self.network {
            // No ssh for a call that reaches no server.
            cmd.arg("-c").arg("core.sshCommand=false");
        }
        for setting in [
            &format!("core.hooksPath={}", self.hooks.display()),
            "core.fsmonitor=false",
            "core.untrackedCache=false",
            // Indexes next to objects (a task's, borrowed as an alternate)
            // could mislead a traversal; objects themselves are checked.
            "core.commitGraph=false",
            "core.multiPackIndex=false",
            "pack.useBitmaps=false",
            "core.pager=cat",
            "commit.gpgSign=false",
            "tag.gpgSign=false",
            "gc.auto=0",
            "maintenance.auto=false",
            "protocol.file.allow=always",
            "advice.detachedHead=false",
            // Pack windows small and few: a host git's memory stays well
            // under its address-space limit whatever the packs hold.
            "core.packedGitWindowSize=32m",
            "core.packedGitLimit=256m",
            "pack.threads=2",
            // A reverse index next to a task's pack is the task's data.
            "pack.readReverseIndex=false",
            // The user's own ~/.config/git/{ignore,attributes} would make a
            // save hold less (or convert more) than git inside the task
            // would.
            "core.excludesFile=/dev/null",
            "core.attributesFile=/dev/null",
        ] {
            cmd.arg("-c").arg(setting);
        }
        for setting in &self.settings {
            cmd.arg("-c").arg(setting);
        }
        cmd.args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_OPTIONAL_LOCKS", "0")
            .env("GIT_PAGER", "cat")
            .env("LC_ALL", "C")
            // One malloc arena per thread would count against the address
            // space limit for nothing.
            .env("MALLOC_ARENA_MAX", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Its own process group: a timeout kills git and whatever it ran.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let memory = self.memory;
        // SAFETY: setrlimit is async-signal-safe and touches no memory of
        // ours.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                let limit = rustix::process::Rlimit {
                    current: Some(memory),
                    maximum: Some(memory),
                };
                rustix::process::setrlimit(rustix::process::Resource::As, limit).map_err(Into::into)
            });
        }
        if self.isolated {
            cmd.env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null");
        }
        if let Some(index) = &self.index {
            cmd.env("GIT_INDEX_FILE", index);
        }
        if let Some(fd) = self.holding {
            // SAFETY: only flips this child's copy of the flag; the fd is
            // open for as long as this call runs (the lock is held).
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(move || {
                    let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).map_err(Into::into)
                });
            }
        }
        if self.dies_with_orch {
            // A clone or checkout left running by a killed orch would write
            // into a directory reconciliation is removing. (The spawning
            // thread waits for the child, so it outlives it.)
            // SAFETY: prctl is async-signal-safe and touches no memory of
            // ours.
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(|| {
                    rustix::process::set_parent_process_death_signal(Some(
                        rustix::process::Signal::KILL,
                    ))
                    .map_err(Into::into)
                });
            }
        }
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        cmd
    }

    /// Where the command runs, for error messages.
    fn place(&self) -> PathBuf {
        self.git_dir
            .clone()
            .or_else(|| self.dir.clone())
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// Runs git; returns its stdout, trimmed, or an error carrying git's
    /// stderr on one line. Lock-file conflicts are retried.
    pub(crate) fn run<A: AsRef<std::ffi::OsStr>>(
        &self,
        action: &'static str,
        args: &[A],
    ) -> Result<String, Error> {
        let out = self.run_bytes(action, args)?;
        Ok(String::from_utf8_lossy(&out).trim().to_owned())
    }

    /// As [`Git::run`], with stdout as git wrote it (paths need not be
    /// UTF-8).
    pub(crate) fn run_bytes<A: AsRef<std::ffi::OsStr>>(
        &self,
        action: &'static str,
        args: &[A],
    ) -> Result<Vec<u8>, Error> {
        let mut backoff =
            orch_retry::Backoff::new(Duration::from_millis(20), Duration::from_secs(1))
                .within(LOCK_RETRY)
                .jittered();
        loop {
            match self.run_once(action, args) {
                Err(Error::Git { ref stderr, .. })
                    if is_lock_conflict(stderr) && backoff.sleep() => {}
                other => return other,
            }
        }
    }

    fn run_once<A: AsRef<std::ffi::OsStr>>(
        &self,
        action: &'static str,
        args: &[A],
    ) -> Result<Vec<u8>, Error> {
        let started = Instant::now();
        let result = self.run_once_untimed(action, args);
        tracing::debug!(
            action,
            took_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "git"
        );
        result
    }

    fn run_once_untimed<A: AsRef<std::ffi::OsStr>>(
        &self,
        action: &'static str,
        args: &[A],
    ) -> Result<Vec<u8>, Error> {
        let place = self.place();
        if let Some(deadline) = self.deadline.filter(Deadline::passed) {
            return Err(Error::SaveDeadline {
                action,
                after: deadline.length,
            });
        }
        let mut cmd = self.command(args);
        if let Some(path) = &self.stdin_file {
            let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
            cmd.stdin(file);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io("run git in", &place, e))?;
        let stdout = reader(child.stdout.take());
        let stderr = reader(child.stderr.take());
        let (limit, series) = self.time_left();
        let status = wait_with_deadline(&mut child, limit);
        let out = stdout.join().unwrap_or_default();
        let err = stderr.join().unwrap_or_default();
        let Some(status) = status.map_err(|e| Error::io("wait for git in", &place, e))? else {
            if let (true, Some(deadline)) = (series, &self.deadline) {
                return Err(Error::SaveDeadline {
                    action,
                    after: deadline.length,
                });
            }
            return Err(Error::GitTimeout {
                action,
                dir: place,
                args: shown_args(args),
                after: self.timeout,
            });
        };
        if status.success() {
            Ok(out)
        } else {
            let stderr = String::from_utf8_lossy(&err);
            let lines: Vec<&str> = stderr
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            Err(Error::Git {
                action,
                dir: place,
                args: shown_args(args),
                stderr: lines.join("; "),
            })
        }
    }
}

/// A `git cat-file --batch` reading objects one at a time, as long as it
/// is wanted, killed (its whole process group) when its call's time is up.
pub(crate) struct Batch {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    /// Dropped to tell the killer thread the batch ended in time.
    ended: Option<std::sync::mpsc::Sender<()>>,
    killer: Option<std::thread::JoinHandle<()>>,
}

impl Git {
    /// Starts `cat-file --batch` with this call's settings; its time limit
    /// (or what is left of the series' deadline) covers the whole batch.
    pub(crate) fn batch(&self) -> Result<Batch, Error> {
        let place = self.place();
        let mut cmd = self.command(&["cat-file", "--batch"]);
        cmd.stdin(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io("run git in", &place, e))?;
        let (stdin, stdout) = match (child.stdin.take(), child.stdout.take()) {
            (Some(stdin), Some(stdout)) => (stdin, stdout),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::io(
                    "talk to git in",
                    &place,
                    std::io::ErrorKind::BrokenPipe.into(),
                ));
            }
        };
        let (limit, _) = self.time_left();
        let pid = child.id() as i32;
        let (ended, wait) = std::sync::mpsc::channel::<()>();
        let killer = std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
                if let Some(group) = rustix::process::Pid::from_raw(pid) {
                    let _ =
                        rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                }
            }
        });
        Ok(Batch {
            child,
            stdin: Some(stdin),
            stdout: std::io::BufReader::new(stdout),
            ended: Some(ended),
            killer: Some(killer),
        })
    }
}

impl Batch {
    /// The object `id`: its type and contents, `None` if it is missing.
    /// Objects over `max` bytes are refused (`InvalidData`) without being
    /// read. A batch killed at its deadline answers `TimedOut`.
    pub(crate) fn read(
        &mut self,
        id: &str,
        max: u64,
    ) -> std::io::Result<Option<(String, Vec<u8>)>> {
        use std::io::{BufRead, Write};
        let broken = || std::io::Error::new(std::io::ErrorKind::TimedOut, "git stopped answering");
        let stdin = self.stdin.as_mut().ok_or_else(broken)?;
        stdin.write_all(format!("{id}\n").as_bytes())?;
        stdin.flush()?;
        let mut header = Vec::new();
        (&mut self.stdout)
            .take(1024)
            .read_until(b'\n', &mut header)?;
        if header.last() != Some(&b'\n') {
            return Err(broken());
        }
        let header = String::from_utf8_lossy(&header);
        let fields: Vec<&str> = header.split_whitespace().collect();
        match fields.as_slice() {
            [_, "missing"] | [_, "ambiguous"] => Ok(None),
            [_, kind, size] => {
                let size: u64 = size.parse().map_err(|_| broken())?;
                if size > max {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("object {id} is {size} bytes, over {max}"),
                    ));
                }
                let mut body = vec![0; usize::try_from(size).map_err(|_| broken())? + 1];
                self.stdout.read_exact(&mut body)?;
                body.pop();
                Ok(Some(((*kind).to_owned(), body)))
            }
            _ => Err(broken()),
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        drop(self.stdin.take());
        drop(self.ended.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(killer) = self.killer.take() {
            let _ = killer.join();
        }
    }
}

/// Arguments as text, for messages.
fn shown_args<A: AsRef<std::ffi::OsStr>>(args: &[A]) -> Vec<String> {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect()
}

/// Collects a pipe on a thread of its own, so a chatty git never blocks on
/// a full pipe while we wait for it.
fn reader(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits for `child` at most `limit`; kills it if it takes longer
/// (`Ok(None)`). The wait is woken by the child's exit (a pidfd), so a git
/// call costs what git takes, not the next tick of a poll loop; where
/// pidfds are missing (kernels before 5.3) it falls back to polling.
fn wait_with_deadline(
    child: &mut Child,
    limit: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let end = Instant::now() + limit;
    let pidfd = rustix::process::Pid::from_child(child);
    let pidfd = rustix::process::pidfd_open(pidfd, rustix::process::PidfdFlags::empty()).ok();
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            if let Some(group) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        match &pidfd {
            Some(fd) => {
                // Readable once the child has exited; EINTR just loops.
                let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
                let timeout = rustix::event::Timespec::try_from(left).ok();
                let _ = rustix::event::poll(&mut fds, timeout.as_ref());
            }
            None => {
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_millis(25));
            }
        }
    }
}

/// git's messages for a lock file another process holds (not a ref that
/// is missing or has moved: those are answers, not conflicts).
fn is_lock_conflict(stderr: &str) -> bool {
    stderr.contains(".lock': File exists") || stderr.contains("could not lock config file")
}

/// A git repository a project lives in, as the user has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    /// The top of the user's working tree.
    pub top: PathBuf,
    /// The git directory of that working tree (its HEAD).
    pub git_dir: PathBuf,
    /// The common git directory: objects and refs.
    pub common_dir: PathBuf,
    /// Where the project sits inside the repository (empty at the top).
    pub prefix: PathBuf,
}

impl Repo {
    /// The repository containing `dir`, or an error saying it is none. The
    /// only discovery orch does, in the user's own project directory, before
    /// any task exists.
    pub fn discover(dir: &Path, layout: &Layout) -> Result<Repo, Error> {
        let not_a_repo = || Error::NotARepository {
            path: dir.to_path_buf(),
        };
        let out = Git::discover_in(layout, dir)
            .run(
                "inspect the repository",
                &[
                    "rev-parse",
                    "--show-toplevel",
                    "--absolute-git-dir",
                    "--git-common-dir",
                    "--show-prefix",
                ],
            )
            .map_err(|e| match e {
                // git's own words when it is something else (a bare
                // repository, one it may not use, an unknown extension).
                Error::Git { ref stderr, .. } if !stderr.contains("not a git repository") => e,
                _ => not_a_repo(),
            })?;
        let mut lines = out.lines();
        let (Some(top), Some(git_dir), Some(common)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(not_a_repo());
        };
        let prefix = lines.next().unwrap_or("").trim_end_matches('/');
        let common = Path::new(common);
        let common_dir = if common.is_absolute() {
            common.to_path_buf()
        } else {
            dir.join(common)
        };
        let canonical = |p: &Path| p.canonicalize().map_err(|e| Error::io("resolve", p, e));
        Ok(Repo {
            top: canonical(Path::new(top))?,
            git_dir: canonical(Path::new(git_dir))?,
            common_dir: canonical(&common_dir)?,
            prefix: PathBuf::from(prefix),
        })
    }

    /// A repository as orch recorded it: no discovery.
    pub fn stored(top: &Path, common_dir: &Path) -> Repo {
        Repo {
            top: top.to_path_buf(),
            git_dir: common_dir.to_path_buf(),
            common_dir: common_dir.to_path_buf(),
            prefix: PathBuf::new(),
        }
    }

    /// The commit `git_ref` names, or an error saying it names none (an
    /// empty repository has no HEAD commit yet).
    pub fn resolve(&self, layout: &Layout, git_ref: &str) -> Result<String, Error> {
        Git::at(layout, &self.git_dir)
            .run(
                "resolve the start of the workspace",
                &[
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    "--end-of-options",
                    &format!("{git_ref}^{{commit}}"),
                ],
            )
            .map_err(|_| Error::Git {
                action: "resolve the start of the workspace",
                dir: self.top.clone(),
                args: vec!["rev-parse".into(), git_ref.into()],
                stderr: if git_ref == "HEAD" {
                    "HEAD is not a commit (a repository needs one commit first)".to_owned()
                } else {
                    format!("{git_ref:?} names no commit of this repository")
                },
            })
    }

    /// How many paths of the working tree differ from HEAD (changed,
    /// staged, or untracked and not ignored): what a task that starts from
    /// HEAD will not see.
    pub fn uncommitted(&self, layout: &Layout) -> Result<usize, Error> {
        let out = Git::at(layout, &self.git_dir)
            .work_tree(&self.top)
            .in_dir(&self.top)
            .run_bytes(
                "look for uncommitted changes",
                &["status", "--porcelain=v1", "-z", "--untracked-files=normal"],
            )?;
        Ok(status_entries(&out))
    }

    /// A commit of the working tree as it is, on top of HEAD: tracked
    /// changes (staged or not, deletions too) and untracked files that are
    /// not ignored (by the repository's rules and the user's own excludes
    /// file), built in an index of its own: the user's index, tree and
    /// branches are untouched. Its objects go into the repository; the
    /// task's branch, which starts from it, references them. Its message
    /// carries the first line of `description`, and marks it as a snapshot
    /// ([`Repo::snapshot_parent`]). A tree with nothing uncommitted gives
    /// HEAD itself.
    pub fn snapshot_worktree(&self, layout: &Layout, description: &str) -> Result<String, Error> {
        struct Scratch(Vec<PathBuf>);
        impl Drop for Scratch {
            fn drop(&mut self) {
                for path in &self.0 {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let stamp = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let index = layout.home().join(format!(".snapshot-{stamp}.index"));
        let list = layout.home().join(format!(".snapshot-{stamp}.paths"));
        let _scratch = Scratch(vec![index.clone(), list.clone()]);
        let git = || {
            Git::at(layout, &self.git_dir)
                .work_tree(&self.top)
                .in_dir(&self.top)
                .index(&index)
                .env("GIT_LITERAL_PATHSPECS", "1")
                .timeout(HEAVY_TIMEOUT)
        };
        const ACTION: &str = "snapshot the working tree";
        git().run(ACTION, &["read-tree", "HEAD"])?;
        git().run(ACTION, &["add", "--update", "--", "."])?;
        // orch's git leaves the user's excludes file out; here it counts.
        let mut others = vec![
            "ls-files".to_owned(),
            "-z".into(),
            "--others".into(),
            "--exclude-standard".into(),
        ];
        if let Some(excludes) = user_excludes_file(layout) {
            others.push(format!("--exclude-from={}", excludes.display()));
        }
        let untracked = git().run_bytes(ACTION, &others)?;
        if !untracked.is_empty() {
            std::fs::write(&list, &untracked).map_err(|e| Error::io("write", &list, e))?;
            git().run(
                ACTION,
                &[
                    "add".to_owned(),
                    format!("--pathspec-from-file={}", list.display()),
                    "--pathspec-file-nul".into(),
                ],
            )?;
        }
        let tree = git().run(ACTION, &["write-tree"])?;
        // A tree with nothing uncommitted is HEAD's: the task starts from
        // HEAD, with no snapshot commit to carry.
        let said = git().run(ACTION, &["rev-parse", "HEAD^{commit}", "HEAD^{tree}"])?;
        let (head, head_tree) = said.split_once('\n').unwrap_or((&said, ""));
        let head = head.trim().to_owned();
        if head_tree.trim() == tree {
            return Ok(head);
        }
        let first_line = description.lines().next().unwrap_or_default();
        let message = format!(
            "{SNAPSHOT_SUBJECT}{} as it was when a task started\n\n{first_line}\n",
            self.top.display()
        );
        let commit = Git::at(layout, &self.git_dir)
            .env("GIT_AUTHOR_NAME", SNAPSHOT_AUTHOR.0)
            .env("GIT_AUTHOR_EMAIL", SNAPSHOT_AUTHOR.1)
            .env("GIT_COMMITTER_NAME", SNAPSHOT_AUTHOR.0)
            .env("GIT_COMMITTER_EMAIL", SNAPSHOT_AUTHOR.1)
            .run(
                ACTION,
                &["commit-tree", tree.trim(), "-p", &head, "-m", &message],
            )?;
        Ok(commit.trim().to_owned())
    }

    /// The commit a task's work counts from when its branch starts at
    /// `base`: `base` itself, or, when `base` is a snapshot of the working
    /// tree ([`Repo::snapshot_worktree`]), the commit it was made on. The
    /// snapshot holds the user's uncommitted changes of then, not the
    /// task's: a merge brings them in, and a branch holding nothing else
    /// still holds them.
    pub fn work_start(&self, layout: &Layout, base: &str) -> Result<String, Error> {
        Ok(self
            .snapshot_parent(layout, base)?
            .unwrap_or_else(|| base.to_owned()))
    }

    /// The commit the snapshot `commit` was made on, if `commit` is a
    /// snapshot of the working tree made by [`Repo::snapshot_worktree`]
    /// (its author and subject say so).
    pub fn snapshot_parent(&self, layout: &Layout, commit: &str) -> Result<Option<String>, Error> {
        let text = Git::at(layout, &self.common_dir)
            .run("read a commit", &["cat-file", "commit", commit])?;
        let (headers, message) = text.split_once("\n\n").unwrap_or((&text, ""));
        let author = format!("author {} <{}> ", SNAPSHOT_AUTHOR.0, SNAPSHOT_AUTHOR.1);
        let parents: Vec<&str> = headers
            .lines()
            .filter_map(|l| l.strip_prefix("parent "))
            .collect();
        let snapshot = message.starts_with(SNAPSHOT_SUBJECT)
            && headers.lines().any(|l| l.starts_with(&author))
            && parents.len() == 1;
        Ok(snapshot.then(|| parents[0].to_owned()))
    }

    /// The object directories a task's repository borrows from: the
    /// repository's own, and those its `objects/info/alternates` names that
    /// exist. Canonical paths.
    pub fn object_dirs(&self) -> Vec<PathBuf> {
        let objects = self.common_dir.join("objects");
        let mut dirs = Vec::new();
        if let Ok(own) = objects.canonicalize() {
            dirs.push(own);
        }
        if let Ok(text) = std::fs::read_to_string(objects.join("info/alternates")) {
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let path = objects.join(line);
                if let Ok(canonical) = path.canonicalize() {
                    if canonical.is_dir() && !dirs.contains(&canonical) {
                        dirs.push(canonical);
                    }
                }
            }
        }
        dirs
    }

    /// Who commits work orch saves: the user, as their own (trusted) git
    /// config says, else orch.
    pub(crate) fn identity(&self, layout: &Layout) -> (String, String) {
        let found = Git::at(layout, &self.common_dir)
            .run(
                "read the user's identity",
                &["config", "--get-regexp", "^user\\.(name|email)$"],
            )
            .unwrap_or_default();
        let mut name = None;
        let mut email = None;
        for line in found.lines() {
            match line.split_once(' ') {
                Some(("user.name", value)) if !value.is_empty() => name = Some(value.to_owned()),
                Some(("user.email", value)) if !value.is_empty() => email = Some(value.to_owned()),
                _ => {}
            }
        }
        (
            name.unwrap_or_else(|| "orch".into()),
            email.unwrap_or_else(|| "orch@localhost".into()),
        )
    }
}

/// Whether the host's git opens `.gitignore` and `.gitattributes` without
/// following links, as git 2.32 and later do (a link there is then no more
/// than a warning). Asked once.
pub(crate) fn ignores_linked_ignore_files() -> bool {
    static KNOWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *KNOWN.get_or_init(|| {
        let out = Command::new("git")
            .arg("--version")
            .env_remove("GIT_CONFIG_PARAMETERS")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output();
        let Ok(out) = out else {
            return false;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let mut numbers = text
            .trim()
            .trim_start_matches("git version ")
            .split(['.', ' '])
            .map(|n| n.parse::<u32>().ok());
        matches!(
            (numbers.next().flatten(), numbers.next().flatten()),
            (Some(major), Some(minor)) if (major, minor) >= (2, 32)
        )
    })
}

/// How many paths `git status --porcelain=v1 -z` listed: records
/// `XY path\0`, a rename's source following as a bare `path\0`.
pub(crate) fn status_entries(out: &[u8]) -> usize {
    out.split(|b| *b == 0)
        .filter(|record| record.len() > 3 && record[2] == b' ')
        .count()
}

/// The user's own excludes file (`core.excludesFile`, else git's default
/// `$XDG_CONFIG_HOME/git/ignore` or `~/.config/git/ignore`), if it exists.
fn user_excludes_file(layout: &Layout) -> Option<PathBuf> {
    let configured = Git::bare(layout)
        .run(
            "read the user's excludes file",
            &["config", "--path", "--get", "core.excludesFile"],
        )
        .ok()
        .map(|p| PathBuf::from(p.trim()))
        .filter(|p| !p.as_os_str().is_empty());
    let default = || {
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(config.join("git/ignore"))
    };
    configured.or_else(default).filter(|p| p.is_file())
}

/// The user's git identity as a task's environment: `GIT_AUTHOR_NAME`,
/// `GIT_COMMITTER_NAME` from `user.name` and the `_EMAIL`s from
/// `user.email`, read as git would in the repository at `git_dir` (its own
/// config, then the user's global and the system's), or from the user's
/// config alone. Only what is set.
pub fn git_identity(layout: &Layout, git_dir: Option<&Path>) -> Vec<(String, String)> {
    let git = match git_dir {
        Some(dir) => Git::at(layout, dir),
        None => Git::bare(layout),
    };
    // One git for both (every task start pays for it): the last value of
    // each key wins, as `git config --get` has it.
    let said = git
        .run(
            "read the user's git identity",
            &["config", "--get-regexp", r"^user\.(name|email)$"],
        )
        .unwrap_or_default();
    let (mut name, mut email) = (String::new(), String::new());
    for line in said.lines() {
        match line.split_once(' ') {
            Some(("user.name", value)) => value.trim().clone_into(&mut name),
            Some(("user.email", value)) => value.trim().clone_into(&mut email),
            _ => {}
        }
    }
    let mut env = Vec::new();
    for (value, names) in [
        (name, ["GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"]),
        (email, ["GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"]),
    ] {
        if !value.is_empty() && !value.contains('\0') {
            env.extend(names.iter().map(|n| ((*n).to_owned(), value.clone())));
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_git_that_hangs_is_killed_at_its_deadline() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path());
        layout.prepare().unwrap();
        // `git var` with an editor that never returns stands in for any
        // stuck git: the editor is only asked for, never run; so read a
        // FIFO nobody writes instead.
        let fifo = tmp.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let started = Instant::now();
        let err = Git::bare(&layout)
            .timeout(Duration::from_millis(300))
            .run(
                "hash an object",
                &["hash-object", "--no-filters", fifo.to_str().unwrap()],
            )
            .unwrap_err();
        assert!(matches!(err, Error::GitTimeout { .. }), "{err}");
        assert!(err.to_string().contains("was killed"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn every_call_is_hardened() {
        let layout = Layout::new("/h");
        let cmd = Git::at(&layout, Path::new("/r/.git"))
            .work_tree(Path::new("/w"))
            .isolated()
            .command(&["status"]);
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for wanted in [
            "--git-dir=/r/.git",
            "--work-tree=/w",
            "core.hooksPath=/h/git-empty",
            "core.fsmonitor=false",
        ] {
            assert!(args.iter().any(|a| a == wanted), "{wanted} in {args:?}");
        }
        let envs: Vec<(String, Option<String>)> = cmd
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        assert!(envs.contains(&("GIT_CONFIG_GLOBAL".into(), Some("/dev/null".into()))));
        assert!(envs.contains(&("GIT_CONFIG_NOSYSTEM".into(), Some("1".into()))));
    }

    #[test]
    fn lock_conflicts_are_recognised() {
        assert!(is_lock_conflict(
            "fatal: Unable to create '/r/.git/refs/heads/x.lock': File exists."
        ));
        assert!(is_lock_conflict(
            "error: cannot lock ref 'refs/heads/x': Unable to create '/r/.git/refs/heads/x.lock': File exists."
        ));
        assert!(is_lock_conflict(
            "error: could not lock config file .git/config: File exists"
        ));
        assert!(!is_lock_conflict(
            "error: cannot lock ref 'refs/heads/x': unable to resolve reference 'refs/heads/x'"
        ));
        assert!(!is_lock_conflict(
            "error: cannot lock ref 'refs/heads/x': is at 0123 but expected 4567"
        ));
        assert!(!is_lock_conflict("fatal: not a git repository"));
    }
}
