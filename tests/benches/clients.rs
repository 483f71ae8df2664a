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
//! socket buffers: `tcp_listen_options.sndbuf = 32768` and `…recbuf = 32768`).

use std::time::{Duration, Instant};

use clacks_client::{ClientDaemon, ClientOptions};
use clacks_core::bus::{Bus, CallOptions};
use clacks_core::client::Client;
use clacks_core::rpc::Params;
use clacks_tests::broker::PrivateBroker;
use clacks_tests::{amqp_bus, fast_options, start_agent, unique_domain};
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

async fn run(n: usize) {
    println!("clients bench: {n} simulated clients, one agent, private RabbitMQ node");
    let tuning = std::env::var("CLACKS_BENCH_BROKER_CONF").unwrap_or_default().replace("\\n", "\n");
    if !tuning.is_empty() {
        println!("broker configuration added: {}", tuning.replace('\n', "; "));
    }
    let broker = PrivateBroker::start_with_config(&format!("{tuning}\n"));
    let domain = unique_domain();
    let mut options = fast_options(&domain, "alpha");
    options.clients.timeout = Duration::from_secs(120);
    options.rpc_timeout = Duration::from_secs(120);
    let agent = start_agent(&broker.url(), options, vec![]).await;
    let admin =
        Client::over_bus(amqp_bus(&broker.url(), &domain, "admin").await, domain.clone(), Duration::from_secs(120));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kinds = ["total", "processes", "binary", "ets"];
    broker.eval("[erlang:garbage_collect(P) || P <- erlang:processes()], ok.");
    let memory_before: Vec<u64> = kinds.iter().map(|k| broker.memory_bytes(k)).collect();

    // Start: connect, serve, announce.
    let started = Instant::now();
    let url = broker.url();
    // One set of compiled schemas for all simulated clients (each real client has its own).
    let validator = clacks_core::events::EventValidator::start(&[]).unwrap_or_else(|e| panic!("{e}"));
    let progress = std::sync::atomic::AtomicUsize::new(0);
    let clients: Vec<ClientDaemon> = futures_util::stream::iter(0..n)
        .map(|i| {
            let (url, domain, validator, progress) = (url.clone(), domain.clone(), validator.clone(), &progress);
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
    // Binaries a process no longer holds count until it collects its garbage.
    broker.eval("[erlang:garbage_collect(P) || P <- erlang:processes()], ok.");
    let memory_after: Vec<u64> = kinds.iter().map(|k| broker.memory_bytes(k)).collect();
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
        broker.eval("length(rabbit_amqqueue:list())."),
        broker.eval("length(rabbit_networking:connections()).")
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
        let bus: Bus = admin_bus(&broker, &domain).await;
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
    broker.restart_app(Duration::from_secs(2));
    let up = Instant::now();
    println!("broker restart: down and up again in {}", seconds(up - down));
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

async fn admin_bus(broker: &PrivateBroker, domain: &clacks_core::domain::Domain) -> Bus {
    amqp_bus(&broker.url(), domain, "bench floor").await
}

async fn bus_close(bus: Bus) {
    bus.close().await;
}
