//! The sandbox every task gets by default, attacked from inside as the host
//! user and as root: capabilities, privileges, processes, memory, devices,
//! setuid files, and the network with an egress allowlist.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use crate::helper::{self, SHELL_IMAGE, TestEnv, code, stderr};
use crate::require_docker;

const USERS: [&str; 2] = ["host", "root"];

/// A project of shell tasks as `user`, keeping failed workspaces.
fn shell_project(user: &str, extra: &str) -> TestEnv {
    let env = TestEnv::new();
    env.git_project(
        SHELL_IMAGE,
        &format!("command = [\"sh\", \"-c\", \"{{desc}}\"]\nuser = \"{user}\"\n{extra}"),
    );
    env
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// What the task saw of its own confinement, and what it could not do:
/// no capability it does not need, no new privileges, no device nodes,
/// no raw sockets, a pids limit; and a setuid file it left is harmless on
/// the host.
#[test]
fn a_task_is_confined_by_default() {
    require_docker!();
    if !helper::shell_image_ready() {
        return;
    }
    for user in USERS {
        let env = shell_project(user, "");
        let script = "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status > status.txt; \
             cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max > pids.txt 2>/dev/null; \
             mknod dev.node b 8 0 2>/dev/null && echo made > mknod.txt; \
             ping -c 1 -W 1 127.0.0.1 >/dev/null 2>&1 && echo sent > ping.txt; \
             cp /bin/busybox suid; chmod 4755 suid; chmod 2755 suid; \
             exit 3";
        let out = env.task(script, &[]);
        assert_eq!(code(&out), 3, "{user}: {}", stderr(&out));
        let id = helper::task_id(&stderr(&out));
        let dir = env
            .task_dirs()
            .into_iter()
            .find(|d| d.ends_with(&id))
            .expect("the failed task's workspace is kept");
        let status = std::fs::read_to_string(dir.join("status.txt")).unwrap();
        let cap_eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .unwrap()
            .trim()
            .to_owned();
        let caps = u64::from_str_radix(&cap_eff, 16).unwrap();
        // CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, FSETID 4, SETGID 6, SETUID 7.
        let root_caps: u64 = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 4) | (1 << 6) | (1 << 7);
        let wanted = if user == "root" || rustix::process::getuid().is_root() {
            root_caps
        } else {
            0
        };
        assert_eq!(caps, wanted, "{user}: {status}");
        assert!(status.contains("NoNewPrivs:\t1"), "{user}: {status}");
        let pids = std::fs::read_to_string(dir.join("pids.txt")).unwrap();
        assert_eq!(pids.trim(), "4096", "{user}");
        assert!(
            !dir.join("mknod.txt").exists(),
            "{user}: made a device node"
        );
        assert!(!dir.join("ping.txt").exists(), "{user}: sent a raw packet");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::symlink_metadata(dir.join("suid"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(
            mode & 0o6000,
            0,
            "{user}: left setuid on the host: {mode:o}"
        );
        env.ok(&["cleanup", "--older-than", "0s"]);
    }
}

/// Memory and CPU limits come from the machine when the project sets
/// none; a project's own win.
#[test]
fn limits_come_from_the_machine_unless_set() {
    require_docker!();
    let env = TestEnv::new();
    let running = env.spawn_task("sleep 30", &[]);
    let container = env.wait_running();
    let host: serde_json::Value = serde_json::from_str(&docker(&[
        "inspect",
        "--format",
        "{{json .HostConfig}}",
        &container,
    ]))
    .unwrap();
    let machine: i64 = docker(&["info", "--format", "{{.MemTotal}}"])
        .parse()
        .unwrap();
    assert_eq!(host["Memory"].as_i64().unwrap(), machine / 2, "{host}");
    assert!(
        host["NanoCpus"].as_i64().unwrap() >= 1_000_000_000,
        "{host}"
    );
    assert_eq!(host["PidsLimit"], 4096);
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]));
    running.signal(rustix::process::Signal::INT);
    let _ = running.wait(Duration::from_secs(30));
    assert!(env.containers().is_empty());
}

/// An OCI runtime the engine lacks is refused before anything is made,
/// naming it.
#[test]
fn a_runtime_the_engine_lacks_is_refused() {
    require_docker!();
    let env = TestEnv::new();
    env.write_project_config("runtime = \"runsc\"");
    let out = env.task("exit 0", &[]);
    let err = stderr(&out);
    assert_eq!(code(&out), 125, "{err}");
    assert!(
        err.contains("runsc") && err.contains("no OCI runtime"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(env.tasks().is_empty(), "nothing recorded");
}

/// `egress`: the task reaches the one host:port allowed, by its name; not
/// another container on the same network (by name or address), not the
/// host's ports, not the outside. As the host user and as root.
#[test]
fn egress_reaches_what_it_allows_and_nothing_else() {
    require_docker!();
    if !helper::shell_image_ready() {
        return;
    }
    let tag = format!("{}-{}", std::process::id(), helper::web::free_port());
    let network = format!("orch-e2e-net-{tag}");
    let allowed = format!("orch-e2e-allowed-{tag}");
    let denied = format!("orch-e2e-denied-{tag}");
    docker(&["network", "create", &network]);
    struct Cleanup(Vec<Vec<String>>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for args in &self.0 {
                let _ = Command::new("docker").args(args).output();
            }
        }
    }
    let _cleanup = Cleanup(vec![
        vec!["rm".into(), "-f".into(), allowed.clone(), denied.clone()],
        vec!["network".into(), "rm".into(), network.clone()],
    ]);
    for (name, word) in [(&allowed, "served-allowed"), (&denied, "served-denied")] {
        docker(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &network,
            SHELL_IMAGE,
            "sh",
            "-c",
            &format!("while :; do echo {word} | nc -l -p 9000; done"),
        ]);
    }
    let denied_ip = docker(&[
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        &denied,
    ]);
    let gateway = docker(&[
        "network",
        "inspect",
        "--format",
        "{{(index .IPAM.Config 0).Gateway}}",
        "bridge",
    ]);
    // A service on the host, on every address.
    let host_service = TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host_service.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in host_service.incoming().flatten() {
            let _ = stream.write_all(b"served-host\n");
        }
    });
    // The test can reach both servers and the host service itself.
    let mut probe = std::net::TcpStream::connect(("127.0.0.1", host_port)).unwrap();
    let mut got = String::new();
    probe.read_to_string(&mut got).unwrap();
    assert_eq!(got, "served-host\n");

    for user in USERS {
        let env = shell_project(
            user,
            &format!("network = \"{network}\"\negress = [\"{allowed}:9000\"]"),
        );
        let script = format!(
            "nc -w 5 {allowed} 9000 > allowed.txt; \
             nc -w 3 {denied} 9000 > by-name.txt 2>&1; \
             nc -w 3 {denied_ip} 9000 > by-address.txt 2>&1; \
             nc -w 3 {gateway} {host_port} > host.txt 2>&1; \
             nc -w 3 1.1.1.1 80 > outside.txt 2>&1; \
             exit 0"
        );
        let out = env.task(&script, &[]);
        assert_eq!(code(&out), 0, "{user}: {}", stderr(&out));
        let id = helper::task_id(&stderr(&out));
        let show = |file: &str| env.git(&["show", &format!("orch/{id}:{file}")]);
        assert_eq!(show("allowed.txt"), "served-allowed", "{user}");
        for file in ["by-name.txt", "by-address.txt", "host.txt", "outside.txt"] {
            let text = show(file);
            assert!(!text.contains("served-"), "{user}: {file} reached: {text}");
        }
        assert!(
            env.containers().is_empty(),
            "{user}: {:?}",
            env.containers()
        );
        let left = docker(&[
            "network",
            "ls",
            "--filter",
            "label=orch.managed=true",
            "--filter",
            &format!("label=orch.task={id}"),
            "--format",
            "{{.Name}}",
        ]);
        assert_eq!(left, "", "{user}: the task's network is gone");
    }
    // An empty allowlist allows nowhere: not even what the list above
    // allowed, on the very network the project names.
    let env = shell_project("host", &format!("network = \"{network}\"\negress = []"));
    let out = env.task(
        &format!(
            "nc -w 3 {allowed} 9000 > allowed.txt 2>&1; nc -w 3 {denied_ip} 9000 > by-address.txt 2>&1; \
             nc -w 3 {gateway} {host_port} > host.txt 2>&1; exit 0"
        ),
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let id = helper::task_id(&stderr(&out));
    for file in ["allowed.txt", "by-address.txt", "host.txt"] {
        let text = env.git(&["show", &format!("orch/{id}:{file}")]);
        assert!(
            !text.contains("served-"),
            "egress = []: {file} reached: {text}"
        );
    }
}

/// `egress` with no network to go out through is refused before anything
/// is made.
#[test]
fn egress_needs_a_network_to_go_out_through() {
    require_docker!();
    let env = TestEnv::new();
    env.write_project_config("network = \"none\"\negress = [\"example.com:443\"]");
    let out = env.task("exit 0", &[]);
    let err = stderr(&out);
    assert_eq!(code(&out), 125, "{err}");
    assert!(err.contains("egress"), "{err}");
    env.write_project_config("egress = [\"10.0.0.1:443\"]");
    let out = env.task("exit 0", &[]);
    assert!(
        stderr(&out).contains("give a host name"),
        "{}",
        stderr(&out)
    );
}
