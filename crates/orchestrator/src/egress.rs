//! `egress = ["host:port", ...]`: a task that may reach those places and
//! nothing else, the host's own ports included, with no privilege given to
//! the task.
//!
//! How it is enforced: the task's container sits alone on a network of its
//! own that has no way out and no address of the host on it (Docker's
//! `internal` bridge with `inhibit_ipv4`), together with one forwarder
//! container that orch starts for it. The forwarder also joins the task's
//! configured network (its only way out) and listens on each allowed port;
//! the task's `/etc/hosts` names every allowed host by the forwarder's
//! address. A connection to an allowed host therefore reaches the
//! forwarder, which connects to that host (by its name, on that port) and
//! relays the bytes, TLS and all; when several allowed hosts share a port,
//! it reads the name the client asked for (TLS SNI, or HTTP's `Host`)
//! before it connects, and closes anything else. Any other address the
//! task tries has no route.
//!
//! The forwarder is orch itself (`orch __egress`), run from the host's
//! own binary and the libraries it is linked with, mounted read-only: no
//! image, no registry, nothing to install. It runs as nobody, with no
//! capability, no new privileges and small limits.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use uuid::Uuid;

use crate::Error;
use crate::context::Ctx;
use crate::runtime::{ContainerSpec, Mount, Ownership};

/// How long a client may take to say which host it wants.
const PEEK_DEADLINE: Duration = Duration::from_secs(10);
/// How long connecting to an allowed host may take.
const CONNECT_DEADLINE: Duration = Duration::from_secs(15);
/// The most bytes read before a name must have been seen.
const PEEK_MAX: usize = 16 * 1024;

/// Allowed `host:port` entries, by port.
fn by_port(entries: &[String]) -> HashMap<u16, Vec<String>> {
    let mut ports: HashMap<u16, Vec<String>> = HashMap::new();
    for entry in entries {
        if let Some((host, port)) = entry.rsplit_once(':') {
            if let Ok(port) = port.parse() {
                ports
                    .entry(port)
                    .or_default()
                    .push(host.to_ascii_lowercase());
            }
        }
    }
    ports
}

/// The hosts a task's `/etc/hosts` names by the forwarder's `address`.
pub(crate) fn hosts_lines(entries: &[String], address: &str) -> Vec<String> {
    let mut hosts: Vec<String> = entries
        .iter()
        .filter_map(|e| e.rsplit_once(':').map(|(h, _)| format!("{h}:{address}")))
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// The forwarder's container: orch's own binary from the host, its
/// libraries beside it, on the task's outbound network and (joined before
/// it starts) the task's isolated one.
pub(crate) fn forwarder_spec(
    image: &str,
    outbound: &str,
    isolated: &str,
    entries: &[String],
    ownership: Ownership,
) -> std::io::Result<ContainerSpec> {
    let (mounts, entrypoint) = host_program()?;
    let mut command = vec!["__egress".to_owned()];
    command.extend(entries.iter().cloned());
    let mut spec = ContainerSpec::plain(image, command, ownership);
    spec.entrypoint = Some(entrypoint);
    spec.user = "65534:65534".into();
    spec.network = outbound.to_owned();
    spec.extra_networks = vec![isolated.to_owned()];
    spec.mounts = mounts;
    spec.memory = Some(128 << 20);
    spec.cpus = Some(0.5);
    spec.pids_limit = Some(64);
    spec.env = vec![("RUST_LOG".into(), "info".into())];
    Ok(spec)
}

/// Opens the way out of a task whose container will be `container`: its
/// isolated network and its forwarder, started. Returns the network the
/// task joins and the `/etc/hosts` lines it gets. Everything made carries
/// the task's ownership, so every cleanup path finds it.
pub(crate) async fn open(
    ctx: &Ctx,
    task: Uuid,
    container: &str,
    task_spec: &ContainerSpec,
    entries: &[String],
) -> Result<(String, Vec<String>), Error> {
    let name = crate::runtime::egress_name(container);
    ctx.runtime
        .create_isolated_network(&name, &task_spec.ownership)
        .await?;
    let spec = forwarder_spec(
        &task_spec.image,
        &task_spec.network,
        &name,
        entries,
        task_spec.ownership.clone(),
    )
    .map_err(|e| Error::io("find", "orch's own program for the egress forwarder", e))?;
    ctx.active.insert(&name, task);
    ctx.runtime.create(&name, &spec).await?;
    ctx.runtime.start(&name).await?;
    let address = ctx.runtime.address(&name, &name).await?.ok_or_else(|| {
        Error::io(
            "find the address of",
            &name,
            std::io::Error::other("the forwarder has no address on the task's network"),
        )
    })?;
    Ok((name, hosts_lines(entries, &address)))
}

/// Removes the networks of this instance (as narrowed by `selector`) that
/// no forwarder holds any more: what a process killed between making a
/// task's network and its forwarder left. With `spare_live`, a network
/// whose task has a live owner is left to it (it may be making the
/// forwarder now).
pub(crate) async fn sweep_networks(
    ctx: &Ctx,
    selector: &crate::runtime::Selector,
    spare_live: bool,
) -> Result<usize, Error> {
    let networks = ctx.runtime.list_networks(selector).await?;
    if networks.is_empty() {
        return Ok(0);
    }
    let containers: Vec<String> = ctx
        .runtime
        .list(selector)
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect();
    let mut removed = 0;
    for network in networks {
        if containers.contains(&network.name) {
            continue;
        }
        if spare_live {
            if let Some(task) = network.task_id {
                let row = ctx.store.call(move |r| r.get(&task)).await?;
                let live = row
                    .is_some_and(|r| r.state.is_live() && crate::owner::Owner::from(&r).is_alive());
                if live {
                    continue;
                }
            }
        }
        if ctx.runtime.remove_network(&network.name).await? == crate::runtime::Gone::Removed {
            removed += 1;
        }
    }
    Ok(removed)
}

/// This very program, as a container can run it from the host: the binary
/// and every library mapped into this process, mounted read-only under
/// `/.orch`, started through its own dynamic loader (or directly, for a
/// static binary).
fn host_program() -> std::io::Result<(Vec<Mount>, Vec<String>)> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut libraries: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        let path = PathBuf::from(path);
        let is_library = path.is_absolute()
            && path != exe
            && path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains(".so"));
        if is_library && !libraries.contains(&path) {
            libraries.push(path);
        }
    }
    let mut mounts = vec![Mount {
        source: exe,
        target: "/.orch/orch".into(),
        read_only: true,
    }];
    let mut loader = None;
    for library in libraries {
        let name = library
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("ld-") {
            loader = Some(name.clone());
        }
        mounts.push(Mount {
            source: library,
            target: PathBuf::from("/.orch/lib").join(&name),
            read_only: true,
        });
    }
    let entrypoint = match loader {
        Some(loader) => vec![
            format!("/.orch/lib/{loader}"),
            "--library-path".into(),
            "/.orch/lib".into(),
            "/.orch/orch".into(),
        ],
        None => vec!["/.orch/orch".into()],
    };
    Ok((mounts, entrypoint))
}

/// `orch __egress host:port ...`: listens on each allowed port and relays
/// each connection to the host it is for, if it is allowed; runs until
/// killed.
pub async fn forward(entries: Vec<String>) -> std::io::Result<()> {
    let ports = by_port(&entries);
    if ports.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no host:port to forward to",
        ));
    }
    let mut listeners = tokio::task::JoinSet::new();
    for (port, hosts) in ports {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
        tracing::info!(port, hosts = ?hosts, "forwarding");
        listeners.spawn(async move {
            loop {
                let Ok((client, from)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let hosts = hosts.clone();
                tokio::spawn(async move {
                    if let Err(why) = relay(client, port, &hosts).await {
                        tracing::info!(%from, port, why, "refused");
                    }
                });
            }
        });
    }
    while listeners.join_next().await.is_some() {}
    Ok(())
}

/// Relays one connection to the allowed host it asks for.
async fn relay(
    mut client: tokio::net::TcpStream,
    port: u16,
    hosts: &[String],
) -> Result<(), String> {
    let mut head = Vec::new();
    let host = if let [only] = hosts {
        only.clone()
    } else {
        let asked = tokio::time::timeout(PEEK_DEADLINE, asked_for(&mut client, &mut head))
            .await
            .map_err(|_| "no host name in time".to_owned())??;
        if !hosts.contains(&asked) {
            return Err(format!("{asked:?} is not allowed on port {port}"));
        }
        asked
    };
    let mut upstream = tokio::time::timeout(
        CONNECT_DEADLINE,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| format!("{host}:{port} did not answer"))?
    .map_err(|e| format!("{host}:{port}: {e}"))?;
    upstream
        .write_all(&head)
        .await
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    tracing::info!(host, port, "relaying");
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    Ok(())
}

/// Reads from `client` (into `head`) until it names the host it wants:
/// the server name of a TLS ClientHello, or an HTTP request's `Host`.
async fn asked_for(
    client: &mut tokio::net::TcpStream,
    head: &mut Vec<u8>,
) -> Result<String, String> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(name) = tls_server_name(head).or_else(|| http_host(head)) {
            return Ok(name.to_ascii_lowercase());
        }
        if head.len() >= PEEK_MAX {
            return Err("no host name in the first bytes".into());
        }
        let n = client.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before naming a host".into());
        }
        head.extend_from_slice(&buf[..n]);
    }
}

/// The server name (SNI) of a TLS ClientHello, once `data` holds it.
fn tls_server_name(data: &[u8]) -> Option<String> {
    // Record: type 22 (handshake), version, length.
    if data.first() != Some(&22) || data.len() < 5 {
        return None;
    }
    let record = data.get(5..5 + usize::from(u16::from_be_bytes([data[3], data[4]])))?;
    // Handshake: type 1 (ClientHello), 3-byte length, version, random.
    if record.first() != Some(&1) {
        return None;
    }
    let mut at = 4 + 2 + 32;
    let skip = |at: &mut usize, len_bytes: usize| -> Option<()> {
        let len = match len_bytes {
            1 => usize::from(*record.get(*at)?),
            _ => usize::from(u16::from_be_bytes([
                *record.get(*at)?,
                *record.get(*at + 1)?,
            ])),
        };
        *at += len_bytes + len;
        Some(())
    };
    skip(&mut at, 1)?; // session id
    skip(&mut at, 2)?; // cipher suites
    skip(&mut at, 1)?; // compression methods
    let end = at + 2 + usize::from(u16::from_be_bytes([*record.get(at)?, *record.get(at + 1)?]));
    at += 2;
    while at + 4 <= end {
        let kind = u16::from_be_bytes([*record.get(at)?, *record.get(at + 1)?]);
        let len = usize::from(u16::from_be_bytes([
            *record.get(at + 2)?,
            *record.get(at + 3)?,
        ]));
        let body = record.get(at + 4..at + 4 + len)?;
        if kind == 0 {
            // server_name: list length, then (type 0, length, name).
            let name_len = usize::from(u16::from_be_bytes([*body.get(3)?, *body.get(4)?]));
            let name = body.get(5..5 + name_len)?;
            return String::from_utf8(name.to_vec()).ok();
        }
        at += 4 + len;
    }
    None
}

/// The `Host` of an HTTP request, once `data` holds its head.
fn http_host(data: &[u8]) -> Option<String> {
    let end = data.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&data[..end]).ok()?;
    head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("host") {
            return None;
        }
        let value = value.trim();
        // Without a port; an IPv6 literal keeps its brackets.
        let host = match value.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || port.is_empty() => {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    host
                } else {
                    value
                }
            }
            _ => value,
        };
        Some(host.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as a TLS client sends it, naming `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let mut sni = Vec::new();
        let list_len = 3 + name.len();
        sni.extend_from_slice(&(list_len as u16).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name.as_bytes());
        let mut extensions = Vec::new();
        extensions.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]); // another one
        extensions.extend_from_slice(&0u16.to_be_bytes());
        extensions.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        extensions.extend_from_slice(&sni);
        let mut hello = vec![0x03, 0x03];
        hello.extend_from_slice(&[7u8; 32]);
        hello.push(0); // session id
        hello.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one suite
        hello.extend_from_slice(&[0x01, 0x00]); // null compression
        hello.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        hello.extend_from_slice(&extensions);
        let mut handshake = vec![1, 0];
        handshake.extend_from_slice(&(hello.len() as u16).to_be_bytes());
        handshake.extend_from_slice(&hello);
        let mut record = vec![22, 3, 1];
        record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
        record.extend_from_slice(&handshake);
        record
    }

    #[test]
    fn names_are_read_from_tls_and_http() {
        let hello = client_hello("github.com");
        assert_eq!(tls_server_name(&hello).as_deref(), Some("github.com"));
        for cut in [0, 3, 10, hello.len() - 1] {
            assert_eq!(tls_server_name(&hello[..cut]), None, "cut at {cut}");
        }
        let request = b"GET / HTTP/1.1\r\nUser-Agent: x\r\nHost: pypi.org:80\r\n\r\n";
        assert_eq!(http_host(request).as_deref(), Some("pypi.org"));
        assert_eq!(
            http_host(b"GET / HTTP/1.1\r\nHost: a.b\r\n"),
            None,
            "head not over"
        );
    }

    #[test]
    fn hosts_are_named_by_the_forwarder() {
        let entries = vec![
            "a.com:443".to_owned(),
            "b.com:443".into(),
            "a.com:22".into(),
        ];
        assert_eq!(
            hosts_lines(&entries, "10.0.0.2"),
            vec!["a.com:10.0.0.2".to_owned(), "b.com:10.0.0.2".into()]
        );
        let ports = by_port(&entries);
        assert_eq!(ports[&443].len(), 2);
        assert_eq!(ports[&22], vec!["a.com".to_owned()]);
    }
}
