//! A 3-node `nats-server` cluster on free loopback ports (routes between the nodes, JetStream with a
//! store per node, so R3 streams work); one node can be stopped and started again on its ports.

use super::{kill, scratch_dir, spawn_nats, START_DEADLINE};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How many nodes a cluster has: the fewest that keep an R3 stream writable with one node down.
pub const NODES: usize = 3;

/// One node: its process (while it runs), its ports and its JetStream store.
struct Node {
    child: Option<Child>,
    name: String,
    /// Client and monitoring ports, `None` until the first start has read them from the log.
    ports: Option<(u16, u16)>,
    cluster_port: u16,
    dir: PathBuf,
}

/// Three `nats-server` processes of this test's own, routed to each other, each killed by its PID
/// on Drop.
pub struct NatsCluster {
    name: String,
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts the nodes and returns once they are routed to each other and agree on a JetStream
    /// meta leader (so a stream with 3 replicas can be created).
    pub fn start() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "sluice-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        // Route ports must be known before the nodes start (each names the others'); one taken
        // meanwhile by another process fails that node, so the whole cluster retries.
        for _ in 0..5 {
            let mut cluster = Self {
                name: name.clone(),
                nodes: (0..NODES)
                    .map(|n| Node {
                        child: None,
                        name: format!("n{n}"),
                        ports: None,
                        cluster_port: super::free_port(),
                        dir: scratch_dir("nats-cluster"),
                    })
                    .collect(),
            };
            if (0..NODES).all(|n| cluster.launch(n)) {
                cluster.wait_ready();
                return cluster;
            }
        }
        panic!("a nats-server cluster could not bind free ports in 5 tries");
    }

    /// Starts node `n` (on its ports of the first start, with its store); false if it exited at
    /// once.
    fn launch(&mut self, n: usize) -> bool {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != n)
            .map(|(_, node)| format!("nats://127.0.0.1:{}", node.cluster_port))
            .collect();
        let node = &self.nodes[n];
        let (port, monitor) = node.ports.map_or_else(
            || ("-1".to_owned(), "-1".to_owned()),
            |(p, m)| (p.to_string(), m.to_string()),
        );
        let args: Vec<String> = [
            "-a",
            "127.0.0.1",
            "-p",
            &port,
            "-m",
            &monitor,
            "-js",
            "-sd",
            &node.dir.to_string_lossy(),
            "--server_name",
            &node.name,
            "--cluster_name",
            &self.name,
            "--cluster",
            &format!("nats://127.0.0.1:{}", node.cluster_port),
            "--routes",
            &routes.join(","),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let Some((child, port, monitor)) = spawn_nats(&args) else {
            return false;
        };
        let node = &mut self.nodes[n];
        node.ports = Some((port, monitor));
        node.child = Some(child);
        true
    }

    /// Polls every running node's monitoring endpoint until each is routed to every other running
    /// node, reports itself healthy (JetStream current with the meta group) and all agree on one
    /// meta leader. Fails the test after the start deadline.
    fn wait_ready(&self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            match self.not_ready() {
                None => return,
                Some(why) if Instant::now() > deadline => {
                    panic!("the nats cluster did not form within {START_DEADLINE:?}: {why}")
                }
                Some(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Why the running nodes are not a working cluster yet, or `None` once they are.
    fn not_ready(&self) -> Option<String> {
        let running: Vec<usize> = (0..NODES).filter(|n| self.is_running(*n)).collect();
        let mut leaders = Vec::new();
        for &n in &running {
            let routes = self.monitor(n, "/routez")?;
            let num_routes = routes["num_routes"].as_u64().unwrap_or(0);
            if num_routes < running.len() as u64 - 1 {
                return Some(format!("n{n} has {num_routes} routes"));
            }
            let health = self.monitor(n, "/healthz")?;
            if health["status"] != "ok" {
                return Some(format!("n{n} is not healthy: {health}"));
            }
            let jsz = self.monitor(n, "/jsz")?;
            let leader = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default();
            if leader.is_empty() {
                return Some(format!("n{n} knows no meta leader"));
            }
            leaders.push(leader.to_owned());
        }
        leaders.dedup();
        (leaders.len() > 1).then(|| format!("the nodes name different leaders: {leaders:?}"))
    }

    /// How many nodes the cluster has.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never: a cluster has [`NODES`] nodes (for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `n`'s client URL (also while it is stopped: it comes back on the same port).
    pub fn url(&self, n: usize) -> String {
        format!("nats://127.0.0.1:{}", self.ports(n).0)
    }

    /// Every node's client URL.
    pub fn urls(&self) -> Vec<String> {
        (0..self.len()).map(|n| self.url(n)).collect()
    }

    /// Node `n`'s monitoring endpoint (`/jsz`, `/routez`, ...).
    pub fn monitor_url(&self, n: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports(n).1)
    }

    /// A JSON page of node `n`'s monitoring endpoint, or `None` if it does not answer (yet).
    pub fn monitor(&self, n: usize, path: &str) -> Option<serde_json::Value> {
        let port = self.ports(n).1;
        let mut socket = TcpStream::connect(("127.0.0.1", port)).ok()?;
        socket.set_read_timeout(Some(START_DEADLINE)).ok()?;
        write!(
            socket,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = Vec::new();
        socket.read_to_end(&mut response).ok()?;
        let response = String::from_utf8_lossy(&response);
        let body = response.split_once("\r\n\r\n")?.1;
        serde_json::from_str(body).ok()
    }

    fn ports(&self, n: usize) -> (u16, u16) {
        self.nodes[n].ports.expect("a started node has ports")
    }

    /// Whether node `n` runs now.
    pub fn is_running(&self, n: usize) -> bool {
        self.nodes[n].child.is_some()
    }

    /// Kills node `n` (SIGKILL, by its PID): a crash, as far as clients and the other nodes can
    /// tell. Its store stays for [`Self::start_node`].
    pub fn stop(&mut self, n: usize) {
        if let Some(mut child) = self.nodes[n].child.take() {
            kill(&mut child);
        }
    }

    /// Freezes node `n` (SIGSTOP, by its PID): its connections stay open and it answers nothing,
    /// and it falls behind the others, as a hung or overloaded node does.
    pub fn pause(&self, n: usize) {
        if let Some(child) = &self.nodes[n].child {
            super::signal_pid(child, "-STOP", "nats-server");
        }
    }

    /// Lets a paused node `n` go on (SIGCONT); it then catches up with the others.
    pub fn resume(&self, n: usize) {
        if let Some(child) = &self.nodes[n].child {
            super::signal_pid(child, "-CONT", "nats-server");
        }
    }

    /// Starts a stopped node `n` again on its ports with its store, and returns once the cluster
    /// has formed again.
    pub fn start_node(&mut self, n: usize) {
        assert!(!self.is_running(n), "node n{n} already runs");
        assert!(
            self.launch(n),
            "nats-server n{n} could not start again on its ports"
        );
        self.wait_ready();
    }

    /// Kills node `n` and starts it again (same ports, same store).
    pub fn restart(&mut self, n: usize) {
        self.stop(n);
        self.start_node(n);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for n in 0..self.nodes.len() {
            self.stop(n);
            let _ = std::fs::remove_dir_all(&self.nodes[n].dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nodes form one cluster with one meta leader, and a node killed and started again comes
    /// back on the same client port into the same cluster.
    #[test]
    fn a_cluster_forms_and_a_node_comes_back_on_its_ports() {
        let mut cluster = NatsCluster::start();
        let leader = |c: &NatsCluster, n: usize| {
            c.monitor(n, "/jsz").expect("jsz")["meta_cluster"]["leader"]
                .as_str()
                .map(str::to_owned)
        };
        let first = leader(&cluster, 0).expect("a meta leader");
        for n in 1..cluster.len() {
            assert_eq!(leader(&cluster, n).as_deref(), Some(first.as_str()));
        }
        let url = cluster.url(1);
        cluster.stop(1);
        assert!(!cluster.is_running(1));
        assert!(
            cluster.monitor(1, "/varz").is_none(),
            "a stopped node answers nothing"
        );
        cluster.start_node(1);
        assert_eq!(cluster.url(1), url);
        let routes = cluster.monitor(1, "/routez").expect("routez");
        assert_eq!(routes["num_routes"], 2, "routed to both others again");
    }
}
