//! The caller side: what the shell, scripts and tests use to call commands in a
//! domain, over the bus (AMQP or embedded) or over HTTP JSON-RPC.
//!
//! A call over the bus goes to the shared queue of the command's target when the
//! client has learnt it from `getMethods`, otherwise to `D.command.core`, whose agents
//! forward it to a provider — so a caller never needs to know where a command lives.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::bus::{Bus, BusError, CallOptions};
use crate::domain::Domain;
use crate::rpc::{ErrorCode, Params, Request, RpcError, decode_response};

/// An error with its causes, `outer: inner: innermost` (reqwest puts the TLS reason,
/// e.g. an unknown issuer, two levels down).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// How a password sent to `url` would travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordTransport {
    /// Inside TLS (`https://`).
    Encrypted,
    /// Unencrypted, but to this machine (a loopback address or `localhost`).
    Loopback,
    /// Unencrypted over the network.
    Clear,
}

/// How a password sent to `url` would travel.
pub fn password_transport(url: &str) -> PasswordTransport {
    let Ok(parsed) = reqwest::Url::parse(url) else { return PasswordTransport::Clear };
    if parsed.scheme() == "https" {
        return PasswordTransport::Encrypted;
    }
    let loopback = match parsed.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if loopback { PasswordTransport::Loopback } else { PasswordTransport::Clear }
}

/// Why a call failed, sorted the way a command line reports it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The command ran (or was routed) and answered with an error.
    #[error("{0}")]
    Rpc(RpcError),
    /// The domain could not be reached.
    #[error("{0}")]
    Connect(String),
    /// The credentials were refused.
    #[error("{0}")]
    Auth(String),
}

impl ClientError {
    /// The symbolic code for display.
    pub fn code(&self) -> ErrorCode {
        match self {
            ClientError::Rpc(e) => e.symbolic(),
            ClientError::Connect(_) => ErrorCode::CONNECTION_LOST,
            ClientError::Auth(_) => ErrorCode::NOT_AUTHENTICATED,
        }
    }
}

impl From<BusError> for ClientError {
    fn from(e: BusError) -> ClientError {
        match e {
            BusError::Connect { .. } => ClientError::Connect(e.to_string()),
            BusError::AccessRefused { .. } => ClientError::Auth(e.to_string()),
            other => ClientError::Rpc(other.to_rpc_error()),
        }
    }
}

enum Transport {
    Bus {
        bus: Bus,
        domain: Domain,
        targets: RwLock<HashMap<String, String>>,
        /// Checks received events; started with the first subscription.
        validator: std::sync::OnceLock<crate::events::EventValidator>,
    },
    Http {
        http: reqwest::Client,
        url: String,
    },
}

/// A connection to a domain for making calls.
pub struct Client {
    transport: Transport,
    timeout: Duration,
    next_id: AtomicU64,
    /// What the user should know about how the login went (a password sent without
    /// SCRAM); the shell prints it as a warning.
    login_notice: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Client {
    /// Calls through an existing bus (AMQP or embedded).
    pub fn over_bus(bus: Bus, domain: Domain, timeout: Duration) -> Client {
        Client {
            transport: Transport::Bus { bus, domain, targets: RwLock::default(), validator: Default::default() },
            timeout,
            next_id: AtomicU64::new(1),
            login_notice: None,
        }
    }

    /// The same client checking received events with `validator` (an embedding process's
    /// own, with its schemas) instead of starting a libxml2 thread of its own.
    pub fn with_validator(self, validator: crate::events::EventValidator) -> Client {
        if let Transport::Bus { validator: slot, .. } = &self.transport {
            let _ = slot.set(validator);
        }
        self
    }

    /// Connects to an agent's JSON-RPC endpoint (`http[s]://host:port/rpc`) and logs in.
    pub async fn connect_http(url: &str, user: &str, password: &str, timeout: Duration) -> Result<Client, ClientError> {
        Client::connect_http_with_ca(url, user, password, timeout, None).await
    }

    /// [`Client::connect_http`] trusting, for `https://`, only the CA certificates in
    /// `ca_pem` (PEM) instead of the system's roots.
    pub async fn connect_http_with_ca(
        url: &str,
        user: &str,
        password: &str,
        timeout: Duration,
        ca_pem: Option<&str>,
    ) -> Result<Client, ClientError> {
        let mut builder =
            reqwest::Client::builder().cookie_store(true).timeout(timeout).connect_timeout(Duration::from_secs(5));
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| ClientError::Connect(format!("the CA file is not PEM: {e}")))?;
            builder = builder.tls_certs_only(certs);
        }
        let http = builder.build().map_err(|e| ClientError::Connect(format!("cannot set up HTTP: {e}")))?;
        let mut client = Client {
            transport: Transport::Http { http, url: url.to_owned() },
            timeout,
            next_id: AtomicU64::new(1),
            login_notice: None,
        };
        // SCRAM when the agent offers it: the password never crosses the wire, and the
        // agent proves it knows the verifier too.
        let offered = match client.call("saslMechanisms", Params::None).await {
            Ok(Value::Array(names)) => names.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        // `login` hands the agent the password itself: only over TLS, or to this machine,
        // and the user is told either way.
        let caller = &client;
        let login = |why: &str| {
            let why = why.to_owned();
            async move {
                let notice = match password_transport(url) {
                    PasswordTransport::Encrypted => format!("{why}; logged in with the password over TLS"),
                    PasswordTransport::Loopback => {
                        format!("{why}; the password went unencrypted to this machine ({url})")
                    }
                    PasswordTransport::Clear => {
                        return Err(ClientError::Auth(format!(
                            "{why}, and {url} is not encrypted: the password is not sent in clear; use https://"
                        )));
                    }
                };
                caller.call("login", Params::Positional(vec![user.into(), password.into()])).await.map(|_| Some(notice))
            }
        };
        let outcome = if offered.iter().any(|m| m == crate::sasl::SCRAM_SHA_256) {
            match client.scram_login(user, password).await {
                // The agent has no SCRAM credentials for this user: it says so up front.
                Err(ClientError::Rpc(e))
                    if e.data.as_ref().and_then(|d| d.details.as_ref()).is_some_and(|d| d.get("use").is_some()) =>
                {
                    login(&format!("the agent has no SCRAM credentials for '{user}'")).await
                }
                other => other.map(|()| None),
            }
        } else {
            login("the agent offers no SCRAM login").await
        };
        match outcome {
            Ok(notice) => {
                client.login_notice = notice;
                Ok(client)
            }
            Err(ClientError::Rpc(e)) if e.symbolic() == ErrorCode::LOGIN_FAILED => Err(ClientError::Auth(e.message)),
            Err(e) => Err(e),
        }
    }

    /// What the user should know about how the login went, e.g. that the agent offered
    /// no SCRAM and the password itself was sent (over TLS, or to this machine).
    pub fn login_notice(&self) -> Option<&str> {
        self.login_notice.as_deref()
    }

    /// A SASL SCRAM-SHA-256 exchange over `saslStart`/`saslStep`.
    async fn scram_login(&self, user: &str, password: &str) -> Result<(), ClientError> {
        use base64::Engine as _;
        use base64::engine::general_purpose::STANDARD as B64;
        let auth = |m: String| ClientError::Auth(format!("SCRAM login: {m}"));
        let config = rsasl::prelude::SASLConfig::with_credentials(None, user.to_owned(), password.to_owned())
            .map_err(|e| auth(e.to_string()))?;
        let mechanism =
            rsasl::mechname::Mechname::parse(crate::sasl::SCRAM_SHA_256.as_bytes()).map_err(|e| auth(e.to_string()))?;
        let mut session =
            rsasl::prelude::SASLClient::new(config).start_suggested(&[mechanism]).map_err(|e| auth(e.to_string()))?;
        let mut out = Vec::new();
        session.step(None, &mut out).map_err(|e| auth(e.to_string()))?;
        let start = [
            ("mechanism".to_owned(), Value::from(crate::sasl::SCRAM_SHA_256)),
            ("data".to_owned(), Value::from(B64.encode(&out))),
        ];
        let mut reply = self.call("saslStart", Params::Named(start.into_iter().collect())).await?;
        // Each reply carries the agent's next message; the last one proves the agent's side.
        for _ in 0..4 {
            let data = reply.get("data").and_then(Value::as_str).unwrap_or_default();
            let data = B64.decode(data).map_err(|e| auth(format!("the agent sent bad data: {e}")))?;
            let mut out = Vec::new();
            let state = session.step(Some(&data), &mut out).map_err(|e| auth(e.to_string()))?;
            if reply.get("done") == Some(&Value::Bool(true)) {
                return if state.is_finished() {
                    Ok(())
                } else {
                    Err(auth("the agent ended the exchange early".into()))
                };
            }
            let conversation = reply.get("conversation").cloned().unwrap_or(Value::Null);
            let step = [("conversation".to_owned(), conversation), ("data".to_owned(), Value::from(B64.encode(&out)))];
            reply = self.call("saslStep", Params::Named(step.into_iter().collect())).await?;
        }
        Err(auth("the exchange did not end".into()))
    }

    /// Calls `method` with the default deadline.
    pub async fn call(&self, method: &str, params: Params) -> Result<Value, ClientError> {
        self.call_with_timeout(method, params, self.timeout).await
    }

    /// Calls `method`, giving up after `timeout`.
    pub async fn call_with_timeout(
        &self,
        method: &str,
        params: Params,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        self.call_routed(method, params, timeout, None).await
    }

    /// Calls `method` on one node's private queue (over the bus; HTTP always reaches the
    /// agent it is connected to).
    pub async fn call_on_node(&self, node: &str, method: &str, params: Params) -> Result<Value, ClientError> {
        self.call_routed(method, params, self.timeout, Some(node)).await
    }

    async fn call_routed(
        &self,
        method: &str,
        params: Params,
        timeout: Duration,
        node: Option<&str>,
    ) -> Result<Value, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = Request::new(method, params, Value::from(id));
        match &self.transport {
            Transport::Bus { bus, domain, targets, .. } => {
                let target = targets
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(method)
                    .cloned()
                    .unwrap_or_else(|| "core".to_owned());
                let queue = match node {
                    Some(node) => domain.node_queue(&target, node),
                    None => domain.command_queue(&target),
                };
                let reply = bus.call(&queue, request.to_bytes(), CallOptions::timeout(timeout)).await?;
                decode_response(&reply).map_err(ClientError::Rpc)?.into_result().map_err(ClientError::Rpc)
            }
            Transport::Http { http, url } => {
                if let Some(node) = node {
                    tracing::debug!(%node, "HTTP calls reach the agent behind the URL; --node is ignored");
                }
                let response = http
                    .post(url)
                    .timeout(timeout)
                    .header("content-type", "application/json")
                    .body(request.to_bytes())
                    .send()
                    .await
                    .map_err(|e| {
                        if e.is_timeout() {
                            ClientError::Rpc(RpcError::new(ErrorCode::TIMEOUT, "no reply within the deadline"))
                        } else {
                            ClientError::Connect(format!("cannot reach {url}: {}", with_causes(&e)))
                        }
                    })?;
                let status = response.status();
                let body =
                    response.bytes().await.map_err(|e| ClientError::Connect(format!("reading the reply: {e}")))?;
                match decode_response(&body) {
                    Ok(r) => r.into_result().map_err(ClientError::Rpc),
                    Err(_) if status == reqwest::StatusCode::UNAUTHORIZED => {
                        Err(ClientError::Auth("not logged in or session expired".into()))
                    }
                    Err(_) => {
                        Err(ClientError::Connect(format!("{url} answered HTTP {status} without a JSON-RPC body")))
                    }
                }
            }
        }
    }

    /// Learns which target each command lives on, so later calls go straight to it.
    pub async fn refresh_targets(&self) -> Result<Value, ClientError> {
        let methods = self.call("getMethods", Params::None).await?;
        if let (Transport::Bus { targets, .. }, Some(table)) = (&self.transport, methods.as_object()) {
            let learnt: HashMap<String, String> = table
                .iter()
                .filter_map(|(name, info)| Some((name.clone(), info.get("target")?.as_str()?.to_owned())))
                .collect();
            *targets.write().unwrap_or_else(std::sync::PoisonError::into_inner) = learnt;
        }
        Ok(methods)
    }

    /// Receives events whose type matches one of `types` (`*` for all, `Client*` for a
    /// prefix) and, when given, the XPath `filter`. A bad filter is refused here, before
    /// anything is subscribed. Over HTTP there is no event stream (use `GET /events`).
    ///
    /// Events are validated against the shipped schemas on arrival; what fails, and
    /// types without a schema here, are dropped.
    pub async fn subscribe(
        &self,
        types: &[String],
        filter: Option<&str>,
    ) -> Result<tokio::sync::mpsc::Receiver<crate::bus::EventMessage>, ClientError> {
        self.subscribe_counted(types, filter, false, Default::default()).await
    }

    /// [`Client::subscribe`], counting dropped events in `dropped`; with `unknown_types`
    /// events of types without a schema here (a plugin's own) pass unvalidated.
    pub async fn subscribe_counted(
        &self,
        types: &[String],
        filter: Option<&str>,
        unknown_types: bool,
        dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<tokio::sync::mpsc::Receiver<crate::bus::EventMessage>, ClientError> {
        let filter = filter
            .map(crate::events::Filter::parse)
            .transpose()
            .map_err(|e| ClientError::Rpc(RpcError::new(ErrorCode::EVENT_FILTER_INVALID, e.to_string())))?;
        match &self.transport {
            Transport::Bus { bus, validator, .. } => {
                let validator = match validator.get() {
                    Some(v) => v.clone(),
                    None => {
                        let started = crate::events::EventValidator::start(&[])
                            .map_err(|e| ClientError::Connect(format!("cannot start the event validator: {e}")))?;
                        validator.get_or_init(|| started).clone()
                    }
                };
                let options = crate::events::filter::SubscribeOptions { filter, unknown_types, dropped };
                Ok(crate::events::filter::subscribe(bus, &validator, types, options).await?)
            }
            Transport::Http { url, .. } => Err(ClientError::Connect(format!(
                "{url} is an HTTP endpoint: events need amqp:// or the embedded domain (or GET /events)"
            ))),
        }
    }

    /// Ends the session (HTTP logout; the bus connection closes when dropped).
    pub async fn close(&self) {
        if let Transport::Http { .. } = &self.transport {
            let _ = self.call_with_timeout("logout", Params::None, Duration::from_secs(2)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_travel_in_clear_only_to_this_machine() {
        use super::{PasswordTransport::*, password_transport};
        for (url, expected) in [
            ("https://agent.example.net/rpc", Encrypted),
            ("http://127.0.0.1:8080/rpc", Loopback),
            ("http://127.8.9.10/rpc", Loopback),
            ("http://[::1]:8080/rpc", Loopback),
            ("http://LocalHost:8080/rpc", Loopback),
            ("http://agent.example.net/rpc", Clear),
            ("http://localhost.example.net/rpc", Clear),
            ("http://10.0.0.1/rpc", Clear),
            ("not a url", Clear),
        ] {
            assert_eq!(password_transport(url), expected, "{url}");
        }
    }
}
