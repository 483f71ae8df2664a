//! Turning the command line into a connected [`Client`]: embedded domain, AMQP or HTTP.

use std::time::Duration;

use clacks_core::bus::Bus;
use clacks_core::bus::amqp::{AmqpBus, AmqpSettings};
use clacks_core::client::{Client, ClientError};
use clacks_core::domain::Domain;

/// What to connect to, resolved from flags, environment and config.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) url: Option<String>,
    pub(crate) domain: Domain,
    pub(crate) user: String,
    /// The user came from a flag, the environment or the config (no need to ask).
    pub(crate) user_given: bool,
    pub(crate) password: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) plugins: Option<std::path::PathBuf>,
    /// The CA for `amqps://` brokers, when not the system's roots.
    pub(crate) ca_file: Option<std::path::PathBuf>,
    /// Broker users of the domain's agents (besides `user`), for `amqp[s]://`.
    pub(crate) agent_users: Vec<String>,
}

impl Target {
    /// The user the transport logs in as: the one the URL names (`amqp://guest@…`), else
    /// the one given or the login name.
    pub(crate) fn login_user(&self) -> String {
        self.url.as_deref().and_then(clacks_core::bus::amqp::user_of).unwrap_or_else(|| self.user.clone())
    }
}

/// A live connection plus whatever keeps it alive (the embedded agent).
pub(crate) struct Session {
    pub(crate) client: std::sync::Arc<Client>,
    embedded: Option<clacks_agent::embedded::Embedded>,
}

impl Session {
    pub(crate) async fn close(self) {
        self.client.close().await;
        // Nobody is left to receive what the embedded domain still computes (a call
        // abandoned with Ctrl-C), so its calls get a moment, not the full deadline.
        if let Some(embedded) = self.embedded {
            embedded.agent.stop_within(std::time::Duration::from_millis(500)).await;
        }
    }
}

/// Whether connecting to `url` needs a password we do not have yet.
fn needs_password(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else { return false };
    matches!(parsed.scheme(), "amqp" | "amqps" | "http" | "https") && parsed.password().is_none()
}

/// On a terminal, asks for what the transport needs: the user (interactive shell only,
/// default the login name) and a hidden password.
pub(crate) fn ask_credentials(target: &mut Target, interactive: bool) {
    let Some(url) = target.url.as_deref() else { return };
    if target.password.is_some() || !needs_password(url) {
        return;
    }
    if interactive && !target.user_given {
        eprint!("Username [{}]: ", target.user);
        let mut answer = String::new();
        if std::io::stdin().read_line(&mut answer).is_ok() && !answer.trim().is_empty() {
            target.user = answer.trim().to_owned();
        }
    }
    if let Ok(password) = rpassword::prompt_password(format!("Password for {}: ", target.login_user())) {
        target.password = Some(password);
    }
}

/// The login name of the user running the shell.
pub(crate) fn login_name() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(passwd_name)
        .unwrap_or_else(|| "admin".to_owned())
}

/// The account name of this process's user from /etc/passwd, for when neither USER nor
/// LOGNAME is set (cron, containers).
fn passwd_name() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.to_owned();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)? == uid).then(|| name.to_owned())
    })
}

/// The CA certificates the target says to trust (`--ca-file`), if any.
fn read_ca(target: &Target) -> Result<Option<String>, ClientError> {
    match &target.ca_file {
        Some(path) => std::fs::read_to_string(path)
            .map(Some)
            .map_err(|e| ClientError::Connect(format!("cannot read the CA file {}: {e}", path.display()))),
        None => Ok(None),
    }
}

pub(crate) async fn connect(target: &Target) -> Result<Session, ClientError> {
    match target.url.as_deref() {
        None => {
            let mut options = clacks_agent::embedded::default_options(target.domain.clone());
            options.plugins_dir = target.plugins.clone();
            options.rpc_timeout = target.timeout;
            let embedded = clacks_agent::embedded::start(&target.user, options, Vec::new())
                .await
                .map_err(|e| ClientError::Connect(format!("cannot start the embedded domain: {e}")))?;
            // The embedded agent's validator already holds the schemas (its plugins' too).
            let client = Client::over_bus(embedded.caller_bus.clone(), target.domain.clone(), target.timeout)
                .with_validator(embedded.agent.events().validator().clone());
            Ok(Session { client: std::sync::Arc::new(client), embedded: Some(embedded) })
        }
        Some(url) if url.starts_with("amqp://") || url.starts_with("amqps://") => {
            let url = with_credentials(url, &target.user, target.password.as_deref());
            let ca_pem =
                match &target.ca_file {
                    Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                        ClientError::Connect(format!("cannot read the CA file {}: {e}", path.display()))
                    })?),
                    None => None,
                };
            let settings = AmqpSettings {
                connection_name: format!("clacks shell {}", target.user),
                ca_pem,
                agent_users: target.agent_users.clone(),
                ..AmqpSettings::default()
            };
            let bus = AmqpBus::connect(&url, target.domain.clone(), settings).await?;
            Ok(Session {
                client: std::sync::Arc::new(Client::over_bus(Bus::Amqp(bus), target.domain.clone(), target.timeout)),
                embedded: None,
            })
        }
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            let Some(password) = target.password.as_deref() else {
                return Err(ClientError::Auth(format!(
                    "{url} needs a password: give --password or set CLACKS_PASSWORD"
                )));
            };
            let ca_pem = read_ca(target)?;
            let client =
                Client::connect_http_with_ca(url, &target.user, password, target.timeout, ca_pem.as_deref()).await?;
            if let Some(notice) = client.login_notice() {
                eprintln!("clacks: warning: {notice}");
            }
            Ok(Session { client: std::sync::Arc::new(client), embedded: None })
        }
        Some(url) => {
            Err(ClientError::Connect(format!("unsupported URL '{url}': use amqp://, amqps://, http:// or https://")))
        }
    }
}

/// Puts user and password into an AMQP URL that has no login of its own, and the
/// password into one that names only its user (`amqps://ada@broker/…`).
fn with_credentials(url: &str, user: &str, password: Option<&str>) -> String {
    match url::Url::parse(url) {
        Ok(parsed) if parsed.username().is_empty() => {
            clacks_core::bus::amqp::with_login(url, user, password).unwrap_or_else(|_| url.to_owned())
        }
        Ok(mut parsed) if parsed.password().is_none() && password.is_some() => match parsed.set_password(password) {
            Ok(()) => parsed.to_string(),
            Err(()) => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::with_credentials;

    #[test]
    fn which_urls_need_a_password() {
        assert!(super::needs_password("amqp://h/%2f"));
        assert!(super::needs_password("amqps://ada@h/%2f"));
        assert!(!super::needs_password("amqp://ada:pw@h/%2f"));
        assert!(super::needs_password("http://h:8080/rpc"));
    }

    #[test]
    fn credentials_go_into_bare_urls_only() {
        assert_eq!(with_credentials("amqp://h:5672/%2f", "ada", Some("p@ss")), "amqp://ada:p%40ss@h:5672/%2f");
        assert_eq!(with_credentials("amqp://u:p@h/", "ada", Some("x")), "amqp://u:p@h/");
        assert_eq!(with_credentials("amqps://ada@h/%2f", "root", Some("s3:cret")), "amqps://ada:s3%3Acret@h/%2f");
        assert_eq!(with_credentials("amqps://ada@h/%2f", "root", None), "amqps://ada@h/%2f");
        assert_eq!(clacks_core::bus::amqp::user_of("amqp://a%2Bb:pw@h/%2f").as_deref(), Some("a+b"));
        assert_eq!(clacks_core::bus::amqp::user_of("amqp://h/%2f"), None);
    }
}
