//! The client side of a domain: a managed machine that joined it (`clacks-agent --role
//! client` runs it; `clacks join` writes its identity).
//!
//! This crate depends on the wire and the bus (`clacks-core`) only — never on the agent,
//! the object layer or the ACL engine, which live on other machines.
//!
//! [`config`] is the machine identity `clacks join` writes; [`daemon`] serves the
//! client's commands on its own queue and keeps the agents informed of its presence;
//! [`netinfo`] gathers the network facts it announces, [`inventory`] what is installed
//! and [`facts`] what the administrator wrote about it; [`shell_proxy`] turns scripts
//! in a folder into commands, [`dbus_proxy`] the methods of a D-Bus service.

pub mod config;
pub mod daemon;
pub mod dbus_proxy;
pub mod facts;
pub mod inventory;
pub mod netinfo;
pub mod shell_proxy;

pub use config::ClientConfig;
pub use daemon::{ClientDaemon, ClientOptions};

use std::time::Duration;

use clacks_core::bus::Bus;
use clacks_core::bus::amqp::{AmqpBus, AmqpSettings};
use clacks_core::domain::Domain;

/// Where the shell proxy looks for scripts unless `shell_dir` says otherwise.
pub const DEFAULT_SHELL_DIR: &str = "/etc/clacks/shell.d";

/// Connects to the broker as the joined machine, retrying until the broker answers
/// (a client boots before the network or the broker may be up).
pub async fn connect(config: &ClientConfig, wait_for_broker: bool) -> Result<Bus, String> {
    let domain = Domain::new(&config.domain).map_err(|e| e.to_string())?;
    let ca_pem = match &config.ca_file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?),
        None => None,
    };
    let settings = AmqpSettings {
        connection_name: format!("clacks client {}", config.id),
        wait_for_broker,
        ca_pem,
        // A client may not configure the domain's exchange, only use it.
        passive_exchange: true,
        agent_users: config.agent_users.clone(),
        ..AmqpSettings::default()
    };
    let url = config.login_url()?;
    AmqpBus::connect(&url, domain, settings).await.map(Bus::Amqp).map_err(|e| e.to_string())
}

/// The daemon's options from a joined machine's configuration.
pub fn options_from(config: &ClientConfig) -> Result<ClientOptions, String> {
    let domain = Domain::new(&config.domain).map_err(|e| e.to_string())?;
    let mut options = ClientOptions::new(domain, config.id.clone());
    options.agent_users = config.agent_users.clone();
    options.ping = Duration::from_secs(config.ping_secs.max(1));
    if config.poll_spread_secs.is_finite() && config.poll_spread_secs >= 0.0 {
        options.poll_spread = Duration::from_secs_f64(config.poll_spread_secs.min(3600.0));
    }
    options.shell_dir = Some(config.shell_dir.clone().unwrap_or_else(|| std::path::PathBuf::from(DEFAULT_SHELL_DIR)));
    options.facts_dir =
        Some(config.facts_dir.clone().unwrap_or_else(|| std::path::PathBuf::from(facts::DEFAULT_FACTS_DIR)));
    options.dbus = config.dbus.as_ref().map(|d| dbus_proxy::DbusOptions {
        address: d.address.clone(),
        service: d.service.clone(),
        interface: d.interface.clone(),
        poll: Duration::from_secs(2),
    });
    Ok(options)
}
