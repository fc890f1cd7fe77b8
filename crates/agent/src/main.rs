//! `orch-agent`: the program inside the offline task image `orch-agent:dev`.
//!
//! No container registry is needed to try orch or to test it: this static
//! binary, packed `FROM scratch`, stands in for a real task. Its one argument is
//! a script of `;`-separated steps, so a demo or a test can make a task do
//! anything a real one does that matters to a supervisor:
//!
//! | step | effect |
//! | --- | --- |
//! | `echo TEXT` / `stderr TEXT` | print a line on stdout / stderr |
//! | `sleep SECS` | sleep (fractions allowed) |
//! | `exit CODE` | exit at once with that code |
//! | `progress PCT [MSG]` | print `::progress::PCT MSG` |
//! | `trap-term` | ignore SIGTERM from now on |
//! | `spawn N` | start N child processes that sleep |
//! | `write PATH TEXT` | write a file (parents created) |
//! | `mkdir PATH` | create a directory and its parents |
//! | `files DIR N BYTES` | create N files of BYTES bytes under DIR, 100 per subdirectory |
//! | `symlink TARGET LINK` | create a symbolic link |
//! | `chmod MODE PATH` | set octal permissions on PATH |
//! | `run PROG [ARGS...]` | run a program found in the image, fail if it fails |
//! | `flood BYTES` | print that many bytes of output |
//! | `panic` | panic (exit code 101) |
//! | `tty` | print `tty ROWSxCOLUMNS` if stdout is a terminal, else `no tty` |
//! | `tty-wait ROWSxCOLUMNS SECS` | wait (at most SECS) for the terminal to be that size, then `tty` |
//! | `read-line` | read one line of stdin |
//!
//! Running out of steps exits 0.
//!
//! Invoked as `rm` (the image links `/bin/rm` to it), it removes its
//! arguments recursively without following symlinks, as `rm -rf` does; a
//! mount point is emptied. orch uses that to remove files a root task left in
//! a workspace.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

fn main() -> ExitCode {
    let invoked_as = std::env::args().next().unwrap_or_default();
    if invoked_as.rsplit('/').next() == Some("rm") {
        return remove_all(std::env::args().skip(1).filter(|a| !a.starts_with('-')));
    }
    let mut args = std::env::args().skip(1);
    let (Some(script), None) = (args.next(), args.next()) else {
        eprintln!("usage: orch-agent '<step>; <step>; ...'");
        return ExitCode::from(2);
    };
    for step in script.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        if let Err(message) = run_step(step) {
            eprintln!("orch-agent: {step}: {message}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

fn run_step(step: &str) -> Result<(), String> {
    let (verb, rest) = step.split_once(char::is_whitespace).unwrap_or((step, ""));
    let rest = rest.trim();
    match verb {
        "echo" => println!("{rest}"),
        "stderr" => eprintln!("{rest}"),
        "sleep" => {
            let secs: f64 = parse(rest)?;
            std::thread::sleep(Duration::from_secs_f64(secs.max(0.0)));
        }
        "exit" => {
            let code: i32 = parse(rest)?;
            flush();
            std::process::exit(code);
        }
        "progress" => {
            let (pct, message) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            let pct: u8 = parse(pct)?;
            println!("::progress::{pct} {}", message.trim());
        }
        "trap-term" => ignore_sigterm(),
        "spawn" => {
            let n: u32 = parse(rest)?;
            let me = std::env::current_exe().map_err(|e| e.to_string())?;
            for _ in 0..n {
                Command::new(&me)
                    .arg("sleep 1000000")
                    .stdin(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("failed to spawn a child: {e}"))?;
            }
        }
        "write" => {
            let (path, text) = split_two(rest)?;
            if let Some(parent) = std::path::Path::new(path).parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::fs::write(path, format!("{text}\n")).map_err(|e| e.to_string())?;
        }
        "mkdir" => std::fs::create_dir_all(rest).map_err(|e| e.to_string())?,
        "files" => {
            let mut words = rest.split_whitespace();
            let (Some(dir), Some(n), Some(bytes)) = (words.next(), words.next(), words.next())
            else {
                return Err("files needs DIR N BYTES".into());
            };
            let (n, bytes): (u64, usize) = (parse(n)?, parse(bytes)?);
            let content = vec![b'f'; bytes];
            for i in 0..n {
                let sub = std::path::Path::new(dir).join(format!("d{}", i / 100));
                std::fs::create_dir_all(&sub).map_err(|e| e.to_string())?;
                std::fs::write(sub.join(format!("f{i}")), &content).map_err(|e| e.to_string())?;
            }
        }
        "symlink" => {
            let (target, link) = split_two(rest)?;
            std::os::unix::fs::symlink(target, link).map_err(|e| e.to_string())?;
        }
        "chmod" => {
            let (mode, path) = split_two(rest)?;
            let mode =
                u32::from_str_radix(mode, 8).map_err(|e| format!("bad mode {mode:?}: {e}"))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| e.to_string())?;
        }
        "run" => {
            let mut words = rest.split_whitespace();
            let program = words.next().ok_or("run needs a program")?;
            flush();
            let status = Command::new(program)
                .args(words)
                .status()
                .map_err(|e| format!("failed to run {program}: {e}"))?;
            if !status.success() {
                return Err(format!("{program} failed: {status}"));
            }
        }
        "flood" => flood(parse(rest)?).map_err(|e| e.to_string())?,
        "panic" => panic!("orch-agent was asked to panic"),
        "tty" => println!("{}", terminal()),
        "tty-wait" => {
            let (size, secs) = rest.split_once(char::is_whitespace).unwrap_or((rest, "30"));
            let wanted = format!("tty {size}");
            let deadline = std::time::Instant::now() + Duration::from_secs_f64(parse(secs.trim())?);
            while terminal() != wanted && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            println!("{}", terminal());
        }
        "read-line" => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| e.to_string())?;
        }
        _ => return Err(format!("unknown step {verb:?}")),
    }
    flush();
    Ok(())
}

fn parse<T: std::str::FromStr>(text: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e| format!("bad number {text:?}: {e}"))
}

fn split_two(text: &str) -> Result<(&str, &str), String> {
    text.split_once(char::is_whitespace)
        .map(|(a, b)| (a, b.trim()))
        .ok_or_else(|| format!("expected two arguments, got {text:?}"))
}

fn flush() {
    let _ = std::io::stdout().flush();
}

/// Prints exactly `bytes` bytes: lines of 99 `x` and a newline, then a
/// shorter remainder, so a reader can check that nothing was lost.
fn flood(bytes: u64) -> std::io::Result<()> {
    let line = [b'x'; 99]
        .iter()
        .copied()
        .chain(std::iter::once(b'\n'))
        .collect::<Vec<u8>>();
    let mut out = std::io::stdout().lock();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(line.len() as u64) as usize;
        let chunk = if n == line.len() {
            &line[..]
        } else {
            &line[line.len() - n..]
        };
        out.write_all(chunk)?;
        left -= n as u64;
    }
    out.flush()
}

/// `rm -rf` for each path: symlinks are removed, never followed; a
/// directory that cannot go itself (a mount point) is left empty.
fn remove_all(paths: impl Iterator<Item = String>) -> ExitCode {
    let mut failed = false;
    for path in paths {
        let path = std::path::Path::new(&path);
        let result = match path.symlink_metadata() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
            Ok(meta) if meta.is_dir() => std::fs::read_dir(path).and_then(|entries| {
                for entry in entries {
                    let entry = entry?;
                    if entry.file_type()?.is_dir() {
                        std::fs::remove_dir_all(entry.path())?;
                    } else {
                        std::fs::remove_file(entry.path())?;
                    }
                }
                // A mount point cannot be removed from inside; its parent
                // takes care of it.
                let _ = std::fs::remove_dir(path);
                Ok(())
            }),
            Ok(_) => std::fs::remove_file(path),
        };
        if let Err(e) = result {
            eprintln!("rm: {}: {e}", path.display());
            failed = true;
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn ignore_sigterm() {
    // SAFETY: installing SIG_IGN for SIGTERM has no preconditions; there are
    // no other threads or handlers in this process.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
}

/// What stdout is: `tty ROWSxCOLUMNS` for a terminal of that size.
fn terminal() -> String {
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct given.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    if unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut size) } != 0 {
        return "no tty".into();
    }
    format!("tty {}x{}", size.ws_row, size.ws_col)
}
