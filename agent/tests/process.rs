//! The `clacks-agent` binary as an admin runs it, against the real RabbitMQ: a request
//! survives its agent being killed, SIGTERM finishes in-flight calls and announces the
//! departure, a silent node drops out after the timeout, and bad configuration is
//! reported clearly.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clacks_agent::{Agent, AgentOptions};
use clacks_core::bus::Bus;
use clacks_core::client::Client;
use clacks_core::domain::Domain;
use clacks_core::rpc::Params;
use clacks_core::testing::{amqp_url, unique_domain};
use serde_json::json;

const AGENT: &str = env!("CARGO_BIN_EXE_clacks-agent");

/// A `clacks-agent` child process, killed when dropped.
struct AgentProcess(Child);

impl AgentProcess {
    fn spawn(domain: &Domain, node: &str, plugins: &Path, config: Option<&Path>) -> AgentProcess {
        let mut command = Command::new(AGENT);
        command
            .args(["--amqp", &amqp_url(), "--domain", domain.as_str(), "--node", node])
            .arg("--plugins")
            .arg(plugins)
            .env("CLACKS_NODE_NAME_FOR_SCRIPTS", node)
            .env("CLACKS_LOG", std::env::var("AGENT_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        AgentProcess(command.spawn().unwrap_or_else(|e| panic!("cannot start {AGENT}: {e}")))
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.0.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} failed");
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn bus(domain: &Domain) -> Bus {
    clacks_core::testing::amqp_bus(domain).await
}

fn plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("work.rhai"),
        "/// Work for `ms` milliseconds, then say which node did it.\n///\n/// Idempotent: running it again only costs time.\nfn slow(ms) { sleep(ms); env(\"CLACKS_NODE_NAME_FOR_SCRIPTS\") }\n/// Work like slow, but not said to be idempotent.\nfn once(ms) { sleep(ms); env(\"CLACKS_NODE_NAME_FOR_SCRIPTS\") }\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    dir
}

/// Waits until the agent process answers and the observer has its capabilities (so a
/// call entering through the observer is routed to it).
async fn wait_until_serving(client: &Client, watcher: &Agent, node: &str) {
    let started = Instant::now();
    loop {
        if let Ok(nodes) = client.call("getNodes", Params::None).await
            && nodes.as_array().is_some_and(|rows| rows.iter().any(|r| r["node"] == json!(node)))
            && watcher.registry().providers("slow").contains(&node.to_owned())
        {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "agent {node} did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn observer(domain: &Domain, timeout: Duration) -> Agent {
    let mut options = AgentOptions::new(domain.clone(), "observer");
    options.heartbeat = Duration::from_millis(300);
    options.node_timeout = timeout;
    Agent::start(options, bus(domain).await, Vec::new()).await.unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_survives_its_agent_being_killed() {
    let domain = unique_domain();
    let plugins = plugin_dir();
    let watcher = observer(&domain, Duration::from_secs(30)).await;
    let client = Arc::new(Client::over_bus(bus(&domain).await, domain.clone(), Duration::from_secs(20)));
    let first = AgentProcess::spawn(&domain, "first", plugins.path(), None);
    wait_until_serving(&client, &watcher, "first").await;

    // Sent to the shared queue of the plugin's target: only "first" consumes it now.
    let send = |method: &'static str| {
        let client = client.clone();
        let domain = domain.clone();
        tokio::spawn(async move {
            let request = clacks_core::rpc::Request::new(method, Params::Positional(vec![json!(1500)]), 1);
            let bus = bus(&domain).await;
            let reply = bus
                .call(
                    &domain.command_queue("work"),
                    request.to_bytes(),
                    clacks_core::bus::CallOptions::timeout(Duration::from_secs(20)),
                )
                .await;
            drop(client);
            reply
        })
    };
    let (call, once) = (send("slow"), send("once"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.signal("KILL");
    drop(first);
    // The unacknowledged request waits in the queue until another agent takes it.
    let _second = AgentProcess::spawn(&domain, "second", plugins.path(), None);
    // Each call's answer: its result, or its error's symbolic code.
    let answer = |call: tokio::task::JoinHandle<Result<Vec<u8>, clacks_core::bus::BusError>>| async move {
        let reply = tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .unwrap_or_else(|_| panic!("the call hung"))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("the call failed instead of being redelivered: {e}"));
        let response = clacks_core::rpc::decode_response(&reply).unwrap_or_else(|e| panic!("{e}"));
        response.into_result().map_err(|e| e.symbolic().to_string())
    };
    assert_eq!(answer(call).await, Ok(json!("second")), "a command that says it is idempotent runs again");
    // One that does not say so may have run on the killed agent: it is not run twice.
    let refused = answer(once).await;
    assert_eq!(refused, Err("REQUEST_REDELIVERED".to_owned()));
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_calls_in_flight_and_leaves() {
    let domain = unique_domain();
    let plugins = plugin_dir();
    let watcher = observer(&domain, Duration::from_secs(30)).await;
    let client = Arc::new(Client::over_bus(bus(&domain).await, domain.clone(), Duration::from_secs(20)));
    let mut agent = AgentProcess::spawn(&domain, "leaver", plugins.path(), None);
    wait_until_serving(&client, &watcher, "leaver").await;

    let call = tokio::spawn({
        let client = client.clone();
        async move {
            let t = Instant::now();
            let r = client.call("slow", Params::Positional(vec![json!(1500)])).await;
            eprintln!("call ended after {:?}", t.elapsed());
            r
        }
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    agent.signal("TERM");
    let result = call.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result.as_ref().ok(), Some(&json!("leaver")), "the call in flight must finish: {result:?}");
    let status = tokio::task::spawn_blocking(move || {
        let status = agent.wait_exit(Duration::from_secs(10));
        (status, agent)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.0.is_some_and(|s| s.success()), "agent exit: {:?}", status.0);
    // NodeLeave removed it right away, long before the 30 s timeout.
    assert!(!watcher.registry().knows_node("leaver"));
    let methods = client.call("getMethods", Params::None).await.unwrap_or_default();
    assert!(methods.get("slow").is_none(), "{methods}");
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_drops_out_after_the_timeout() {
    let domain = unique_domain();
    let plugins = plugin_dir();
    let config_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = config_dir.path().join("agent.toml");
    std::fs::write(&config, "[presence]\nheartbeat_secs = 0.3\nnode_timeout_secs = 1.5\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let watcher = observer(&domain, Duration::from_millis(1500)).await;
    let client = Client::over_bus(bus(&domain).await, domain.clone(), Duration::from_secs(5));
    let agent = AgentProcess::spawn(&domain, "silent", plugins.path(), Some(&config));
    wait_until_serving(&client, &watcher, "silent").await;
    assert!(client.call("getMethods", Params::None).await.unwrap_or_default().get("slow").is_some());
    // Heartbeats keep it listed well past the timeout.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(watcher.registry().knows_node("silent"));

    // SIGKILL: no NodeLeave, so only the timeout can remove it.
    agent.signal("KILL");
    let killed = Instant::now();
    drop(agent);
    while watcher.registry().knows_node("silent") {
        assert!(killed.elapsed() < Duration::from_secs(4), "the silent node was never dropped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("silent node dropped {:?} after SIGKILL", killed.elapsed());
    let methods = client.call("getMethods", Params::None).await.unwrap_or_default();
    assert!(methods.get("slow").is_none(), "{methods}");
    watcher.stop().await;
}

#[test]
fn bad_configuration_is_reported_with_its_location() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "[amqp]\nurll = \"amqp://x\"\n").unwrap_or_else(|e| panic!("{e}"));
    let output = Command::new(AGENT).arg("--config").arg(&config).output().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("agent.toml") && stderr.contains("line 2") && stderr.contains("unknown field `urll`"),
        "{stderr}"
    );

    let output = Command::new(AGENT)
        .env_remove("CLACKS_AMQP_URL")
        .env_remove("CLACKS_HTTP_LISTEN")
        .arg("--config")
        .arg("/dev/null")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("nothing to serve"));

    let output = Command::new(AGENT)
        .args(["--domain", "Bad..Domain", "--http", "127.0.0.1:0", "--config", "/dev/null"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid domain"));

    // A client role without a joined identity, or with one others may read.
    let missing = dir.path().join("client.toml");
    let output = Command::new(AGENT).args(["--role", "client", "--config"]).arg(&missing).output();
    let output = output.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("has not joined a domain") && stderr.contains("clacks join"), "{stderr}");
    std::fs::write(&missing, "domain = \"org.clacks\"\nurl = \"amqp://x\"\nid = \"c\"\nsecret = \"s\"\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let output = Command::new(AGENT).args(["--role", "client", "--config"]).arg(&missing).output();
    let stderr = String::from_utf8_lossy(&output.unwrap_or_else(|e| panic!("{e}")).stderr).into_owned();
    assert!(stderr.contains("readable by others"), "{stderr}");
}

/// Starts the binary with `config`; it serves HTTP(S) only (no broker, no objects).
fn spawn_http_agent(config: &Path) -> AgentProcess {
    let child = Command::new(AGENT)
        .env_remove("CLACKS_AMQP_URL")
        .env_remove("CLACKS_HTTP_LISTEN")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    AgentProcess(child)
}

#[tokio::test]
async fn https_with_a_made_certificate_and_refusals_for_the_wrong_ca_or_name() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // A certificate for 127.0.0.1 only, so "localhost" is a name it is not valid for.
    let made = Command::new(AGENT)
        .args(["make-cert", "--out", &dir.path().to_string_lossy(), "127.0.0.1"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    assert!(String::from_utf8_lossy(&made.stdout).contains("tls_cert = "));
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(dir.path().join("key.pem")).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    assert_eq!(key_mode, 0o600, "the key is private");
    // Valid now and for a year, not for ever (rcgen's default runs to the year 4096).
    let valid_for = |seconds: u64| {
        Command::new("openssl")
            .args(["x509", "-noout", "-checkend", &seconds.to_string(), "-in"])
            .arg(dir.path().join("cert.pem"))
            .output()
            .unwrap_or_else(|e| panic!("openssl: {e}"))
            .status
            .success()
    };
    assert!(valid_for(0) && valid_for(360 * 86_400), "valid now and for the next year");
    assert!(!valid_for(367 * 86_400), "expires after a year");

    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0);
    let hash = clacks_agent::auth::hash_password("s3cret").unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\nauth = \"users\"\ntls_cert = \"{d}/cert.pem\"\ntls_key = \"{d}/key.pem\"\n\
             [http.users]\nada = \"{hash}\"\n[objects]\nenabled = false\n[acl]\nadmins = [\"ada\"]\n",
            d = dir.path().display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let _agent = spawn_http_agent(&config);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the agent did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let ca = std::fs::read_to_string(dir.path().join("cert.pem")).unwrap_or_else(|e| panic!("{e}"));
    let url = format!("https://127.0.0.1:{port}/rpc");
    let client = Client::connect_http_with_ca(&url, "ada", "s3cret", Duration::from_secs(5), Some(&ca))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(client.call("ping", Params::None).await.ok(), Some(json!("pong")));
    // Over HTTPS the session cookie never travels over plain HTTP.
    let certificate = reqwest::Certificate::from_pem(ca.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let raw = reqwest::Client::builder().tls_certs_only([certificate]).build().unwrap_or_else(|e| panic!("{e}"));
    let login = json!({"jsonrpc": "2.0", "method": "login", "params": ["ada", "s3cret"], "id": 1});
    let response = raw.post(&url).json(&login).send().await.unwrap_or_else(|e| panic!("{e}"));
    let cookie = response.headers().get("set-cookie").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );

    // Not trusted (the system's roots), or trusted but for another name: refused, saying why.
    let untrusted =
        Client::connect_http(&url, "ada", "s3cret", Duration::from_secs(5)).await.err().map(|e| e.to_string());
    assert!(untrusted.as_deref().is_some_and(|m| m.contains("UnknownIssuer")), "{untrusted:?}");
    let other_name = format!("https://localhost:{port}/rpc");
    let mismatch = Client::connect_http_with_ca(&other_name, "ada", "s3cret", Duration::from_secs(5), Some(&ca))
        .await
        .err()
        .map(|e| e.to_string());
    assert!(mismatch.as_deref().is_some_and(|m| m.contains("certificate not valid for name")), "{mismatch:?}");

    // An expired certificate, even from a trusted source, is refused.
    let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap_or_else(|e| panic!("{e}"));
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = params.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("expired.pem"), expired.pem()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("expired.key"), key.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
    let old_port =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0);
    let old_config = dir.path().join("expired.toml");
    std::fs::write(
        &old_config,
        format!(
            "[http]\nlisten = \"127.0.0.1:{old_port}\"\nauth = \"users\"\ntls_cert = \"{d}/expired.pem\"\ntls_key = \"{d}/expired.key\"\n\
             [http.users]\nada = \"{hash}\"\n[objects]\nenabled = false\n",
            d = dir.path().display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let _old = spawn_http_agent(&old_config);
    while std::net::TcpStream::connect(("127.0.0.1", old_port)).is_err() {
        assert!(Instant::now() < deadline + Duration::from_secs(20), "the agent did not listen on {old_port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old_url = format!("https://127.0.0.1:{old_port}/rpc");
    let refused = Client::connect_http_with_ca(&old_url, "ada", "s3cret", Duration::from_secs(5), Some(&expired.pem()))
        .await
        .err()
        .map(|e| e.to_string());
    assert!(refused.as_deref().is_some_and(|m| m.contains("certificate expired")), "{refused:?}");

    // A certificate that cannot be read stops the agent at start, naming the file.
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        format!("[http]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{d}/missing.pem\"\ntls_key = \"{d}/key.pem\"\n[objects]\nenabled = false\n", d = dir.path().display()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let output = Command::new(AGENT)
        .env_remove("CLACKS_AMQP_URL")
        .arg("--config")
        .arg(&broken)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("missing.pem"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `clacks-agent --role client` as a joined machine runs it: it logs in with the
/// identity `clacks join` wrote, serves commands through the agent, and says goodbye on
/// SIGTERM. (Private broker with its management API; the join goes through the agent.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_role_serves_a_joined_machine_until_sigterm() {
    let broker = clacks_tests::broker::PrivateBroker::start_with_management();
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let domain = unique_domain();
    let options = clacks_tests::joining_agent_options(&broker, &domain, "alpha", data.path());
    let agent = clacks_tests::start_agent(&broker.url(), options, vec![]).await;
    let admin = Client::over_bus(
        clacks_tests::amqp_bus(&broker.url(), &domain, "admin").await,
        domain.clone(),
        Duration::from_secs(10),
    );
    let joined = admin.call("joinClient", Params::Positional(vec![json!("process-test-machine")])).await;
    let joined = joined.unwrap_or_else(|e| panic!("joinClient: {e}"));
    let text = |k: &str| joined[k].as_str().unwrap_or_default().to_owned();
    let config = clacks_client::ClientConfig {
        domain: domain.to_string(),
        url: broker.url().replace("guest:guest@", ""),
        id: text("id"),
        secret: text("secret"),
        dn: text("dn"),
        ca_file: None,
        agent_users: vec!["guest".into()],
        ping_secs: 1,
        poll_spread_secs: 3.0,
        shell_dir: Some(data.path().join("shell.d")),
        facts_dir: Some(data.path().join("facts.d")),
        dbus: None,
    };
    let path = data.path().join("client.toml");
    config.save(&path, false).unwrap_or_else(|e| panic!("{e}"));
    let start_client = || {
        AgentProcess(
            Command::new(AGENT)
                .args(["--role", "client", "--config"])
                .arg(&path)
                .env("CLACKS_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| panic!("{e}")),
        )
    };
    let ping = || async {
        let args = Params::Positional(vec![json!(config.id), json!("ping")]);
        admin.call("clientDispatch", args).await
    };
    let online = |agent: &'static str| {
        let (admin, id) = (&admin, config.id.clone());
        async move {
            let rows = admin.call_on_node(agent, "getClients", Params::None).await.unwrap_or_default();
            rows.as_array().into_iter().flatten().any(|r| r["id"] == json!(id) && r["online"] == json!(true))
        }
    };
    let answers = || async {
        let started = Instant::now();
        while ping().await.ok() != Some(json!("pong")) {
            assert!(started.elapsed() < Duration::from_secs(20), "the client process never answered");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let mut child = start_client();
    answers().await;

    // kill -9: its queue goes with its connection, so the next call knows it at once and
    // the agent takes the machine offline then, not after the presence timeout.
    child.signal("KILL");
    let _ = child.wait_exit(Duration::from_secs(10));
    let killed = Instant::now();
    assert_eq!(ping().await.map_err(|e| e.code()), Err(clacks_core::rpc::ErrorCode::CLIENT_OFFLINE));
    assert!(!online("alpha").await, "still online after the call found it gone");
    eprintln!("offline {:?} after SIGKILL", killed.elapsed());
    assert!(killed.elapsed() < Duration::from_secs(2), "offline after {:?}", killed.elapsed());

    // Back again; then the agent restarts: it asks every client to announce at once, and
    // the machine answers within its poll spread (3 s).
    let mut child = start_client();
    answers().await;
    agent.stop().await;
    let options = clacks_tests::joining_agent_options(&broker, &domain, "alpha", data.path());
    let agent = clacks_tests::start_agent(&broker.url(), options, vec![]).await;
    let restarted = Instant::now();
    while !online("alpha").await {
        assert!(restarted.elapsed() < Duration::from_secs(6), "the restarted agent did not hear the client in 6 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("known again {:?} after the agent restarted", restarted.elapsed());
    child.signal("TERM");
    assert!(child.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()), "SIGTERM ends it cleanly");
    let offline = || async {
        let rows = admin.call("getClients", Params::None).await.unwrap_or_default();
        rows.as_array().into_iter().flatten().any(|r| r["id"] == json!(config.id) && r["online"] == json!(false))
    };
    let started = Instant::now();
    while !offline().await {
        assert!(started.elapsed() < Duration::from_secs(10), "ClientLeave never arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Removed from the domain while running: the broker drops its login, and the daemon
    // stops by itself with the exit code of a refused login (3) instead of retrying.
    let mut child = start_client();
    answers().await;
    admin.call("leaveClient", Params::Positional(vec![json!(config.id)])).await.unwrap_or_else(|e| panic!("{e}"));
    let status = child.wait_exit(Duration::from_secs(15));
    assert_eq!(status.and_then(|s| s.code()), Some(3), "the daemon did not stop by itself after leaving");
    agent.stop().await;
}

/// An HTTP-only agent on a free port with user `ada` (password `s3cret`), an admin.
fn http_agent_config(dir: &Path) -> (std::path::PathBuf, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0);
    let hash = clacks_agent::auth::hash_password("s3cret").unwrap_or_else(|e| panic!("{e}"));
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\nauth = \"users\"\n[http.users]\nada = \"{hash}\"\n\
             [objects]\nenabled = false\n[acl]\nadmins = [\"ada\"]\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (config, port)
}

async fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the agent did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigterm_ends_open_event_streams_at_once() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (config, port) = http_agent_config(dir.path());
    let mut agent = spawn_http_agent(&config);
    wait_listening(port).await;
    let http = reqwest::Client::builder().cookie_store(true).build().unwrap_or_else(|e| panic!("{e}"));
    let base = format!("http://127.0.0.1:{port}");
    let login = json!({"jsonrpc": "2.0", "method": "login", "params": ["ada", "s3cret"], "id": 1});
    let response = http.post(format!("{base}/rpc")).json(&login).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(response.status().is_success());
    let stream = http.get(format!("{base}/events?types=*")).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stream.status(), 200);

    let started = Instant::now();
    agent.signal("TERM");
    let status = agent.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| panic!("still running after 10 s"));
    // Before streams ended with the agent, this took 6.3 s.
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "stopping took {:?}", started.elapsed());
    drop(stream);
}

#[test]
fn broker_permissions_prints_the_rabbitmqctl_recipe_of_each_role() {
    let run = |args: &[&str]| {
        let output =
            Command::new(AGENT).env_remove("CLACKS_AMQP_URL").args(args).output().unwrap_or_else(|e| panic!("{e}"));
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    };
    let printed = [
        run(&["--domain", "org.clacks", "broker-permissions", "ada", "--role", "user"]),
        run(&["--domain", "org.clacks", "broker-permissions", "clacks-agent", "--role", "agent", "--vhost", "clacks"]),
        run(&["--domain", "org.clacks", "broker-permissions", "0c4f", "--role", "client:0c4f"]),
        run(&["broker-permissions", "ada", "--role", "root"]),
    ];
    expect_test::expect![[r#"
        rabbitmqctl set_permissions -p / ada '^amq\.gen-.*$' '^(amq\.default|amq\.gen-.*)$' '^(org\.clacks\.event|amq\.gen-.*)$'
        rabbitmqctl set_topic_permissions -p / ada org.clacks.event '^$' '.*'
        ---
        rabbitmqctl set_permissions -p clacks clacks-agent '^(org\.clacks\.event|org\.clacks\.command\..+|amq\.gen-.*)$' '^(amq\.default|org\.clacks\.event|org\.clacks\.command\..+|amq\.gen-.*)$' '^(org\.clacks\.event|org\.clacks\.command\..+|amq\.gen-.*)$'
        rabbitmqctl set_topic_permissions -p clacks clacks-agent org.clacks.event '.*' '.*'
        ---
        rabbitmqctl set_permissions -p / 0c4f '^(org\.clacks\.client\.0c4f|amq\.gen-.*)$' '^(org\.clacks\.client\.0c4f|amq\.gen-.*|amq\.default|org\.clacks\.event)$' '^(org\.clacks\.client\.0c4f|amq\.gen-.*|org\.clacks\.event)$'
        rabbitmqctl set_topic_permissions -p / 0c4f org.clacks.event '^(ClientAnnounce|ClientSignature|ClientPing|ClientLeave|Inventory|UserSession)$' '^ClientPoll$'
        ---
        error: invalid value 'root' for '--role <ROLE>': unknown role 'root': use user, agent or client:<client id>

        For more information, try '--help'.
    "#]]
    .assert_eq(&printed.join("---\n"));
}

/// Runs the binary with `args` and no configuration file until it exits (at most
/// `within`); `None` when it is still running then (it is killed).
fn run_until_exit(args: &[&str], within: Duration) -> Option<(Option<i32>, String)> {
    let child = Command::new(AGENT)
        .env_remove("CLACKS_AMQP_URL")
        .env_remove("CLACKS_HTTP_LISTEN")
        .env_remove("NO_COLOR")
        .args(args)
        .args(["--config", "/dev/null"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {AGENT}: {e}"));
    let mut agent = AgentProcess(child);
    let status = agent.wait_exit(within)?;
    let mut stderr = String::new();
    if let Some(mut pipe) = agent.0.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    Some((status.code(), stderr))
}

/// A wrong broker password ends the agent at once with exit code 3 and one clear line,
/// while an unreachable broker is waited for; a port in use ends it before it says it
/// started; logs carry no colour codes when stderr is not a terminal.
#[test]
fn a_refused_login_is_fatal_and_an_unreachable_broker_is_waited_for() {
    let url = amqp_url();
    let (scheme, rest) = url.split_once("://").unwrap_or_else(|| panic!("a URL: {url}"));
    let (userinfo, host) = rest.split_once('@').unwrap_or_else(|| panic!("user and password in {url}"));
    let user = userinfo.split(':').next().unwrap_or_default();
    let wrong = format!("{scheme}://{user}:not-the-password@{host}");
    let (code, stderr) = run_until_exit(&["--amqp", &wrong], Duration::from_secs(20))
        .unwrap_or_else(|| panic!("still retrying a refused login after 20 s"));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains(&format!("login of user '{user}' refused")), "{stderr}");
    assert!(!stderr.contains("not-the-password") && !stderr.contains('\u{1b}'), "{stderr}");

    let nobody = format!("amqp://guest:guest@127.0.0.1:{}/%2f", clacks_tests::broker::free_port());
    assert!(run_until_exit(&["--amqp", &nobody], Duration::from_secs(3)).is_none(), "gave up on a broker not up yet");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let address = taken.local_addr().unwrap_or_else(|e| panic!("{e}")).to_string();
    let (code, stderr) = run_until_exit(&["--http", &address, "--amqp", &url], Duration::from_secs(20))
        .unwrap_or_else(|| panic!("serving on a port already in use"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("cannot listen on {address}")) && !stderr.contains("agent started"), "{stderr}");
}

/// `show-config` prints what the agent would run with as TOML, without its secrets.
#[test]
fn show_config_prints_toml_without_secrets() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("agent.toml");
    let text = "[amqp]\nurl = \"amqp://agent:s3cret@broker.example.net/%2f\"\n[objects.ldap]\n\
                url = \"ldap://ldap.example.net\"\nbase = \"dc=example,dc=net\"\nbind_password = \"ldap-secret\"\n";
    std::fs::write(&config, text).unwrap_or_else(|e| panic!("{e}"));
    let output = Command::new(AGENT)
        .env_remove("CLACKS_AMQP_URL")
        .arg("--config")
        .arg(&config)
        .arg("show-config")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{shown}");
    assert!(shown.contains("url = \"amqp://agent@broker.example.net/%2f\""), "{shown}");
    assert!(shown.contains("bind_password = \"<redacted>\"") && !shown.contains("secret"), "{shown}");
    assert!(shown.contains("[objects.ldap]") && shown.contains("base = \"dc=example,dc=net\""), "{shown}");
}
