//! Throwaway TLS material for tests: a certificate authority and a server
//! certificate signed by it, made with the `openssl` command when the test
//! runs, and a second, unrelated authority (a wrong CA to trust). Plus
//! [`TlsStub`], a bare TLS listener (`openssl s_server`) for handshake
//! failures that need no broker.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A directory of test certificates, deleted when dropped.
///
/// The server certificate names `localhost` and `127.0.0.1`, lives two
/// days, and is signed by [`ca_pem`](Self::ca_pem). Keys are EC P-256.
#[derive(Debug)]
pub struct TestCerts {
    dir: PathBuf,
}

impl TestCerts {
    /// Makes a CA, a server key and certificate, and a second CA, in a new
    /// directory under `/var/tmp`. `Err` says why (no `openssl`, a failed
    /// command), for the test to report as a skip or a failure.
    pub fn generate() -> Result<Self, String> {
        let base = if Path::new("/var/tmp").is_dir() {
            PathBuf::from("/var/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(crate::unique("rabbitry-tls"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let certs = Self { dir };
        certs.make_ca("ca", "rabbitry test CA")?;
        certs.make_ca("other-ca", "rabbitry unrelated CA")?;
        let ext = certs.path("server.ext");
        std::fs::write(
            &ext,
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .map_err(|e| format!("writing {}: {e}", ext.display()))?;
        certs.new_key(&[
            "-new",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ])?;
        certs.openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ])?;
        Ok(certs)
    }

    fn make_ca(&self, name: &str, subject: &str) -> Result<(), String> {
        self.new_key(&[
            "-x509",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={subject}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])
    }

    /// `openssl req` with a new unencrypted EC P-256 key, and `args`.
    fn new_key(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec![
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        all.extend_from_slice(args);
        self.openssl(&all)
    }

    fn openssl(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("the `openssl` command did not run: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "openssl {} failed: {}",
                args.first().copied().unwrap_or_default(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A file in the directory: `ca.pem`, `server.pem`, `server.key`,
    /// `other-ca.pem`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The CA that signed the server certificate, in PEM.
    pub fn ca_pem(&self) -> String {
        self.read("ca.pem")
    }

    /// An unrelated CA, in PEM: trusting it alone must fail the handshake.
    pub fn other_ca_pem(&self) -> String {
        self.read("other-ca.pem")
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name))
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.path(name).display()))
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS listener on 127.0.0.1 serving the test server certificate and
/// nothing else (`openssl s_server`), killed when dropped: enough to fail a
/// client's certificate check.
#[derive(Debug)]
pub struct TlsStub {
    child: std::process::Child,
    port: u16,
}

impl TlsStub {
    /// Starts the listener and waits (up to 10 s) until it accepts.
    pub fn start(certs: &TestCerts) -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-naccept", "1000", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(certs.path("server.pem"))
            .arg("-key")
            .arg(certs.path("server.key"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("the `openssl` command did not run: {e}"))?;
        let mut stub = Self { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(stub);
            }
            if let Ok(Some(status)) = stub.child.try_wait() {
                return Err(format!("openssl s_server exited: {status}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("openssl s_server did not listen within 10 s".into())
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TlsStub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
