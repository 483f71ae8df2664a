//! Events on the real broker: validated publishing with per-violation errors, filtered
//! subscriptions, and hostile input that must be refused while publisher and
//! subscribers keep running.

use std::sync::Arc;
use std::time::Duration;

use clacks_core::client::ClientError;
use clacks_core::events::{EVENT_NAMESPACE, envelope};
use clacks_core::rpc::Params;
use clacks_tests::{Probe, amqp_url, client, fast_options, start_agent, unique_domain};
use serde_json::{Value, json};

fn call_event(kind: &str, callee: &str) -> String {
    envelope(
        "Call",
        &format!(
            "<Type>{kind}</Type><Id>c-{callee}</Id><Caller>200</Caller><Callee>{callee}</Callee><Started>2026-11-22T10:00:00Z</Started>"
        ),
    )
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<clacks_core::bus::EventMessage>) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .ok()
        .flatten()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
}

fn refusal(result: Result<Value, ClientError>) -> (String, Value) {
    match result {
        Err(ClientError::Rpc(e)) => (e.symbolic().to_string(), e.data.and_then(|d| d.details).unwrap_or(Value::Null)),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validated_publishing_filtered_subscriptions_and_hostile_input() {
    let url = amqp_url();
    let domain = unique_domain();
    let agent = start_agent(&url, fast_options(&domain, "ev"), vec![Arc::new(Probe)]).await;
    let caller = client(&url, &domain, Duration::from_secs(5)).await;

    // A filter that does not parse is refused at subscribe time.
    let bad = caller.subscribe(&["Call".to_owned()], Some("/Event/Call[")).await;
    assert!(matches!(&bad, Err(ClientError::Rpc(e)) if e.symbolic().as_str() == "EVENT_FILTER_INVALID"), "{bad:?}");

    let mut all_calls = caller.subscribe(&["Call".to_owned()], None).await.unwrap_or_else(|e| panic!("{e}"));
    let mut for_100 = caller
        .subscribe(&["Call".to_owned()], Some("/Event/Call[Callee = '100']"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut original_form = caller
        .subscribe(&["*".to_owned()], Some("declare namespace f='http://clacks.org/ns/events'; let $e := ./f:Event return $e/f:Call/f:Type = 'missed'"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let send = |xml: String| caller.call("sendEvent", Params::Positional(vec![json!(xml)]));
    assert_eq!(send(call_event("incoming", "101")).await.ok(), Some(json!("Call")));
    assert_eq!(send(call_event("missed", "100")).await.ok(), Some(json!("Call")));
    // The map form is put into schema order by the agent.
    let from_fields = caller
        .call(
            "sendEvent",
            Params::Positional(vec![json!({"type": "Call", "Callee": "100", "Caller": "300", "Id": "c3", "Type": "ended", "Started": "2026-11-22T10:05:00Z", "Duration": 42})]),
        )
        .await;
    assert_eq!(from_fields.ok(), Some(json!("Call")));

    for callee in ["101", "100", "100"] {
        let event = next(&mut all_calls).await.unwrap_or_else(|| panic!("no event for {callee}"));
        assert!(event.contains(&format!("<Callee>{callee}</Callee>")), "{event}");
    }
    for kind in ["missed", "ended"] {
        let event = next(&mut for_100).await.unwrap_or_else(|| panic!("filtered subscriber missed a {kind} call"));
        assert!(event.contains(&format!("<Type>{kind}</Type>")), "{event}");
    }
    let missed = next(&mut original_form).await.unwrap_or_default();
    assert!(missed.contains("<Type>missed</Type>"), "{missed}");

    // Invalid events: each refused with a clear error, none published.
    let (code, details) = refusal(send(call_event("lost", "100")).await);
    assert_eq!(code, "EVENT_INVALID");
    assert_eq!(details["violations"][0]["element"], json!("Type"));
    assert_eq!(details["violations"][0]["line"], json!(1));
    let hostile = [
        ("malformed", "<Event xmlns=\"http://clacks.org/ns/events\"><Call>".to_owned(), "EVENT_MALFORMED"),
        ("not XML", "hello".to_owned(), "EVENT_MALFORMED"),
        (
            "entity expansion",
            format!(
                "<?xml version=\"1.0\"?><!DOCTYPE l [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;\">]><Event xmlns=\"{EVENT_NAMESPACE}\"><ClientPing><Id>&b;</Id></ClientPing></Event>"
            ),
            "EVENT_MALFORMED",
        ),
        (
            "external entity",
            format!(
                "<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><Event xmlns=\"{EVENT_NAMESPACE}\"><ClientPing><Id>&e;</Id></ClientPing></Event>"
            ),
            "EVENT_MALFORMED",
        ),
        (
            "wrong namespace",
            "<Event xmlns=\"urn:other\"><ClientPing><Id>x</Id></ClientPing></Event>".to_owned(),
            "EVENT_INVALID",
        ),
        ("unknown type", envelope("Nonsense", "<Id>x</Id>"), "EVENT_INVALID"),
        (
            "oversized",
            envelope("ClientPing", &format!("<Id>{}</Id>", "x".repeat(1024 * 1024 + 1))),
            "MESSAGE_TOO_LARGE",
        ),
    ];
    for (what, xml, expected) in hostile {
        let (code, _) = refusal(send(xml).await);
        assert_eq!(code, expected, "{what}");
    }
    let unexpected = tokio::time::timeout(Duration::from_millis(500), all_calls.recv()).await;
    assert!(unexpected.is_err(), "an invalid event was published: {unexpected:?}");
    // Valid, but only a node or a machine may say these: through sendEvent they would go
    // out under the agent's identity (a forged inventory would steer fan-outs).
    let forged = [
        json!({"@type": "Inventory", "Checksum": "x", "ClientUUID": "victim", "Hostname": "h", "Fact": [{"Name": "role", "Value": "db"}]}),
        json!({"@type": "ClientAnnounce", "Id": "victim", "Name": "victim"}),
        json!({"@type": "NodeLeave", "Id": "alpha"}),
    ];
    for event in forged {
        let (code, _) = refusal(caller.call("sendEvent", Params::Positional(vec![event.clone()])).await);
        assert_eq!(code, "PERMISSION_EXEC", "{event}");
    }

    // Publisher and subscribers keep working.
    assert_eq!(send(call_event("missed", "100")).await.ok(), Some(json!("Call")));
    assert!(next(&mut for_100).await.is_some());
    assert_eq!(caller.call("ping", Params::None).await.ok(), Some(json!("pong")));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telephony_and_statistics_meet_only_through_events() {
    let url = amqp_url();
    let domain = unique_domain();
    let mut bridge = fast_options(&domain, "pbx-bridge");
    bridge.enable = vec!["telephony".into()];
    let mut stats = fast_options(&domain, "stats");
    stats.enable = vec!["statistics".into()];
    let bridge = start_agent(&url, bridge, vec![]).await;
    let stats = start_agent(&url, stats, vec![]).await;
    let caller = client(&url, &domain, Duration::from_secs(5)).await;
    clacks_tests::wait_for("both plugins to be routable", Duration::from_secs(5), || async {
        [&bridge, &stats].iter().all(|a| {
            !a.registry().providers("callStatistics").is_empty()
                && !a.registry().providers("importCallRecords").is_empty()
        })
    })
    .await;

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let records = dir.path().join("cdr.log");
    std::fs::write(
        &records,
        "# type id caller callee started [duration]\n\
         incoming c1 200 100 2026-11-22T10:01:00Z\n\
         ended c1 200 100 2026-11-22T10:01:00Z 65\n\
         incoming c2 201 100 2026-11-22T10:20:00Z\n\
         missed c2 201 100 2026-11-22T10:20:00Z\n\
         missed c3 202 101 2026-11-22T11:00:00Z\n\
         lost c4 202 101 2026-11-22T11:00:00Z\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let imported = caller
        .call("importCallRecords", Params::Positional(vec![json!(records.to_string_lossy())]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(imported["published"], json!(5));
    assert_eq!(imported["rejected"][0]["line"], json!(7));

    let expected = json!([
        {"extension": "100", "hour": "2026-11-22T10", "calls": 2, "missed": 1, "missedRatio": 0.5},
        {"extension": "101", "hour": "2026-11-22T11", "calls": 1, "missed": 1, "missedRatio": 1.0},
    ]);
    let mut table = Value::Null;
    for _ in 0..50 {
        table = caller.call("callStatistics", Params::None).await.unwrap_or_default();
        if table == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(table, expected);
    assert_eq!(
        caller
            .call("callRecord", Params::Positional(vec![json!("missed c9 1 2")]))
            .await
            .err()
            .map(|e| e.code().to_string()),
        Some("INVALID_PARAMS".to_owned())
    );
    bridge.stop().await;
    stats.stop().await;
}

/// Reads the `data:` lines of an SSE response until one contains `wanted` (or 10 s).
async fn sse_until(mut response: reqwest::Response, wanted: &str) -> Vec<String> {
    let (mut text, mut lines) = (String::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, response.chunk()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some((line, rest)) = text.split_once('\n') {
            if let Some(data) = line.strip_prefix("data:") {
                lines.push(data.trim().to_owned());
            }
            text = rest.to_owned();
        }
        if lines.iter().any(|l| l.contains(wanted)) {
            break;
        }
    }
    lines
}

/// What nobody vouches for reaches no subscriber: raw events that fail their schema,
/// are not XML, claim another type than their routing key, or nest 20,000 deep are
/// dropped by every receiver — SSE, the shell's subscription, the agent's own plugins —
/// and nothing crashes (the deep one used to overflow the agent's stack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_drop_raw_events_no_schema_vouches_for() {
    use lapin::options::BasicPublishOptions;
    let url = amqp_url();
    let domain = unique_domain();
    let mut options = fast_options(&domain, "ev");
    options.enable = vec!["statistics".into()];
    let agent = start_agent(&url, options, vec![Arc::new(Probe)]).await;
    let caller = client(&url, &domain, Duration::from_secs(5)).await;

    let state = clacks_agent::http::HttpState::with_events(
        agent.dispatcher().clone(),
        clacks_agent::auth::Authenticator::Broker { url: url.clone(), ca_pem: None },
        Duration::from_secs(60),
        agent.bus().clone(),
        agent.events().validator().clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let server = tokio::spawn(clacks_agent::http::serve(listener, state, std::future::pending()));
    let http = reqwest::Client::builder().cookie_store(true).build().unwrap_or_else(|e| panic!("{e}"));
    let login = json!({"jsonrpc": "2.0", "method": "login", "params": ["guest", "guest"], "id": 1});
    http.post(format!("http://{address}/rpc")).json(&login).send().await.unwrap_or_else(|e| panic!("{e}"));
    let sse = http.get(format!("http://{address}/events?types=*")).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sse.status(), 200);

    let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tail = caller
        .subscribe_counted(&["*".to_owned()], None, false, dropped.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut unknown_too = caller
        .subscribe_counted(&["Mystery".to_owned()], None, true, Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let channel = connection.create_channel().await.unwrap_or_else(|e| panic!("{e}"));
    let deep = envelope("Call", &format!("{}{}", "<a>".repeat(20_000), "</a>".repeat(20_000)));
    let status = clacks_core::events::PresenceEvent::Status { id: "ev".into(), load: 0.0, workers: 0 }.to_xml();
    let raw = [
        ("Call", envelope("Call", "<Type>missed</Type>")),
        ("Call", "<Event><Call>".to_owned()),
        ("Call", status),
        ("Call", deep),
        ("Mystery", envelope("Mystery", "<Id>m</Id>")),
        ("Call", call_event("missed", "good")),
    ];
    for (routing_key, xml) in &raw {
        channel
            .basic_publish(
                domain.event_exchange().as_str().into(),
                (*routing_key).into(),
                BasicPublishOptions::default(),
                xml.as_bytes(),
                lapin::BasicProperties::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    // The tail sees the good call and heartbeats, nothing else.
    let mut seen = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(5), tail.recv()).await {
        let body = String::from_utf8_lossy(&event.body).into_owned();
        let good = body.contains("c-good");
        seen.push((event.event_type, body));
        if good {
            break;
        }
    }
    assert!(seen.last().is_some_and(|(_, b)| b.contains("c-good")), "{seen:?}");
    assert!(seen.iter().all(|(t, b)| t == "NodeStatus" || b.contains("c-good")), "{seen:?}");
    assert_eq!(dropped.load(std::sync::atomic::Ordering::Relaxed), 5, "four invalid, one without a schema");
    let mystery = tokio::time::timeout(Duration::from_secs(5), unknown_too.recv()).await.ok().flatten();
    assert!(mystery.is_some_and(|m| m.event_type == "Mystery"), "asked for unknown types, it passes");

    let lines = sse_until(sse, "c-good").await;
    assert!(lines.last().is_some_and(|l| l.contains("c-good")), "{lines:?}");
    assert!(lines.iter().all(|l| !l.contains("\"error\"") && !l.contains("Mystery")), "{lines:?}");

    // The agent is alive, and its statistics plugin counted only the good call.
    assert_eq!(caller.call("ping", Params::None).await.ok(), Some(json!("pong")));
    // The plugin hears the event on a subscription of its own, maybe after the tail did.
    let only_the_good_one =
        json!([{"extension": "good", "hour": "2026-11-22T10", "calls": 1, "missed": 1, "missedRatio": 1.0}]);
    let mut stats = Value::Null;
    for _ in 0..50 {
        stats = caller.call("callStatistics", Params::None).await.unwrap_or_else(|e| panic!("{e}"));
        if stats != json!([]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stats, only_the_good_one);
    server.abort();
    agent.stop().await;
}
