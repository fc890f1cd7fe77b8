//! The daemon over TLS: submission latency against the unix socket (50
//! clients at once, each submission on a new connection, as the CLI makes
//! one per command), and what idle TLS connections cost the daemon.
//!
//! The certificates are made here by `openssl` (Debian's). Each TLS
//! submission makes a full handshake: session resumption is off, as for a
//! CLI process that starts afresh.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

use crate::daemon::{latency_of, memory, submission_latency};
use crate::{Bench, Config, Report, ms};

const TOKEN: &str = "bench-network-token-0123456789";

/// A CA and a certificate for 127.0.0.1 it signed, in `dir`.
fn make_certs(dir: &Path) {
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"],
            &["-subj", "/CN=orch bench ca"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
            &["-subj", "/CN=127.0.0.1"],
        ]
        .concat(),
    );
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1").expect("write");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
}

/// A client of the daemon's TLS listener.
#[derive(Clone)]
struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    addr: String,
}

impl TlsClient {
    #[expect(
        deprecated,
        reason = "the daemon's own provider (ring), so that both ends are as in use"
    )]
    fn new(ca: &Path, addr: String) -> TlsClient {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).expect("read the CA") {
            roots.add(cert.expect("a CA certificate")).expect("add it");
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        TlsClient {
            config: Arc::new(config),
            addr,
        }
    }

    /// A new connection, its handshake done.
    fn connect(&self) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        let name = ServerName::try_from("127.0.0.1").expect("a name");
        let conn =
            rustls::ClientConnection::new(self.config.clone(), name).expect("a TLS connection");
        let tcp = TcpStream::connect(&self.addr).expect("connect to the daemon");
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .expect("the TLS handshake");
        }
        stream
    }

    /// `POST /v1/tasks` with `body` on a new connection: status and answer.
    fn submit(&self, body: &str) -> (u16, String) {
        let mut stream = self.connect();
        let raw = format!(
            "POST /v1/tasks HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream.write_all(raw.as_bytes()).expect("send");
        let mut answer = Vec::new();
        // A peer closing without close_notify is an error to rustls, not
        // to this count.
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, answer.into_owned())
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Bench {
    /// Section 12: the daemon over TLS.
    pub(crate) fn network(&self, config: &Config, report: &mut Report) {
        let (home, project) = self.primed_home("network");
        let certs = home.join("certs");
        std::fs::create_dir_all(&certs).expect("a certificate directory");
        make_certs(&certs);
        let addr = format!("127.0.0.1:{}", free_port());
        let daemon = self.serve_with(&home, 1, |cmd| {
            cmd.args(["--listen", &addr])
                .arg("--tls-cert")
                .arg(certs.join("server.pem"))
                .arg("--tls-key")
                .arg(certs.join("server.key"))
                .env("ORCH_TOKEN", TOKEN);
        });
        let client = TlsClient::new(&certs.join("ca.pem"), addr.clone());
        let clients = 50;
        let per_client = config.latency_rounds;
        let mut rows = Vec::new();
        // Alternated, twice each, so that neither has the quieter machine.
        let mut socket_runs = Vec::new();
        let mut tls_runs = Vec::new();
        for _ in 0..2 {
            socket_runs.push(submission_latency(
                &daemon.socket,
                &project,
                clients,
                per_client,
            ));
            let client = client.clone();
            tls_runs.push(latency_of(&project, clients, per_client, move |body| {
                client.submit(body)
            }));
        }
        for (name, runs) in [("unix socket", &socket_runs), ("TLS (TCP)", &tls_runs)] {
            for (s, p99) in runs {
                rows.push(vec![name.to_owned(), ms(s.median), ms(s.p95), ms(*p99)]);
            }
        }
        report.table(
            &format!(
                "12a. Submission latency, TLS against the unix socket: {clients} clients submitting {per_client} tasks each at once, a new connection (and a full handshake) per submission"
            ),
            &["through", "p50", "p95", "p99"],
            rows,
        );

        // Idle TLS connections: handshakes done, no request sent. The
        // daemon closes one idle for 10 s, so they are counted within that.
        let before = memory(daemon.child.id()).0;
        let started = Instant::now();
        let idle: Vec<_> = (0..200).map(|_| client.connect()).collect();
        let opened_in = started.elapsed();
        // Let the daemon's tasks for them settle.
        std::thread::sleep(Duration::from_millis(500));
        let with_idle = memory(daemon.child.id()).0;
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "opened within the idle bound"
        );
        drop(idle);
        report.table(
            "12b. The daemon's memory with 200 idle TLS connections",
            &["figure", "value"],
            vec![
                vec![
                    "RSS before".into(),
                    format!("{:.1} MiB", before as f64 / 1024.0),
                ],
                vec![
                    "RSS with 200 idle TLS connections".into(),
                    format!("{:.1} MiB", with_idle as f64 / 1024.0),
                ],
                vec![
                    "per connection".into(),
                    format!("{:.1} KiB", with_idle.saturating_sub(before) as f64 / 200.0),
                ],
                vec!["200 handshakes took".into(), ms(opened_in)],
            ],
        );
        drop(daemon);
    }
}
