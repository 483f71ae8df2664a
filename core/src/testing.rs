//! Helpers shared by the integration tests of every crate: where the test services
//! are, and names that keep concurrent tests apart on one shared broker.
//!
//! Each test works in its own domain (`test.<random>`), so its queues and exchanges
//! never meet those of a test running beside it.

/// The RabbitMQ URL the integration tests use (`CLACKS_TEST_AMQP_URL`, default the
/// local broker with the guest account).
pub fn amqp_url() -> String {
    std::env::var("CLACKS_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A fresh domain name for one test.
pub fn unique_domain() -> crate::domain::Domain {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    crate::domain::Domain::new(&format!("test.d{}", &tag[..10])).unwrap_or_default()
}

/// A bus on the test broker for `domain`, failing the test loudly — never skipping —
/// when RabbitMQ is not there.
pub async fn amqp_bus(domain: &crate::domain::Domain) -> crate::bus::Bus {
    let settings = crate::bus::amqp::AmqpSettings::default();
    match crate::bus::amqp::AmqpBus::connect(&amqp_url(), domain.clone(), settings).await {
        Ok(bus) => crate::bus::Bus::Amqp(bus),
        Err(e) => panic!(
            "RabbitMQ is required for this test and is not reachable ({e}). Start it (rabbitmq-server -detached) or point CLACKS_TEST_AMQP_URL at one."
        ),
    }
}
