//! A RabbitMQ node of its own with only a TLS listener, started from the
//! installed `rabbitmq-server` the way `scripts/cluster.sh` starts its
//! nodes, and stopped (its data deleted) when dropped.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::tls::TestCerts;

/// Ports a test's own broker node may use (AMQPS), and their distribution
/// ports at +20000.
const PORTS: std::ops::RangeInclusive<u16> = 5690..=5699;

/// A running TLS-only node `rabbitry-tls-<port>@localhost` serving
/// [`TestCerts`]' server certificate on `127.0.0.1:<port>`, guest/guest
/// allowed from anywhere.
#[derive(Debug)]
pub struct TlsNode {
    name: String,
    port: u16,
    dir: PathBuf,
}

/// Why a node could not be started.
#[derive(Debug)]
pub enum TlsNodeError {
    /// This machine cannot run one (not root, no `rabbitmq-server`, no
    /// free port): the test may skip, saying so.
    Environment(String),
    /// It was started and did not come up: the test must fail.
    Failed(String),
}

impl TlsNode {
    /// Starts the node and waits until it has booted, at most
    /// `RABBITRY_TLS_NODE_TIMEOUT` seconds (default 90).
    pub fn start(certs: &TestCerts) -> Result<Self, TlsNodeError> {
        Self::start_with(certs, "")
    }

    /// Like [`start`](Self::start), with more `rabbitmq.conf` lines (for
    /// example `max_message_size = 1048576`).
    pub fn start_with(certs: &TestCerts, extra_conf: &str) -> Result<Self, TlsNodeError> {
        use TlsNodeError::{Environment, Failed};
        if !is_root() {
            return Err(Environment(
                "a node of its own needs root (it runs as the rabbitmq user)".into(),
            ));
        }
        if !on_path("rabbitmq-server") || !on_path("rabbitmqctl") {
            return Err(Environment("rabbitmq-server is not installed".into()));
        }
        let port = PORTS
            .clone()
            .find(|p| free(*p) && free(*p + 20000))
            .ok_or_else(|| Environment(format!("no free port in {PORTS:?}")))?;
        let node = Self {
            name: format!("rabbitry-tls-{port}@localhost"),
            port,
            dir: certs.dir().join("node"),
        };
        node.prepare(certs, extra_conf).map_err(Failed)?;
        node.launch().map_err(Failed)?;
        let limit = std::env::var("RABBITRY_TLS_NODE_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(90);
        let deadline = Instant::now() + Duration::from_secs(limit);
        while !node.ctl(&["await_startup", "--timeout", "5"]) {
            if Instant::now() > deadline {
                return Err(Failed(format!(
                    "the TLS node did not boot within {limit} s; see {}/log",
                    node.dir.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(node)
    }

    /// Its AMQPS port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `amqps://guest:guest@<host>:<port>/%2f`.
    pub fn url(&self, host: &str) -> String {
        format!("amqps://guest:guest@{host}:{}/%2f", self.port)
    }

    fn prepare(&self, certs: &TestCerts, extra_conf: &str) -> Result<(), String> {
        let d = &self.dir;
        std::fs::create_dir_all(d.join("mnesia")).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(d.join("log")).map_err(|e| e.to_string())?;
        let conf = format!(
            "listeners.tcp = none\n\
             listeners.ssl.1 = 127.0.0.1:{port}\n\
             ssl_options.cacertfile = {ca}\n\
             ssl_options.certfile = {cert}\n\
             ssl_options.keyfile = {key}\n\
             ssl_options.verify = verify_none\n\
             ssl_options.fail_if_no_peer_cert = false\n\
             loopback_users = none\n",
            port = self.port,
            ca = certs.path("ca.pem").display(),
            cert = certs.path("server.pem").display(),
            key = certs.path("server.key").display(),
        );
        std::fs::write(d.join("rabbitmq.conf"), format!("{conf}{extra_conf}\n"))
            .map_err(|e| e.to_string())?;
        std::fs::write(d.join("enabled_plugins"), "[].\n").map_err(|e| e.to_string())?;
        // Debian's wrapper runs the node as `rabbitmq`: it must read the
        // key and write its data.
        let ok = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(certs.dir())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            Ok(())
        } else {
            Err("chown to rabbitmq failed".into())
        }
    }

    fn launch(&self) -> Result<(), String> {
        let d = self.dir.display();
        // The node outlives this call: it must not keep the test's open
        // files (pipes of the test runner), so every descriptor past 2 is
        // closed before it starts.
        let script = format!(
            "for fd in $(ls /proc/$$/fd); do [ \"$fd\" -gt 2 ] && eval \"exec $fd>&-\"; done; \
             exec env RABBITMQ_NODENAME={name} RABBITMQ_DIST_PORT={dist} \
             RABBITMQ_CONFIG_FILE={d}/rabbitmq RABBITMQ_MNESIA_BASE={d}/mnesia \
             RABBITMQ_LOG_BASE={d}/log RABBITMQ_PID_FILE={d}/rabbit.pid \
             RABBITMQ_ENABLED_PLUGINS_FILE={d}/enabled_plugins rabbitmq-server -detached",
            name = self.name,
            dist = u32::from(self.port) + 20000,
        );
        let status = Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("starting rabbitmq-server: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("rabbitmq-server -detached: {status}"))
        }
    }

    fn ctl(&self, args: &[&str]) -> bool {
        Command::new("timeout")
            .arg("60")
            .args(["rabbitmqctl", "-q", "-n", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn pid(&self) -> Option<String> {
        let pid = std::fs::read_to_string(self.dir.join("rabbit.pid")).ok()?;
        let pid = pid.trim();
        (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then(|| pid.to_owned())
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        let pid = self.pid();
        self.ctl(&["stop"]);
        if let Some(pid) = pid {
            for _ in 0..100 {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = Command::new("kill")
                .args(["-9", &pid])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Says a test cannot run here: `SKIPPED: …` on stderr, or a panic when
/// `RABBITRY_REQUIRE_TLS=1` (set by `.ci/run`, where every test must run).
pub fn skip(why: &str) {
    if std::env::var("RABBITRY_REQUIRE_TLS").is_ok_and(|v| v == "1") {
        panic!("RABBITRY_REQUIRE_TLS=1 and this test cannot run: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// Certificates and a running node for a test, or `None` after [`skip`]
/// when this machine cannot run one.
///
/// # Panics
/// When the node was started and did not boot: that is a failure, not a skip.
pub fn tls_node_for_test(extra_conf: &str) -> Option<(TestCerts, TlsNode)> {
    let certs = match TestCerts::generate() {
        Ok(certs) => certs,
        Err(why) => {
            skip(&format!("cannot make test certificates: {why}"));
            return None;
        }
    };
    let started = Instant::now();
    match TlsNode::start_with(&certs, extra_conf) {
        Ok(node) => {
            eprintln!(
                "TLS node up on port {} in {:.1} s",
                node.port(),
                started.elapsed().as_secs_f64()
            );
            Some((certs, node))
        }
        Err(TlsNodeError::Environment(why)) => {
            skip(&format!("no broker node of its own on this machine: {why}"));
            None
        }
        Err(TlsNodeError::Failed(why)) => panic!("the TLS node did not start: {why}"),
    }
}
