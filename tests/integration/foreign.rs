//! A client in another language, written from docs/protocol.md alone
//! (`tests/foreign/clacks_foreign.py`: Python with pika and lxml, as Debian ships
//! them), against two real agents over AMQP and one of them over HTTP: calls, errors,
//! forwarding, batches, rpc.discover, an event subscribed to and validated against
//! `getEventSchema`, SCRAM, and the content type. If it needs anything the document
//! does not say, it fails here.

use std::sync::Arc;
use std::time::Duration;

use clacks_agent::auth::{Authenticator, hash_password};
use clacks_agent::http::{HttpState, router};
use clacks_core::sasl::ScramVerifier;
use clacks_tests::{Other, amqp_url, fast_options, start_agent, unique_domain, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_written_from_the_protocol_document_works() {
    let url = amqp_url();
    let domain = unique_domain();
    let alpha = start_agent(&url, fast_options(&domain, "alpha"), vec![]).await;
    let beta = start_agent(&url, fast_options(&domain, "beta"), vec![Arc::new(Other)]).await;
    wait_for("alpha knows beta's command", Duration::from_secs(10), || async {
        alpha.registry().find_spec("whereElse").is_some()
    })
    .await;
    let users = [
        ("ada".to_owned(), ScramVerifier::new("pencil", 4096).to_string()),
        ("bob".to_owned(), hash_password("s3cret").unwrap_or_else(|e| panic!("{e}"))),
    ];
    let state = HttpState::new(
        alpha.dispatcher().clone(),
        Authenticator::Users(users.into_iter().collect()),
        Duration::from_secs(60),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move { axum::serve(listener, router(state)).await });

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/foreign/clacks_foreign.py");
    let http_url = format!("http://{address}/rpc");
    let args = [script, url.as_str(), domain.as_str(), http_url.as_str(), "ada", "pencil", "bob", "s3cret"];
    // Debian's interpreter, which sees python3-pika and python3-lxml (.ci/install-deps).
    let run = tokio::process::Command::new("/usr/bin/python3").args(args).kill_on_drop(true).output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .unwrap_or_else(|_| panic!("the Python client took more than 120 s"))
        .unwrap_or_else(|e| panic!("/usr/bin/python3 is required (.ci/install-deps installs it): {e}"));
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && printed.contains("all checks passed"), "the Python client failed:\n{printed}");
    eprintln!("{printed}");
    alpha.stop().await;
    beta.stop().await;
}
