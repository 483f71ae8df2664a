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
    pub(crate) password: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) plugins: Option<std::path::PathBuf>,
}

/// A live connection plus whatever keeps it alive (the embedded agent).
pub(crate) struct Session {
    pub(crate) client: Client,
    embedded: Option<clacks_agent::embedded::Embedded>,
}

impl Session {
    pub(crate) async fn close(self) {
        self.client.close().await;
        if let Some(embedded) = self.embedded {
            embedded.agent.stop().await;
        }
    }
}

/// The login name of the user running the shell.
pub(crate) fn login_name() -> String {
    std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "admin".to_owned())
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
            let client = Client::over_bus(embedded.caller_bus.clone(), target.domain.clone(), target.timeout);
            Ok(Session { client, embedded: Some(embedded) })
        }
        Some(url) if url.starts_with("amqp://") || url.starts_with("amqps://") => {
            let url = with_credentials(url, &target.user, target.password.as_deref());
            let settings =
                AmqpSettings { connection_name: format!("clacks shell {}", target.user), ..AmqpSettings::default() };
            let bus = AmqpBus::connect(&url, target.domain.clone(), settings).await.map_err(|e| {
                let text = e.to_string();
                if text.contains("ACCESS_REFUSED") || text.to_ascii_lowercase().contains("auth") {
                    ClientError::Auth(format!("login of user '{}' refused by the broker", target.user))
                } else {
                    ClientError::Connect(text)
                }
            })?;
            Ok(Session {
                client: Client::over_bus(Bus::Amqp(bus), target.domain.clone(), target.timeout),
                embedded: None,
            })
        }
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            let Some(password) = target.password.as_deref() else {
                return Err(ClientError::Auth(format!(
                    "{url} needs a password: give --password or set CLACKS_PASSWORD"
                )));
            };
            let client = Client::connect_http(url, &target.user, password, target.timeout).await?;
            Ok(Session { client, embedded: None })
        }
        Some(url) => {
            Err(ClientError::Connect(format!("unsupported URL '{url}': use amqp://, amqps://, http:// or https://")))
        }
    }
}

/// Puts user and password into an AMQP URL that has none.
fn with_credentials(url: &str, user: &str, password: Option<&str>) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    if rest.split('/').next().is_some_and(|authority| authority.contains('@')) {
        return url.to_owned();
    }
    match password {
        Some(pw) => format!("{scheme}://{}:{}@{rest}", encode(user), encode(pw)),
        None => format!("{scheme}://{}@{rest}", encode(user)),
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::with_credentials;

    #[test]
    fn credentials_go_into_bare_urls_only() {
        assert_eq!(with_credentials("amqp://h:5672/%2f", "ada", Some("p@ss")), "amqp://ada:p%40ss@h:5672/%2f");
        assert_eq!(with_credentials("amqp://u:p@h/", "ada", Some("x")), "amqp://u:p@h/");
    }
}
