//! Real `redis-server` children for tests: a single server, a 3-master
//! cluster and a master watched by one sentinel. Each lives on free ports of
//! 127.0.0.1 with its own temp dir, and is killed (dir removed) on drop.
//!
//! Without `redis-server` on PATH the `start` functions print
//! "skipped: redis-server not found on PATH" and return `None`, unless
//! `SESSIONWARD_REQUIRE_REDIS=1`, when they panic instead.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sessionward::config::RawConfig;

/// How long a server may take to answer PING, or a cluster to form.
const STARTUP: Duration = Duration::from_secs(20);

/// The name the sentinel fixture's master is monitored under.
pub const MASTER_NAME: &str = "sessionward-master";

/// True when `redis-server` (and, for clusters, `redis-cli`) can be run.
/// Otherwise prints why the test is skipped, or panics when
/// `SESSIONWARD_REQUIRE_REDIS=1`.
pub fn available(needs_cli: bool) -> bool {
    let missing = if !on_path("redis-server") {
        "redis-server"
    } else if needs_cli && !on_path("redis-cli") {
        "redis-cli"
    } else {
        return true;
    };
    if std::env::var("SESSIONWARD_REQUIRE_REDIS").as_deref() == Ok("1") {
        panic!("{missing} not found on PATH, and SESSIONWARD_REQUIRE_REDIS=1");
    }
    eprintln!("skipped: {missing} not found on PATH");
    false
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// A port nobody listens on right now (the kernel's pick, released at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A fresh empty directory under the system temp dir.
fn temp_dir(kind: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "sessionward-{kind}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

/// Options of a [`RedisServer`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--appendonly yes` (fsync always), so data survives a kill.
    pub appendonly: bool,
    /// `--cluster-enabled yes`, with a bus on its own free port.
    pub cluster: bool,
    /// This port instead of a free one (for "Redis comes up later" tests).
    pub port: Option<u16>,
    /// Serve TLS only, with a fresh self-signed certificate for localhost
    /// (which no client trusts: for testing that TLS is spoken).
    pub tls: bool,
    /// `--replicaof 127.0.0.1 PORT`.
    pub replica_of: Option<u16>,
}

/// One `redis-server` child (or a sentinel).
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A plain server with `--save ""`; `None` when redis-server is missing.
    pub fn start() -> Option<RedisServer> {
        Self::start_with(Options::default())
    }

    /// A server with options; `None` when redis-server is missing.
    pub fn start_with(options: Options) -> Option<RedisServer> {
        if !available(false) {
            return None;
        }
        let dir = temp_dir("redis");
        Some(Self::launch(dir, options.port, |port, dir| {
            let mut args = vec![
                "--port".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--dir".into(),
                dir.display().to_string(),
                "--save".into(),
                String::new(),
                "--logfile".into(),
                "redis.log".into(),
                "--daemonize".into(),
                "no".into(),
            ];
            if options.appendonly {
                args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from));
            }
            if let Some(master) = options.replica_of {
                args.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
            }
            if options.tls {
                let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
                    .expect("a self-signed certificate");
                std::fs::write(dir.join("cert.pem"), ck.cert.pem()).expect("write cert");
                std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem())
                    .expect("write key");
                // The plain port goes: every client must speak TLS.
                args[1] = "0".into();
                args.extend(
                    [
                        "--tls-port",
                        &port.to_string(),
                        "--tls-cert-file",
                        "cert.pem",
                        "--tls-key-file",
                        "key.pem",
                        "--tls-ca-cert-file",
                        "cert.pem",
                        "--tls-auth-clients",
                        "no",
                    ]
                    .map(String::from),
                );
            }
            if options.cluster {
                args.extend(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "5000",
                        "--cluster-port",
                    ]
                    .map(String::from),
                );
                args.push(free_port().to_string());
            }
            args
        }))
    }

    /// Starts a child on a free port, trying another port if that one
    /// was taken between our pick and redis-server's bind.
    fn launch(
        dir: PathBuf,
        fixed: Option<u16>,
        args: impl Fn(u16, &Path) -> Vec<String>,
    ) -> RedisServer {
        let mut server = RedisServer {
            port: 0,
            dir,
            args: Vec::new(),
            child: None,
        };
        let mut last = String::new();
        for _ in 0..5 {
            server.port = fixed.unwrap_or_else(free_port);
            server.args = args(server.port, &server.dir);
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// Runs the child and waits until it answers PING.
    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "redis-server on port {} exited with {status}; log: {}",
                    self.port,
                    std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
                ));
            }
            if self.ping() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server on port {} never answered PING",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn ping(&self) -> bool {
        if self.args.iter().any(|a| a == "--tls-port") {
            // Nothing here trusts its certificate: a listening port will do.
            return std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok();
        }
        let Ok(mut conn) = self.try_connect() else {
            return false;
        };
        redis::cmd("PING")
            .query::<String>(&mut conn)
            .is_ok_and(|p| p == "PONG")
    }

    fn try_connect(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_millis(500))
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A plain blocking connection, for looking at what the store wrote.
    pub fn connect(&self) -> redis::Connection {
        self.try_connect().expect("connect to the test redis")
    }

    /// Runs one command and returns its reply.
    pub fn command<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut self.connect())
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the server again on the same port and waits for PING.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn() {
            panic!("restart failed: {e}");
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three masters formed into a cluster with `redis-cli --cluster create`.
pub struct RedisCluster {
    /// The nodes, each a master holding a third of the slots.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts and forms the cluster, waiting until every node reports
    /// `cluster_state:ok`; `None` when redis-server or redis-cli is missing.
    pub fn start() -> Option<RedisCluster> {
        if !available(true) {
            return None;
        }
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(Options {
                    cluster: true,
                    ..Options::default()
                })
                .expect("redis-server is available")
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port()));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        wait_for("every node to report cluster_state:ok", || {
            cluster.nodes.iter().all(|n| {
                n.try_connect()
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            })
        });
        Some(cluster)
    }

    /// The seed node URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// A master (optionally with a replica) and one sentinel monitoring it
/// under [`MASTER_NAME`].
pub struct RedisSentinel {
    /// The monitored master.
    pub master: RedisServer,
    /// Its replica, when asked for: the master after a failover.
    pub replica: Option<RedisServer>,
    /// The sentinel (`redis-server sentinel.conf --sentinel`).
    pub sentinel: RedisServer,
}

impl RedisSentinel {
    /// Starts both and waits until the sentinel names the master; `None`
    /// when redis-server is missing.
    pub fn start() -> Option<RedisSentinel> {
        Self::launch(false)
    }

    /// Also a replica, known to the sentinel, so a failover can promote it.
    pub fn start_with_replica() -> Option<RedisSentinel> {
        Self::launch(true)
    }

    fn launch(with_replica: bool) -> Option<RedisSentinel> {
        let master = RedisServer::start()?;
        let master_port = master.port();
        let replica = with_replica.then(|| {
            let replica = RedisServer::start_with(Options {
                replica_of: Some(master_port),
                ..Options::default()
            })
            .expect("redis-server is available");
            // Linked before the sentinel starts, so its first look finds it.
            wait_for("the replica to link to its master", || {
                replica
                    .try_connect()
                    .and_then(|mut c| {
                        redis::cmd("INFO")
                            .arg("replication")
                            .query::<String>(&mut c)
                    })
                    .is_ok_and(|info| info.contains("master_link_status:up"))
            });
            replica
        });
        let dir = temp_dir("sentinel");
        let sentinel = RedisServer::launch(dir, None, move |port, dir| {
            let conf = dir.join("sentinel.conf");
            // The sentinel rewrites its config file: it must be its own copy.
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nlogfile redis.log\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 1\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 5000\n",
                    dir.display()
                ),
            )
            .expect("write sentinel.conf");
            vec![conf.display().to_string(), "--sentinel".into()]
        });
        let s = RedisSentinel {
            master,
            replica,
            sentinel,
        };
        wait_for("the sentinel to name the master", || {
            s.named_master() == Some(master_port)
        });
        if s.replica.is_some() {
            wait_for("the sentinel to find the replica", || {
                s.sentinel
                    .try_connect()
                    .and_then(|mut c| {
                        redis::cmd("SENTINEL")
                            .arg("replicas")
                            .arg(MASTER_NAME)
                            .query::<Vec<redis::Value>>(&mut c)
                    })
                    .is_ok_and(|r| !r.is_empty())
            });
        }
        Some(s)
    }

    /// Asks the sentinel for a failover, retrying while it does not yet
    /// rate the replica as promotable (it must have heard from it first).
    pub fn failover(&self) {
        wait_for("the sentinel to accept a failover", || {
            self.sentinel
                .try_connect()
                .and_then(|mut c| {
                    redis::cmd("SENTINEL")
                        .arg("FAILOVER")
                        .arg(MASTER_NAME)
                        .query::<()>(&mut c)
                })
                .is_ok()
        });
    }

    /// The port of the master the sentinel names right now.
    pub fn named_master(&self) -> Option<u16> {
        self.sentinel
            .try_connect()
            .and_then(|mut c| {
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(MASTER_NAME)
                    .query::<Option<(String, u16)>>(&mut c)
            })
            .ok()
            .flatten()
            .map(|(_, port)| port)
    }
}

/// Polls `ready` until it holds, failing after the startup deadline.
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + STARTUP;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Points a raw config at one server.
pub fn use_single(raw: &mut RawConfig, url: String) {
    raw.store.kind = "redis".into();
    raw.store.redis.mode = "single".into();
    raw.store.redis.url = Some(url);
}

/// Points a raw config at a cluster.
pub fn use_cluster(raw: &mut RawConfig, cluster: &RedisCluster) {
    raw.store.kind = "redis".into();
    raw.store.redis.mode = "cluster".into();
    raw.store.redis.nodes = cluster.urls();
}

/// Points a raw config at the sentinel's master.
pub fn use_sentinel(raw: &mut RawConfig, s: &RedisSentinel) {
    raw.store.kind = "redis".into();
    raw.store.redis.mode = "sentinel".into();
    raw.store.redis.sentinels = vec![s.sentinel.url()];
    raw.store.redis.master_name = Some(MASTER_NAME.into());
}
