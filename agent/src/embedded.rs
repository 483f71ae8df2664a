//! The embedded domain: an agent with the built-in plugins on an in-process bus, so
//! `clacks` works on a fresh machine with no broker and no directory. Its objects live
//! in SQLite in the user's data folder, so a first session can create and find users.

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
pub async fn start(
    user: &str,
    mut options: AgentOptions,
    plugins: Vec<Arc<dyn Plugin>>,
) -> Result<Embedded, AgentError> {
    let bus = LocalBus::new("clacks-agent");
    // The embedded domain is the user's own process: they administer it.
    options.acl = Some(crate::daemon::AclOptions { admins: vec![user.to_owned()] });
    if let Some(objects) = &options.objects
        && objects.store.sql_url.is_none()
        && let Err(e) = std::fs::create_dir_all(crate::config::default_data_dir())
    {
        tracing::warn!("cannot create the data folder for objects: {e}");
    }
    let agent = match Agent::start(options.clone(), Bus::Local(bus.clone()), plugins.clone()).await {
        Err(AgentError::Objects(e)) => {
            // A session without objects beats no session: say why and go on.
            tracing::warn!("objects are not available in this session: {e}");
            let without = AgentOptions { objects: None, ..options };
            Agent::start(without, Bus::Local(bus.clone()), plugins).await?
        }
        other => other?,
    };
    Ok(Embedded { agent, caller_bus: Bus::Local(bus.view(user)) })
}

/// Default options of the embedded agent. Heartbeats are cheap in-process, so they
/// come every 2 s: event tails in a first session show something quickly.
pub fn default_options(domain: Domain) -> AgentOptions {
    let mut options = AgentOptions::new(domain, "embedded");
    options.heartbeat = std::time::Duration::from_secs(2);
    options.objects = crate::config::ObjectsSection::default().options();
    options
}
