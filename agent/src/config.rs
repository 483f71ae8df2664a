//! `agent.toml`: the agent's configuration file, with the defaults a fresh installation
//! runs on. Command-line flags and `CLACKS_*` variables (handled in `main`) override it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the agent looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/clacks/agent.toml";

/// The whole file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The domain (reverse DNS), default `org.clacks`.
    pub domain: String,
    /// This node's id; default the host name.
    pub node: Option<String>,
    /// The directory base DN `getBase` reports; default the directory's (`[objects.ldap]
    /// base`) when there is one, else derived from the domain.
    pub base: Option<String>,
    /// `[amqp]`.
    pub amqp: AmqpSection,
    /// `[http]`.
    pub http: HttpSection,
    /// `[plugins]`.
    pub plugins: PluginsSection,
    /// `[schemas]`.
    pub schemas: SchemasSection,
    /// `[rpc]`.
    pub rpc: RpcSection,
    /// `[presence]`.
    pub presence: PresenceSection,
    /// `[objects]`.
    pub objects: ObjectsSection,
    /// `[acl]`.
    pub acl: AclSection,
    /// `[clients]`.
    pub clients: ClientsSection,
}

/// `[clients]`: machines that join the domain.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClientsSection {
    /// Seconds without a ping after which a client counts as offline.
    pub timeout_secs: f64,
    /// RabbitMQ's management API (`http://broker:15672`): joining makes each client a
    /// broker login there. Without it, `joinClient` is refused with the reason.
    pub broker_api: Option<String>,
    /// A broker user allowed to manage users (tag `administrator`).
    pub broker_api_user: Option<String>,
    pub broker_api_password: Option<String>,
    /// Broker users clients take requests from; this agent's own user always counts.
    pub agent_users: Vec<String>,
}

impl Default for ClientsSection {
    fn default() -> ClientsSection {
        ClientsSection {
            timeout_secs: 150.0,
            broker_api: None,
            broker_api_user: None,
            broker_api_password: None,
            agent_users: Vec::new(),
        }
    }
}

impl std::fmt::Debug for ClientsSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientsSection")
            .field("timeout_secs", &self.timeout_secs)
            .field("broker_api", &self.broker_api)
            .field("broker_api_user", &self.broker_api_user)
            .field("broker_api_password", &self.broker_api_password.as_ref().map(|_| "<redacted>"))
            .field("agent_users", &self.agent_users)
            .finish()
    }
}

/// `[acl]`: who may do what.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AclSection {
    /// Check ACLs; what no ACL grants is denied.
    pub enabled: bool,
    /// Users allowed everything. The agent's own broker user always is.
    pub admins: Vec<String>,
}

impl Default for AclSection {
    fn default() -> AclSection {
        AclSection { enabled: true, admins: Vec::new() }
    }
}

/// `[objects]`: the object store (User, Group, … over LDAP and SQL).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectsSection {
    /// Serve objects at all.
    pub enabled: bool,
    /// Where the default SQLite database lives; default the user's data folder
    /// (`~/.local/share/clacks`).
    pub data_dir: Option<PathBuf>,
    /// SQL database for SQL-wired attributes (and all objects without a directory):
    /// `postgres://…` or `sqlite:PATH`; default SQLite `objects.db` in `data_dir`.
    pub sql_url: Option<String>,
    /// Index database; default the SQL database. Agents sharing a domain share it.
    pub index_url: Option<String>,
    /// Extra folders of object descriptions, read after the shipped ones.
    pub dirs: Vec<PathBuf>,
    /// Seconds an open object may stay idle.
    pub reference_idle_secs: i64,
    /// Seconds between checks of the directory for changes made outside Clacks.
    pub poll_secs: f64,
    /// Seconds between walks of every backend for objects deleted outside Clacks.
    pub sweep_secs: f64,
    /// The lowest uidNumber/gidNumber an account or group may get (below are system
    /// accounts; 0 is root).
    pub min_unix_id: i64,
    /// `[objects.ldap]`: the directory; none = objects live in SQL.
    pub ldap: Option<clacks_objects::backend::ldap::LdapSettings>,
}

impl Default for ObjectsSection {
    fn default() -> ObjectsSection {
        ObjectsSection {
            enabled: true,
            data_dir: None,
            sql_url: None,
            index_url: None,
            dirs: Vec::new(),
            reference_idle_secs: 3600,
            poll_secs: 10.0,
            sweep_secs: 600.0,
            min_unix_id: clacks_objects::store::DEFAULT_MIN_UNIX_ID,
            ldap: None,
        }
    }
}

impl ObjectsSection {
    /// The agent's object options, or `None` when disabled.
    pub fn options(&self) -> Option<crate::daemon::ObjectsOptions> {
        if !self.enabled {
            return None;
        }
        let data_dir = self.data_dir.clone().unwrap_or_else(default_data_dir);
        Some(crate::daemon::ObjectsOptions {
            store: clacks_objects::StoreConfig {
                ldap: self.ldap.clone(),
                sql_url: self.sql_url.clone(),
                index_url: self.index_url.clone(),
                base: None,
                dirs: self.dirs.clone(),
                reference_idle_secs: Some(self.reference_idle_secs),
                min_unix_id: Some(self.min_unix_id),
            },
            default_sql: format!("sqlite://{}", data_dir.join("objects.db").display()),
            poll: secs(self.poll_secs),
            expire: Duration::from_secs(60),
            sweep: secs(self.sweep_secs),
        })
    }
}

/// The user's data folder for Clacks (`$XDG_DATA_HOME/clacks`, `~/.local/share/clacks`).
pub fn default_data_dir() -> PathBuf {
    directories::ProjectDirs::from("org", "clacks", "clacks")
        .map(|d| d.data_dir().to_owned())
        .unwrap_or_else(|| std::env::temp_dir().join("clacks"))
}

/// `[amqp]`: the broker.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpSection {
    /// `amqp[s]://user:password@host:port/vhost`; none = no broker. A comma list names
    /// the nodes of a cluster.
    pub url: Option<String>,
    /// More addresses of the same broker (a cluster's other nodes), tried after a
    /// connection loss; one without a login takes `url`'s.
    pub urls: Vec<String>,
    /// `quorum`: the shared command queues are replicated over the cluster's nodes and
    /// survive the loss of one; `classic`: on one node, lighter, for a single broker.
    /// Default: quorum when several broker addresses are given (a cluster), else
    /// classic. Every agent of a domain must use the same.
    pub queue_type: Option<clacks_core::bus::amqp::QueueType>,
    /// Heartbeat interval in seconds.
    pub heartbeat: u16,
    /// Requests in flight per queue.
    pub prefetch: u16,
    /// Broker users of the domain's other agents: allowed to forward calls on behalf of
    /// others, believed when they announce nodes and when they reply. The agent's own
    /// broker user always is.
    pub trusted_forwarders: Vec<String>,
    /// For `amqps://`: PEM file of the CA that signed the broker's certificate (default:
    /// the system's roots).
    pub ca_file: Option<PathBuf>,
    /// For `amqps://…?auth_mechanism=external`: the agent's certificate and key (PEM);
    /// the broker takes the agent's identity from the certificate (SASL EXTERNAL).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl AmqpSection {
    /// Every broker address, `url` first then `urls`, as one comma list (what the bus
    /// connects to); none when neither is given.
    pub fn broker_url(&self) -> Option<String> {
        let all: Vec<&str> = self.url.iter().chain(&self.urls).map(String::as_str).filter(|u| !u.is_empty()).collect();
        (!all.is_empty()).then(|| all.join(","))
    }

    /// The queue type asked for, or the default: quorum for a cluster (several
    /// addresses), classic for one broker.
    pub fn queue_type(&self) -> clacks_core::bus::amqp::QueueType {
        use clacks_core::bus::amqp::{QueueType, broker_urls};
        let addresses = self.broker_url().map_or(0, |list| broker_urls(&list).len());
        self.queue_type.unwrap_or(if addresses > 1 { QueueType::Quorum } else { QueueType::Classic })
    }
}

/// `[http]`: the JSON-RPC endpoint.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// `host:port` to listen on; none = no HTTP.
    pub listen: Option<String>,
    /// How logins check passwords: `broker` (open a broker connection as the user),
    /// `directory` (bind to the object store's directory as the user; without one, the
    /// user object's `userPassword`) or `users` (the hashes below). Default: `broker`
    /// when a broker is configured, else `users`.
    pub auth: Option<String>,
    /// Seconds a session may stay idle.
    pub session_idle_secs: u64,
    /// User name → argon2 PHC hash or SCRAM-SHA-256 verifier (`clacks-agent
    /// hash-password [--scram]` makes either); SCRAM logins need the verifier.
    pub users: BTreeMap<String, String>,
    /// PEM certificate (chain) for HTTPS; with `tls_key`, the endpoint speaks only HTTPS.
    /// `clacks-agent make-cert` makes a self-signed pair for development.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Calls in one JSON-RPC batch.
    pub max_batch: usize,
    /// Requests in progress from one peer address.
    pub max_concurrent_per_peer: usize,
    /// Requests in progress in one session.
    pub max_concurrent_per_session: usize,
}

impl HttpSection {
    /// The endpoint's limits.
    pub fn limits(&self) -> crate::http_limits::HttpLimits {
        crate::http_limits::HttpLimits {
            max_batch: self.max_batch.max(1),
            per_peer: self.max_concurrent_per_peer.max(1),
            per_session: self.max_concurrent_per_session.max(1),
            ..crate::http_limits::HttpLimits::default()
        }
    }
}

/// `[plugins]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsSection {
    /// Folder of `.rhai` plugins.
    pub dir: Option<PathBuf>,
    /// Shipped optional plugins to enable: `telephony`, `statistics`.
    pub enable: Vec<String>,
}

/// `[schemas]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SchemasSection {
    /// Extra folders of event XSD files.
    pub dirs: Vec<PathBuf>,
}

/// `[rpc]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RpcSection {
    /// Deadline of calls that do not bring one, in seconds.
    pub timeout_secs: f64,
    /// Largest request body in bytes.
    pub max_request_bytes: usize,
}

/// `[presence]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceSection {
    /// Seconds between NodeStatus heartbeats.
    pub heartbeat_secs: f64,
    /// Seconds of silence after which a node is dropped.
    pub node_timeout_secs: f64,
}

impl Default for AgentConfig {
    fn default() -> AgentConfig {
        AgentConfig {
            domain: clacks_core::domain::DEFAULT_DOMAIN.to_owned(),
            node: None,
            base: None,
            amqp: AmqpSection::default(),
            http: HttpSection::default(),
            plugins: PluginsSection::default(),
            schemas: SchemasSection::default(),
            rpc: RpcSection::default(),
            presence: PresenceSection::default(),
            objects: ObjectsSection::default(),
            acl: AclSection::default(),
            clients: ClientsSection::default(),
        }
    }
}

impl Default for AmqpSection {
    fn default() -> AmqpSection {
        AmqpSection {
            url: None,
            urls: Vec::new(),
            queue_type: None,
            heartbeat: 10,
            prefetch: 32,
            trusted_forwarders: Vec::new(),
            ca_file: None,
            client_cert: None,
            client_key: None,
        }
    }
}

impl Default for HttpSection {
    fn default() -> HttpSection {
        let limits = crate::http_limits::HttpLimits::default();
        HttpSection {
            listen: None,
            auth: None,
            session_idle_secs: 3600,
            users: BTreeMap::new(),
            tls_cert: None,
            tls_key: None,
            max_batch: limits.max_batch,
            max_concurrent_per_peer: limits.per_peer,
            max_concurrent_per_session: limits.per_session,
        }
    }
}

impl Default for RpcSection {
    fn default() -> RpcSection {
        RpcSection { timeout_secs: 30.0, max_request_bytes: 4 * 1024 * 1024 }
    }
}

impl Default for PresenceSection {
    fn default() -> PresenceSection {
        PresenceSection { heartbeat_secs: 10.0, node_timeout_secs: 35.0 }
    }
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl AgentConfig {
    /// Reads `path`, or the default location when it exists, or the defaults.
    pub fn load(path: Option<&Path>) -> Result<AgentConfig, ConfigError> {
        let path = match path {
            Some(p) => p.to_owned(),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => PathBuf::from(DEFAULT_CONFIG_PATH),
            None => return Ok(AgentConfig::default()),
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        AgentConfig::parse(&text).map_err(|message| ConfigError::Parse { path, message })
    }

    /// Parses the TOML text.
    pub fn parse(text: &str) -> Result<AgentConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// Checks ranges that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(ConfigError::Invalid(format!("{name} must be a positive number of seconds")))
            }
        };
        positive("rpc.timeout_secs", self.rpc.timeout_secs)?;
        positive("clients.timeout_secs", self.clients.timeout_secs)?;
        if self.clients.broker_api.is_some() && self.clients.broker_api_user.is_none() {
            return Err(ConfigError::Invalid(
                "clients.broker_api needs broker_api_user and broker_api_password".into(),
            ));
        }
        positive("presence.heartbeat_secs", self.presence.heartbeat_secs)?;
        positive("presence.node_timeout_secs", self.presence.node_timeout_secs)?;
        positive("objects.poll_secs", self.objects.poll_secs)?;
        positive("objects.sweep_secs", self.objects.sweep_secs)?;
        if self.objects.reference_idle_secs <= 0 {
            return Err(ConfigError::Invalid("objects.reference_idle_secs must be positive".into()));
        }
        if self.presence.node_timeout_secs <= self.presence.heartbeat_secs {
            return Err(ConfigError::Invalid(
                "presence.node_timeout_secs must be longer than presence.heartbeat_secs".into(),
            ));
        }
        if self.amqp.client_cert.is_some() != self.amqp.client_key.is_some() {
            return Err(ConfigError::Invalid(
                "amqp.client_cert and amqp.client_key go together: give both or neither".into(),
            ));
        }
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "http.tls_cert and http.tls_key go together: give both or neither".into(),
            ));
        }
        if let Some(auth) = &self.http.auth
            && !["broker", "directory", "users"].contains(&auth.as_str())
        {
            return Err(ConfigError::Invalid(format!(
                "http.auth must be \"broker\", \"directory\" or \"users\", not \"{auth}\""
            )));
        }
        if self.http.auth.as_deref() == Some("directory") && !self.objects.enabled {
            return Err(ConfigError::Invalid("http.auth = \"directory\" needs the object store ([objects])".into()));
        }
        Ok(())
    }
}

/// Seconds as a `Duration`, for the float fields above.
pub fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v.max(0.001))
}

/// What stands where a secret was in `show-config`.
const REDACTED: &str = "<redacted>";

impl AgentConfig {
    /// The configuration as `agent.toml` would say it, every secret left out: passwords
    /// in URLs dropped, password settings and the HTTP users' hashes replaced by
    /// `<redacted>`. Unset settings are not shown.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        let url = |u: &mut Option<String>| {
            if let Some(text) = u {
                *text = clacks_core::bus::amqp::redact_url(text);
            }
        };
        let secret = |v: &mut Option<String>| {
            if v.is_some() {
                *v = Some(REDACTED.to_owned());
            }
        };
        url(&mut shown.amqp.url);
        for address in &mut shown.amqp.urls {
            *address = clacks_core::bus::amqp::redact_url(address);
        }
        url(&mut shown.objects.sql_url);
        url(&mut shown.objects.index_url);
        url(&mut shown.clients.broker_api);
        secret(&mut shown.clients.broker_api_password);
        if let Some(ldap) = &mut shown.objects.ldap {
            ldap.url = clacks_core::bus::amqp::redact_url(&ldap.url);
            secret(&mut ldap.bind_password);
        }
        for hash in shown.http.users.values_mut() {
            *hash = REDACTED.to_owned();
        }
        // Every section is a table of plain values, which TOML always holds.
        toml::to_string(&shown).unwrap_or_else(|e| format!("# the configuration cannot be shown as TOML: {e}\n"))
    }

    /// The base DN set for this agent: `base`, else the directory's; `None` leaves the
    /// one derived from the domain.
    pub fn effective_base(&self) -> Option<String> {
        let directory = self.objects.ldap.as_ref().filter(|_| self.objects.enabled).map(|l| l.base.clone());
        self.base.clone().or(directory)
    }
}

/// The base DN derived from a domain: `org.clacks` → `dc=clacks,dc=org`.
pub fn base_from_domain(domain: &str) -> String {
    domain.split('.').rev().map(|label| format!("dc={label}")).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    #[track_caller]
    fn check(text: &str, expect: Expect) {
        let shown = match AgentConfig::parse(text) {
            Ok(c) => match c.validate() {
                Ok(()) => format!(
                    "ok domain={} amqp={:?} listen={:?} timeout={}",
                    c.domain, c.amqp.url, c.http.listen, c.rpc.timeout_secs
                ),
                Err(e) => e.to_string(),
            },
            Err(e) => e,
        };
        expect.assert_eq(&shown);
    }

    #[test]
    fn files() {
        check("", expect![[r#"ok domain=org.clacks amqp=None listen=None timeout=30"#]]);
        check(
            "domain = \"net.example\"\n[amqp]\nurl = \"amqp://a:b@h/%2f\"\n[http]\nlisten = \"127.0.0.1:8080\"\n[rpc]\ntimeout_secs = 5\n",
            expect![[r#"ok domain=net.example amqp=Some("amqp://a:b@h/%2f") listen=Some("127.0.0.1:8080") timeout=5"#]],
        );
        check(
            "[amqp]\nurll = \"x\"\n",
            expect![[r#"
                TOML parse error at line 2, column 1
                  |
                2 | urll = "x"
                  | ^^^^
                unknown field `urll`, expected one of `url`, `urls`, `queue_type`, `heartbeat`, `prefetch`, `trusted_forwarders`, `ca_file`, `client_cert`, `client_key`"#]],
        );
        check(
            "[presence]\nheartbeat_secs = 40\n",
            expect!["presence.node_timeout_secs must be longer than presence.heartbeat_secs"],
        );
        check(
            "[http]\nauth = \"ldap\"\n",
            expect![[r#"http.auth must be "broker", "directory" or "users", not "ldap""#]],
        );
    }

    #[test]
    fn the_documented_example_is_valid() {
        let text = include_str!("../../docs/agent.toml");
        let config = AgentConfig::parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config, AgentConfig::default());
        assert!(config.validate().is_ok());
        // The commented directory section is valid too, once uncommented.
        let directory: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("# [objects.ldap]"))
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.trim_start_matches("# "))
            .collect();
        let config = AgentConfig::parse(&directory.join("\n")).unwrap_or_else(|e| panic!("{e}"));
        let ldap = config.objects.ldap.unwrap_or_else(|| panic!("an [objects.ldap] section"));
        assert_eq!((ldap.base.as_str(), ldap.accesslog.as_str()), ("dc=example,dc=net", "cn=accesslog"));
    }

    #[test]
    fn show_config_says_toml_without_secrets() {
        let config = AgentConfig::parse(
            "[amqp]\nurl = \"amqp://agent:s3cret@broker:5672/%2f\"\n\
             [http]\nlisten = \"127.0.0.1:8080\"\n[http.users]\nada = \"$argon2id$v=19$secret-hash\"\n\
             [objects]\nsql_url = \"postgres://clacks:dbpass@db/clacks\"\n\
             [objects.ldap]\nurl = \"ldap://ldap\"\nbase = \"dc=example,dc=net\"\nbind_password = \"ldappass\"\n\
             [clients]\nbroker_api = \"http://admin:apipass@broker:15672\"\nbroker_api_password = \"apipass\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let shown = config.to_redacted_toml();
        for secret in ["s3cret", "secret-hash", "dbpass", "ldappass", "apipass"] {
            assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
        }
        let read_back = AgentConfig::parse(&shown).unwrap_or_else(|e| panic!("{e}\n{shown}"));
        assert_eq!(read_back.amqp.url.as_deref(), Some("amqp://agent@broker:5672/%2f"));
        assert_eq!(read_back.http.users.get("ada").map(String::as_str), Some(REDACTED));
        assert_eq!(read_back.objects.ldap.map(|l| l.bind_password), Some(Some(REDACTED.to_owned())));
        let defaults = AgentConfig::default().to_redacted_toml();
        assert_eq!(AgentConfig::parse(&defaults).unwrap_or_else(|e| panic!("{e}\n{defaults}")), AgentConfig::default());
    }

    #[test]
    fn base_dn() {
        assert_eq!(base_from_domain("org.clacks"), "dc=clacks,dc=org");
        let with_directory: AgentConfig =
            toml::from_str("[objects.ldap]\nurl = \"ldap://127.0.0.1:1\"\nbase = \"dc=example,dc=org\"\n")
                .expect("config");
        assert_eq!(with_directory.effective_base().as_deref(), Some("dc=example,dc=org"), "the directory's base");
        let both: AgentConfig = toml::from_str(
            "base = \"dc=site\"\n[objects.ldap]\nurl = \"ldap://127.0.0.1:1\"\nbase = \"dc=example,dc=org\"\n",
        )
        .expect("config");
        assert_eq!(both.effective_base().as_deref(), Some("dc=site"), "an explicit base wins");
        assert_eq!(AgentConfig::default().effective_base(), None);
    }
}
