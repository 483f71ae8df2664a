//! The object abstraction: typed objects (User, Group, Device, …) described in XML and
//! mapped onto LDAP and SQL backends.
//!
//! [`description`] reads and checks the descriptions; [`values`] and [`filters`] give
//! attributes their types, transformations and validators; [`backend`] moves data to
//! and from LDAP and SQL; [`index`] keeps every object searchable; [`store`] ties them
//! together into open, change, commit, move and remove.
//!
//! This crate depends on the wire (`clacks-core`: errors, command types, DN rules, the
//! libxml2 validator and event publisher) and is the only one that knows ldap3 and sqlx;
//! `clacks-core` and `clacks-acl` must never depend on it.

pub mod backend;
pub mod description;
pub mod filters;
pub mod index;
pub mod password;
pub mod relation;
pub mod store;
pub mod values;

pub use store::{ObjectError, ObjectState, ObjectStore, StoreConfig};

impl From<ObjectError> for clacks_core::command::CommandError {
    fn from(e: ObjectError) -> clacks_core::command::CommandError {
        let error = clacks_core::command::CommandError::new(e.code, e.message);
        match e.details {
            Some(d) => error.with_details(d),
            None => error,
        }
    }
}
