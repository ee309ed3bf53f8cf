//! The local 3-node cluster of `scripts/cluster.sh`: where it is, and how to
//! hurt it.

use std::path::PathBuf;
use std::process::Command;

/// The local 3-node cluster started by `scripts/cluster.sh start` (nodes
/// `rabbit1..3@localhost` on 127.0.0.1:5681-5683).
#[derive(Clone, Debug)]
pub struct Cluster {
    script: PathBuf,
}

impl Cluster {
    /// The cluster, when `RABBITRY_CLUSTER=1` is set and all three nodes
    /// run. Otherwise `None`, after printing why, so that the test can skip.
    pub fn from_env() -> Option<Self> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cluster.sh");
        if std::env::var("RABBITRY_CLUSTER").as_deref() != Ok("1") {
            eprintln!(
                "SKIPPED: this test needs the local 3-node cluster: run `scripts/cluster.sh start`, then set RABBITRY_CLUSTER=1"
            );
            return None;
        }
        let cluster = Self { script };
        if !cluster.run(&["status"]) {
            eprintln!(
                "SKIPPED: RABBITRY_CLUSTER=1 but the cluster is not fully up: run `scripts/cluster.sh start`"
            );
            return None;
        }
        Some(cluster)
    }

    /// The AMQP URLs of the three nodes, node 1 first.
    pub fn urls(&self) -> Vec<String> {
        (1..=3)
            .map(|n| format!("amqp://guest:guest@127.0.0.1:{}/%2f", Self::port(n)))
            .collect()
    }

    /// The AMQP port of node `n` (1 to 3).
    pub fn port(n: usize) -> u16 {
        5680 + u16::try_from(n).unwrap_or(0)
    }

    /// `kill -9` of node `n`: a node lost without closing anything.
    ///
    /// # Panics
    /// When the script fails.
    pub fn kill(&self, n: usize) {
        assert!(
            self.run(&["kill", &n.to_string()]),
            "killing node {n} failed"
        );
    }

    /// Starts node `n` again and waits until it has booted (it rejoins).
    ///
    /// # Panics
    /// When the script fails.
    pub fn restart(&self, n: usize) {
        assert!(
            self.run(&["restart", &n.to_string()]),
            "restarting node {n} failed"
        );
    }

    /// The node (1 to 3) that leads quorum queue `queue`, asked of `via`.
    pub fn queue_leader(&self, queue: &str, via: usize) -> Option<usize> {
        let out = ctl(via, &["list_queues", "-s", "name", "leader"])?;
        out.lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(name, _)| name.trim() == queue)
            .and_then(|(_, leader)| node_number(leader))
    }

    /// `name type leader members online` of `queue`, asked of `via`, as
    /// rabbitmqctl prints it (for failure messages).
    pub fn queue_info(&self, queue: &str, via: usize) -> String {
        ctl(
            via,
            &[
                "list_queues",
                "-s",
                "name",
                "type",
                "leader",
                "members",
                "online",
                "messages",
            ],
        )
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(queue))
        .collect::<Vec<_>>()
        .join("\n")
    }

    /// The nodes (1 to 3) holding the connections whose client-given name
    /// contains `name`, asked of `via`.
    pub fn connection_nodes(&self, name: &str, via: usize) -> Vec<usize> {
        let Some(out) = ctl(
            via,
            &["list_connections", "-s", "port", "client_properties"],
        ) else {
            return Vec::new();
        };
        out.lines()
            .filter(|l| l.contains(name))
            .filter_map(|l| l.split('\t').next()?.trim().parse::<u16>().ok())
            .map(|port| usize::from(port - 5680))
            .collect()
    }

    fn run(&self, args: &[&str]) -> bool {
        Command::new("bash")
            .arg(&self.script)
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    }
}

fn ctl(node: usize, args: &[&str]) -> Option<String> {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "-n", &format!("rabbit{node}@localhost")])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn node_number(node: &str) -> Option<usize> {
    node.trim()
        .strip_prefix("rabbit")?
        .split('@')
        .next()?
        .parse()
        .ok()
}
