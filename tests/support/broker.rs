//! A private RabbitMQ node for tests that cut connections or restart the broker, so
//! they never disturb the shared broker other tests (and CI after us) use.
//!
//! The node listens on a free loopback port with its own data folder; it is stopped
//! and its folder removed when the handle is dropped, on every path out of a test.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running private RabbitMQ node.
pub struct PrivateBroker {
    node: String,
    port: u16,
    /// With [`PrivateBroker::start_tls`]: the AMQPS port and the test CA (PEM).
    tls_port: Option<u16>,
    /// With [`PrivateBroker::start_with_management`]: the management API's port.
    management_port: Option<u16>,
    pub ca_pem: Option<String>,
    /// With [`PrivateBroker::start_tls`]: the CA, to issue client certificates.
    pub pki: Option<crate::directory::TestPki>,
    dir: tempfile::TempDir,
    server: Option<Child>,
}

/// Where test services listen: below the kernel's ephemeral range (32768–60999 here),
/// so an outgoing connection can never take a private node's port while it restarts
/// (a node on 35672 once failed `start_app` with `eaddrinuse`).
const SERVICE_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback port below the ephemeral range that nobody listens on right now. Ports
/// are handed out in turn from a random start, so tests in one process never get the
/// same one while their services are still starting.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = SERVICE_PORTS.end - SERVICE_PORTS.start;
    let _ = NEXT.compare_exchange(0, rand_offset(span) + 1, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span {
        let port = SERVICE_PORTS.start + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {SERVICE_PORTS:?}")
}

/// A start offset that differs between test processes (time and process id).
fn rand_offset(span: u16) -> u16 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    ((nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % u32::from(span)) as u16
}

impl PrivateBroker {
    /// Starts a node and waits until it accepts AMQP connections (about 5–15 s).
    pub fn start() -> PrivateBroker {
        PrivateBroker::launch(false, false, "")
    }

    /// Like [`PrivateBroker::start`], with more lines of `rabbitmq.conf` (tuning).
    pub fn start_with_config(extra: &str) -> PrivateBroker {
        PrivateBroker::launch(false, false, extra)
    }

    /// Like [`PrivateBroker::start`], with the management API (which joining clients
    /// needs) on another free loopback port.
    pub fn start_with_management() -> PrivateBroker {
        PrivateBroker::launch(false, true, "")
    }

    /// Like [`PrivateBroker::start`], with an AMQPS listener too, its certificate (for
    /// 127.0.0.1) signed by a CA made for this test.
    pub fn start_tls() -> PrivateBroker {
        PrivateBroker::launch(true, false, "")
    }

    fn launch(tls: bool, management: bool, extra: &str) -> PrivateBroker {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary folder: {e}"));
        let port = free_port();
        let dist_port = free_port();
        let node = format!("clackstest{port}@localhost");
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap_or_else(|e| panic!("{e}"));
        }
        // Client certificates log in through SASL EXTERNAL, which is a plugin.
        let mut plugins = Vec::new();
        if tls {
            plugins.push("rabbitmq_auth_mechanism_ssl");
        }
        if management {
            plugins.push("rabbitmq_management");
        }
        std::fs::write(dir.path().join("enabled_plugins"), format!("[{}].\n", plugins.join(",")))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut config = format!("listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n");
        let management_port = management.then(free_port);
        if let Some(api) = management_port {
            config.push_str(&format!("management.tcp.port = {api}\nmanagement.tcp.ip = 127.0.0.1\n"));
        }
        let (mut tls_port, mut ca_pem, mut pki) = (None, None, None);
        if tls {
            let authority = crate::directory::TestPki::new();
            let (cert, key) = authority.issue(&["127.0.0.1", "localhost"], "127.0.0.1");
            let ca = authority.ca_pem.clone();
            for (name, text) in [("ca.pem", &ca), ("server.pem", &cert), ("server.key", &key)] {
                std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{e}"));
            }
            let ssl_port = free_port();
            config.push_str(&format!(
                "listeners.ssl.local = 127.0.0.1:{ssl_port}\n\
                 ssl_options.cacertfile = {dir}/ca.pem\n\
                 ssl_options.certfile = {dir}/server.pem\n\
                 ssl_options.keyfile = {dir}/server.key\n\
                 ssl_options.verify = verify_peer\n\
                 ssl_options.fail_if_no_peer_cert = false\n\
                 ssl_cert_login_from = common_name\n\
                 auth_mechanisms.1 = PLAIN\n\
                 auth_mechanisms.2 = AMQPLAIN\n\
                 auth_mechanisms.3 = EXTERNAL\n",
                dir = dir.path().display()
            ));
            tls_port = Some(ssl_port);
            ca_pem = Some(ca);
            pki = Some(authority);
        }
        config.push_str(extra);
        std::fs::write(dir.path().join("rabbitmq.conf"), config).unwrap_or_else(|e| panic!("{e}"));
        // The Debian wrapper runs the server as user rabbitmq, which must own its files.
        let chown = Command::new("chown").arg("-R").arg("rabbitmq:rabbitmq").arg(dir.path()).status();
        assert!(chown.is_ok_and(|s| s.success()), "cannot hand the broker folder to user rabbitmq");
        let path = |p: &str| -> PathBuf { dir.path().join(p) };
        // A node with many connections needs a descriptor each. Debian's wrapper switches
        // to user rabbitmq with `su`, whose session limits (1024 descriptors) stop a node
        // at ~900 clients; so the node is started as that user directly, keeping the raised
        // limit, with the wrapper's working folder and HOME (the Erlang cookie
        // rabbitmqctl uses).
        let server = Command::new("setsid")
            .args([
                "sh",
                "-c",
                "ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; cd /var/lib/rabbitmq && \
                 exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
                 env HOME=/var/lib/rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server",
            ])
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf"))
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start rabbitmq-server (is it installed?): {e}"));
        let broker = PrivateBroker { node, port, tls_port, management_port, ca_pem, pki, dir, server: Some(server) };
        broker.wait_until_listening(Duration::from_secs(60));
        broker
    }

    /// `amqps://guest:guest@127.0.0.1:PORT/%2f` (with [`PrivateBroker::start_tls`]).
    pub fn amqps_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("amqps://guest:guest@127.0.0.1:{p}/%2f"))
    }

    /// `http://127.0.0.1:PORT` of the management API (with
    /// [`PrivateBroker::start_with_management`]).
    pub fn management_url(&self) -> Option<String> {
        self.management_port.map(|p| format!("http://127.0.0.1:{p}"))
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn wait_until_listening(&self, timeout: Duration) {
        let started = Instant::now();
        let listening = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        while !listening(self.port)
            || self.tls_port.is_some_and(|p| !listening(p))
            || self.management_port.is_some_and(|p| !listening(p))
        {
            assert!(started.elapsed() < timeout, "private RabbitMQ {} did not listen within {timeout:?}", self.node);
            std::thread::sleep(Duration::from_millis(100));
        }
        // A listening port is not a booted broker: under load the AMQP listener opens
        // before the `rabbit` application counts as running, and `rabbitmqctl add_user`
        // then fails (seen in a cold run). Wait for the boot to finish too.
        self.ctl(&["await_startup"]);
    }

    /// Runs `rabbitmqctl -n NODE ARGS…`.
    pub fn ctl(&self, args: &[&str]) {
        let status = Command::new("rabbitmqctl")
            .arg("-q")
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run rabbitmqctl: {e}"));
        assert!(status.success(), "rabbitmqctl {args:?} failed");
    }

    /// Evaluates an Erlang expression on the node; its printed result.
    pub fn eval(&self, expression: &str) -> String {
        let output = Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.node, "eval", expression])
            .output()
            .unwrap_or_else(|e| panic!("cannot run rabbitmqctl: {e}"));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The node's memory (Erlang VM, bytes) of one kind: `total`, `processes`, `binary`…
    pub fn memory_bytes(&self, kind: &str) -> u64 {
        let printed = self.eval(&format!("erlang:memory({kind})."));
        printed.parse().unwrap_or_else(|_| panic!("rabbitmqctl eval did not print a number: {printed}"))
    }

    /// Closes every client connection, as a network cut would.
    pub fn close_all_connections(&self) {
        self.ctl(&["close_all_connections", "cut by a clacks test"]);
    }

    /// Stops and starts the RabbitMQ application (a broker restart).
    pub fn restart_app(&self, down_for: Duration) {
        self.ctl(&["stop_app"]);
        std::thread::sleep(down_for);
        self.ctl(&["start_app"]);
        self.wait_until_listening(Duration::from_secs(30));
    }
}

impl PrivateBroker {
    /// The Erlang node name, e.g. `clackstest21234@localhost`.
    pub fn node(&self) -> &str {
        &self.node
    }
}

/// A RabbitMQ cluster of private nodes on loopback: started together, every other node
/// joined to the first (`rabbitmqctl join_cluster`). The nodes share the Erlang cookie of
/// user rabbitmq, as the nodes of one machine's broker do. Stopped with its nodes.
pub struct PrivateCluster {
    pub nodes: Vec<PrivateBroker>,
}

impl PrivateCluster {
    pub fn start(count: usize) -> PrivateCluster {
        PrivateCluster::start_with_config(count, "")
    }

    /// Like [`PrivateCluster::start`], with more lines of every node's `rabbitmq.conf`.
    pub fn start_with_config(count: usize, extra: &str) -> PrivateCluster {
        let starting: Vec<_> = (0..count)
            .map(|_| {
                let extra = extra.to_owned();
                std::thread::spawn(move || PrivateBroker::start_with_config(&extra))
            })
            .collect();
        let nodes: Vec<PrivateBroker> =
            starting.into_iter().map(|t| t.join().unwrap_or_else(|_| panic!("a node did not start"))).collect();
        if let Some((first, others)) = nodes.split_first() {
            for node in others {
                node.ctl(&["stop_app"]);
                node.ctl(&["join_cluster", first.node()]);
                node.ctl(&["start_app"]);
                node.wait_until_listening(Duration::from_secs(60));
            }
        }
        PrivateCluster { nodes }
    }

    /// Every node's AMQP URL as one address list, starting with node `first`.
    pub fn urls_from(&self, first: usize) -> String {
        let count = self.nodes.len();
        (0..count).map(|i| self.nodes[(first + i) % count].url()).collect::<Vec<_>>().join(",")
    }

    /// The nodes the cluster reports running, as node `asked` sees it.
    pub fn running_nodes(&self, asked: usize) -> usize {
        let printed = self.nodes[asked].eval("length(rabbit_nodes:all_running()).");
        printed.parse().unwrap_or(0)
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .arg("-q")
            .arg("-n")
            .arg(&self.node)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = &self.dir;
    }
}
