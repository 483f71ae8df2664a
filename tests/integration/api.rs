//! The exported surface, made explicit: every command of an agent with all shipped
//! plugins, its signature and the permission it needs, compared with the checked-in
//! `api.txt` (update with `UPDATE_EXPECT=1` — a change there is a change to the API);
//! and every one of them refused to a caller without a session or without rights.

use std::time::Duration;

use clacks_agent::auth::Authenticator;
use clacks_agent::daemon::AclOptions;
use clacks_agent::http::{HttpState, router};
use clacks_agent::{Agent, AgentOptions};
use clacks_core::bus::Bus;
use clacks_core::bus::local::LocalBus;
use clacks_core::client::Client;
use clacks_core::domain::Domain;
use clacks_core::rpc::{ErrorCode, Params};
use clacks_objects::StoreConfig;
use expect_test::expect_file;
use serde_json::json;

/// An agent with every shipped plugin, checking ACLs, on the in-process bus.
async fn full_agent(data: &tempfile::TempDir) -> (Agent, LocalBus) {
    let mut options = AgentOptions::new(Domain::new("org.clacks").unwrap_or_default(), "api");
    options.enable = vec!["telephony".into(), "statistics".into()];
    options.acl = Some(AclOptions { admins: vec!["root".into()] });
    options.objects = Some(clacks_tests::quiet_objects(StoreConfig::default(), clacks_tests::sqlite_in(data.path())));
    let bus = LocalBus::new("clacks-agent");
    let agent = Agent::start(options, Bus::Local(bus.clone()), vec![]).await.unwrap_or_else(|e| panic!("{e}"));
    (agent, bus)
}

#[tokio::test]
async fn the_exported_api_matches_its_snapshot_and_refuses_strangers() {
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (agent, bus) = full_agent(&data).await;
    let table = agent.registry().method_table(None);
    let mut lines = vec!["# command | signature | needs a user | call type | permission".to_owned()];
    for (name, info) in &table {
        lines.push(format!(
            "{} | {} | {} | {:?} | x on org.clacks.command.{}.{name}",
            name, info.signature, info.spec.needs_user, info.spec.call_type, info.spec.target
        ));
    }
    expect_file!["api.txt"].assert_eq(&(lines.join("\n") + "\n"));

    // As a user nobody granted anything: every command refused, before it runs.
    let mallory =
        Client::over_bus(Bus::Local(bus.view("mallory")), agent.options().domain.clone(), Duration::from_secs(5));
    for name in table.keys() {
        let refused = mallory.call(name, Params::None).await.map_err(|e| e.code()).err();
        assert_eq!(refused, Some(ErrorCode::PERMISSION_EXEC), "{name} must be refused to mallory");
    }

    // Over HTTP without a session: every command refused with 401.
    let state =
        HttpState::new(agent.dispatcher().clone(), Authenticator::Users(Default::default()), Duration::from_secs(60));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let http = reqwest::Client::new();
    for name in table.keys() {
        let response = http
            .post(format!("http://{address}/rpc"))
            .header("content-type", "application/json")
            .body(json!({"jsonrpc": "2.0", "method": name, "id": 1}).to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert!(status == 401 && body.contains("NOT_AUTHENTICATED"), "{name}: {status} {body}");
    }
    agent.stop().await;
}
