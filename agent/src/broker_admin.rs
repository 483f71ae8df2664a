//! Broker logins for joined clients, made through RabbitMQ's management API.
//!
//! A client logs in to the broker as its own user (its client id, the machine secret
//! as password), so the broker vouches for it in every message's `user_id`. Its
//! permissions let it do only what a client does: declare and consume its own queue
//! `<domain>.client.<id>` and a server-named subscription queue, reply through the
//! default exchange, and publish its presence, inventory and session events — the
//! topic permission names each event type it may send, and receivers also check that
//! an event's `Id` is the sender's own.

use std::time::Duration;

use clacks_core::bus::amqp::percent_encode;
use clacks_core::domain::Domain;
use serde_json::json;

/// Where and as whom to reach the management API (`[clients]` in agent.toml).
#[derive(Clone)]
pub struct BrokerAdmin {
    api: String,
    user: String,
    password: String,
    vhost: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for BrokerAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerAdmin").field("api", &self.api).field("user", &self.user).finish_non_exhaustive()
    }
}

pub use clacks_core::bus::permissions::CLIENT_EVENTS;
use clacks_core::bus::permissions::{BrokerPermissions, BrokerRole};

impl BrokerAdmin {
    /// `api` is the management base URL (`http://broker:15672`); `vhost` the one the
    /// domain lives in.
    pub fn new(api: &str, user: &str, password: &str, vhost: &str) -> Result<BrokerAdmin, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("cannot set up HTTP: {e}"))?;
        Ok(BrokerAdmin {
            api: api.trim_end_matches('/').to_owned(),
            user: user.to_owned(),
            password: password.to_owned(),
            vhost: vhost.to_owned(),
            http,
        })
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<serde_json::Value>) -> Result<(), String> {
        let url = format!("{}/api/{path}", self.api);
        let mut request = self.http.request(method.clone(), &url).basic_auth(&self.user, Some(&self.password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = response.status();
        if status.is_success() || (method == reqwest::Method::DELETE && status.as_u16() == 404) {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        Err(format!("{method} {url}: HTTP {status} {}", text.chars().take(200).collect::<String>()))
    }

    /// Creates (or resets) the broker user of client `id` with its permissions.
    pub async fn create_client(&self, domain: &Domain, id: &str, secret: &str) -> Result<(), String> {
        let vhost = percent_encode(&self.vhost);
        let user = percent_encode(id);
        self.send(reqwest::Method::PUT, &format!("users/{user}"), Some(json!({"password": secret, "tags": ""})))
            .await?;
        let granted = BrokerPermissions::for_role(domain, &BrokerRole::Client(id.to_owned()));
        let permissions = json!({"configure": granted.configure, "write": granted.write, "read": granted.read});
        self.send(reqwest::Method::PUT, &format!("permissions/{vhost}/{user}"), Some(permissions)).await?;
        let topics = json!({
            "exchange": granted.topic_exchange,
            "write": granted.topic_write,
            "read": granted.topic_read,
        });
        self.send(reqwest::Method::PUT, &format!("topic-permissions/{vhost}/{user}"), Some(topics)).await
    }

    /// Deletes the broker user of client `id` (gone already counts as done).
    pub async fn delete_client(&self, id: &str) -> Result<(), String> {
        self.send(reqwest::Method::DELETE, &format!("users/{}", percent_encode(id)), None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_for_urls_and_regexes() {
        assert_eq!(percent_encode("/"), "%2F");
        assert_eq!(percent_encode("a b"), "a%20b");
        assert_eq!(regex::escape("org.clacks"), r"org\.clacks");
    }
}
