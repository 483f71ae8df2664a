//! Clients at scale: an emulator runs N simulated clients (default 1,000) in this
//! process, each with its own broker connection, its own queue and its presence
//! events, against one agent on a private RabbitMQ node (private because the broker is
//! restarted here).
//!
//! Measured: joining the bus (connect + announce) for all N; broker memory per client;
//! a fan-out `ping` to all N through the agent against the floor of the same N calls
//! sent straight to the clients' queues from here; and, after a broker restart, the
//! time until every client has reconnected (jittered backoff) and announced itself
//! again (random delay up to the poll spread), with the spread of those announcements.
//!
//! Run: `cargo bench -p clacks-tests --bench clients` (`CLACKS_BENCH_CLIENTS` sets N;
//! `CLACKS_BENCH_BROKER_CONF` adds lines to the node's rabbitmq.conf, e.g. smaller
//! socket buffers: `tcp_listen_options.sndbuf = 32768` and `…recbuf = 32768`). With
//! `CLACKS_BENCH_CLUSTER=1` the broker is three clustered private nodes (quorum
//! queues), the clients spread over them, memory is summed over the nodes, and instead
//! of a broker restart one node — the agent's — is stopped for 2 s: its clients move
//! to the others.

use std::time::{Duration, Instant};

use clacks_client::{ClientDaemon, ClientOptions};
use clacks_core::bus::amqp::{AmqpBus, AmqpSettings, QueueType};
use clacks_core::bus::{Bus, CallOptions};
use clacks_core::client::Client;
use clacks_core::rpc::Params;
use clacks_tests::broker::{PrivateBroker, PrivateCluster};
use clacks_tests::{amqp_bus, fast_options, unique_domain};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// Connections opened at once while the emulator starts.
const CONNECT_CONCURRENCY: usize = 32;
/// Longest random wait before a client announces after a poll or a reconnection.
const SPREAD: Duration = Duration::from_secs(5);

fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

async fn clients_rows(admin: &Client) -> Vec<Value> {
    match admin.call("getClients", Params::None).await {
        Ok(Value::Array(rows)) => rows,
        _ => Vec::new(),
    }
}

/// Polls `condition` every 100 ms; how long it took, or `None` after `limit`.
async fn time_until<F, Fut>(limit: Duration, mut condition: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if condition().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

fn main() {
    let n: usize = std::env::var("CLACKS_BENCH_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(run(n));
}

/// The broker under test: one private node, or a private cluster.
enum Brokers {
    One(Box<PrivateBroker>),
    Cluster(PrivateCluster),
}

impl Brokers {
    fn nodes(&self) -> Vec<&PrivateBroker> {
        match self {
            Brokers::One(node) => vec![node],
            Brokers::Cluster(cluster) => cluster.nodes.iter().collect(),
        }
    }

    /// The address (list) program `i` connects with: on a cluster, programs start on
    /// the nodes in turn.
    fn url_for(&self, i: usize) -> String {
        match self {
            Brokers::One(node) => node.url(),
            Brokers::Cluster(cluster) => cluster.urls_from(i % cluster.nodes.len()),
        }
    }

    /// Memory of one kind, summed over the nodes.
    fn memory(&self, kind: &str) -> u64 {
        self.nodes().iter().map(|n| n.memory_bytes(kind)).sum()
    }

    /// Binaries a process no longer holds count until it collects its garbage.
    fn collect_garbage(&self) {
        for node in self.nodes() {
            node.eval("[erlang:garbage_collect(P) || P <- erlang:processes()], ok.");
        }
    }

    fn count(&self, expression: &str) -> u64 {
        self.nodes().iter().map(|n| n.eval(expression).parse::<u64>().unwrap_or(0)).sum()
    }

    /// One node: the broker restarts. A cluster: the first node (the agent's) stops and
    /// starts again, its programs moving to the others meanwhile.
    fn lose_a_node(&self, down_for: Duration) {
        match self {
            Brokers::One(node) => node.restart_app(down_for),
            Brokers::Cluster(cluster) => cluster.nodes[0].restart_app(down_for),
        }
    }
}

async fn run(n: usize) {
    let on_cluster = std::env::var("CLACKS_BENCH_CLUSTER").is_ok_and(|v| v == "1");
    let what = if on_cluster { "three clustered private RabbitMQ nodes" } else { "a private RabbitMQ node" };
    println!("clients bench: {n} simulated clients, one agent, {what}");
    let tuning = std::env::var("CLACKS_BENCH_BROKER_CONF").unwrap_or_default().replace("\\n", "\n");
    if !tuning.is_empty() {
        println!("broker configuration added: {}", tuning.replace('\n', "; "));
    }
    let brokers = if on_cluster {
        Brokers::Cluster(PrivateCluster::start_with_config(3, &format!("{tuning}\n")))
    } else {
        Brokers::One(Box::new(PrivateBroker::start_with_config(&format!("{tuning}\n"))))
    };
    let domain = unique_domain();
    let mut options = fast_options(&domain, "alpha");
    options.clients.timeout = Duration::from_secs(120);
    options.rpc_timeout = Duration::from_secs(120);
    let queue_type = if on_cluster { QueueType::Quorum } else { QueueType::Classic };
    let settings = AmqpSettings { connection_name: "bench agent".into(), queue_type, ..AmqpSettings::default() };
    let agent_bus = AmqpBus::connect(&brokers.url_for(0), domain.clone(), settings).await;
    let agent = clacks_agent::Agent::start(options, Bus::Amqp(agent_bus.unwrap_or_else(|e| panic!("{e}"))), vec![])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let admin = Client::over_bus(
        amqp_bus(&brokers.url_for(2), &domain, "admin").await,
        domain.clone(),
        Duration::from_secs(120),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kinds = ["total", "processes", "binary", "ets"];
    brokers.collect_garbage();
    let memory_before: Vec<u64> = kinds.iter().map(|k| brokers.memory(k)).collect();

    // Start: connect, serve, announce.
    let started = Instant::now();
    // One set of compiled schemas for all simulated clients (each real client has its own).
    let validator = clacks_core::events::EventValidator::start(&[]).unwrap_or_else(|e| panic!("{e}"));
    let progress = std::sync::atomic::AtomicUsize::new(0);
    let clients: Vec<ClientDaemon> = futures_util::stream::iter(0..n)
        .map(|i| {
            let (url, domain, validator, progress) = (brokers.url_for(i), domain.clone(), validator.clone(), &progress);
            async move {
                let id = format!("emu-{i:05}");
                let mut options = ClientOptions::new(domain.clone(), id.clone());
                options.name = id.clone();
                options.ping = Duration::from_secs(30);
                options.poll_spread = SPREAD;
                options.inventory_every = None;
                options.report_sessions = false;
                // As `clacks-agent --role client` does: keep trying until the broker answers.
                let settings = clacks_core::bus::amqp::AmqpSettings {
                    connection_name: id.clone(),
                    wait_for_broker: true,
                    ..Default::default()
                };
                let bus = clacks_core::bus::amqp::AmqpBus::connect(&url, domain.clone(), settings).await;
                let bus = Bus::Amqp(bus.unwrap_or_else(|e| panic!("{id}: {e}")));
                let client = ClientDaemon::start_with_validator(options, bus, vec![], validator)
                    .await
                    .unwrap_or_else(|e| panic!("{id}: {e}"));
                let done = progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if done % 250 == 0 {
                    println!("  {done} connected after {}", seconds(started.elapsed()));
                }
                client
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let connected = started.elapsed();
    println!("start: {n} clients connected in {}", seconds(connected));
    let announced = time_until(Duration::from_secs(120), || async {
        clients_rows(&admin)
            .await
            .iter()
            .filter(|r| r["online"] == json!(true) && r["methods"].as_u64() >= Some(3))
            .count()
            == n
    })
    .await;
    let all_known = started.elapsed();
    println!(
        "start: {n} clients connected in {}, all known to the agent after {}",
        seconds(connected),
        seconds(all_known)
    );
    if announced.is_none() {
        println!("  (not all clients were known after 120 s)");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    brokers.collect_garbage();
    let memory_after: Vec<u64> = kinds.iter().map(|k| brokers.memory(k)).collect();
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "broker memory: {:.1} MiB before, {:.1} MiB with {n} clients: {:.1} KiB per client",
        mib(memory_before[0]),
        mib(memory_after[0]),
        memory_after[0].saturating_sub(memory_before[0]) as f64 / n as f64 / 1024.0
    );
    for (i, kind) in kinds.iter().enumerate().skip(1) {
        let grew = memory_after[i].saturating_sub(memory_before[i]) as f64 / n as f64 / 1024.0;
        println!("  {kind}: {:.1} → {:.1} MiB ({grew:.1} KiB per client)", mib(memory_before[i]), mib(memory_after[i]));
    }
    println!(
        "  queues: {}, connections: {}",
        brokers.nodes()[0].eval("length(rabbit_amqqueue:list())."),
        brokers.count("length(rabbit_networking:connections_local()).")
    );

    // Fan-out ping through the agent, against the floor: the same calls straight to
    // the clients' queues from here, as many in flight.
    let batch = 200;
    for round in 0..3 {
        let t = Instant::now();
        let fanned = admin
            .call(
                "clientFanOut",
                Params::Named(
                    json!({"method": "ping", "options": {"batch": batch, "timeout": 20.0}})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                ),
            )
            .await
            .unwrap_or_else(|e| panic!("fan-out: {e}"));
        let fan_out = t.elapsed();
        let bus: Bus = amqp_bus(&brokers.url_for(1), &domain, "bench floor").await;
        let t = Instant::now();
        let direct: Vec<bool> = futures_util::stream::iter(0..n)
            .map(|i| {
                let bus = bus.clone();
                let queue = domain.client_queue(&format!("emu-{i:05}"));
                async move {
                    let body = br#"{"jsonrpc":"2.0","method":"ping","id":1}"#.to_vec();
                    let reply = bus.call(&queue, body, CallOptions::timeout(Duration::from_secs(20))).await;
                    reply.is_ok_and(|r| String::from_utf8_lossy(&r).contains("pong"))
                }
            })
            .buffer_unordered(batch)
            .collect()
            .await;
        let floor = t.elapsed();
        let ok = direct.iter().filter(|ok| **ok).count();
        println!(
            "fan-out ping #{round}: {} via the agent ({}), floor {} direct ({ok}/{n} pong): ratio {:.2}",
            seconds(fan_out),
            fanned["summary"],
            seconds(floor),
            fan_out.as_secs_f64() / floor.as_secs_f64()
        );
        bus_close(bus).await;
    }

    // Broker restart: every client reconnects and announces again.
    let mark = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let down = Instant::now();
    brokers.lose_a_node(Duration::from_secs(2));
    let up = Instant::now();
    let lost = if on_cluster { "the agent's node" } else { "broker" };
    println!("{lost} restart: down and up again in {}", seconds(up - down));
    let back = time_until(Duration::from_secs(180), || async {
        let rows = clients_rows(&admin).await;
        rows.iter().filter(|r| r["lastAnnounce"].as_str() > Some(mark.as_str())).count() == n
    })
    .await;
    match back {
        Some(after) => {
            println!("after the restart: all {n} clients announced again {} after the broker was back", seconds(after))
        }
        None => {
            let rows = clients_rows(&admin).await;
            let again = rows.iter().filter(|r| r["lastAnnounce"].as_str() > Some(mark.as_str())).count();
            println!("after the restart: only {again} of {n} clients announced again within 180 s");
        }
    }
    // The spread of the announcements (agent clock), relative to the earliest one.
    let rows = clients_rows(&admin).await;
    let mut times: Vec<chrono::DateTime<chrono::Utc>> = rows
        .iter()
        .filter_map(|r| r["lastAnnounce"].as_str())
        .filter(|t| *t > mark.as_str())
        .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok().map(|t| t.with_timezone(&chrono::Utc)))
        .collect();
    times.sort();
    if let Some(first) = times.first().copied() {
        let at = |p: f64| (times[((times.len() - 1) as f64 * p).round() as usize] - first).num_milliseconds();
        let per_second = times
            .chunk_by(|a, b| (*a - first).num_seconds() == (*b - first).num_seconds())
            .map(<[_]>::len)
            .max()
            .unwrap_or(0);
        println!(
            "announcements after the restart: p50 +{} ms, p95 +{} ms, last +{} ms after the first; at most {per_second} in one second",
            at(0.5),
            at(0.95),
            at(1.0)
        );
    }
    let fanned = admin
        .call(
            "clientFanOut",
            Params::Named(
                json!({"method": "ping", "options": {"batch": batch}}).as_object().cloned().unwrap_or_default(),
            ),
        )
        .await
        .map(|v| v["summary"].clone());
    println!("fan-out ping after the restart: {fanned:?}");

    for client in clients {
        client.stop().await;
    }
    agent.stop().await;
}

async fn bus_close(bus: Bus) {
    bus.close().await;
}
