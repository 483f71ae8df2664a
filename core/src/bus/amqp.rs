//! The RabbitMQ bus (AMQP 0-9-1 through lapin).
//!
//! One connection per bus, owned by a supervisor task. The supervisor connects,
//! declares the topology (the event exchange, every served queue with its consumer,
//! every event subscription with its bindings, the direct reply-to consumer), publishes
//! the live connection, and waits for it to fail. Then it fails the calls in flight
//! with `ConnectionLost`, waits a jittered, growing delay and starts again. lapin's own
//! auto-recovery is not used: the topology replay is ours so that a test can prove it.
//!
//! Calls publish with `mandatory` on a confirm-mode channel: a request to a queue no
//! agent consumes comes back from the broker at once as `NoProvider` instead of
//! waiting out its deadline. Replies use RabbitMQ's direct reply-to, matched by a
//! random correlation id; a reply counts only when the broker-vouched `user_id` is the
//! identity the call addressed ([`ReplyFrom`]), and a late reply to a call that already
//! gave up is dropped. Replies carry the server's `user_id` so callers can check it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::{
    BusError, CallOptions, EventMessage, ReplyFrom, RequestHandler, RequestMessage, ServeOptions, backoff_delay,
};
use crate::domain::Domain;

/// The pseudo-queue of RabbitMQ's direct reply-to.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Header naming the original caller of a forwarded request.
pub const ON_BEHALF_OF_HEADER: &str = "x-clacks-user";
/// How long closing a connection may wait for the broker's answer.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);
/// Shared command queues disappear after this long without any consumer, so calls to a
/// target whose agents are all gone fail fast again instead of piling up.
const SHARED_QUEUE_EXPIRY_MS: i64 = 5 * 60 * 1000;

/// Connection settings.
#[derive(Clone, Debug)]
pub struct AmqpSettings {
    /// Shown in the RabbitMQ management UI.
    pub connection_name: String,
    /// Heartbeat interval negotiated with the broker, unless the URL sets one.
    pub heartbeat_secs: u16,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// First reconnection delay (before jitter).
    pub reconnect_min: Duration,
    /// Longest reconnection delay.
    pub reconnect_max: Duration,
    /// Keep retrying the first connection instead of failing (agents do; shells don't).
    pub wait_for_broker: bool,
    /// For `amqps://`: the CA certificates (PEM) the broker's certificate must chain to,
    /// instead of the system's roots.
    pub ca_pem: Option<String>,
    /// For `amqps://`: a client certificate and its key (PEM) to present. With
    /// `?auth_mechanism=external` in the URL the broker takes the identity from it (SASL
    /// EXTERNAL); the URL's user must then be the certificate's name as the broker reads it.
    pub client_identity: Option<(String, String)>,
    /// Only check that the domain's event exchange exists instead of declaring it:
    /// joined clients may not configure it (declaring would let them delete it too).
    pub passive_exchange: bool,
    /// Broker users that are agents of the domain, besides this bus's own user: replies
    /// to agent calls are believed only from them.
    pub agent_users: Vec<String>,
    /// The type of the shared command queues this bus declares.
    pub queue_type: QueueType,
}

/// How the shared command queues `D.command.<target>` are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// On one node, not durable: what a single broker needs; the queue (and the requests
    /// in it) goes with its node.
    #[default]
    Classic,
    /// Replicated on the cluster's nodes (Raft), durable: requests survive the loss of a
    /// node. A request delivered [`QUORUM_DELIVERY_LIMIT`] times without an answer — a
    /// poison request that kills its agents — goes to the dead-letter queue, where the
    /// agents answer its caller, instead of looping.
    Quorum,
}

/// Deliveries of one request to a quorum queue before the broker gives up on it.
pub const QUORUM_DELIVERY_LIMIT: i64 = 3;

/// The target whose exchange and queue (`D.command.deadletter`) take the requests the
/// quorum queues gave up on; agents answer their callers from there.
const DEAD_LETTERS: &str = "deadletter";

impl Default for AmqpSettings {
    fn default() -> AmqpSettings {
        AmqpSettings {
            connection_name: "clacks".into(),
            passive_exchange: false,
            heartbeat_secs: 10,
            connect_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(3),
            wait_for_broker: false,
            ca_pem: None,
            client_identity: None,
            agent_users: Vec::new(),
            queue_type: QueueType::Classic,
        }
    }
}

struct Live {
    connection: Connection,
    rpc: Channel,
    publish: Channel,
    failed: CancellationToken,
    /// The dead-letter queue of the quorum queues is consumed on this connection.
    answering_dead_letters: std::sync::atomic::AtomicBool,
}

struct Served {
    queue: String,
    options: ServeOptions,
    handler: RequestHandler,
}

struct Subscription {
    types: Vec<String>,
    sender: mpsc::Sender<EventMessage>,
}

#[derive(Default)]
struct Topology {
    served: Vec<Served>,
    subscriptions: Vec<Subscription>,
    serving_stopped: bool,
}

/// A call waiting for its reply.
struct Pending {
    reply_from: ReplyFrom,
    reply: oneshot::Sender<Result<Vec<u8>, BusError>>,
    /// A reply someone else sent in the addressed identity's place, for the timeout
    /// message (a misconfigured agent set shows up here rather than as a bare timeout).
    refused_from: Option<String>,
}

type PendingMap = HashMap<String, Pending>;

struct Inner {
    /// The broker's addresses (a cluster's nodes), each with its URL for messages.
    addresses: Vec<(AMQPUri, String)>,
    /// Every address, for messages.
    display_url: String,
    /// The address of the live connection, for messages.
    connected_to: Mutex<String>,
    user: String,
    domain: Domain,
    settings: AmqpSettings,
    live: watch::Sender<Option<Arc<Live>>>,
    /// How many times the connection was re-established: watchers (a client that must
    /// announce itself again) see it change.
    reconnections: watch::Sender<u64>,
    /// Set when the broker refused this user's login on a reconnection: its account is
    /// gone or its password changed, which retrying does not fix.
    login_refused: watch::Sender<bool>,
    topology: AsyncMutex<Topology>,
    pending: Mutex<PendingMap>,
    /// Own user plus `settings.agent_users`.
    agent_users: HashSet<String>,
    /// Senders of replies nobody asked them for.
    refused_senders: crate::refusals::Refusals,
    shutdown: CancellationToken,
    stop_consuming: CancellationToken,
    handlers: TaskTracker,
}

/// A bus over one RabbitMQ connection that heals itself.
#[derive(Clone)]
pub struct AmqpBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AmqpBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBus").field("url", &self.inner.display_url).finish_non_exhaustive()
    }
}

/// Percent-encodes a URL part (a user, a password, a vhost as a path segment): every
/// byte but the unreserved ones.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The addresses of a broker given as a list — `amqp://a:5672/%2f,amqp://b:5672/%2f`,
/// the nodes of a cluster — each a whole AMQP URL. One URL is a list of one.
pub fn broker_urls(list: &str) -> Vec<&str> {
    list.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
}

/// Applies `f` to every address of a list and joins the results again.
fn each_url(list: &str, f: impl Fn(&str) -> String) -> String {
    broker_urls(list).into_iter().map(f).collect::<Vec<_>>().join(",")
}

/// The vhost an AMQP URL names, decoded (`/` when it names none or does not parse); of
/// a list, the first's.
pub fn vhost_of(url: &str) -> String {
    let first = broker_urls(url).first().copied().unwrap_or_default();
    first.parse::<AMQPUri>().map(|uri| uri.vhost).unwrap_or_else(|_| "/".to_owned())
}

/// The user an AMQP URL logs in as, decoded; `None` when it names none or does not
/// parse. Of a list, the first's.
pub fn user_of(url: &str) -> Option<String> {
    let url = broker_urls(url).first().copied()?;
    let uri = url.parse::<AMQPUri>().ok()?;
    // lapin fills in `guest` for a URL without a user: only a named one counts.
    url::Url::parse(url).ok().filter(|u| !u.username().is_empty())?;
    Some(uri.authority.userinfo.username)
}

/// The URL without user and password (what a client config keeps; its own identity
/// is added when it connects). Text that is not a URL comes back as it is.
pub fn without_credentials(url: &str) -> String {
    if url.contains(',') {
        return each_url(url, without_credentials);
    }
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            // Only URLs without a host refuse these, and those have no credentials.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Err(_) => url.to_owned(),
    }
}

/// `url` logging in as `user` with `password`, replacing whatever login it had; both
/// are percent-encoded as URLs need.
pub fn with_login(url: &str, user: &str, password: Option<&str>) -> Result<String, String> {
    if url.contains(',') {
        let each: Result<Vec<String>, String> =
            broker_urls(url).into_iter().map(|u| with_login(u, user, password)).collect();
        return each.map(|urls| urls.join(","));
    }
    let refused = |why: &str| format!("'{}' {why}", redact_url(url));
    let mut parsed = url::Url::parse(url).map_err(|e| refused(&format!("is not a URL: {e}")))?;
    parsed.set_username(user).map_err(|()| refused("cannot carry a login"))?;
    parsed.set_password(password).map_err(|()| refused("cannot carry a login"))?;
    Ok(parsed.to_string())
}

/// Removes the password from an AMQP URL for messages and logs.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        return each_url(url, redact_url);
    }
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        // Nothing of text that does not parse is shown: it may hold a password.
        Err(_) if url.contains('@') => "(a URL that does not parse)".to_owned(),
        Err(_) => url.to_owned(),
    }
}

impl AmqpBus {
    /// Connects to `url` (its path is the vhost) for `domain`. `url` may list several
    /// addresses of one broker (a cluster's nodes), separated by commas: the first that
    /// answers is used at start, and after a connection loss they are tried in shuffled
    /// order, so a crowd of reconnecting nodes spreads over the survivors. An address
    /// without a login takes the first one's.
    pub async fn connect(url: &str, domain: Domain, settings: AmqpSettings) -> Result<AmqpBus, BusError> {
        let display_url = redact_url(url);
        let listed = broker_urls(url);
        if listed.is_empty() {
            return Err(BusError::Connect { url: display_url, reason: "no broker address given".into() });
        }
        let mut addresses: Vec<(AMQPUri, String)> = Vec::new();
        for address in listed {
            let shown = redact_url(address);
            let mut uri: AMQPUri =
                address.parse().map_err(|e: String| BusError::Connect { url: shown.clone(), reason: e })?;
            if uri.query.heartbeat.is_none() {
                uri.query.heartbeat = Some(settings.heartbeat_secs);
            }
            if uri.query.connection_timeout.is_none() {
                uri.query.connection_timeout = Some(settings.connect_timeout.as_millis() as u64);
            }
            if let Some((first, _)) = addresses.first()
                && user_of(address).is_none()
            {
                uri.authority.userinfo = first.authority.userinfo.clone();
            }
            addresses.push((uri, shown));
        }
        let user = addresses[0].0.authority.userinfo.username.clone();
        let agent_users = settings.agent_users.iter().cloned().chain([user.clone()]).collect();
        let (live, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            connected_to: Mutex::new(addresses[0].1.clone()),
            addresses,
            display_url,
            user,
            domain,
            settings,
            live,
            reconnections: watch::channel(0).0,
            login_refused: watch::channel(false).0,
            topology: AsyncMutex::default(),
            pending: Mutex::default(),
            agent_users,
            refused_senders: crate::refusals::Refusals::default(),
            shutdown: CancellationToken::new(),
            stop_consuming: CancellationToken::new(),
            handlers: TaskTracker::new(),
        });
        let first = {
            let mut attempt = 0;
            loop {
                match establish(&inner, false).await {
                    Ok(live) => break live,
                    // A broker that refuses the login will refuse it again: waiting for
                    // it only hides a wrong password. An unreachable one may come up.
                    Err(e @ BusError::AccessRefused { .. }) => return Err(e),
                    Err(e) if !inner.settings.wait_for_broker => return Err(e),
                    Err(e) => {
                        let delay = backoff_delay(attempt, inner.settings.reconnect_min, inner.settings.reconnect_max);
                        warn!(error = %e, retry_in = ?delay, "broker not reachable yet");
                        attempt += 1;
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        };
        inner.live.send_replace(Some(first.clone()));
        tokio::spawn(supervise(inner.clone(), first));
        Ok(AmqpBus { inner })
    }

    /// The broker user this bus authenticates as.
    pub fn user(&self) -> &str {
        &self.inner.user
    }

    /// Becomes `true` when the broker refuses this user's login on a reconnection (the
    /// bus keeps trying; a program that cannot work without it may stop).
    pub fn login_refused(&self) -> watch::Receiver<bool> {
        self.inner.login_refused.subscribe()
    }

    /// The URL without its password, for messages (every address of a list).
    pub fn display_url(&self) -> &str {
        &self.inner.display_url
    }

    /// The address of the broker node the bus is connected to now (the last one when
    /// it is reconnecting), without its password.
    pub fn connected_url(&self) -> String {
        self.inner.connected_url()
    }

    /// Changes each time the bus has reconnected (queues and subscriptions are back).
    pub fn reconnections(&self) -> watch::Receiver<u64> {
        self.inner.reconnections.subscribe()
    }

    async fn live_until(&self, deadline: Instant) -> Result<Arc<Live>, BusError> {
        let mut rx = self.inner.live.subscribe();
        let wait = rx.wait_for(|l| l.is_some());
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(live)) => live.clone().ok_or(BusError::Closed),
            Ok(Err(_)) => Err(BusError::Closed),
            Err(_) => Err(BusError::Timeout(format!(" (not connected to {})", self.inner.display_url))),
        }
    }

    pub(crate) async fn call(&self, queue: &str, body: Vec<u8>, options: CallOptions) -> Result<Vec<u8>, BusError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(BusError::Closed);
        }
        let live = self.live_until(options.deadline).await?;
        // Unguessable: whoever sees one request learns nothing about the next one.
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (tx, mut rx) = oneshot::channel();
        let pending = Pending { reply_from: options.reply_from.clone(), reply: tx, refused_from: None };
        lock(&self.inner.pending).insert(id.clone(), pending);
        let _cleanup = RemovePending { inner: &self.inner, id: id.clone() };

        let remaining = options.deadline.saturating_duration_since(Instant::now()).as_millis().max(1);
        let mut properties = BasicProperties::default()
            .with_reply_to(DIRECT_REPLY_TO.into())
            .with_correlation_id(id.as_str().into())
            .with_content_type("application/json".into())
            .with_user_id(self.inner.user.as_str().into())
            .with_expiration(remaining.to_string().into());
        if let Some(caller) = &options.on_behalf_of {
            let mut headers = FieldTable::default();
            headers.insert(ON_BEHALF_OF_HEADER.into(), AMQPValue::LongString(caller.as_str().into()));
            properties = properties.with_headers(headers);
        }
        let publish = live.rpc.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
            &body,
            properties,
        );
        let confirm = match tokio::time::timeout_at(options.deadline, publish).await {
            Ok(Ok(confirm)) => confirm,
            Ok(Err(e)) => return Err(BusError::ConnectionLost(e.to_string())),
            Err(_) => return Err(BusError::Timeout(String::new())),
        };
        let mut confirm = std::pin::pin!(confirm);
        let mut confirmed = false;
        loop {
            tokio::select! {
                reply = &mut rx => {
                    return reply.unwrap_or_else(|_| Err(BusError::ConnectionLost("reply channel closed".into())));
                }
                confirmation = &mut confirm, if !confirmed => {
                    confirmed = true;
                    match confirmation {
                        Ok(Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_))) => {
                            return Err(BusError::NoProvider(queue.to_owned()));
                        }
                        Ok(Confirmation::Nack(None)) => {
                            return Err(BusError::Refused(format!("the broker could not accept a request for {queue}")));
                        }
                        Ok(_) => {}
                        Err(e) => return Err(BusError::ConnectionLost(e.to_string())),
                    }
                }
                _ = tokio::time::sleep_until(options.deadline) => {
                    let refused = lock(&self.inner.pending).get(&id).and_then(|p| p.refused_from.clone());
                    let note = refused.map(|sender| format!(
                        " (a reply from broker user '{sender}' was refused: it is not {})",
                        describe(&options.reply_from)
                    ));
                    return Err(BusError::Timeout(note.unwrap_or_default()));
                }
            }
        }
    }

    pub(crate) async fn serve(
        &self,
        queue: &str,
        options: ServeOptions,
        handler: RequestHandler,
    ) -> Result<(), BusError> {
        let mut topology = self.inner.topology.lock().await;
        if topology.serving_stopped {
            return Err(BusError::Closed);
        }
        let served = Served { queue: queue.to_owned(), options, handler };
        let live = self.inner.live.borrow().clone();
        if let Some(live) = live {
            // Declared now on the live connection; the supervisor replays it after any
            // reconnection because it is in the topology.
            let outcome = start_consumer(&self.inner, &live, &served).await;
            // A refusal (the queue is someone else's) is the caller's to handle; a lost
            // connection is ours: the supervisor replays the queue on reconnection.
            if let Err(e @ (BusError::Refused(_) | BusError::Forbidden(_) | BusError::InUse(_))) = outcome {
                return Err(e);
            }
        }
        topology.served.push(served);
        Ok(())
    }

    pub(crate) async fn publish_event(&self, event_type: &str, xml: Vec<u8>) -> Result<(), BusError> {
        // Events are fire-and-forget, but not wait-forever: a broker that blocks
        // publishers (a memory alarm) gets five seconds.
        let deadline = Instant::now() + Duration::from_secs(5);
        let live = self.live_until(deadline).await?;
        let properties = BasicProperties::default()
            .with_content_type("application/xml".into())
            .with_user_id(self.inner.user.as_str().into())
            .with_type(event_type.into());
        let publish = live.publish.basic_publish(
            self.inner.domain.event_exchange().into(),
            event_type.into(),
            BasicPublishOptions::default(),
            &xml,
            properties,
        );
        match tokio::time::timeout_at(deadline, publish).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(BusError::ConnectionLost(e.to_string())),
            Err(_) => Err(BusError::Timeout(format!(" (publishing {event_type})"))),
        }
    }

    pub(crate) async fn subscribe(&self, types: &[String]) -> Result<mpsc::Receiver<EventMessage>, BusError> {
        let (sender, rx) = mpsc::channel(1024);
        let subscription = Subscription { types: types.to_vec(), sender };
        let mut topology = self.inner.topology.lock().await;
        let live = self.inner.live.borrow().clone();
        if let Some(live) = live
            && let Err(e) = start_subscription(&self.inner, &live, &subscription).await
            && live.connection.status().connected()
        {
            return Err(e);
        }
        topology.subscriptions.push(subscription);
        Ok(rx)
    }

    pub(crate) async fn stop_serving(&self) {
        let mut topology = self.inner.topology.lock().await;
        topology.serving_stopped = true;
        topology.served.clear();
        self.inner.stop_consuming.cancel();
    }

    pub(crate) async fn drain(&self) {
        self.inner.handlers.close();
        self.inner.handlers.wait().await;
    }

    pub(crate) async fn close(&self) {
        self.inner.shutdown.cancel();
        let live = self.inner.live.send_replace(None);
        if let Some(live) = live {
            // A broker slow to answer the close must not keep a stopping process alive.
            let bye = live.connection.close(200, "bye".into());
            if tokio::time::timeout(CLOSE_DEADLINE, bye).await.is_err() {
                debug!(url = %self.inner.display_url, "the broker did not confirm the close in time");
            }
        }
        fail_pending(&self.inner, "the bus was closed");
    }
}

struct RemovePending<'a> {
    inner: &'a Inner,
    id: String,
}

impl Drop for RemovePending<'_> {
    fn drop(&mut self) {
        lock(&self.inner.pending).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn fail_pending(inner: &Inner, reason: &str) {
    let pending: Vec<_> = lock(&inner.pending).drain().collect();
    for (_, pending) in pending {
        let _ = pending.reply.send(Err(BusError::ConnectionLost(reason.to_owned())));
    }
}

/// Who a call expected its reply from, for messages.
fn describe(reply_from: &ReplyFrom) -> String {
    match reply_from {
        ReplyFrom::Agent => "an agent identity (agent_users)".to_owned(),
        ReplyFrom::User(user) => format!("'{user}' (the identity that was called) or an agent identity"),
    }
}

/// Hands a reply to its waiting call when the broker-vouched sender is the identity the
/// call addressed; anything else is dropped (and logged once per sender), and the call
/// goes on waiting for the real reply.
fn deliver_reply(inner: &Inner, id: &str, sender: Option<&str>, body: Vec<u8>) {
    let mut pending = lock(&inner.pending);
    let Some(call) = pending.get_mut(id) else {
        debug!(correlation_id = %id, "dropping a late reply to a call that already ended");
        return;
    };
    let believed = match (&call.reply_from, sender) {
        (ReplyFrom::Agent, Some(sender)) => inner.agent_users.contains(sender),
        // Agents are trusted with everything a client is (as for client events).
        (ReplyFrom::User(expected), Some(sender)) => expected == sender || inner.agent_users.contains(sender),
        (_, None) => false,
    };
    if believed {
        if let Some(call) = pending.remove(id) {
            let _ = call.reply.send(Ok(body));
        }
        return;
    }
    let why = format!("refused a reply: the call expected it from {}", describe(&call.reply_from));
    call.refused_from = Some(sender.unwrap_or("(no user_id)").to_owned());
    drop(pending);
    inner.refused_senders.log(sender, "reply", &why);
}

/// Whether the broker refused the login (wrong user or password), as opposed to being
/// unreachable.
fn is_access_refused(e: &lapin::Error) -> bool {
    matches!(soft_error(e), Some(lapin::protocol::AMQPSoftError::ACCESSREFUSED))
}

/// Opens a connection; over `amqps://` the broker's certificate is checked against
/// `ca_pem` when given — and then only against it, so a private CA can be pinned — else
/// against the system's roots; its name against the URL's host.
async fn open_connection(
    uri: AMQPUri,
    properties: ConnectionProperties,
    ca_pem: Option<&str>,
    identity: Option<&(String, String)>,
) -> lapin::Result<Connection> {
    use lapin::Connect;
    let runtime = lapin::runtime::default_runtime()?;
    if let (Some(ca_pem), lapin::uri::AMQPScheme::AMQPS) = (ca_pem, &uri.scheme) {
        let connector = pinned_connector(ca_pem, identity).map_err(lapin::Error::from)?;
        return Connection::connector(
            uri,
            runtime,
            async move |uri: AMQPUri, runtime| {
                use lapin::tcp::AMQPUriTcpExt;
                // TCP first, then TLS with our connector (lapin's own would add the
                // system's roots to the CA).
                let mut plain = uri.clone();
                plain.scheme = lapin::uri::AMQPScheme::AMQP;
                let no_tls = lapin::tcp::TLSConfig::default();
                let stream = plain.connect_with_config_async(no_tls, &runtime).await;
                let stream = stream.map_err(lapin::Error::from)?;
                stream.into_rustls(&connector, &uri.authority.host).await.map_err(lapin::Error::from)
            },
            properties,
        )
        .await;
    }
    let identity = identity.map(|(cert, key)| lapin::tcp::OwnedIdentity::PKCS8 {
        pem: cert.as_bytes().to_vec(),
        key: key.as_bytes().to_vec(),
    });
    let tls = lapin::tcp::OwnedTLSConfig { identity, cert_chain: None };
    uri.connect_with_config(properties, tls, runtime).await
}

/// A TLS connector that trusts only the CA certificates in `ca_pem`, presenting the
/// client certificate and key of `identity` (PEM) when given.
fn pinned_connector(ca_pem: &str, identity: Option<&(String, String)>) -> std::io::Result<lapin::tcp::RustlsConnector> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {e}"))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| invalid("the CA file", &e))?;
        roots.add(cert).map_err(|e| invalid("a CA certificate", &e))?;
    }
    if roots.is_empty() {
        return Err(invalid("the CA file", &"it holds no certificate"));
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid("the client certificate", &e))?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| invalid("the client key", &e))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| invalid("the client certificate", &e))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(lapin::tcp::RustlsConnector::from(config))
}

/// Checks `user` and `password` by opening a connection to the broker at `url` with them
/// (`Ok(false)`: refused). The broker, and whatever it authenticates against, stays the
/// one judge of passwords.
pub async fn check_login(url: &str, user: &str, password: &str) -> Result<bool, BusError> {
    check_login_with(url, user, password, None).await
}

/// [`check_login`] with the CA certificates for an `amqps://` broker.
pub async fn check_login_with(url: &str, user: &str, password: &str, ca_pem: Option<&str>) -> Result<bool, BusError> {
    // Of a cluster's addresses, the first that answers decides.
    let mut unreachable = None;
    for address in broker_urls(url) {
        match check_login_at(address, user, password, ca_pem).await {
            Err(e @ BusError::Connect { .. }) => unreachable = Some(e),
            decided => return decided,
        }
    }
    Err(unreachable.unwrap_or_else(|| BusError::Connect { url: redact_url(url), reason: "no broker address".into() }))
}

async fn check_login_at(url: &str, user: &str, password: &str, ca_pem: Option<&str>) -> Result<bool, BusError> {
    let display_url = redact_url(url);
    let mut uri: AMQPUri =
        url.parse().map_err(|e: String| BusError::Connect { url: display_url.clone(), reason: e })?;
    uri.authority.userinfo.username = user.to_owned();
    uri.authority.userinfo.password = password.to_owned();
    uri.query.connection_timeout = Some(5000);
    let connect = open_connection(uri, ConnectionProperties::default(), ca_pem, None);
    match tokio::time::timeout(Duration::from_secs(6), connect).await {
        Ok(Ok(connection)) => {
            let _ = tokio::time::timeout(CLOSE_DEADLINE, connection.close(200, "login check".into())).await;
            Ok(true)
        }
        Ok(Err(e)) if is_access_refused(&e) => Ok(false),
        Ok(Err(e)) => Err(BusError::Connect { url: display_url, reason: e.to_string() }),
        Err(_) => Err(BusError::Connect { url: display_url, reason: "the broker did not answer".into() }),
    }
}

/// A channel-level ("soft") protocol error is a refusal of what was asked; anything
/// else means the connection is gone.
fn lapin_err(e: lapin::Error) -> BusError {
    use lapin::protocol::AMQPSoftError;
    match soft_error(&e) {
        Some(AMQPSoftError::ACCESSREFUSED) => BusError::Forbidden(e.to_string()),
        Some(AMQPSoftError::RESOURCELOCKED) => BusError::InUse(e.to_string()),
        Some(_) => BusError::Refused(e.to_string()),
        None => BusError::ConnectionLost(e.to_string()),
    }
}

/// What the broker refused on a channel, when `e` is such a refusal.
fn soft_error(e: &lapin::Error) -> Option<lapin::protocol::AMQPSoftError> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            lapin::protocol::AMQPErrorKind::Soft(soft) => Some(soft.clone()),
            lapin::protocol::AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
}

/// Connects and declares the whole topology; the topology lock is held throughout so a
/// concurrent `serve`/`subscribe` is either replayed here or declared after.
impl Inner {
    fn connected_url(&self) -> String {
        self.connected_to.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Opens a connection to the first address that answers — in the order given at start,
/// shuffled on a reconnection — and sets up everything the bus had on it. A login
/// refused by any address is the answer (it will be refused again); otherwise the last
/// address's error.
async fn establish(inner: &Arc<Inner>, shuffled: bool) -> Result<Arc<Live>, BusError> {
    let mut order: Vec<usize> = (0..inner.addresses.len()).collect();
    if shuffled {
        use rand::seq::SliceRandom;
        order.shuffle(&mut rand::rng());
    }
    let mut failure = None;
    for index in order {
        match connect_to(inner, index).await {
            Ok(connection) => {
                *inner.connected_to.lock().unwrap_or_else(PoisonError::into_inner) = inner.addresses[index].1.clone();
                return set_up(inner, connection).await;
            }
            Err(e @ BusError::AccessRefused { .. }) => return Err(e),
            Err(e) => {
                if inner.addresses.len() > 1 {
                    debug!(url = %inner.addresses[index].1, error = %e, "broker address not reachable");
                }
                failure = Some(e);
            }
        }
    }
    Err(failure.unwrap_or_else(|| BusError::Connect { url: inner.display_url.clone(), reason: "no address".into() }))
}

async fn connect_to(inner: &Arc<Inner>, index: usize) -> Result<Connection, BusError> {
    let (uri, shown) = &inner.addresses[index];
    let connect_error = |e: lapin::Error| {
        if is_access_refused(&e) {
            BusError::AccessRefused { url: shown.clone(), user: inner.user.clone() }
        } else {
            BusError::Connect { url: shown.clone(), reason: e.to_string() }
        }
    };
    let properties =
        ConnectionProperties::default().with_connection_name(inner.settings.connection_name.as_str().into());
    let connect = open_connection(
        uri.clone(),
        properties,
        inner.settings.ca_pem.as_deref(),
        inner.settings.client_identity.as_ref(),
    );
    match tokio::time::timeout(inner.settings.connect_timeout, connect).await {
        Ok(result) => result.map_err(connect_error),
        Err(_) => Err(BusError::Connect { url: shown.clone(), reason: "connection timed out".into() }),
    }
}

/// Declares what the bus uses on a new connection: channels, the event exchange, the
/// reply pump, the served queues and the subscriptions.
async fn set_up(inner: &Arc<Inner>, connection: Connection) -> Result<Arc<Live>, BusError> {
    let mut topology = inner.topology.lock().await;
    // Subscribers that went away are forgotten rather than replayed forever.
    topology.subscriptions.retain(|s| !s.sender.is_closed());
    let rpc = connection.create_channel().await.map_err(lapin_err)?;
    rpc.confirm_select(ConfirmSelectOptions::default()).await.map_err(lapin_err)?;
    let publish = declare_event_exchange(inner, &connection, inner.settings.passive_exchange).await?;
    let live = Arc::new(Live {
        connection,
        rpc,
        publish,
        failed: CancellationToken::new(),
        answering_dead_letters: false.into(),
    });
    start_reply_pump(inner, &live).await?;
    for served in &topology.served {
        start_consumer(inner, &live, served).await?;
    }
    for subscription in &topology.subscriptions {
        start_subscription(inner, &live, subscription).await?;
    }
    Ok(live)
}

/// Declares the domain's event exchange on a new channel and returns the channel. A
/// user the broker lets only use the exchange (not configure it: every ordinary user
/// under the shipped permission model) checks that it exists instead; a refused
/// declaration closes its channel, so the check takes a new one.
async fn declare_event_exchange(inner: &Inner, connection: &Connection, passive: bool) -> Result<Channel, BusError> {
    use lapin::protocol::AMQPSoftError;
    let exchange = &inner.domain.event_exchange();
    let declare = |passive: bool| async move {
        let channel = connection.create_channel().await?;
        let options = ExchangeDeclareOptions { passive, ..ExchangeDeclareOptions::default() };
        channel.exchange_declare(exchange.as_str().into(), ExchangeKind::Topic, options, FieldTable::default()).await?;
        Ok::<_, lapin::Error>(channel)
    };
    let declared = match declare(passive).await {
        Err(e) if !passive && soft_error(&e) == Some(AMQPSoftError::ACCESSREFUSED) => {
            debug!(%exchange, "not allowed to declare the event exchange; checking that it exists");
            declare(true).await
        }
        other => other,
    };
    declared.map_err(|e| match soft_error(&e) {
        Some(AMQPSoftError::NOTFOUND) => BusError::Refused(format!(
            "the event exchange {exchange} does not exist: no agent of domain {} has run on this broker yet",
            inner.domain
        )),
        _ => lapin_err(e),
    })
}

async fn supervise(inner: Arc<Inner>, mut live: Arc<Live>) {
    loop {
        let reason = wait_for_failure(&inner, &live).await;
        inner.live.send_replace(None);
        fail_pending(&inner, &reason);
        if inner.shutdown.is_cancelled() {
            return;
        }
        warn!(url = %inner.connected_url(), %reason, "connection to the broker lost; reconnecting");
        let _ = tokio::time::timeout(Duration::from_secs(1), live.connection.close(320, "reconnecting".into())).await;
        let mut attempt = 0;
        live = loop {
            let delay = backoff_delay(attempt, inner.settings.reconnect_min, inner.settings.reconnect_max);
            tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            match establish(&inner, true).await {
                Ok(live) => break live,
                Err(e) => {
                    if matches!(e, BusError::AccessRefused { .. }) && !inner.login_refused.send_replace(true) {
                        warn!(url = %inner.display_url, user = %inner.user, "the broker refuses this login now");
                    }
                    debug!(error = %e, attempt, "reconnection attempt failed");
                    attempt += 1;
                }
            }
        };
        info!(url = %inner.connected_url(), "reconnected to the broker");
        inner.live.send_replace(Some(live.clone()));
        inner.reconnections.send_modify(|n| *n += 1);
    }
}

async fn wait_for_failure(inner: &Inner, live: &Live) -> String {
    let mut events = live.connection.events_listener();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return "shutting down".into(),
            _ = live.failed.cancelled() => return "a consumer stopped".into(),
            event = events.next() => match event {
                // Channel errors (a refused declaration) are reported here too; only a
                // dead connection ends this one.
                Some(lapin::Event::Error(e)) if !live.connection.status().connected() => return e.to_string(),
                Some(lapin::Event::Error(e)) => debug!(error = %e, "channel error on a live connection"),
                Some(_) => {}
                None => return "connection closed".into(),
            },
            _ = tick.tick() => {
                if !live.connection.status().connected() {
                    return "connection closed".into();
                }
            }
        }
    }
}

async fn start_reply_pump(inner: &Arc<Inner>, live: &Arc<Live>) -> Result<(), BusError> {
    let mut consumer = live
        .rpc
        .basic_consume(
            DIRECT_REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() },
            FieldTable::default(),
        )
        .await
        .map_err(lapin_err)?;
    let inner = inner.clone();
    let failed = live.failed.clone();
    tokio::spawn(async move {
        while let Some(delivery) = consumer.next().await {
            let Ok(delivery) = delivery else { break };
            let Some(id) = delivery.properties.correlation_id() else { continue };
            let sender = delivery.properties.user_id().as_ref().map(ShortString::as_str);
            deliver_reply(&inner, id.as_str(), sender, delivery.data);
        }
        failed.cancel();
    });
    Ok(())
}

async fn start_consumer(inner: &Arc<Inner>, live: &Arc<Live>, served: &Served) -> Result<(), BusError> {
    let channel = live.connection.create_channel().await.map_err(lapin_err)?;
    channel.basic_qos(served.options.prefetch.max(1), BasicQosOptions::default()).await.map_err(lapin_err)?;
    let mut arguments = FieldTable::default();
    let declare = if served.options.private {
        QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() }
    } else {
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(SHARED_QUEUE_EXPIRY_MS));
        match inner.settings.queue_type {
            QueueType::Classic => QueueDeclareOptions::default(),
            QueueType::Quorum => {
                arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
                arguments.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(QUORUM_DELIVERY_LIMIT));
                let dead_letters = inner.domain.command_queue(DEAD_LETTERS);
                arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(dead_letters.as_str().into()));
                answer_dead_letters(inner, live).await?;
                QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() }
            }
        }
    };
    let declared = channel.queue_declare(served.queue.as_str().into(), declare, arguments).await;
    declared.map_err(|e| match soft_error(&e) {
        // The queue exists with the other type: declaring cannot change it, and deleting
        // it here would drop requests other agents are serving.
        Some(lapin::protocol::AMQPSoftError::PRECONDITIONFAILED) => BusError::Refused(format!(
            "{} exists as another queue type than amqp.queue_type = \"{}\" asks for ({e}); stop every agent of the \
             domain, delete it (rabbitmqctl delete_queue {}) and start them again, or keep the type it has",
            served.queue,
            match inner.settings.queue_type {
                QueueType::Classic => "classic",
                QueueType::Quorum => "quorum",
            },
            served.queue
        )),
        _ => lapin_err(e),
    })?;
    let mut consumer = channel
        .basic_consume(served.queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .map_err(lapin_err)?;
    let inner = inner.clone();
    let live = live.clone();
    let handler = served.handler.clone();
    let queue = served.queue.clone();
    let tag = consumer.tag();
    tokio::spawn(async move {
        let mut cancelling = false;
        loop {
            let next = tokio::select! {
                _ = inner.stop_consuming.cancelled(), if !cancelling => {
                    cancelling = true;
                    // Cancel so no new request is delivered; those already delivered
                    // still arrive on the stream and are served.
                    let _ = channel.basic_cancel(tag.clone(), BasicCancelOptions::default()).await;
                    continue;
                }
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    let inner2 = inner.clone();
                    let publish = live.publish.clone();
                    let handler = handler.clone();
                    let queue = queue.clone();
                    // The handler keeps the consuming channel open until it has acked:
                    // closing a channel hands its unacknowledged requests to other agents,
                    // which must not happen to requests still being served.
                    let consuming_channel = channel.clone();
                    inner.handlers.spawn(async move {
                        serve_one(&inner2, &publish, &queue, handler, delivery).await;
                        drop(consuming_channel);
                    });
                }
                Some(Err(_)) | None => {
                    if !cancelling && !inner.shutdown.is_cancelled() {
                        live.failed.cancel();
                    }
                    break;
                }
            }
        }
    });
    Ok(())
}

/// Declares the dead-letter exchange and queue of the quorum queues (once per
/// connection) and answers every request that lands there with
/// `REQUEST_UNDELIVERABLE`: its agents stopped before answering it
/// [`QUORUM_DELIVERY_LIMIT`] times — a poison request — and it is not run again; the
/// caller learns so now rather than at its deadline.
async fn answer_dead_letters(inner: &Arc<Inner>, live: &Arc<Live>) -> Result<(), BusError> {
    use std::sync::atomic::Ordering;
    if live.answering_dead_letters.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let name = inner.domain.command_queue(DEAD_LETTERS);
    let channel = live.connection.create_channel().await.map_err(lapin_err)?;
    let durable = lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel
        .exchange_declare(name.as_str().into(), ExchangeKind::Fanout, durable, FieldTable::default())
        .await
        .map_err(lapin_err)?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    channel.queue_declare(name.as_str().into(), durable, arguments).await.map_err(lapin_err)?;
    channel
        .queue_bind(
            name.as_str().into(),
            name.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(lapin_err)?;
    let mut consumer = channel
        .basic_consume(name.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .map_err(lapin_err)?;
    let (inner, publish) = (inner.clone(), live.publish.clone());
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let props = &delivery.properties;
            if let (Some(reply_to), Some(id)) = (props.reply_to().clone(), props.correlation_id().clone()) {
                let error = crate::rpc::RpcError::new(
                    crate::rpc::ErrorCode::REQUEST_UNDELIVERABLE,
                    format!(
                        "the request was given to agents {QUORUM_DELIVERY_LIMIT} times and each stopped before answering; it is not run again"
                    ),
                );
                let body = crate::rpc::Response::error(serde_json::Value::Null, error).to_bytes();
                let properties = reply_properties(&inner, Some(id));
                let _ =
                    publish.basic_publish("".into(), reply_to, BasicPublishOptions::default(), &body, properties).await;
            }
            warn!(domain = %inner.domain, "a request its agents never answered was dropped (delivery limit)");
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
    });
    Ok(())
}

/// What every reply carries: JSON, this bus's broker user — which the broker checks
/// against the login, so the caller can believe it — and the request's correlation id.
fn reply_properties(inner: &Inner, correlation_id: Option<ShortString>) -> BasicProperties {
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_user_id(inner.user.as_str().into());
    match correlation_id {
        Some(id) => properties.with_correlation_id(id),
        None => properties,
    }
}

async fn serve_one(
    inner: &Inner,
    publish: &Channel,
    queue: &str,
    handler: RequestHandler,
    delivery: lapin::message::Delivery,
) {
    let props = &delivery.properties;
    let deadline = props
        .expiration()
        .as_ref()
        .and_then(|e| e.as_str().parse::<u64>().ok())
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let on_behalf_of = props.headers().as_ref().and_then(|h| match h.inner().get(ON_BEHALF_OF_HEADER) {
        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
        Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
        _ => None,
    });
    let message = RequestMessage {
        body: delivery.data.clone(),
        user: props.user_id().as_ref().map(ShortString::to_string),
        on_behalf_of,
        deadline,
        queue: queue.to_owned(),
        redelivered: delivery.redelivered,
    };
    let reply_to = props.reply_to().clone();
    let correlation_id = props.correlation_id().clone();
    let reply = handler(message).await;
    if let (Some(reply), Some(reply_to)) = (reply, reply_to) {
        let properties = reply_properties(inner, correlation_id);
        if let Err(e) =
            publish.basic_publish("".into(), reply_to, BasicPublishOptions::default(), &reply, properties).await
        {
            // Without a sent reply the request stays unacknowledged and the broker
            // hands it to another agent once this channel is gone.
            warn!(error = %e, "could not send a reply; leaving the request for redelivery");
            return;
        }
    }
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        debug!(error = %e, domain = %inner.domain, "acknowledgement failed (channel gone); the request may be redelivered");
    }
}

async fn start_subscription(inner: &Arc<Inner>, live: &Arc<Live>, subscription: &Subscription) -> Result<(), BusError> {
    let channel = live.connection.create_channel().await.map_err(lapin_err)?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() },
            FieldTable::default(),
        )
        .await
        .map_err(lapin_err)?;
    // Topic bindings can express "everything" and exact types; prefixes (`Node*`) bind
    // everything and are narrowed by the receiver.
    let mut keys: Vec<String> =
        subscription.types.iter().map(|t| if t.contains('*') { "#".to_owned() } else { t.clone() }).collect();
    keys.sort();
    keys.dedup();
    for key in &keys {
        channel
            .queue_bind(
                queue.name().clone(),
                inner.domain.event_exchange().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(lapin_err)?;
    }
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() },
            FieldTable::default(),
        )
        .await
        .map_err(lapin_err)?;
    let sender = subscription.sender.clone();
    let types = subscription.types.clone();
    let live = live.clone();
    let shutdown = inner.shutdown.clone();
    tokio::spawn(async move {
        let _channel = channel;
        while let Some(delivery) = consumer.next().await {
            let Ok(delivery) = delivery else { break };
            let event_type = delivery.routing_key.to_string();
            if !types.iter().any(|t| super::type_matches(t, &event_type)) {
                continue;
            }
            let event = EventMessage {
                event_type,
                user: delivery.properties.user_id().as_ref().map(ShortString::to_string),
                body: delivery.data,
            };
            if sender.send(event).await.is_err() {
                // The subscriber went away; its queue goes with this channel.
                return;
            }
        }
        if !shutdown.is_cancelled() {
            live.failed.cancel();
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{broker_urls, redact_url, user_of, vhost_of, with_login, without_credentials};

    #[test]
    fn urls_lose_credentials_and_name_their_vhost() {
        assert_eq!(without_credentials("amqp://ada:pw@broker:5672/%2f"), "amqp://broker:5672/%2f");
        assert_eq!(without_credentials("amqps://broker"), "amqps://broker");
        assert_eq!(vhost_of("amqp://guest:guest@127.0.0.1:5672/%2f"), "/");
        assert_eq!(vhost_of("amqp://broker/clacks%2Dprod"), "clacks-prod");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("amqp://guest:secret@localhost:5672/%2f"), "amqp://guest@localhost:5672/%2f");
        assert_eq!(redact_url("amqp://localhost"), "amqp://localhost");
    }

    /// A cluster's nodes as one list: every address keeps or loses its login alike.
    #[test]
    fn address_lists_are_handled_address_by_address() {
        let list = "amqp://ada:pw@a:5672/%2f, amqp://b:5672/%2f,";
        assert_eq!(broker_urls(list), ["amqp://ada:pw@a:5672/%2f", "amqp://b:5672/%2f"]);
        assert_eq!(redact_url(list), "amqp://ada@a:5672/%2f,amqp://b:5672/%2f");
        assert_eq!(without_credentials(list), "amqp://a:5672/%2f,amqp://b:5672/%2f");
        assert_eq!(
            with_login("amqp://a/%2f,amqp://b/%2f", "c1", Some("s")).as_deref(),
            Ok("amqp://c1:s@a/%2f,amqp://c1:s@b/%2f")
        );
        assert_eq!((user_of(list).as_deref(), vhost_of(list).as_str()), (Some("ada"), "/"));
        assert!(redact_url("amqp://a:secret@x/%2f,amqp://b:other@y/%2f").matches("secret").count() == 0);
    }
}
