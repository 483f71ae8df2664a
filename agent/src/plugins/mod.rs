//! Optional plugins shipped with the agent, enabled by name in `agent.toml`
//! (`[plugins] enable = ["telephony", "statistics"]`).
//!
//! They are the seeds' example of components that only meet through events: a
//! telephony bridge turns call records into `Call` events; a statistics module
//! subscribes to them and answers `callStatistics()`.

pub mod statistics;
pub mod telephony;
