//! Cross-crate integration tests against the real RabbitMQ (`CLACKS_TEST_AMQP_URL`,
//! default the local broker). They fail, never skip, when the broker is missing.

mod acl;
mod acl_store;
mod api;
mod clients;
mod cluster;
mod events;
mod foreign;
mod hostile;
mod http;
mod identity;
mod malformed;
mod object_api;
mod objects;
mod protocol_doc;
mod recovery;
mod routing;
mod sasl;
mod tls;
