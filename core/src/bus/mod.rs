//! The message bus: request/reply to named queues and typed events, either over
//! RabbitMQ ([`amqp::AmqpBus`]) or inside one process ([`local::LocalBus`], the embedded
//! default). Agents, callers and the dispatcher only see [`Bus`], so the same code runs
//! a whole domain and a single-process first try.
//!
//! Invariants both implementations keep:
//! - a served request is acknowledged only after its handler finished and the reply
//!   was handed to the transport, so a request whose agent dies is delivered again;
//! - every call has a deadline and ends in a reply, `NoProvider`, `ConnectionLost` or
//!   `Timeout` — never a hang;
//! - after a reconnection every served queue, subscription and binding is declared
//!   again by the bus itself, not by its users.

pub mod amqp;
pub mod local;
pub mod permissions;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::command::BoxFuture;
use crate::rpc::{ErrorCode, RpcError};

/// A request taken from a queue.
#[derive(Clone, Debug)]
pub struct RequestMessage {
    /// The JSON-RPC body.
    pub body: Vec<u8>,
    /// The identity the transport vouches for (AMQP `user_id`, validated by the broker).
    pub user: Option<String>,
    /// The original caller when another agent forwarded the request (header
    /// `x-clacks-user`); only to be trusted when `user` is a trusted forwarder.
    pub on_behalf_of: Option<String>,
    /// When the caller stops waiting, if it said so.
    pub deadline: Option<Instant>,
    /// The queue the request was taken from.
    pub queue: String,
    /// Whether the broker delivered it before (its first agent died).
    pub redelivered: bool,
}

/// An event taken from the bus.
#[derive(Clone, Debug)]
pub struct EventMessage {
    /// The event type (routing key).
    pub event_type: String,
    /// The XML document.
    pub body: Vec<u8>,
    /// Who published it.
    pub user: Option<String>,
}

/// Serves requests: returns the reply body, or `None` for a notification.
pub type RequestHandler = Arc<dyn Fn(RequestMessage) -> BoxFuture<Option<Vec<u8>>> + Send + Sync>;

/// How a queue is served.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// A node's private queue: exclusive to this connection and deleted with it.
    pub private: bool,
    /// How many requests may be in flight on this queue at once.
    pub prefetch: u16,
}

/// Whose reply a call believes. Anyone who can publish to the default exchange can
/// send something to a caller's reply address, so a reply counts only when the broker
/// vouches (`user_id`) that it comes from the identity that was addressed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ReplyFrom {
    /// An agent: one of the bus's agent identities ([`amqp::AmqpSettings::agent_users`]
    /// and the bus's own user).
    #[default]
    Agent,
    /// One broker user, e.g. the joined machine whose queue was called (or an agent,
    /// trusted with everything a client is).
    User(String),
}

/// Options of one call.
#[derive(Clone, Debug)]
pub struct CallOptions {
    /// When to give up.
    pub deadline: Instant,
    /// The original caller, when forwarding.
    pub on_behalf_of: Option<String>,
    /// Who may answer.
    pub reply_from: ReplyFrom,
}

impl CallOptions {
    /// A call to agents that gives up after `timeout`.
    pub fn timeout(timeout: Duration) -> CallOptions {
        CallOptions { deadline: Instant::now() + timeout, on_behalf_of: None, reply_from: ReplyFrom::Agent }
    }

    /// The same call, answered only by broker user `user`.
    pub fn answered_by(mut self, user: impl Into<String>) -> CallOptions {
        self.reply_from = ReplyFrom::User(user.into());
        self
    }
}

/// Why a bus operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The initial connection could not be made.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The broker URL without credentials.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The broker refused the credentials.
    #[error("login of user '{user}' refused by {url}")]
    AccessRefused {
        /// The broker URL without credentials.
        url: String,
        /// The user that was refused.
        user: String,
    },
    /// Nobody consumes the queue.
    #[error("no agent serves {0}")]
    NoProvider(String),
    /// The deadline passed.
    #[error("no reply within the deadline{0}")]
    Timeout(String),
    /// The connection died while the call was in flight.
    #[error("connection to the broker lost: {0}")]
    ConnectionLost(String),
    /// A declaration or publication was refused.
    #[error("the broker refused: {0}")]
    Refused(String),
    /// The broker user may not do that (AMQP `ACCESS_REFUSED` on a channel).
    #[error("the broker does not allow it: {0}")]
    Forbidden(String),
    /// An exclusive queue is in use by another connection (AMQP `RESOURCE_LOCKED`).
    #[error("in exclusive use elsewhere: {0}")]
    InUse(String),
    /// The bus was closed.
    #[error("the bus is closed")]
    Closed,
}

impl BusError {
    /// The JSON-RPC error a caller sees.
    pub fn to_rpc_error(&self) -> RpcError {
        let code = match self {
            BusError::Connect { .. } | BusError::ConnectionLost(_) | BusError::Closed => ErrorCode::CONNECTION_LOST,
            BusError::AccessRefused { .. } => ErrorCode::LOGIN_FAILED,
            BusError::NoProvider(_) => ErrorCode::NO_PROVIDER,
            BusError::Timeout(_) => ErrorCode::TIMEOUT,
            BusError::Refused(_) | BusError::InUse(_) => ErrorCode::INTERNAL_ERROR,
            BusError::Forbidden(_) => ErrorCode::PERMISSION_EXEC,
        };
        RpcError::new(code, self.to_string())
    }
}

/// A bus: RabbitMQ or in-process.
#[derive(Clone, Debug)]
pub enum Bus {
    /// RabbitMQ over AMQP 0-9-1.
    Amqp(amqp::AmqpBus),
    /// In-process, for the embedded domain and hermetic tests.
    Local(local::LocalBus),
}

impl Bus {
    /// The identity this bus publishes with.
    pub fn user(&self) -> &str {
        match self {
            Bus::Amqp(b) => b.user(),
            Bus::Local(b) => b.user(),
        }
    }

    /// Sends a request to `queue` and waits for the reply.
    pub async fn call(&self, queue: &str, body: Vec<u8>, options: CallOptions) -> Result<Vec<u8>, BusError> {
        match self {
            Bus::Amqp(b) => b.call(queue, body, options).await,
            Bus::Local(b) => b.call(queue, body, options).await,
        }
    }

    /// Consumes `queue`, calling `handler` for each request, until [`Bus::stop_serving`].
    pub async fn serve(&self, queue: &str, options: ServeOptions, handler: RequestHandler) -> Result<(), BusError> {
        match self {
            Bus::Amqp(b) => b.serve(queue, options, handler).await,
            Bus::Local(b) => b.serve(queue, options, handler).await,
        }
    }

    /// Publishes an event (already validated by the caller).
    pub async fn publish_event(&self, event_type: &str, xml: Vec<u8>) -> Result<(), BusError> {
        match self {
            Bus::Amqp(b) => b.publish_event(event_type, xml).await,
            Bus::Local(b) => b.publish_event(event_type, xml),
        }
    }

    /// Receives events whose type matches one of `types` (`"*"` for all).
    /// Changes each time the bus has reconnected; the in-process bus never does.
    pub fn reconnections(&self) -> tokio::sync::watch::Receiver<u64> {
        match self {
            Bus::Amqp(b) => b.reconnections(),
            // A receiver whose sender is gone: `changed()` fails at once, so waiting on
            // it must be guarded (see the client daemon).
            Bus::Local(_) => tokio::sync::watch::channel(0).1,
        }
    }

    pub async fn subscribe(&self, types: &[String]) -> Result<mpsc::Receiver<EventMessage>, BusError> {
        match self {
            Bus::Amqp(b) => b.subscribe(types).await,
            Bus::Local(b) => b.subscribe(types),
        }
    }

    /// Stops taking requests from every served queue; requests already taken finish.
    pub async fn stop_serving(&self) {
        match self {
            Bus::Amqp(b) => b.stop_serving().await,
            Bus::Local(b) => b.stop_serving(),
        }
    }

    /// Waits until every request handler has finished.
    pub async fn drain(&self) {
        match self {
            Bus::Amqp(b) => b.drain().await,
            Bus::Local(b) => b.drain().await,
        }
    }

    /// Closes the connection.
    pub async fn close(&self) {
        match self {
            Bus::Amqp(b) => b.close().await,
            Bus::Local(_) => {}
        }
    }
}

/// Whether an event type matches a subscription pattern: `*` matches everything, a
/// trailing `*` matches a prefix (`Node*`), anything else must be equal.
pub fn type_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

/// Jittered exponential back-off: attempt `n` waits a random time up to
/// `min(max, min * 2^n)`, so a crowd of reconnecting nodes spreads out instead of
/// hitting a restarted broker at the same instant.
pub fn backoff_delay(attempt: u32, min: Duration, max: Duration) -> Duration {
    let ceiling = min.saturating_mul(2u32.saturating_pow(attempt.min(16))).min(max);
    let millis = ceiling.as_millis().max(1) as u64;
    let low = millis / 4;
    Duration::from_millis(rand::random_range(low..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(type_matches("*", "NodeStatus"));
        assert!(type_matches("Node*", "NodeStatus"));
        assert!(!type_matches("Client*", "NodeStatus"));
        assert!(type_matches("NodeStatus", "NodeStatus"));
        assert!(!type_matches("NodeStatu", "NodeStatus"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..40 {
            let d = backoff_delay(attempt, min, max);
            assert!(d <= max, "{d:?}");
        }
        assert!(backoff_delay(0, min, max) <= min);
    }
}
