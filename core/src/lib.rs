//! The shared core of Clacks: everything an agent, a shell and a program in another
//! language must agree on.
//!
//! It holds the domain naming rules ([`domain`]) and those of DNs ([`dn`]), the JSON-RPC 2.0 wire types and the
//! symbolic error codes ([`rpc`]), the single description of a command that drives
//! dispatch, `getMethods`, help and completion ([`command`]), the domain-wide view of
//! nodes and their commands ([`registry`]), the dispatcher that routes a request to a
//! local handler or to the agent that provides it ([`dispatch`]), node presence events
//! and their XSD validation ([`events`]), the message bus with its RabbitMQ and
//! in-process implementations ([`bus`]), the caller-side [`client`], the SCRAM pieces
//! both ends of a SASL login share ([`sasl`]) and the bounded memory of refused senders
//! ([`refusals`]). The object layer (`clacks-objects`) and the ACL engine (`clacks-acl`)
//! are crates of their own on top of this one; nothing here knows LDAP or SQL.
//!
//! Nothing here reads configuration files or parses command lines: that is the job of
//! the `clacks-agent` and `clacks` binaries.

// The plugin macros expand to `::clacks_core::…` paths; this lets them work inside
// this crate too.
extern crate self as clacks_core;

pub mod bus;
pub mod client;
pub mod command;
pub mod dispatch;
pub mod dn;
pub mod domain;
pub mod events;
pub mod refusals;
pub mod registry;
pub mod rpc;
pub mod sasl;
pub mod schema;
pub mod testing;

pub use clacks_macros::{ResultSchema, plugin};
