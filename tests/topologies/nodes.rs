//! Real Redis topologies for the tests, started on free loopback ports in
//! temp dirs: a persistent standalone node (AOF, `appendfsync always`), a
//! Redis Cluster (made by `redis-cli --cluster create`) and a primary with
//! a replica watched by sentinels (`redis-server --sentinel`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::random_name;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// One `redis-server` process (a data node or, with `--sentinel`, a
/// sentinel), restartable on the same port and directory.
pub struct Node {
    pub port: u16,
    pub dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    /// Starts `redis-server <config file> <args>`; `config`, then this
    /// node's port, loopback address and directory (later lines win), are
    /// written to `node.conf` in the node's directory first (sentinels
    /// rewrite it).
    pub fn start(config: &str, args: &[String]) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(random_name("patd-topology-"));
        std::fs::create_dir_all(&dir).expect("node dir");
        // A Cluster node's bus port is its own free port: the default,
        // port + 10000, may be taken, or beyond 65535 for a high port.
        let bus = if config.contains("cluster-enabled yes") {
            format!("cluster-port {}\n", free_port())
        } else {
            String::new()
        };
        std::fs::write(
            dir.join("node.conf"),
            format!(
                "{config}\nport {port}\n{bus}bind 127.0.0.1\ndir {}\n",
                dir.display()
            ),
        )
        .expect("node.conf");
        let mut node = Self {
            port,
            dir,
            args: args.to_vec(),
            child: None,
        };
        node.launch();
        node
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .arg(self.dir.join("node.conf"))
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: run scripts/test.sh, which installs it");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.try_conn().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not come up", self.port);
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn try_conn(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(format!("redis://{}/", self.addr())).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        redis::cmd("PING").query::<String>(&mut conn).ok()?;
        Some(conn)
    }

    pub fn conn(&self) -> redis::Connection {
        self.try_conn()
            .unwrap_or_else(|| panic!("node {} is up", self.port))
    }

    /// Runs one command and returns its answer.
    pub fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut self.conn())
            .unwrap_or_else(|e| panic!("{args:?} on {}: {e}", self.port))
    }

    /// SIGKILL, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, from its directory (AOF, cluster
    /// state).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    pub fn is_alive(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A file of deploy/.
pub fn deploy_file(name: &str) -> String {
    std::fs::read_to_string(format!("{}/deploy/{name}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("deploy/{name}: {e}"))
}

/// A standalone node run as deploy/redis.conf says: every change in its
/// AOF, fsynced, before it answers.
pub fn durable_standalone() -> Node {
    Node::start(&deploy_file("redis.conf"), &[])
}

/// A Redis Cluster of `primaries` primaries with one replica each.
pub struct Cluster {
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Nodes run as deploy/redis-cluster.conf says, with failures detected
    /// after 2 s instead of 5.
    pub fn start(primaries: usize) -> Self {
        let config = format!(
            "{}\ncluster-node-timeout 2000",
            deploy_file("redis-cluster.conf")
        );
        let nodes: Vec<Node> = (0..primaries * 2)
            .map(|_| Node::start(&config, &[]))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(Node::addr))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli (redis-tools) not found");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes };
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    /// Waits until every live node says `cluster_state:ok` and agrees on
    /// `primaries` primaries serving all slots.
    pub fn wait_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = self.nodes.iter().filter(|n| n.is_alive()).all(|n| {
                let info: String = n.query(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok")
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The store URL with two seed nodes.
    pub fn url(&self) -> String {
        format!(
            "redis-cluster://{},{}",
            self.nodes[0].addr(),
            self.nodes[1].addr()
        )
    }

    /// Creates README's ACL user `patd` (key pattern for `prefix`) on every
    /// live node (a Cluster's ACLs are per node) and returns the store URL
    /// that logs in as it.
    pub fn add_patd_user(&self, prefix: &str) -> String {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README");
        let line = readme
            .lines()
            .find_map(|l| l.trim().strip_prefix("ACL SETUSER patd "))
            .expect("README documents the ACL");
        let rules: Vec<String> = line
            .split_whitespace()
            .map(|r| match r {
                ">PASSWORD" => ">pw-cluster".to_owned(),
                "~patd:*" => format!("~{prefix}:*"),
                "&patd:*" => format!("&{prefix}:*"),
                other => other.to_owned(),
            })
            .collect();
        for node in self.nodes.iter().filter(|n| n.is_alive()) {
            let _: () = redis::cmd("ACL")
                .arg("SETUSER")
                .arg("patd")
                .arg(&rules)
                .query(&mut node.conn())
                .expect("ACL SETUSER");
        }
        self.url()
            .replace("redis-cluster://", "redis-cluster://patd:pw-cluster@")
    }

    /// A live node to ask.
    fn any(&self) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.is_alive())
            .expect("a live node")
    }

    /// (id, port, slot ranges) of the primaries serving slots, as
    /// `CLUSTER NODES` on a live node says.
    pub fn primaries(&self) -> Vec<Primary> {
        let text: String = self.any().query(&["CLUSTER", "NODES"]);
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let flags = fields.get(2)?;
                if !flags.contains("master") || flags.contains("fail") {
                    return None;
                }
                let port: u16 = fields[1].split(['@', ':']).nth(1)?.parse().ok()?;
                let slots = fields[8..]
                    .iter()
                    .filter(|s| !s.starts_with('['))
                    .map(|s| match s.split_once('-') {
                        Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                        None => (s.parse().unwrap(), s.parse().unwrap()),
                    })
                    .collect::<Vec<_>>();
                // A node that serves no slot is no shard's primary.
                (!slots.is_empty()).then(|| (fields[0].to_owned(), port, slots))
            })
            .collect()
    }

    /// The slot of a key (or of a hash tag `{tag}`).
    pub fn slot(&self, key: &str) -> u16 {
        self.any().query::<u16>(&["CLUSTER", "KEYSLOT", key])
    }

    /// The node serving `slot` as primary.
    pub fn owner(&self, slot: u16) -> &Node {
        let port = self
            .primaries()
            .into_iter()
            .find(|(_, _, slots)| slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|(_, port, _)| port)
            .expect("an owner");
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("the owner is ours")
    }

    /// Moves `slot` from its owner to the primary at `to`, step by step as
    /// `redis-cli --cluster reshard` does (IMPORTING / MIGRATING, MIGRATE
    /// every key, then NODE), but holding `hold` after the keys moved and
    /// before the slot does: meanwhile the old owner answers `ASK` for
    /// them and the new one serves them only after `ASKING`.
    pub fn migrate_slot(&self, slot: u16, to: u16, hold: Duration) {
        let src = self.owner(slot);
        let dst = self.nodes.iter().find(|n| n.port == to).expect("target");
        let src_id: String = src.query(&["CLUSTER", "MYID"]);
        let dst_id: String = dst.query(&["CLUSTER", "MYID"]);
        let slot = slot.to_string();
        let _: () = dst.query(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id]);
        let _: () = src.query(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id]);
        let move_keys = || loop {
            let keys: Vec<String> = src.query(&["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
            if keys.is_empty() {
                return;
            }
            let port = dst.port.to_string();
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            migrate.extend(keys.iter().map(String::as_str));
            let _: String = src.query(&migrate);
        };
        move_keys();
        std::thread::sleep(hold);
        move_keys();
        for node in [dst, src] {
            let _: () = node.query(&["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id]);
        }
    }

    pub fn node_mut(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of ours")
    }
}

/// A Cluster primary: node id, port, slot ranges (inclusive).
pub type Primary = (String, u16, Vec<(u16, u16)>);

/// One primary, one replica and three sentinels watching it as `patd`.
pub struct Sentinels {
    pub primary: Node,
    pub replica: Node,
    pub sentinels: Vec<Node>,
}

pub const MASTER_NAME: &str = "patd";

impl Sentinels {
    /// Data nodes run as deploy/redis.conf, sentinels as
    /// deploy/redis-sentinel.conf says (watching this primary, which is
    /// down after 1 s instead of 5).
    pub fn start() -> Self {
        let data = deploy_file("redis.conf");
        let primary = Node::start(&data, &[]);
        let replica = Node::start(
            &format!("{data}\nreplicaof 127.0.0.1 {}", primary.port),
            &[],
        );
        let monitor = format!("sentinel monitor {MASTER_NAME} 10.0.0.10 6379 2");
        let sentinel = deploy_file("redis-sentinel.conf");
        assert!(
            sentinel.contains(&monitor),
            "deploy/redis-sentinel.conf: {monitor}"
        );
        let sentinel = sentinel.replace(
            &monitor,
            &format!(
                "sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2",
                primary.port
            ),
        );
        let sentinels = (0..3)
            .map(|_| {
                Node::start(
                    &format!(
                        "{sentinel}\nsentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                         sentinel failover-timeout {MASTER_NAME} 10000"
                    ),
                    &["--sentinel".to_owned()],
                )
            })
            .collect();
        let topology = Self {
            primary,
            replica,
            sentinels,
        };
        // The replica is in sync and every sentinel knows it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info: String = topology.replica.query(&["INFO", "replication"]);
            let known = topology.sentinels.iter().all(|s| {
                let replicas: Vec<redis::Value> = s.query(&["SENTINEL", "REPLICAS", MASTER_NAME]);
                !replicas.is_empty()
            });
            if info.contains("master_link_status:up") && known {
                return topology;
            }
            assert!(Instant::now() < deadline, "the sentinels did not settle");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        let addrs: Vec<String> = self.sentinels.iter().map(Node::addr).collect();
        format!("redis-sentinel://{}/0#{MASTER_NAME}", addrs.join(","))
    }

    /// The port of the primary the sentinels name now.
    pub fn primary_port(&self) -> Option<u16> {
        let addr: Vec<String> = self.sentinels.iter().find(|s| s.is_alive())?.query(&[
            "SENTINEL",
            "GET-MASTER-ADDR-BY-NAME",
            MASTER_NAME,
        ]);
        addr.get(1)?.parse().ok()
    }
}
