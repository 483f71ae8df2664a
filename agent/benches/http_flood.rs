//! What an unauthenticated HTTP peer costs an agent (issue 12): sixteen concurrent
//! 4 MiB JSON-RPC batches without a session cookie, four times over, against the
//! `clacks-agent` binary, sampling its resident memory; then 2,000 wrong passwords from
//! one address. The floor is a bare axum endpoint that answers 401 without reading the
//! body, flooded the same way in the same run.
//!
//! Run: `cargo bench -p clacks-agent --bench http_flood`

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CONCURRENT: usize = 16;
const ROUNDS: usize = 4;
const BODY_BYTES: usize = 4 * 1024 * 1024;
const WRONG_PASSWORDS: usize = 2000;

/// Resident memory of process `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A batch of calls to `ping` padded to `BODY_BYTES`.
fn flood_body() -> Vec<u8> {
    let entry = format!(r#"{{"jsonrpc":"2.0","method":"ping","params":["{}"],"id":1}}"#, "x".repeat(4000));
    let mut body = String::from("[");
    while body.len() + entry.len() + 2 < BODY_BYTES {
        if body.len() > 1 {
            body.push(',');
        }
        body.push_str(&entry);
    }
    body.push(']');
    body.into_bytes()
}

struct Flood {
    elapsed: Duration,
    statuses: Vec<u16>,
    largest_answer: usize,
}

async fn flood(url: &str, body: &Arc<Vec<u8>>) -> Flood {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut statuses = Vec::new();
    let mut largest_answer = 0;
    for _ in 0..ROUNDS {
        let requests: Vec<_> = (0..CONCURRENT)
            .map(|_| {
                let (http, url, body) = (http.clone(), url.to_owned(), body.clone());
                tokio::spawn(async move {
                    let response = http.post(&url).body(body.as_ref().clone()).send().await;
                    match response {
                        Ok(r) => (r.status().as_u16(), r.bytes().await.map(|b| b.len()).unwrap_or(0)),
                        Err(_) => (0, 0),
                    }
                })
            })
            .collect();
        for request in requests {
            let (status, size) = request.await.unwrap_or((0, 0));
            statuses.push(status);
            largest_answer = largest_answer.max(size);
        }
    }
    Flood { elapsed: started.elapsed(), statuses, largest_answer }
}

fn summary(statuses: &[u16]) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for s in statuses {
        *counts.entry(*s).or_insert(0) += 1;
    }
    counts.iter().map(|(s, n)| format!("{n}×{s}")).collect::<Vec<_>>().join(" ")
}

struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let port = free_port();
    let hash = clacks_agent::auth::hash_password("s3cret").expect("hash");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\nauth = \"users\"\n[http.users]\nada = \"{hash}\"\n\
             [objects]\nenabled = false\n[acl]\nadmins = [\"ada\"]\n"
        ),
    )
    .expect("config");
    let child = Command::new(env!("CARGO_BIN_EXE_clacks-agent"))
        .env_remove("CLACKS_AMQP_URL")
        .env("CLACKS_LOG", "error")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("clacks-agent");
    let agent = AgentProcess(child);
    let pid = agent.0.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the agent did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("http://127.0.0.1:{port}/rpc");
    // Warm up (allocator, TLS provider, first session) before taking the idle figure.
    let http = reqwest::Client::builder().cookie_store(true).build().expect("client");
    let login = serde_json::json!({"jsonrpc": "2.0", "method": "login", "params": ["ada", "s3cret"], "id": 1});
    let _ = http.post(&url).json(&login).send().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_kib(pid);

    let peak = Arc::new(AtomicU64::new(idle));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let body = Arc::new(flood_body());
    let clacks = flood(&url, &body).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    sampling.abort();
    let (peak, after) = (peak.load(Ordering::Relaxed), rss_kib(pid));

    // The floor: an endpoint that answers 401 at once, in this process.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let floor_url = format!("http://{}/rpc", listener.local_addr().expect("address"));
    let bare = axum::Router::new()
        .route("/rpc", axum::routing::post(|| async { (axum::http::StatusCode::UNAUTHORIZED, "{}") }));
    tokio::spawn(async move { axum::serve(listener, bare).await });
    let floor = flood(&floor_url, &body).await;

    println!(
        "HTTP flood: {CONCURRENT} concurrent × {ROUNDS} rounds of a {} KiB batch, no session cookie",
        body.len() / 1024
    );
    println!(
        "  clacks-agent: idle RSS {} MiB, peak {} MiB ({:.2}× idle), after {} MiB",
        idle / 1024,
        peak / 1024,
        peak as f64 / idle as f64,
        after / 1024
    );
    println!(
        "  clacks-agent: {} in {:.2} s, largest answer {} bytes",
        summary(&clacks.statuses),
        clacks.elapsed.as_secs_f64(),
        clacks.largest_answer
    );
    println!("  floor (bare axum 401): {} in {:.2} s", summary(&floor.statuses), floor.elapsed.as_secs_f64());
    println!("  time ratio clacks / floor: {:.2}×", clacks.elapsed.as_secs_f64() / floor.elapsed.as_secs_f64());

    let throttled = reqwest::Client::new();
    let wrong = serde_json::json!({"jsonrpc": "2.0", "method": "login", "params": ["ada", "wrong"], "id": 1});
    let started = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..WRONG_PASSWORDS {
        let status = throttled.post(&url).json(&wrong).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
        statuses.push(status);
    }
    let elapsed = started.elapsed();
    let checked = statuses.iter().filter(|s| **s == 401).count();
    println!(
        "Wrong passwords: {WRONG_PASSWORDS} from one address in {:.2} s: {} — {checked} checked ({:.1} checked/s), the rest refused unchecked",
        elapsed.as_secs_f64(),
        summary(&statuses),
        checked as f64 / elapsed.as_secs_f64()
    );
    drop(agent);
}
