//! `client.toml`: what `clacks join` writes and the client daemon reads — the domain,
//! the broker, and the machine identity (client id and secret).
//!
//! The file holds a secret, so it is written with mode 0600 and read only if nobody
//! but its owner can read it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where `clacks join` writes and the daemon reads by default.
pub const DEFAULT_CLIENT_CONFIG: &str = "/etc/clacks/client.toml";

/// A joined machine's configuration.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The domain joined.
    pub domain: String,
    /// The broker, without credentials (`amqp[s]://host:port/vhost`).
    pub url: String,
    /// The client id: its broker user and the `cn` of its RegisteredDevice.
    pub id: String,
    /// The machine secret: its broker password.
    pub secret: String,
    /// The DN of the device object.
    #[serde(default)]
    pub dn: String,
    /// For `amqps://`: the broker's CA (PEM file).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Broker users whose requests the client serves (the domain's agents).
    #[serde(default)]
    pub agent_users: Vec<String>,
    /// Seconds between ClientPing events.
    #[serde(default = "default_ping")]
    pub ping_secs: u64,
    /// Longest wait, in seconds, before announcing again when an agent asks (ClientPoll)
    /// or after a reconnection: spreads a fleet's answers, and bounds how long an agent
    /// that just started waits to know every machine.
    #[serde(default = "default_poll_spread")]
    pub poll_spread_secs: f64,
    /// Folder of executable scripts offered as commands (the shell proxy).
    #[serde(default)]
    pub shell_dir: Option<PathBuf>,
    /// Folder of custom fact files (`*.json`, `*.toml`) sent with the inventory;
    /// default `/etc/clacks/facts.d`.
    #[serde(default)]
    pub facts_dir: Option<PathBuf>,
    /// A D-Bus service whose methods become `dbus_*` commands (the D-Bus proxy).
    #[serde(default)]
    pub dbus: Option<DbusSection>,
}

/// `[dbus]` of client.toml.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DbusSection {
    /// The bus name, e.g. `org.clacks`.
    pub service: String,
    /// The interface offered; default `org.clacks`.
    #[serde(default = "default_interface")]
    pub interface: String,
    /// A bus address; default the system bus.
    #[serde(default)]
    pub address: Option<String>,
}

fn default_interface() -> String {
    "org.clacks".into()
}

fn default_ping() -> u64 {
    60
}

fn default_poll_spread() -> f64 {
    crate::daemon::DEFAULT_POLL_SPREAD.as_secs_f64()
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("domain", &self.domain)
            .field("url", &self.url)
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl ClientConfig {
    /// Reads `path`, refusing a file others may read (it holds the machine secret).
    pub fn load(path: &Path) -> Result<ClientConfig, ClientConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |source| ClientConfigError::Io { path: path.to_owned(), source };
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(ClientConfigError::Invalid {
                path: path.to_owned(),
                message: format!(
                    "holds the machine secret but is readable by others (mode {:o}); chmod 600 it",
                    mode & 0o777
                ),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        toml::from_str(&text).map_err(|e| ClientConfigError::Invalid { path: path.to_owned(), message: e.to_string() })
    }

    /// Writes the file with mode 0600 (its folder is created if needed); an existing
    /// file is replaced only when `replace` is set.
    pub fn save(&self, path: &Path, replace: bool) -> Result<(), ClientConfigError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| ClientConfigError::Io { path: path.to_owned(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let text = toml::to_string(self)
            .map_err(|e| ClientConfigError::Invalid { path: path.to_owned(), message: e.to_string() })?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).mode(0o600);
        if replace {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        let mut file = options.open(path).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)
    }

    /// The broker URL with the machine identity as login.
    pub fn login_url(&self) -> Result<String, String> {
        // Any credentials the URL carries give way to the machine identity.
        clacks_core::bus::amqp::with_login(&self.url, &self.id, Some(&self.secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClientConfig {
        ClientConfig {
            domain: "org.clacks".into(),
            url: "amqp://admin:pw@broker:5672/%2f".into(),
            id: "c1".into(),
            secret: "s/e+c".into(),
            dn: "cn=c1,ou=devices,dc=clacks,dc=org".into(),
            ca_file: None,
            agent_users: vec!["clacks-agent".into()],
            ping_secs: 60,
            poll_spread_secs: default_poll_spread(),
            shell_dir: None,
            facts_dir: None,
            dbus: None,
        }
    }

    #[test]
    fn saved_privately_refused_when_readable_and_never_overwritten_by_accident() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("etc/client.toml");
        sample().save(&path, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777).ok(), Some(0o600));
        assert_eq!(ClientConfig::load(&path).ok(), Some(sample()));
        assert!(sample().save(&path, false).is_err(), "a second join must not overwrite");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap_or_else(|e| panic!("{e}"));
        let refused = ClientConfig::load(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("readable by others"), "{refused}");
        assert!(!format!("{:?}", sample()).contains("s/e+c"));
    }

    #[test]
    fn the_login_url_carries_the_machine_identity() {
        let url = sample().login_url().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(url, "amqp://c1:s%2Fe+c@broker:5672/%2f");
        // What the broker connection reads back is the identity itself.
        let parsed: lapin::uri::AMQPUri = url.parse().unwrap_or_else(|e: String| panic!("{e}"));
        assert_eq!(
            (
                parsed.authority.userinfo.username.as_str(),
                parsed.authority.userinfo.password.as_str(),
                parsed.vhost.as_str()
            ),
            ("c1", "s/e+c", "/")
        );
    }
}
