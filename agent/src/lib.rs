//! The Clacks agent: the daemon that joins a domain and serves commands.
//!
//! An [`Agent`](daemon::Agent) loads its plugins (the built-in [`core_plugin`], any
//! Rust plugins it is given, and `.rhai` plugins from a folder, see [`rhai_plugin`]),
//! consumes the shared and private queue of every target they export, announces itself
//! with presence events and keeps the domain-wide registry current. [`http`] serves the
//! same dispatcher as JSON-RPC over HTTP with cookie sessions, opened by `login` or a
//! SASL exchange ([`sasl`], passwords checked by [`auth`]). [`config`] reads
//! `agent.toml`; [`objects_plugin`] serves the object store (User, Group, … over LDAP
//! and SQL) as commands; [`acl_plugin`] keeps the ACLs as object data and edits them;
//! [`clients_plugin`] keeps the managed machines — presence, joining, inventories
//! ([`inventory`]), fan-outs and groups selected by a [`client_filter`]; [`embedded`]
//! runs an agent inside another process for the shell's broker-less default.

pub mod acl_plugin;
pub mod auth;
pub mod broker_admin;
pub mod client_filter;
pub mod clients_plugin;
pub mod config;
pub mod core_plugin;
pub mod daemon;
pub mod embedded;
pub mod http;
pub mod http_limits;
pub mod inventory;
pub mod objects_plugin;
pub mod plugins;
pub mod process;
pub mod rhai_plugin;
pub mod sasl;

pub use daemon::{Agent, AgentError, AgentOptions};
