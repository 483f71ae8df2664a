//! Domain naming: every queue, exchange and ACL topic of a Clacks domain is derived
//! from its reverse-DNS name here, so no other module formats those names by hand.

use std::fmt;

/// The domain a fresh installation uses when nothing else is configured.
pub const DEFAULT_DOMAIN: &str = "org.clacks";

/// A validated reverse-DNS domain name such as `org.clacks` or `net.example`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Domain(String);

/// Why a domain, node id or target name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} '{value}': {reason}")]
pub struct NameError {
    /// Which kind of name was checked (`domain`, `node id`, `target`).
    pub what: &'static str,
    /// The refused value.
    pub value: String,
    /// What rule it broke.
    pub reason: &'static str,
}

/// Where a request arrived, decoded from a queue name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandQueue {
    /// `D.command.<target>`: shared by every agent that provides the target.
    Shared {
        /// The plugin target, e.g. `core`.
        target: String,
    },
    /// `D.command.<target>.<node>`: one agent's private queue.
    Private {
        /// The plugin target, e.g. `core`.
        target: String,
        /// The node id owning the queue.
        node: String,
    },
}

impl Domain {
    /// Checks and wraps a domain name: dot-separated labels of lower-case ASCII letters,
    /// digits and dashes.
    pub fn new(name: &str) -> Result<Domain, NameError> {
        let err = |reason| NameError { what: "domain", value: name.to_owned(), reason };
        if name.is_empty() {
            return Err(err("it is empty"));
        }
        if name.len() > 100 {
            return Err(err("it is longer than 100 characters"));
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err(err("it has an empty label"));
            }
            if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
                return Err(err("labels may only hold a-z, 0-9 and '-'"));
            }
        }
        Ok(Domain(name.to_owned()))
    }

    /// The domain name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared command queue of a target: every provider consumes it, so the broker
    /// balances calls across them.
    pub fn command_queue(&self, target: &str) -> String {
        format!("{}.command.{target}", self.0)
    }

    /// The private command queue of one node for one target.
    pub fn node_queue(&self, target: &str, node: &str) -> String {
        format!("{}.command.{target}.{node}", self.0)
    }

    /// The queue a joined client consumes its commands from; only the client serves it.
    pub fn client_queue(&self, client: &str) -> String {
        format!("{}.client.{client}", self.0)
    }

    /// The topic exchange carrying XML events; the routing key is the event type.
    pub fn event_exchange(&self) -> String {
        format!("{}.event", self.0)
    }

    /// The ACL topic of a command, used for permission checks and in error details.
    /// Every ACL topic is built by one of these functions, nowhere else.
    pub fn command_topic(&self, target: &str, method: &str) -> String {
        format!("{}.command.{target}.{method}", self.0)
    }

    /// The ACL topic of an event type (`x` to send it, `e` to receive it over HTTP).
    pub fn event_topic(&self, event_type: &str) -> String {
        format!("{}.event.{event_type}", self.0)
    }

    /// The ACL topic of a joined client's command.
    pub fn client_topic(&self, client: &str, method: &str) -> String {
        format!("{}.client.{client}.{method}", self.0)
    }

    /// The ACL topic of an object operation: `what` is e.g. `User.attributes.uid`.
    pub fn objects_topic(&self, what: &str) -> String {
        format!("{}.objects.{what}", self.0)
    }

    /// The ACL topic of the ACLs themselves.
    pub fn acl_topic(&self) -> String {
        format!("{}.acl", self.0)
    }

    /// Decodes a queue name of this domain into a shared or private command queue.
    pub fn parse_command_queue(&self, queue: &str) -> Option<CommandQueue> {
        let rest = queue.strip_prefix(&self.0)?.strip_prefix(".command.")?;
        match rest.split_once('.') {
            None if !rest.is_empty() => Some(CommandQueue::Shared { target: rest.to_owned() }),
            Some((target, node)) if !target.is_empty() && !node.is_empty() && !node.contains('.') => {
                Some(CommandQueue::Private { target: target.to_owned(), node: node.to_owned() })
            }
            _ => None,
        }
    }
}

impl Default for Domain {
    fn default() -> Domain {
        Domain(DEFAULT_DOMAIN.to_owned())
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Domain {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Domain, NameError> {
        Domain::new(s)
    }
}

/// Checks a node id: it becomes the last label of private queue names, so it may not
/// contain dots.
pub fn check_node_id(id: &str) -> Result<(), NameError> {
    check_word("node id", id)
}

/// Checks a plugin target name (the middle of `D.command.<target>`).
pub fn check_target(target: &str) -> Result<(), NameError> {
    check_word("target", target)
}

fn check_word(what: &'static str, value: &str) -> Result<(), NameError> {
    let err = |reason| NameError { what, value: value.to_owned(), reason };
    if value.is_empty() {
        return Err(err("it is empty"));
    }
    if value.len() > 64 {
        return Err(err("it is longer than 64 characters"));
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(err("only letters, digits, '-' and '_' are allowed"));
    }
    Ok(())
}

/// A default node id for this machine: the host name, reduced to the allowed characters.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let cleaned: String = host
        .trim()
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .take(64)
        .collect();
    if cleaned.is_empty() { "localhost".to_owned() } else { cleaned }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    #[track_caller]
    fn check(name: &str, expect: Expect) {
        let shown = match Domain::new(name) {
            Ok(d) => format!(
                "ok {} | {} | {:?} | {:?}",
                d.command_queue("core"),
                d.event_exchange(),
                d.parse_command_queue(&d.node_queue("core", "n1")),
                d.parse_command_queue(&format!("{d}.command.core")),
            ),
            Err(e) => e.to_string(),
        };
        expect.assert_eq(&shown);
    }

    #[test]
    fn domains() {
        check(
            "org.clacks",
            expect![[
                r#"ok org.clacks.command.core | org.clacks.event | Some(Private { target: "core", node: "n1" }) | Some(Shared { target: "core" })"#
            ]],
        );
        check("", expect!["invalid domain '': it is empty"]);
        check("org..clacks", expect!["invalid domain 'org..clacks': it has an empty label"]);
        check("Org.Clacks", expect!["invalid domain 'Org.Clacks': labels may only hold a-z, 0-9 and '-'"]);
    }

    #[test]
    fn foreign_queues_are_not_parsed() {
        let d = Domain::default();
        assert_eq!(d.parse_command_queue("net.example.command.core"), None);
        assert_eq!(d.parse_command_queue("org.clacks.command."), None);
        assert_eq!(d.parse_command_queue("org.clacks.command.core.a.b"), None);
        assert!(check_node_id("a.b").is_err());
        assert!(check_node_id("node-1_x").is_ok());
    }
}
