//! The embedded domain: an agent with the built-in plugins on an in-process bus, so
//! `clacks` works on a fresh machine with no broker and no directory.

use std::sync::Arc;

use clacks_core::bus::Bus;
use clacks_core::bus::local::LocalBus;
use clacks_core::command::Plugin;
use clacks_core::domain::Domain;

use crate::daemon::{Agent, AgentError, AgentOptions};

/// A running embedded domain and the bus a caller uses to reach it.
#[derive(Debug)]
pub struct Embedded {
    /// The in-process agent.
    pub agent: Agent,
    /// The caller's view of the bus, carrying the caller's identity.
    pub caller_bus: Bus,
}

/// Starts an embedded domain for `user`, with extra `plugins` and the `.rhai` plugins
/// of `options.plugins_dir`.
pub async fn start(user: &str, options: AgentOptions, plugins: Vec<Arc<dyn Plugin>>) -> Result<Embedded, AgentError> {
    let bus = LocalBus::new("clacks-agent");
    let agent = Agent::start(options, Bus::Local(bus.clone()), plugins).await?;
    Ok(Embedded { agent, caller_bus: Bus::Local(bus.view(user)) })
}

/// Default options of the embedded agent. Heartbeats are cheap in-process, so they
/// come every 2 s: event tails in a first session show something quickly.
pub fn default_options(domain: Domain) -> AgentOptions {
    let mut options = AgentOptions::new(domain, "embedded");
    options.heartbeat = std::time::Duration::from_secs(2);
    options
}
