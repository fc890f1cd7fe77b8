//! Certificates made for a test by openssl.

use std::path::PathBuf;
use std::process::Command;

/// Certificates made for one test: a CA, a server certificate for
/// `localhost` and 127.0.0.1 signed by it, a client certificate signed by
/// it, and another CA nothing is signed by.
pub(crate) struct Certs {
    pub(crate) dir: tempfile::TempDir,
}

impl Certs {
    pub(crate) fn make() -> Certs {
        let dir = tempfile::Builder::new()
            .prefix("orch-e2e-certs-")
            .tempdir()
            .unwrap();
        let certs = Certs { dir };
        certs.ca("ca");
        certs.ca("other-ca");
        certs.signed("server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1");
        certs.signed("client", "ca", "extendedKeyUsage=clientAuth");
        certs
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .current_dir(self.dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=orch test {name}"),
        ]);
    }

    pub(crate) fn signed(&self, name: &str, ca: &str, extension: &str) {
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(self.path(&format!("{name}.ext")), extension).unwrap();
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }
}
