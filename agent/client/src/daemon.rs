//! The client daemon: a joined machine on the bus.
//!
//! It consumes its own queue `<domain>.client.<id>` and serves the client commands
//! there — to the domain's agents only (`agent_users`: the broker lets anyone publish
//! to the default exchange, so the queue alone proves nothing). It announces itself
//! (`ClientAnnounce` with its network facts, then `ClientSignature` with its
//! commands), pings every `ping` interval, answers `ClientPoll` by announcing again
//! after a random delay (so a thousand clients do not answer at once), publishes
//! `ClientSignature` again when its commands change, and says `ClientLeave` when it
//! stops. The bus reconnects by itself with jittered backoff; once reconnected the
//! client announces itself again, after the same random delay as for a poll, so a
//! broker restart does not make every client speak at once.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use clacks_core::bus::{Bus, RequestHandler, RequestMessage, ServeOptions};
use clacks_core::command::{CallContext, Command, CommandError, CommandResult, Plugin};
use clacks_core::domain::Domain;
use clacks_core::events::{EventPublisher, EventValidator};
use clacks_core::rpc::{ErrorCode, Incoming, Response, RpcError, decode_request_body};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a client waits at most before answering a ClientPoll: a few seconds, so an
/// agent that just started knows every machine quickly; thousands of machines answering
/// within it are a few thousand events a second, which a broker takes in stride.
pub const DEFAULT_POLL_SPREAD: Duration = Duration::from_secs(3);

/// How a client daemon runs.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub domain: Domain,
    /// The client id (its broker user).
    pub id: String,
    /// The host name shown to admins.
    pub name: String,
    /// Broker users whose requests are served; the client's own user always is.
    pub agent_users: Vec<String>,
    /// Interval of ClientPing.
    pub ping: Duration,
    /// Longest wait before answering a ClientPoll (spreads the answers).
    pub poll_spread: Duration,
    /// Deadline of requests that bring none.
    pub default_timeout: Duration,
    /// Folder of scripts offered as `shell_*` commands (the shell proxy).
    pub shell_dir: Option<std::path::PathBuf>,
    /// How often that folder (and the facts folder) is checked for changes.
    pub shell_poll: Duration,
    /// Folder of custom fact files sent with the inventory; a change sends it again.
    pub facts_dir: Option<std::path::PathBuf>,
    /// A D-Bus service whose methods are offered as `dbus_*` commands.
    pub dbus: Option<super::dbus_proxy::DbusOptions>,
    /// Report who is logged in (UserSession events, from `who`): with every
    /// announcement, and at a ping when it changed.
    pub report_sessions: bool,
    /// How often the inventory is collected and, when it changed, sent; `None`: only
    /// when an agent asks (`requestInventory`).
    pub inventory_every: Option<Duration>,
}

impl ClientOptions {
    pub fn new(domain: Domain, id: impl Into<String>) -> ClientOptions {
        ClientOptions {
            domain,
            id: id.into(),
            name: host_name(),
            agent_users: Vec::new(),
            ping: Duration::from_secs(60),
            poll_spread: DEFAULT_POLL_SPREAD,
            default_timeout: Duration::from_secs(30),
            shell_dir: None,
            shell_poll: Duration::from_secs(2),
            facts_dir: None,
            inventory_every: Some(Duration::from_secs(3600)),
            dbus: None,
            report_sessions: true,
        }
    }
}

/// This machine's host name.
pub fn host_name() -> String {
    sysinfo::System::host_name().unwrap_or_else(|| "unknown".to_owned())
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Bus(#[from] clacks_core::bus::BusError),
    #[error(transparent)]
    Events(#[from] clacks_core::events::EventError),
}

struct Inner {
    options: ClientOptions,
    /// The users reported last.
    sessions: tokio::sync::Mutex<Option<Vec<String>>>,
    bus: Bus,
    events: EventPublisher,
    commands: RwLock<BTreeMap<String, Command>>,
    stopped: CancellationToken,
}

/// A running client. Cloning gives another handle to the same client.
#[derive(Clone)]
pub struct ClientDaemon {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ClientDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientDaemon").field("id", &self.inner.options.id).finish_non_exhaustive()
    }
}

/// The commands every client serves.
struct CoreClientCommands {
    id: String,
    events: EventPublisher,
    /// The checksum of the last inventory sent.
    last_inventory: Arc<tokio::sync::Mutex<Option<String>>>,
    facts_dir: Option<std::path::PathBuf>,
}

impl CoreClientCommands {
    /// Collects the inventory and sends it unless its checksum is `known` — what the
    /// asking agent has stored (nothing: always send), or for the periodic check the
    /// one sent last.
    async fn send_inventory(&self, known: Option<String>, periodic: bool) -> CommandResult<Value> {
        // One collection at a time: a poll and a request at once should not both run dpkg.
        let mut last = self.last_inventory.lock().await;
        let mut fields = super::inventory::collect(&self.id).await;
        if let Some(dir) = self.facts_dir.clone() {
            let facts = tokio::task::spawn_blocking(move || super::facts::read(&dir)).await.unwrap_or_default();
            for problem in &facts.problems {
                warn!(%problem, "custom fact left out");
            }
            fields.insert("Fact".into(), Value::Array(facts.to_event()));
        }
        let checksum = super::inventory::checksum(&fields);
        let known = if periodic { last.clone() } else { known };
        if known.as_deref() == Some(checksum.as_str()) {
            return Ok(json!({"checksum": checksum, "sent": false}));
        }
        // Checksum first, as the schema orders it.
        let mut ordered = Map::from_iter([("Checksum".to_owned(), json!(checksum))]);
        ordered.append(&mut fields);
        self.events.publish_fields("Inventory", &ordered).await.map_err(|e| CommandError::failed(e.to_string()))?;
        *last = Some(checksum.clone());
        info!(%checksum, "inventory sent");
        Ok(json!({"checksum": checksum, "sent": true}))
    }
}

#[clacks_core::plugin(target = "client")]
impl CoreClientCommands {
    /// Answer "pong": the client is reachable.
    #[command(idempotent)]
    fn ping(&self) -> CommandResult<&'static str> {
        Ok("pong")
    }

    /// Collect this machine's inventory and send it as an Inventory event unless its checksum is the one given (the one the agent has).
    #[command(idempotent)]
    async fn request_inventory(&self, checksum: Option<String>) -> CommandResult<Value> {
        self.send_inventory(checksum.filter(|c| !c.is_empty()), false).await
    }

    /// The client's id, host name and network interfaces.
    #[command(idempotent)]
    fn get_client_info(&self) -> CommandResult<Value> {
        Ok(json!({"id": self.id, "name": host_name(), "network": super::netinfo::network_information()}))
    }
}

impl ClientDaemon {
    /// Starts serving on `bus` with the built-in commands and `commands`.
    pub async fn start(options: ClientOptions, bus: Bus, commands: Vec<Command>) -> Result<ClientDaemon, ClientError> {
        let validator = EventValidator::start(&[])?;
        ClientDaemon::start_with_validator(options, bus, commands, validator).await
    }

    /// Like [`ClientDaemon::start`], sharing `validator` (its schemas and its libxml2
    /// thread) with other clients in the same process, as the emulator does.
    pub async fn start_with_validator(
        options: ClientOptions,
        bus: Bus,
        commands: Vec<Command>,
        validator: EventValidator,
    ) -> Result<ClientDaemon, ClientError> {
        clacks_core::domain::check_node_id(&options.id)
            .map_err(|e| ClientError::Events(clacks_core::events::EventError::Malformed(format!("client id: {e}"))))?;
        let events = EventPublisher::new(bus.clone(), validator);
        let core = Arc::new(CoreClientCommands {
            id: options.id.clone(),
            events: events.clone(),
            last_inventory: Arc::default(),
            facts_dir: options.facts_dir.clone(),
        });
        let table = core.clone().commands().into_iter().chain(commands).map(|c| (c.spec.name.clone(), c)).collect();
        let client = ClientDaemon {
            inner: Arc::new(Inner {
                options,
                bus,
                events,
                commands: RwLock::new(table),
                stopped: CancellationToken::new(),
                sessions: tokio::sync::Mutex::default(),
            }),
        };
        let handler: RequestHandler = {
            let client = client.clone();
            Arc::new(move |message| {
                let client = client.clone();
                Box::pin(async move { client.handle(message).await })
            })
        };
        let queue = client.inner.options.domain.client_queue(&client.inner.options.id);
        client.inner.bus.serve(&queue, ServeOptions { private: true, prefetch: 8 }, handler).await?;
        let polls = clacks_core::events::filter::subscribe(
            &client.inner.bus,
            client.inner.events.validator(),
            &["ClientPoll".to_owned()],
            Default::default(),
        )
        .await?;
        client.announce().await;
        tokio::spawn(client.clone().presence_loop(polls));
        if let Some(every) = client.inner.options.inventory_every {
            tokio::spawn(inventory_loop(core.clone(), every, client.inner.stopped.clone()));
        }
        if let Some(dir) = client.inner.options.facts_dir.clone() {
            let every = client.inner.options.shell_poll;
            tokio::spawn(facts_loop(core.clone(), dir, every, client.inner.stopped.clone()));
        }
        if let Some(dbus) = client.inner.options.dbus.clone() {
            tokio::spawn(super::dbus_proxy::watch(client.clone(), dbus, client.inner.stopped.clone()));
        }
        if let Some(dir) = client.inner.options.shell_dir.clone() {
            let every = client.inner.options.shell_poll;
            tokio::spawn(super::shell_proxy::watch(client.clone(), dir, every, client.inner.stopped.clone()));
        }
        info!(id = %client.inner.options.id, %queue, "client started");
        Ok(client)
    }

    /// The client's id.
    pub fn id(&self) -> &str {
        &self.inner.options.id
    }

    /// Adds or replaces commands and announces the new signature.
    pub async fn set_commands(&self, prefix: &str, commands: Vec<Command>) {
        if let Ok(mut table) = self.inner.commands.write() {
            table.retain(|name, _| !name.starts_with(prefix));
            table.extend(commands.into_iter().map(|c| (c.spec.name.clone(), c)));
        }
        self.publish_signature().await;
    }

    /// Says ClientLeave, stops serving and disconnects.
    pub async fn stop(&self) {
        if self.inner.stopped.is_cancelled() {
            return;
        }
        self.publish("ClientLeave", Map::from_iter([("Id".to_owned(), json!(self.inner.options.id))])).await;
        self.inner.stopped.cancel();
        self.inner.bus.stop_serving().await;
        self.inner.bus.drain().await;
        self.inner.bus.close().await;
        info!(id = %self.inner.options.id, "client stopped");
    }

    async fn publish(&self, event_type: &str, fields: Map<String, Value>) {
        if let Err(e) = self.inner.events.publish_fields(event_type, &fields).await {
            warn!(error = %e, "cannot publish {event_type}");
        }
    }

    /// ClientAnnounce, then ClientSignature.
    pub async fn announce(&self) {
        let o = &self.inner.options;
        let mut fields = Map::from_iter([("Id".to_owned(), json!(o.id)), ("Name".to_owned(), json!(o.name))]);
        let devices = super::netinfo::network_information();
        if !devices.is_empty() {
            fields.insert("NetworkInformation".into(), json!({"NetworkDevice": devices}));
        }
        self.publish("ClientAnnounce", fields).await;
        self.publish_signature().await;
        self.report_sessions(true).await;
    }

    /// Publishes UserSession with the users logged in now (`who`), when they changed
    /// or `always`.
    async fn report_sessions(&self, always: bool) {
        if !self.inner.options.report_sessions {
            return;
        }
        let users = logged_in_users().await;
        let mut last = self.inner.sessions.lock().await;
        if !always && last.as_ref() == Some(&users) {
            return;
        }
        let fields = Map::from_iter([
            ("Id".to_owned(), json!(self.inner.options.id)),
            ("User".to_owned(), json!({"Name": users})),
        ]);
        self.publish("UserSession", fields).await;
        *last = Some(users);
    }

    async fn publish_signature(&self) {
        let methods: Vec<Value> = match self.inner.commands.read() {
            Ok(table) => table
                .values()
                .map(|c| json!({"Name": c.spec.name, "Signature": c.spec.signature(), "Documentation": c.spec.help}))
                .collect(),
            Err(_) => Vec::new(),
        };
        let o = &self.inner.options;
        let fields = Map::from_iter([
            ("Id".to_owned(), json!(o.id)),
            ("Name".to_owned(), json!(o.name)),
            ("ClientCapabilities".to_owned(), json!({"ClientMethod": methods})),
        ]);
        self.publish("ClientSignature", fields).await;
    }

    async fn presence_loop(self, mut polls: tokio::sync::mpsc::Receiver<clacks_core::bus::EventMessage>) {
        let mut ping = tokio::time::interval(self.inner.options.ping);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut reconnections = self.inner.bus.reconnections();
        let mut reconnects = true;
        loop {
            tokio::select! {
                _ = self.inner.stopped.cancelled() => return,
                changed = reconnections.changed(), if reconnects => {
                    if changed.is_err() {
                        reconnects = false; // an in-process bus never reconnects
                        continue;
                    }
                    // The broker came back: every client hears it at once, so wait a
                    // random moment before announcing, as for a poll.
                    self.announce_later().await;
                }
                _ = ping.tick() => {
                    self.publish("ClientPing", Map::from_iter([("Id".to_owned(), json!(self.inner.options.id))])).await;
                    self.report_sessions(false).await;
                }
                poll = polls.recv() => {
                    let Some(poll) = poll else { return };
                    // Only agents ask; anyone else could make every machine talk at once.
                    if !self.allowed(poll.user.as_deref()) {
                        debug!(sender = ?poll.user, "ignoring a ClientPoll that no agent sent");
                        continue;
                    }
                    // Every client hears the poll; a random wait spreads their answers.
                    self.announce_later().await;
                }
            }
        }
    }

    /// Announces after a random wait of up to `poll_spread` (unless stopped first).
    async fn announce_later(&self) {
        let spread = self.inner.options.poll_spread.as_millis() as u64;
        let wait = Duration::from_millis(if spread == 0 { 0 } else { rand::random::<u64>() % spread });
        debug!(?wait, "announcing again");
        tokio::select! {
            _ = self.inner.stopped.cancelled() => {}
            _ = tokio::time::sleep(wait) => self.announce().await,
        }
    }

    fn allowed(&self, user: Option<&str>) -> bool {
        let o = &self.inner.options;
        user.is_some_and(|u| u == self.inner.bus.user() || o.agent_users.iter().any(|a| a == u))
    }

    /// One request from the client queue: checked, bound, run within its deadline.
    async fn handle(&self, message: RequestMessage) -> Option<Vec<u8>> {
        let request = match decode_request_body(&message.body) {
            Incoming::Single(Ok(request)) => request,
            Incoming::Single(Err(response)) => return Some(response.to_bytes()),
            Incoming::Batch(_) => {
                let error = RpcError::new(ErrorCode::INVALID_REQUEST, "clients take one request at a time");
                return Some(Response::error(Value::Null, error).to_bytes());
            }
        };
        let id = request.id.clone()?;
        if !self.allowed(message.user.as_deref()) {
            warn!(user = ?message.user, method = %request.method, "request from a user that is not an agent refused");
            let who = message.user.as_deref().unwrap_or("nobody");
            let error = RpcError::new(ErrorCode::PERMISSION_EXEC, format!("{who} may not call this client"));
            return Some(Response::error(id, error).to_bytes());
        }
        let command = self
            .inner
            .commands
            .read()
            .ok()
            .and_then(|t| t.get(&request.method).map(|c| (c.spec.clone(), c.handler.clone())));
        let Some((spec, handler)) = command else {
            let error = RpcError::new(
                ErrorCode::COMMAND_NOT_DEFINED,
                format!("this client has no command '{}'", request.method),
            )
            .with_details(json!({"method": request.method}));
            return Some(Response::error(id, error).to_bytes());
        };
        let outcome = match spec.bind_arguments(request.params) {
            Err(e) => Err(e),
            Ok(args) => {
                let deadline = message
                    .deadline
                    .unwrap_or_else(|| tokio::time::Instant::now() + self.inner.options.default_timeout);
                let ctx = CallContext {
                    user: message.on_behalf_of.clone().or(message.user.clone()),
                    queue: message.queue.clone(),
                    node: self.inner.options.id.clone(),
                    deadline,
                };
                clacks_core::command::run_local(&spec.name, &handler, ctx, args).await
            }
        };
        Some(
            match outcome {
                Ok(value) => Response::result(id, value),
                Err(error) => Response::error(id, error),
            }
            .to_bytes(),
        )
    }
}

/// The users with a login session, from `who` (each once, sorted); none when `who`
/// cannot tell.
async fn logged_in_users() -> Vec<String> {
    let run = tokio::process::Command::new("who").stdin(std::process::Stdio::null()).kill_on_drop(true).output();
    let Ok(Ok(output)) = tokio::time::timeout(Duration::from_secs(10), run).await else { return Vec::new() };
    let mut users: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect();
    users.sort();
    users.dedup();
    users
}

/// Sends the inventory when it changed, every `every`.
async fn inventory_loop(core: Arc<CoreClientCommands>, every: Duration, stopped: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Not at start: the agents ask when they see this client's signature, passing the
    // checksum they hold — sending here too would send the same inventory twice.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stopped.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = core.send_inventory(None, true).await {
                    warn!(error = %e, "cannot send the inventory");
                }
            }
        }
    }
}

/// Sends the inventory again when a custom fact file changes: an edit in facts.d is
/// seen within `every`, whatever the inventory period.
async fn facts_loop(
    core: Arc<CoreClientCommands>,
    dir: std::path::PathBuf,
    every: Duration,
    stopped: CancellationToken,
) {
    let look = |dir: std::path::PathBuf| async move {
        tokio::task::spawn_blocking(move || super::facts::fingerprint(&dir)).await.unwrap_or_default()
    };
    let mut seen = look(dir.clone()).await;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.cancelled() => return,
            _ = tick.tick() => {
                let now = look(dir.clone()).await;
                if now == seen {
                    continue;
                }
                seen = now;
                info!(dir = %dir.display(), "custom facts changed");
                if let Err(e) = core.send_inventory(None, true).await {
                    warn!(error = %e, "cannot send the inventory");
                }
            }
        }
    }
}
