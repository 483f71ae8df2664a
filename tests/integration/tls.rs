//! Transport security: agents and callers over AMQPS against a private RabbitMQ node
//! with a TLS listener whose certificate a test CA signed.

use std::sync::Arc;
use std::time::Duration;

use clacks_agent::Agent;
use clacks_core::bus::Bus;
use clacks_core::bus::amqp::{AmqpBus, AmqpSettings};
use clacks_core::client::Client;
use clacks_core::rpc::Params;
use clacks_tests::broker::PrivateBroker;
use clacks_tests::{Probe, fast_options, unique_domain};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_callers_over_amqps_and_a_wrong_ca_refused() {
    let broker = PrivateBroker::start_tls();
    let url = broker.amqps_url().expect("amqps listener");
    let domain = unique_domain();
    let settings = AmqpSettings { ca_pem: broker.ca_pem.clone(), ..AmqpSettings::default() };

    let agent_bus =
        AmqpBus::connect(&url, domain.clone(), settings.clone()).await.unwrap_or_else(|e| panic!("amqps: {e}"));
    let agent = Agent::start(fast_options(&domain, "tls1"), Bus::Amqp(agent_bus), vec![Arc::new(Probe)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let caller_bus = AmqpBus::connect(&url, domain.clone(), settings).await.unwrap_or_else(|e| panic!("amqps: {e}"));
    let caller = Client::over_bus(Bus::Amqp(caller_bus), domain.clone(), Duration::from_secs(10));
    caller.refresh_targets().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(caller.call("whereAmI", Params::None).await.ok(), Some(json!("tls1")));

    // A CA that did not sign the broker's certificate, or none (the system's roots):
    // refused, and the message says why.
    let (other_ca, _, _) = clacks_tests::directory::test_certificates();
    for ca in [Some(other_ca), None] {
        let settings = AmqpSettings { ca_pem: ca, ..AmqpSettings::default() };
        let refused =
            AmqpBus::connect(&url, domain.clone(), settings).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.to_lowercase().contains("certificate"), "{refused}");
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_logs_in_with_its_client_certificate() {
    let broker = PrivateBroker::start_tls();
    let pki = broker.pki.as_ref().expect("test CA");
    let node_user = "clacks-node-1";
    broker.ctl(&["add_user", node_user, "not-used-with-a-certificate"]);
    broker.ctl(&["set_permissions", "-p", "/", node_user, ".*", ".*", ".*"]);
    let port_part = broker.amqps_url().expect("amqps").rsplit_once('@').map(|(_, rest)| rest.to_owned()).expect("url");
    // The URL names the certificate's common name as the user; the password is unused.
    let external = format!("amqps://{node_user}@{}?auth_mechanism=external", port_part);
    let domain = unique_domain();

    let identity = pki.issue(&[], node_user);
    let settings =
        AmqpSettings { ca_pem: broker.ca_pem.clone(), client_identity: Some(identity), ..AmqpSettings::default() };
    let agent_bus =
        AmqpBus::connect(&external, domain.clone(), settings).await.unwrap_or_else(|e| panic!("EXTERNAL: {e}"));
    assert_eq!(agent_bus.user(), node_user);
    let agent = Agent::start(fast_options(&domain, "certified"), Bus::Amqp(agent_bus), vec![Arc::new(Probe)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The caller believes replies from the agent's certificate identity.
    let caller_settings = AmqpSettings {
        ca_pem: broker.ca_pem.clone(),
        agent_users: vec![node_user.to_owned()],
        ..AmqpSettings::default()
    };
    let caller_bus = AmqpBus::connect(&broker.amqps_url().expect("amqps"), domain.clone(), caller_settings)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let caller = Client::over_bus(Bus::Amqp(caller_bus), domain.clone(), Duration::from_secs(10));
    caller.refresh_targets().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(caller.call("whereAmI", Params::None).await.ok(), Some(json!("certified")));

    // EXTERNAL without a certificate, or with one the broker's CA did not sign: no entry.
    let stranger = clacks_tests::directory::TestPki::new().issue(&[], node_user);
    for identity in [None, Some(stranger)] {
        let settings =
            AmqpSettings { ca_pem: broker.ca_pem.clone(), client_identity: identity, ..AmqpSettings::default() };
        assert!(AmqpBus::connect(&external, domain.clone(), settings).await.is_err());
    }
    agent.stop().await;
}
