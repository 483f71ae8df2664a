//! JSON-RPC over HTTP: login, sessions, 401, batches and error cases, with passwords
//! checked by the real broker.

use std::sync::Arc;
use std::time::Duration;

use clacks_agent::auth::Authenticator;
use clacks_agent::http::{HttpState, router};
use clacks_tests::{Probe, amqp_url, fast_options, start_agent, unique_domain};
use expect_test::{Expect, expect};

struct Endpoint {
    url: String,
    http: reqwest::Client,
}

impl Endpoint {
    async fn post(&self, body: &str) -> (u16, String) {
        let response = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    async fn check(&self, body: &str, expect: Expect) {
        let (status, text) = self.post(body).await;
        expect.assert_eq(&format!("{status} {text}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_login_sessions_batches_and_errors() {
    let url = amqp_url();
    let domain = unique_domain();
    let agent = start_agent(&url, fast_options(&domain, "web"), vec![Arc::new(Probe)]).await;
    let state = HttpState::with_events(
        agent.dispatcher().clone(),
        Authenticator::Broker { url: url.clone(), ca_pem: None },
        Duration::from_secs(60),
        agent.bus().clone(),
        agent.events().validator().clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    // No connection reuse: the server closes the connection it refused a 5 MiB body on,
    // and a pooled client could hand that dead connection to the next request.
    let http = reqwest::Client::builder()
        .cookie_store(true)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let endpoint = Endpoint { url: format!("http://{address}/rpc"), http };

    endpoint.check(r#"{"jsonrpc":"2.0","method":"ping","id":1}"#, expect![[r#"401 {"jsonrpc":"2.0","error":{"code":-32008,"message":"not logged in or session expired; call login(user, password) first","data":{"code":"NOT_AUTHENTICATED"}},"id":null}"#]]).await;
    // Open without a session: the mechanisms. A batch that reaches a call needing a
    // session without one is one 401, whatever came before it.
    endpoint
        .check(
            r#"{"jsonrpc":"2.0","method":"saslMechanisms","id":1}"#,
            expect![[r#"200 {"jsonrpc":"2.0","result":["PLAIN"],"id":1}"#]],
        )
        .await;
    endpoint.check(r#"[{"jsonrpc":"2.0","method":"saslMechanisms","id":1},{"jsonrpc":"2.0","method":"ping","id":2}]"#, expect![[r#"401 {"jsonrpc":"2.0","error":{"code":-32008,"message":"not logged in or session expired; call login(user, password) first","data":{"code":"NOT_AUTHENTICATED"}},"id":null}"#]]).await;
    endpoint.check(r#"{"jsonrpc":"2.0","method":"login","params":["guest","wrong"],"id":2}"#, expect![[r#"401 {"jsonrpc":"2.0","error":{"code":-32011,"message":"login of user 'guest' failed","data":{"code":"LOGIN_FAILED"}},"id":2}"#]]).await;
    endpoint.check(r#"{"jsonrpc":"2.0","method":"login","params":["guest"],"id":3}"#, expect![[r#"200 {"jsonrpc":"2.0","error":{"code":-32602,"message":"login(user: string, password: string)","data":{"code":"INVALID_PARAMS"}},"id":3}"#]]).await;
    endpoint
        .check(
            r#"{"jsonrpc":"2.0","method":"login","params":{"user":"guest","password":"guest"},"id":4}"#,
            expect![[r#"200 {"jsonrpc":"2.0","result":true,"id":4}"#]],
        )
        .await;
    endpoint
        .check(
            r#"{"jsonrpc":"2.0","method":"getSessionUser","id":5}"#,
            expect![[r#"200 {"jsonrpc":"2.0","result":"guest","id":5}"#]],
        )
        .await;
    endpoint
        .check(
            r#"{"jsonrpc":"2.0","method":"add","params":[2,3],"id":6}"#,
            expect![[r#"200 {"jsonrpc":"2.0","result":5,"id":6}"#]],
        )
        .await;
    endpoint.check(
        r#"[{"jsonrpc":"2.0","method":"add","params":[1,1],"id":"x"},{"jsonrpc":"2.0","method":"nope","id":"y"},{"jsonrpc":"2.0","method":"ping"},{"jsonrpc":"2.0","method":"echo","params":{"value":[1]},"id":"z"}]"#,
        expect![[r#"200 [{"jsonrpc":"2.0","result":2,"id":"x"},{"jsonrpc":"2.0","error":{"code":-32601,"message":"no live node provides 'nope'","data":{"code":"COMMAND_NOT_DEFINED","details":{"method":"nope"}}},"id":"y"},{"jsonrpc":"2.0","result":[1],"id":"z"}]"#]],
    )
    .await;
    endpoint.check(r#"{"jsonrpc":"2.0","method":"_secret","id":7}"#, expect![[r#"200 {"jsonrpc":"2.0","error":{"code":-32009,"message":"'_secret' is not callable remotely","data":{"code":"METHOD_FORBIDDEN"}},"id":7}"#]]).await;
    endpoint.check("{oops", expect![[r#"200 {"jsonrpc":"2.0","error":{"code":-32700,"message":"request is not valid JSON: key must be a string at line 1 column 2","data":{"code":"PARSE_ERROR"}},"id":null}"#]]).await;
    endpoint.check("[]", expect![[r#"200 {"jsonrpc":"2.0","error":{"code":-32600,"message":"empty batch","data":{"code":"INVALID_REQUEST"}},"id":null}"#]]).await;
    endpoint.check(r#"{"jsonrpc":"2.0","method":"ping"}"#, expect!["204 "]).await;
    // HTTP calls reach the node serving the endpoint, so shutdown here would stop it:
    // needs_queue sees this node's private queue.
    endpoint.check(r#"{"jsonrpc":"2.0","method":"fail","id":8}"#, expect![[r#"200 {"jsonrpc":"2.0","error":{"code":-32000,"message":"failing as asked","data":{"code":"PROBE_FAILED","details":{"asked":true}}},"id":8}"#]]).await;

    let big = format!(r#"{{"jsonrpc":"2.0","method":"echo","params":["{}"],"id":9}}"#, "x".repeat(5 * 1024 * 1024));
    let (status, text) = endpoint.post(&big).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("MESSAGE_TOO_LARGE"), "{text}");

    let get = endpoint.http.get(&endpoint.url).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(get.status().as_u16(), 405);

    endpoint
        .check(
            r#"{"jsonrpc":"2.0","method":"logout","id":10}"#,
            expect![[r#"200 {"jsonrpc":"2.0","result":true,"id":10}"#]],
        )
        .await;
    endpoint.check(r#"{"jsonrpc":"2.0","method":"ping","id":11}"#, expect![[r#"401 {"jsonrpc":"2.0","error":{"code":-32008,"message":"not logged in or session expired; call login(user, password) first","data":{"code":"NOT_AUTHENTICATED"}},"id":null}"#]]).await;
    // A batch may log in first and call after.
    endpoint.check(
        r#"[{"jsonrpc":"2.0","method":"login","params":["guest","guest"],"id":1},{"jsonrpc":"2.0","method":"ping","id":2}]"#,
        expect![[r#"200 [{"jsonrpc":"2.0","result":true,"id":1},{"jsonrpc":"2.0","result":"pong","id":2}]"#]],
    )
    .await;

    // Server-Sent Events for a logged-in session, filtered like any subscription.
    let events_url = endpoint.url.replace("/rpc", "/events");
    let anonymous = reqwest::Client::new().get(&events_url).send().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(anonymous.status().as_u16(), 401);
    let bad_filter = endpoint
        .http
        .get(format!("{events_url}?types=Call&filter=%2FEvent%5B"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bad_filter.status().as_u16(), 400);
    assert!(bad_filter.text().await.unwrap_or_default().contains("EVENT_FILTER_INVALID"));
    let mut stream = endpoint
        .http
        .get(format!("{events_url}?types=Call&filter=%2FEvent%2FCall%5BCallee%20%3D%20%27100%27%5D"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stream.status().as_u16(), 200);
    assert_eq!(stream.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("text/event-stream"));
    for callee in ["101", "100"] {
        let body = format!(
            r#"{{"jsonrpc":"2.0","method":"sendEvent","params":[{{"type":"Call","Type":"missed","Id":"x{callee}","Caller":"200","Callee":"{callee}","Started":"2026-11-22T10:00:00Z"}}],"id":1}}"#
        );
        let (status, text) = endpoint.post(&body).await;
        assert_eq!((status, text.as_str()), (200, r#"{"jsonrpc":"2.0","result":"Call","id":1}"#));
    }
    let mut received = String::new();
    while !received.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.chunk()).await;
        match chunk {
            Ok(Ok(Some(bytes))) => received.push_str(&String::from_utf8_lossy(&bytes)),
            other => panic!("no event on the stream: {other:?} after {received:?}"),
        }
    }
    assert!(received.starts_with("event: Call\ndata: {"), "{received}");
    assert!(received.contains(r#""Callee":"100""#) && !received.contains(r#""Callee":"101""#), "{received}");
    // The type under "@type", beside the event's own Type field.
    assert!(received.contains(r#""@type":"Call""#) && received.contains(r#""Type":"missed""#), "{received}");
    drop(stream);
    for (types, status) in [("Nope", 400), ("Client*,Nope*", 400), ("Client*,Call", 200)] {
        let response =
            endpoint.http.get(format!("{events_url}?types={types}")).send().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status().as_u16(), status, "types={types}");
        if status == 400 {
            assert!(response.text().await.unwrap_or_default().contains("INVALID_PARAMS"), "types={types}");
        }
    }

    // Only JSON is JSON-RPC: a form post (what curl -d sends) or plain text is 415.
    for content_type in ["application/x-www-form-urlencoded", "text/plain"] {
        let response = endpoint
            .http
            .post(&endpoint.url)
            .header("content-type", content_type)
            .body(r#"{"jsonrpc":"2.0","method":"ping","id":1}"#)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status().as_u16(), 415, "{content_type}");
        assert!(response.text().await.unwrap_or_default().contains("INVALID_REQUEST"));
    }
    let charset = endpoint
        .http
        .post(&endpoint.url)
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"{"jsonrpc":"2.0","method":"ping","id":1}"#)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(charset.status().as_u16(), 200);

    // The client library over HTTP.
    let client = clacks_core::client::Client::connect_http(&endpoint.url, "guest", "guest", Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(client.call("ping", clacks_core::rpc::Params::None).await.ok(), Some(serde_json::json!("pong")));
    let refused =
        clacks_core::client::Client::connect_http(&endpoint.url, "guest", "nope", Duration::from_secs(5)).await;
    assert!(matches!(refused, Err(clacks_core::client::ClientError::Auth(_))), "{refused:?}");
    agent.stop().await;
}

/// What a peer gets before and around login (issue 12): nothing worth a flood, bounded
/// work in progress, and a growing wait after wrong passwords.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_given_away_before_login_and_work_in_progress_is_bounded() {
    let url = amqp_url();
    let domain = unique_domain();
    let agent = start_agent(&url, fast_options(&domain, "web"), vec![Arc::new(Probe)]).await;
    let users = ["ada", "bob"].map(|u| (u.to_owned(), clacks_agent::auth::hash_password("s3cret").unwrap_or_default()));
    let limits =
        clacks_agent::http_limits::HttpLimits { max_batch: 50, per_peer: 3, per_session: 2, ..Default::default() };
    let state = HttpState::configured(
        agent.dispatcher().clone(),
        None,
        Authenticator::Users(users.into_iter().collect()),
        Duration::from_secs(60),
        limits,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(clacks_agent::http::serve(listener, state, std::future::pending()));
    let endpoint = |http: reqwest::Client| Endpoint { url: format!("http://{address}/rpc"), http };
    let anonymous = endpoint(reqwest::Client::new());

    // Without a session: one short fixed answer, however large or long the request.
    let fixed = r#"401 {"jsonrpc":"2.0","error":{"code":-32008,"message":"not logged in or session expired; call login(user, password) first","data":{"code":"NOT_AUTHENTICATED"}},"id":null}"#;
    let ping = r#"{"jsonrpc":"2.0","method":"ping","id":1}"#;
    let large = format!("[{}]", vec![ping; 30_000].join(","));
    let many = format!("[{}]", vec![ping; 40].join(","));
    for body in [ping, many.as_str(), large.as_str()] {
        let (status, text) = anonymous.post(body).await;
        assert_eq!(format!("{status} {text}"), fixed, "{} bytes", body.len());
    }

    // Logged in: the cookie cannot be read by scripts or sent cross-site.
    let login = |user: &str, password: &str| {
        format!(r#"{{"jsonrpc":"2.0","method":"login","params":["{user}","{password}"],"id":1}}"#)
    };
    let ada_http = reqwest::Client::builder().cookie_store(true).build().unwrap_or_else(|e| panic!("{e}"));
    let response = ada_http
        .post(format!("http://{address}/rpc"))
        .header("content-type", "application/json")
        .body(login("ada", "s3cret"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cookie = response.headers().get("set-cookie").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && !cookie.contains("Secure"),
        "{cookie}"
    );
    let ada = endpoint(ada_http);
    let (status, text) = ada.post(&format!("[{}]", vec![ping; 51].join(","))).await;
    assert!(status == 413 && text.contains("a batch holds at most 50 calls; this one has 51"), "{status} {text}");
    assert_eq!(ada.post(&format!("[{}]", vec![ping; 50].join(","))).await.0, 200);

    // Two calls at once per session, three per address.
    let nap = r#"{"jsonrpc":"2.0","method":"nap","params":[1500],"id":1}"#;
    let bob_http = reqwest::Client::builder().cookie_store(true).build().unwrap_or_else(|e| panic!("{e}"));
    bob_http
        .post(format!("http://{address}/rpc"))
        .header("content-type", "application/json")
        .body(login("bob", "s3cret"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let bob = endpoint(bob_http);
    let ada_naps = futures_util::future::join3(ada.post(nap), ada.post(nap), async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        ada.post(nap).await
    });
    let bob_naps = async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let later = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            bob.post(nap).await
        };
        futures_util::future::join(bob.post(nap), later).await
    };
    let ((first, second, third), (fourth, fifth)) = futures_util::future::join(ada_naps, bob_naps).await;
    assert_eq!((first.0, second.0, fourth.0), (200, 200, 200));
    assert!(third.0 == 429 && third.1.contains("in this session"), "{third:?}");
    assert!(fifth.0 == 429 && fifth.1.contains("from this address"), "{fifth:?}");
    assert_eq!(bob.post(nap).await.0, 200, "free again once the calls ended");

    // Wrong passwords: three are checked, then the user waits, told how long.
    for _ in 0..3 {
        assert_eq!(anonymous.post(&login("bob", "wrong")).await.0, 401);
    }
    let response = reqwest::Client::new()
        .post(format!("http://{address}/rpc"))
        .header("content-type", "application/json")
        .body(login("bob", "s3cret"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 429, "even the right password waits");
    assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert!(response.text().await.unwrap_or_default().contains("LOGIN_THROTTLED"));
    assert_eq!(anonymous.post(&login("ada", "s3cret")).await.0, 200, "another user from the address is not held up");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(anonymous.post(&login("bob", "s3cret")).await.0, 200, "after the wait, the right password works");
    agent.stop().await;
}
