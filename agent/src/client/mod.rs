//! The client side of a domain: a managed machine that joined it.
//!
//! [`config`] is the machine identity `clacks join` writes; [`daemon`] serves the
//! client's commands on its own queue and keeps the agents informed of its presence;
//! [`netinfo`] gathers the network facts it announces.

pub mod config;
pub mod daemon;
pub mod netinfo;

pub use config::ClientConfig;
pub use daemon::{ClientDaemon, ClientOptions};
