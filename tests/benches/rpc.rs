//! RPC benchmark: the full Clacks stack against bare floors measured in the same run on
//! the same broker.
//!
//! (a) sequential calls caller → RabbitMQ → agent → reply, (b) 64 calls outstanding,
//! (c) the same over HTTP JSON-RPC, (d) the floors: a bare lapin direct reply-to echo
//! and a bare axum HTTP echo with the same payload. Prints the figures and the ratios.
//!
//! Run: `cargo bench -p clacks-tests --bench rpc` (`CLACKS_TEST_AMQP_URL` picks the
//! broker; `CLACKS_BENCH_CALLS` scales the run). With `CLACKS_BENCH_CLUSTER=1` it
//! measures (a), (b) and (d) instead on a private single node with classic queues and
//! on a private three-node cluster with quorum queues — the cost of replication.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clacks_agent::auth::{Authenticator, hash_password};
use clacks_agent::http::{HttpState, router};
use clacks_core::bus::Bus;
use clacks_core::bus::amqp::{AmqpBus, AmqpSettings, QueueType};
use clacks_core::client::Client;
use clacks_core::rpc::Params;
use clacks_tests::{amqp_url, client, fast_options, start_agent, unique_domain};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;
use tokio::sync::oneshot;

const PIPELINE: usize = 64;

struct Figures {
    p50_us: f64,
    p99_us: f64,
    seq_per_sec: f64,
    pipelined_per_sec: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1e6
}

/// Measures `call` sequentially and with PIPELINE outstanding.
async fn measure<F, Fut>(calls: usize, call: F) -> Figures
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..(calls / 10).max(50) {
        call(i as u64).await;
    }
    let mut latencies = Vec::with_capacity(calls);
    let started = Instant::now();
    for i in 0..calls {
        let t = Instant::now();
        call(i as u64).await;
        latencies.push(t.elapsed());
    }
    let seq_elapsed = started.elapsed();
    latencies.sort();

    let total = calls * 5;
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut sent = 0;
    while sent < total || !pending.is_empty() {
        while sent < total && pending.len() < PIPELINE {
            pending.push(call(sent as u64));
            sent += 1;
        }
        pending.next().await;
    }
    let pipelined_elapsed = started.elapsed();
    Figures {
        p50_us: percentile(&latencies, 0.5),
        p99_us: percentile(&latencies, 0.99),
        seq_per_sec: calls as f64 / seq_elapsed.as_secs_f64(),
        pipelined_per_sec: total as f64 / pipelined_elapsed.as_secs_f64(),
    }
}

fn payload() -> String {
    "x".repeat(64)
}

/// The bare lapin floor: an echo server and a direct reply-to caller, nothing else.
struct BareAmqp {
    channel: lapin::Channel,
    queue: String,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>,
    _connections: Vec<Connection>,
}

impl BareAmqp {
    /// The echo server's queue is of `queue_type`, as the agents' shared queues are.
    async fn start(url: &str, queue_type: QueueType) -> BareAmqp {
        let queue = format!("bench.bare.{}", uuid::Uuid::new_v4().simple());
        let server = Connection::connect(url, ConnectionProperties::default()).await.unwrap_or_else(|e| panic!("{e}"));
        let server_channel = server.create_channel().await.unwrap_or_else(|e| panic!("{e}"));
        server_channel.basic_qos(32, BasicQosOptions::default()).await.unwrap_or_else(|e| panic!("{e}"));
        let mut arguments = FieldTable::default();
        let declare = match queue_type {
            QueueType::Classic => QueueDeclareOptions { auto_delete: true, ..QueueDeclareOptions::default() },
            QueueType::Quorum => {
                arguments.insert("x-queue-type".into(), lapin::types::AMQPValue::LongString("quorum".into()));
                arguments.insert("x-expires".into(), lapin::types::AMQPValue::LongLongInt(60_000));
                QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() }
            }
        };
        server_channel.queue_declare(queue.as_str().into(), declare, arguments).await.unwrap_or_else(|e| panic!("{e}"));
        let mut consumer = server_channel
            .basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let reply_channel = server.create_channel().await.unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let reply_channel = reply_channel.clone();
                tokio::spawn(async move {
                    let props = &delivery.properties;
                    if let (Some(reply_to), Some(id)) = (props.reply_to().clone(), props.correlation_id().clone()) {
                        let _ = reply_channel
                            .basic_publish(
                                "".into(),
                                reply_to,
                                BasicPublishOptions::default(),
                                &delivery.data,
                                BasicProperties::default().with_correlation_id(id),
                            )
                            .await;
                    }
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                });
            }
        });
        let caller = Connection::connect(url, ConnectionProperties::default()).await.unwrap_or_else(|e| panic!("{e}"));
        let channel = caller.create_channel().await.unwrap_or_else(|e| panic!("{e}"));
        let mut replies = clacks_tests::direct_reply_consumer(&channel).await;
        let pending: Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>> = Arc::default();
        let routes = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = replies.next().await {
                let id = delivery.properties.correlation_id().as_ref().map(|c| c.to_string()).unwrap_or_default();
                let waiter = routes.lock().map(|mut p| p.remove(&id)).ok().flatten();
                if let Some(tx) = waiter {
                    let _ = tx.send(delivery.data);
                }
            }
        });
        BareAmqp { channel, queue, pending, _connections: vec![server, caller] }
    }

    async fn call(&self, id: u64, body: &[u8]) {
        let (tx, rx) = oneshot::channel();
        let id = id.to_string();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id.clone(), tx);
        }
        let props = BasicProperties::default()
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_correlation_id(id.as_str().into());
        let _ = self
            .channel
            .basic_publish("".into(), self.queue.as_str().into(), BasicPublishOptions::default(), body, props)
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
    }
}

fn row(name: &str, f: &Figures) {
    println!("{name:<34} {:>9.0} {:>9.0} {:>11.0} {:>13.0}", f.p50_us, f.p99_us, f.seq_per_sec, f.pipelined_per_sec);
}

/// (a), (b) and (d) on the broker at `urls` (one address or a cluster's list), the
/// agent's shared queues and the floor's queue of `queue_type`.
async fn over_amqp(urls: &str, queue_type: QueueType, calls: usize) -> (Figures, Figures) {
    let domain = unique_domain();
    let mut options = fast_options(&domain, "bench");
    options.heartbeat = Duration::from_secs(10);
    options.node_timeout = Duration::from_secs(60);
    let connect = |name: &str| {
        let settings = AmqpSettings { connection_name: name.into(), queue_type, ..AmqpSettings::default() };
        let domain = domain.clone();
        async move { AmqpBus::connect(urls, domain, settings).await.unwrap_or_else(|e| panic!("{e}")) }
    };
    let agent = clacks_agent::Agent::start(options, Bus::Amqp(connect("bench agent").await), Vec::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let caller = Arc::new(Client::over_bus(Bus::Amqp(connect("bench caller").await), domain, Duration::from_secs(10)));
    let clacks = measure_echo(&caller, calls).await;
    let first = clacks_core::bus::amqp::broker_urls(urls).first().map(|u| (*u).to_owned()).unwrap_or_default();
    let floor = measure_floor(&first, queue_type, calls).await;
    agent.stop().await;
    (clacks, floor)
}

/// (a) and (b): `echo` of the payload through `caller`, the whole stack.
async fn measure_echo(caller: &Arc<Client>, calls: usize) -> Figures {
    let text = payload();
    measure(calls, |_| {
        let caller = caller.clone();
        let text = text.clone();
        async move {
            let r = caller.call("echo", Params::Positional(vec![json!(text)])).await;
            assert!(r.is_ok(), "{r:?}");
        }
    })
    .await
}

/// The request bytes the floors echo: what the Clacks caller sends.
fn echo_request() -> Vec<u8> {
    clacks_core::rpc::Request::new("echo", Params::Positional(vec![json!(payload())]), 1).to_bytes()
}

/// (d): the bare lapin floor on the broker at `url`, through a queue of `queue_type`.
async fn measure_floor(url: &str, queue_type: QueueType, calls: usize) -> Figures {
    let bare = Arc::new(BareAmqp::start(url, queue_type).await);
    let request = echo_request();
    measure(calls, |id| {
        let bare = bare.clone();
        let request = request.clone();
        async move { bare.call(id, &request).await }
    })
    .await
}

/// One private node with classic queues against three clustered ones with quorum
/// queues, each against its own bare floor.
async fn cluster_cost(calls: usize) {
    let single = tokio::task::block_in_place(clacks_tests::broker::PrivateBroker::start);
    let (single_clacks, single_floor) = over_amqp(&single.url(), QueueType::Classic, calls).await;
    drop(single);
    let cluster = tokio::task::block_in_place(|| clacks_tests::broker::PrivateCluster::start(3));
    let (cluster_clacks, cluster_floor) = over_amqp(&cluster.urls_from(0), QueueType::Quorum, calls).await;
    println!();
    println!("Cluster benchmark: {calls} sequential calls, {} with {PIPELINE} outstanding", calls * 5);
    println!("{:<34} {:>9} {:>9} {:>11} {:>13}", "", "p50 µs", "p99 µs", "seq calls/s", "pipelined/s");
    row("one node, classic: clacks", &single_clacks);
    row("one node, classic: bare lapin", &single_floor);
    row("3 nodes, quorum: clacks", &cluster_clacks);
    row("3 nodes, quorum: bare lapin", &cluster_floor);
    println!();
    for (what, clacks, floor) in
        [("one node", &single_clacks, &single_floor), ("three nodes", &cluster_clacks, &cluster_floor)]
    {
        println!(
            "{what}: latency {:.2}x its floor, pipelined throughput {:.2}x its floor",
            clacks.p50_us / floor.p50_us,
            clacks.pipelined_per_sec / floor.pipelined_per_sec
        );
    }
    println!(
        "cost of quorum queues on three nodes: latency {:.2}x, pipelined throughput {:.2}x of one classic node",
        cluster_clacks.p50_us / single_clacks.p50_us,
        cluster_clacks.pipelined_per_sec / single_clacks.pipelined_per_sec
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let calls: usize = std::env::var("CLACKS_BENCH_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    if std::env::var("CLACKS_BENCH_CLUSTER").is_ok_and(|v| v == "1") {
        return cluster_cost(calls).await;
    }
    let url = amqp_url();
    let domain = unique_domain();
    let mut options = fast_options(&domain, "bench");
    options.heartbeat = Duration::from_secs(10);
    options.node_timeout = Duration::from_secs(60);
    let agent = start_agent(&url, options, Vec::new()).await;
    let caller = Arc::new(client(&url, &domain, Duration::from_secs(10)).await);
    let request = echo_request();

    // (a) + (b): the full stack over RabbitMQ.
    let clacks_amqp = measure_echo(&caller, calls).await;
    // (d) the bare lapin floor with the same request bytes.
    let floor_amqp = measure_floor(&url, QueueType::Classic, calls).await;

    // (c) HTTP JSON-RPC, and the bare HTTP floor (axum echoing the body).
    let hash = hash_password("bench").unwrap_or_default();
    let state = HttpState::new(
        agent.dispatcher().clone(),
        Authenticator::Users(std::collections::BTreeMap::from([("bench".to_owned(), hash)])),
        Duration::from_secs(600),
    );
    let app = router(state).route("/echo", axum::routing::post(|body: axum::body::Bytes| async move { body }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http_client = Arc::new(
        Client::connect_http(&format!("http://{address}/rpc"), "bench", "bench", Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let clacks_http = measure_echo(&http_client, calls).await;
    let raw_http = reqwest::Client::new();
    let echo_url = format!("http://{address}/echo");
    let floor_http = measure(calls, |_| {
        let raw_http = raw_http.clone();
        let echo_url = echo_url.clone();
        let request = request.clone();
        async move {
            let r = raw_http.post(&echo_url).body(request).send().await;
            if let Ok(r) = r {
                let _ = r.bytes().await;
            }
        }
    })
    .await;

    println!();
    println!(
        "RPC benchmark: {calls} sequential calls, {} with {PIPELINE} outstanding; payload echo of a 64-byte string",
        calls * 5
    );
    println!("{:<34} {:>9} {:>9} {:>11} {:>13}", "", "p50 µs", "p99 µs", "seq calls/s", "pipelined/s");
    row("(a,b) clacks over RabbitMQ", &clacks_amqp);
    row("(d)   floor: bare lapin echo", &floor_amqp);
    row("(c)   clacks over HTTP JSON-RPC", &clacks_http);
    row("      floor: bare axum echo", &floor_http);
    println!();
    println!(
        "AMQP: sequential latency {:.2}x the floor (target <= 1.3), pipelined throughput {:.2}x the floor (target >= 0.7)",
        clacks_amqp.p50_us / floor_amqp.p50_us,
        clacks_amqp.pipelined_per_sec / floor_amqp.pipelined_per_sec
    );
    println!(
        "HTTP: sequential latency {:.2}x the bare axum echo, pipelined throughput {:.2}x",
        clacks_http.p50_us / floor_http.p50_us,
        clacks_http.pipelined_per_sec / floor_http.pipelined_per_sec
    );
    agent.stop().await;
}
