//! docs/protocol.md's examples, run as written: every request of a `json exchange`
//! block (`→`) goes to a real agent over AMQP (to `D.command.core`, as the broker user
//! guest) and over HTTP (in a session), and the reply must be the one the document
//! shows (`←`), where the string `"…"` stands for any value. A document that drifts
//! from the agent fails here.

use std::time::Duration;

use clacks_agent::auth::Authenticator;
use clacks_agent::http::{HttpState, router};
use clacks_core::bus::CallOptions;
use clacks_tests::{amqp_bus, amqp_url, fast_options, start_agent, unique_domain};
use serde_json::Value;

/// One request and the reply the document shows for it.
struct Exchange {
    origin: String,
    request: String,
    reply: String,
}

fn exchanges() -> Vec<Exchange> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut found: Vec<Exchange> = Vec::new();
    let mut inside = false;
    let mut current: Option<char> = None;
    for (number, line) in text.lines().enumerate() {
        let origin = format!("docs/protocol.md:{}", number + 1);
        if line.starts_with("```") {
            inside = line.trim() == "```json exchange";
            current = None;
            continue;
        }
        if !inside {
            continue;
        }
        if let Some(request) = line.strip_prefix("→ ") {
            found.push(Exchange { origin, request: request.to_owned(), reply: String::new() });
            current = Some('→');
        } else if let Some(reply) = line.strip_prefix("← ") {
            let last = found.last_mut().unwrap_or_else(|| panic!("{origin}: a reply without a request"));
            last.reply = reply.to_owned();
            current = Some('←');
        } else if let (Some(last), Some(which)) = (found.last_mut(), current) {
            let part = if which == '→' { &mut last.request } else { &mut last.reply };
            part.push(' ');
            part.push_str(line.trim());
        }
    }
    found
}

/// Whether `actual` is what the document shows: equal, with `"…"` matching anything.
fn shown(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::String(s), _) if s == "…" => true,
        (Value::Array(e), Value::Array(a)) => e.len() == a.len() && e.iter().zip(a).all(|(e, a)| shown(e, a)),
        (Value::Object(e), Value::Object(a)) => {
            e.len() == a.len() && e.iter().all(|(k, v)| a.get(k).is_some_and(|actual| shown(v, actual)))
        }
        (e, a) => e == a,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_documents_exchanges_happen_as_written() {
    let url = amqp_url();
    let domain = unique_domain();
    let agent = start_agent(&url, fast_options(&domain, "doc"), vec![]).await;
    let state = HttpState::new(
        agent.dispatcher().clone(),
        Authenticator::Broker { url: url.clone(), ca_pem: None },
        Duration::from_secs(60),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let http = reqwest::Client::builder().cookie_store(true).build().unwrap_or_else(|e| panic!("{e}"));
    let rpc_url = format!("http://{address}/rpc");
    let post = |body: String| {
        let (http, rpc_url) = (http.clone(), rpc_url.clone());
        async move {
            let response = http
                .post(rpc_url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            response.text().await.unwrap_or_default()
        }
    };
    let login = post(r#"{"jsonrpc":"2.0","method":"login","params":["guest","guest"],"id":0}"#.to_owned()).await;
    assert!(login.contains(r#""result":true"#), "{login}");
    let bus = amqp_bus(&url, &domain, "doc-reader").await;

    let exchanges = exchanges();
    assert!(exchanges.len() >= 8, "only {} exchanges found: is the extraction broken?", exchanges.len());
    for exchange in exchanges {
        let origin = &exchange.origin;
        let request = exchange.request.replace("\"D.", &format!("\"{domain}."));
        let expected: Value =
            serde_json::from_str(&exchange.reply).unwrap_or_else(|e| panic!("{origin}: the reply is not JSON: {e}"));
        let options = CallOptions::timeout(Duration::from_secs(10));
        let over_amqp = bus.call(&domain.command_queue("core"), request.clone().into_bytes(), options).await;
        let over_amqp = over_amqp.unwrap_or_else(|e| panic!("{origin}: {e}"));
        let over_http = post(request.clone()).await;
        for (how, text) in [("AMQP", String::from_utf8_lossy(&over_amqp).into_owned()), ("HTTP", over_http)] {
            let actual: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{origin} over {how}: {e}: {text}"));
            assert!(
                shown(&expected, &actual),
                "{origin} over {how}: the agent answered\n{actual}\nthe document shows\n{expected}"
            );
        }
    }
    agent.stop().await;
}
