//! Where object data lives: LDAP, SQL (PostgreSQL or SQLite), and the helpers they share.
//!
//! A backend knows entries and attribute values, not descriptions: the object store
//! decides which attributes go where and converts values; backends move text.

pub mod ldap;
pub mod ldap_schema;
pub mod sql;

/// An entry as a primary backend knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub uuid: String,
    pub dn: String,
    /// LDAP: the object classes. SQL: the object types (base first).
    pub markers: Vec<String>,
    /// Last change, as the backend writes it (generalized time or RFC 3339).
    pub modified: Option<String>,
    /// A marker that changes with every write (LDAP entryCSN, SQL modification time),
    /// for detecting concurrent changes.
    pub version: Option<String>,
}

/// A backend failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The server cannot be reached or did not answer in time.
    #[error("{0}")]
    Unavailable(String),
    /// The name (DN) or a unique value is taken already.
    #[error("{0}")]
    Exists(String),
    /// The entry is no longer at the version the write asserted: someone else changed it.
    #[error("{0}")]
    Conflict(String),
    /// The server refused the operation for another reason (LDAP result code, or 0
    /// for an SQL error).
    #[error("{message}")]
    Refused { code: u32, message: String },
    #[error("no entry {0}")]
    NotFound(String),
    /// The data cannot be written as given.
    #[error("{0}")]
    Invalid(String),
}

// DNs are wire data (targets of ACLs and commands): their rules live in `clacks_core::dn`.
