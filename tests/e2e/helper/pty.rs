//! A real pseudo-terminal for orch: it is orch's controlling terminal, so
//! Ctrl+Z typed into it stops orch's process group, and closing it hangs
//! orch up, as closing a terminal window or losing an SSH connection does.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, poll};
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};

/// orch running on the slave side of a pseudo-terminal.
pub(crate) struct OnPty {
    pub(crate) child: Child,
    /// The slave side's path.
    name: std::path::PathBuf,
    master: Arc<Mutex<Option<OwnedFd>>>,
    output: Arc<Mutex<Vec<u8>>>,
    hang_up: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl OnPty {
    /// Starts `cmd` in a new session whose controlling terminal is a fresh
    /// pseudo-terminal.
    pub(crate) fn spawn(cmd: Command) -> OnPty {
        OnPty::spawn_sized(cmd, 80)
    }

    /// As [`OnPty::spawn`], on a terminal `columns` wide.
    pub(crate) fn spawn_sized(mut cmd: Command, columns: u16) -> OnPty {
        let master =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
        rustix::termios::tcsetwinsize(
            &master,
            rustix::termios::Winsize {
                ws_row: 24,
                ws_col: columns,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )
        .unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let name = std::path::PathBuf::from(name.to_str().unwrap());
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&name)
            .unwrap();
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and the ioctl are async-signal-safe and touch no
        // memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::setsid()?;
                // fd 0 is the terminal, open for the life of the exec.
                let stdin = std::os::fd::BorrowedFd::borrow_raw(0);
                rustix::process::ioctl_tiocsctty(stdin)?;
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(cmd);
        let master = Arc::new(Mutex::new(Some(master)));
        let output = Arc::new(Mutex::new(Vec::new()));
        let hang_up = Arc::new(AtomicBool::new(false));
        let reader = {
            let (master, output, hang_up) = (master.clone(), output.clone(), hang_up.clone());
            std::thread::spawn(move || read_until_hangup(&master, &output, &hang_up))
        };
        OnPty {
            child,
            name,
            master,
            output,
            hang_up,
            reader: Some(reader),
        }
    }

    /// What orch wrote to its terminal so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Types `bytes` at the terminal (`b"\x1a"` is Ctrl+Z).
    pub(crate) fn type_keys(&self, bytes: &[u8]) {
        let guard = self.master.lock().unwrap();
        let fd = guard.as_ref().expect("the terminal is open");
        let mut file = std::fs::File::from(fd.try_clone().unwrap());
        file.write_all(bytes).unwrap();
    }

    /// The terminal's local modes now (`ICANON`, `ECHO`, `ISIG`...), as
    /// whoever holds it set them.
    pub(crate) fn local_modes(&self) -> rustix::termios::LocalModes {
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
            .open(&self.name)
            .unwrap();
        rustix::termios::tcgetattr(&slave).unwrap().local_modes
    }

    /// Resizes the terminal: its foreground process group gets SIGWINCH.
    pub(crate) fn resize(&self, rows: u16, columns: u16) {
        let guard = self.master.lock().unwrap();
        let fd = guard.as_ref().expect("the terminal is open");
        rustix::termios::tcsetwinsize(
            fd,
            rustix::termios::Winsize {
                ws_row: rows,
                ws_col: columns,
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )
        .unwrap();
    }

    /// Closes the terminal: orch, its session leader, gets SIGHUP.
    pub(crate) fn hang_up(&mut self) {
        self.hang_up.store(true, Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
    }

    /// orch's state letter in `/proc/<pid>/stat` (`T` when stopped).
    pub(crate) fn process_state(&self) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        stat[stat.rfind(')')? + 1..].trim_start().chars().next()
    }

    pub(crate) fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_raw(self.child.id() as i32).unwrap()
    }
}

impl Drop for OnPty {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.hang_up();
    }
}

/// Copies the terminal's output until asked to hang up (or orch closes
/// it), then closes the master side.
fn read_until_hangup(
    master: &Mutex<Option<OwnedFd>>,
    output: &Mutex<Vec<u8>>,
    hang_up: &AtomicBool,
) {
    let fd = master
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .try_clone()
        .unwrap();
    let mut file = std::fs::File::from(fd);
    let mut buf = [0u8; 16 * 1024];
    while !hang_up.load(Ordering::SeqCst) {
        let fd = file.as_fd();
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let ready = poll(
            &mut fds,
            Some(&rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 50_000_000,
            }),
        );
        if !matches!(ready, Ok(n) if n > 0) {
            continue;
        }
        match file.read(&mut buf) {
            Ok(0) | Err(_) => std::thread::sleep(Duration::from_millis(20)),
            Ok(n) => output.lock().unwrap().extend_from_slice(&buf[..n]),
        }
    }
    let _ = file.as_raw_fd();
    drop(file);
    master.lock().unwrap().take();
}
