//! The agent's side of clients, on target `clients`: joining and leaving, who is
//! online, what each offers, and calling a client's command.
//!
//! Every agent keeps its own table from the clients' presence events (validated, and
//! believed only when the event's `Id` is the broker-vouched sender or the sender is
//! an agent), so any agent answers the same. A client silent for longer than
//! `timeout` counts as offline; a ping from a client an agent does not know (the agent
//! started after it) makes the agent publish `ClientPoll`, at most once per
//! `timeout / 2`, and every client announces again after a random delay; so does an
//! agent that has just reconnected to the broker (it heard nothing meanwhile). Status
//! changes are written to the client's RegisteredDevice (`deviceStatus`, `lastSeen`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clacks_core::bus::{Bus, CallOptions, EventMessage, ReplyFrom};
use clacks_core::command::{CallContext, CommandError, CommandResult};
use clacks_core::domain::Domain;
use clacks_core::events::EventPublisher;
use clacks_core::rpc::{ErrorCode, Params, Request};
use clacks_objects::ObjectStore;
use serde_json::{Map, Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::broker_admin::BrokerAdmin;

/// The presence events the agent follows.
pub const CLIENT_EVENTS: [&str; 6] =
    ["ClientAnnounce", "ClientSignature", "ClientPing", "ClientLeave", "UserSession", "Inventory"];

/// How an agent handles clients.
#[derive(Clone, Debug)]
pub struct ClientsOptions {
    /// Silence after which a client counts as offline.
    pub timeout: Duration,
    /// Makes and removes the clients' broker logins; joining needs it.
    pub broker_admin: Option<BrokerAdmin>,
    /// Broker users clients serve (written into their configuration at join); this
    /// agent's own broker user is always among them.
    pub agent_users: Vec<String>,
}

impl Default for ClientsOptions {
    fn default() -> ClientsOptions {
        ClientsOptions { timeout: Duration::from_secs(150), broker_admin: None, agent_users: Vec::new() }
    }
}

/// What an agent knows of one client.
#[derive(Clone, Debug, Default)]
struct ClientEntry {
    name: String,
    online: bool,
    last_seen: Option<Instant>,
    last_seen_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When its last ClientAnnounce arrived.
    announced_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Method name → (signature, documentation).
    methods: BTreeMap<String, (String, String)>,
    network: Value,
    sessions: Vec<String>,
}

/// The `clients` plugin and the presence table behind it.
pub struct ClientsPlugin {
    domain: Domain,
    bus: Bus,
    events: EventPublisher,
    store: Option<Arc<ObjectStore>>,
    acl: Option<Arc<dyn clacks_core::dispatch::Authorizer>>,
    options: ClientsOptions,
    /// Senders who may speak for any client: the agents.
    trusted: Vec<String>,
    table: Mutex<HashMap<String, ClientEntry>>,
    last_poll: Mutex<Option<Instant>>,
    /// Where inventories are kept (the object store's index database).
    inventory: Option<crate::inventory::InventoryStore>,
    /// When this agent last asked each client for its inventory: a client that says its
    /// signature twice at start (its scripts loaded a moment later) is asked once.
    inventory_asked: Mutex<BTreeMap<String, Instant>>,
}

/// How long one inventory request stands for a client.
const INVENTORY_ASK_GAP: Duration = Duration::from_secs(60);

use crate::inventory::as_list;

fn text(value: Option<&Value>) -> String {
    value.and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn unknown(client: &str) -> CommandError {
    CommandError::new(ErrorCode::CLIENT_UNKNOWN, format!("no client '{client}' has announced itself"))
}

impl ClientsPlugin {
    pub(crate) async fn new(
        domain: Domain,
        bus: Bus,
        events: EventPublisher,
        store: Option<Arc<ObjectStore>>,
        acl: Option<Arc<dyn clacks_core::dispatch::Authorizer>>,
        mut options: ClientsOptions,
        trusted: Vec<String>,
    ) -> ClientsPlugin {
        if !options.agent_users.iter().any(|u| u == bus.user()) {
            options.agent_users.insert(0, bus.user().to_owned());
        }
        let inventory = match &store {
            Some(store) => match crate::inventory::InventoryStore::open(store.index().db().clone()).await {
                Ok(inventory) => Some(inventory),
                Err(e) => {
                    warn!(error = %e, "cannot open the inventory tables; inventories are not kept");
                    None
                }
            },
            None => None,
        };
        ClientsPlugin {
            inventory,
            domain,
            bus,
            events,
            store,
            acl,
            options,
            trusted,
            table: Mutex::default(),
            last_poll: Mutex::default(),
            inventory_asked: Mutex::default(),
        }
    }

    /// Asks every client to announce itself (at start, and for unknown pingers), at
    /// most once per half timeout.
    pub(crate) async fn poll(&self) {
        {
            let mut last = self.last_poll.lock().unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < self.options.timeout / 2) {
                return;
            }
            *last = Some(Instant::now());
        }
        self.publish_poll().await;
    }

    async fn publish_poll(&self) {
        if let Err(e) = self.events.publish_fields("ClientPoll", &Map::new()).await {
            warn!(error = %e, "cannot publish ClientPoll");
        }
    }

    /// Follows the clients' presence until `stopped`.
    pub(crate) async fn watch(
        self: Arc<Self>,
        mut events: tokio::sync::mpsc::Receiver<EventMessage>,
        stopped: CancellationToken,
    ) {
        let mut sweep = tokio::time::interval((self.options.timeout / 4).max(Duration::from_millis(50)));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reconnections = self.bus.reconnections();
        let mut reconnects = true;
        loop {
            tokio::select! {
                _ = stopped.cancelled() => return,
                changed = reconnections.changed(), if reconnects => {
                    if changed.is_err() {
                        reconnects = false; // an in-process bus never reconnects
                        continue;
                    }
                    // Whatever clients said while this agent was cut off is lost: ask again.
                    *self.last_poll.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                    self.publish_poll().await;
                }
                _ = sweep.tick() => self.mark_silent_offline(),
                message = events.recv() => match message {
                    Some(message) => self.take(message).await,
                    None => return,
                },
            }
        }
    }

    fn mark_silent_offline(self: &Arc<Self>) {
        let gone: Vec<String> = {
            let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            table
                .iter_mut()
                .filter(|(_, e)| e.online && e.last_seen.is_none_or(|t| t.elapsed() > self.options.timeout))
                .map(|(id, e)| {
                    e.online = false;
                    id.clone()
                })
                .collect()
        };
        for id in gone {
            info!(client = %id, "client timed out");
            self.record_status(&id, false);
        }
    }

    async fn take(self: &Arc<Self>, message: EventMessage) {
        let event = clacks_core::events::event_json(&message.event_type, &message.body);
        if message.event_type == "Inventory" {
            return self.take_inventory(message.user.as_deref(), event).await;
        }
        let id = text(event.get("Id"));
        let sender = message.user.as_deref().unwrap_or_default();
        if id.is_empty() || (sender != id && !self.trusted.iter().any(|t| t == sender)) {
            warn!(sender, claimed = %id, event = %message.event_type, "dropping a client event sent for another client");
            return;
        }
        let now = Instant::now();
        let (came_online, unknown_pinger) = {
            let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            let known = table.contains_key(&id);
            let entry = table.entry(id.clone()).or_default();
            let was_online = entry.online;
            match message.event_type.as_str() {
                "ClientLeave" => {
                    entry.online = false;
                    info!(client = %id, "client left");
                }
                "UserSession" => {
                    entry.sessions =
                        as_list(event.get("User").and_then(|u| u.get("Name"))).iter().map(|v| text(Some(v))).collect()
                }
                kind => {
                    entry.online = true;
                    entry.last_seen = Some(now);
                    entry.last_seen_at = Some(chrono::Utc::now());
                    if kind == "ClientAnnounce" {
                        entry.announced_at = entry.last_seen_at;
                        entry.name = text(event.get("Name"));
                        entry.network =
                            Value::Array(as_list(event.get("NetworkInformation").and_then(|n| n.get("NetworkDevice"))));
                    }
                    if kind == "ClientSignature" {
                        entry.name = text(event.get("Name"));
                        let methods = as_list(event.get("ClientCapabilities").and_then(|c| c.get("ClientMethod")));
                        entry.methods = methods
                            .iter()
                            .map(|m| (text(m.get("Name")), (text(m.get("Signature")), text(m.get("Documentation")))))
                            .filter(|(name, _)| !name.is_empty())
                            .collect();
                    }
                }
            }
            let changed = was_online != entry.online;
            if changed && message.event_type != "ClientLeave" {
                info!(client = %id, name = %entry.name, "client online");
            }
            (changed.then_some(entry.online), !known && message.event_type == "ClientPing")
        };
        debug!(client = %id, event = %message.event_type, "client presence");
        if message.event_type == "ClientLeave" {
            self.forget_if_removed(&id);
        }
        if message.event_type == "ClientSignature" {
            self.ask_for_inventory(&id);
        }
        if let Some(online) = came_online {
            self.record_status(&id, online);
        }
        if unknown_pinger {
            // This agent started after the client: ask everyone to announce again.
            self.poll().await;
        }
    }

    /// Drops the presence entry of a client whose device object is gone (it left the
    /// domain through another agent); a client that merely stopped keeps its entry.
    fn forget_if_removed(self: &Arc<Self>, id: &str) {
        let Some(store) = self.store.clone() else { return };
        let (plugin, id) = (self.clone(), id.to_owned());
        tokio::spawn(async move {
            let dn = format!("cn={id},ou=devices,{}", store.base());
            if let Err(e) = store.load(&dn).await
                && e.code == ErrorCode::OBJECT_NOT_FOUND
            {
                plugin.table.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
                info!(client = %id, "client left the domain");
            }
        });
    }

    async fn take_inventory(&self, sender: Option<&str>, event: Value) {
        let client = text(event.get("ClientUUID"));
        let sender = sender.unwrap_or_default();
        if client.is_empty() || (sender != client && !self.trusted.iter().any(|t| t == sender)) {
            warn!(sender, claimed = %client, "dropping an inventory sent for another client");
            return;
        }
        let (Some(store), Value::Object(mut fields)) = (&self.inventory, event) else { return };
        fields.remove("type");
        match store.put(&client, &fields).await {
            Ok(true) => info!(%client, "inventory stored"),
            Ok(false) => debug!(%client, "inventory unchanged"),
            Err(e) => warn!(%client, error = %e, "cannot store the inventory"),
        }
    }

    /// Asks a client that offers `requestInventory` for its inventory, passing the
    /// checksum already stored so an unchanged one is not sent again.
    fn ask_for_inventory(self: &Arc<Self>, client: &str) {
        let Some(store) = self.inventory.clone() else { return };
        let offers = self
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(client)
            .is_some_and(|e| e.methods.contains_key("requestInventory"));
        if !offers {
            return;
        }
        {
            let mut asked = self.inventory_asked.lock().unwrap_or_else(PoisonError::into_inner);
            if asked.get(client).is_some_and(|at| at.elapsed() < INVENTORY_ASK_GAP) {
                return;
            }
            asked.retain(|_, at| at.elapsed() < INVENTORY_ASK_GAP);
            asked.insert(client.to_owned(), Instant::now());
        }
        let (plugin, client) = (self.clone(), client.to_owned());
        tokio::spawn(async move {
            let known = store.checksum(&client).await.ok().flatten();
            let request = Request::new("requestInventory", Params::Positional(vec![json!(known)]), 1);
            let Ok(body) = serde_json::to_vec(&request) else { return };
            // Collecting runs dpkg and friends: give it a minute.
            let options = CallOptions::timeout(Duration::from_secs(60)).answered_by(client.clone());
            if let Err(e) = plugin.bus.call(&plugin.domain.client_queue(&client), body, options).await {
                debug!(%client, error = %e, "inventory request failed");
            }
        });
    }

    fn inventory(&self) -> CommandResult<&crate::inventory::InventoryStore> {
        self.inventory.as_ref().ok_or_else(|| {
            CommandError::new(
                ErrorCode::COMMAND_FAILED,
                "inventories are kept in the object store's database; this agent has none",
            )
        })
    }

    /// Writes `deviceStatus` and `lastSeen` on the client's device object, in the
    /// background: presence must not wait for the directory.
    fn record_status(&self, id: &str, online: bool) {
        let Some(store) = self.store.clone() else { return };
        let dn = format!("cn={id},ou=devices,{}", store.base());
        tokio::spawn(async move {
            let outcome = async {
                let mut state = store.load(&dn).await?;
                if !state.effective_types().iter().any(|t| t == "RegisteredDevice") {
                    return Ok(());
                }
                store.set(&mut state, "deviceStatus", &json!(if online { "O" } else { "o" })).await?;
                store.set(&mut state, "lastSeen", &json!(chrono::Utc::now().to_rfc3339())).await?;
                store.commit(&mut state, None).await
            };
            match outcome.await {
                Ok(()) => {}
                Err(e) if e.code == ErrorCode::OBJECT_NOT_FOUND => debug!(%dn, "client without a device object"),
                Err(e) => warn!(%dn, error = %e, "cannot record the client's status"),
            }
        });
    }

    /// Takes a client as offline at once (its queue is gone).
    fn mark_offline(&self, client: &str) {
        let was_online = {
            let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            table.get_mut(client).is_some_and(|entry| std::mem::replace(&mut entry.online, false))
        };
        if was_online {
            info!(%client, "client not connected: its queue is gone");
            self.record_status(client, false);
        }
    }

    /// Sends one request to a client's queue and returns its answer.
    async fn call_client(
        &self,
        client: &str,
        method: &str,
        args: Value,
        deadline: Instant,
        on_behalf_of: Option<String>,
    ) -> CommandResult<Value> {
        let params = match args {
            Value::Array(list) => Params::Positional(list),
            Value::Object(map) => Params::Named(map),
            Value::Null => Params::None,
            other => Params::Positional(vec![other]),
        };
        let request = Request::new(method, params, 1);
        let body =
            serde_json::to_vec(&request).map_err(|e| CommandError::new(ErrorCode::INTERNAL_ERROR, e.to_string()))?;
        // Only the machine itself may answer: its queue's reply address is visible to it
        // and to nobody else, but anyone can publish to a reply address they learn.
        let options = CallOptions { deadline, on_behalf_of, reply_from: ReplyFrom::User(client.to_owned()) };
        let reply = match self.bus.call(&self.domain.client_queue(client), body, options).await {
            Ok(reply) => reply,
            Err(e) => {
                let error = e.to_rpc_error();
                if error.symbolic() == ErrorCode::NO_PROVIDER {
                    // Its queue went with its connection (killed, cut off by the broker):
                    // the broker says so now, before any presence timeout would.
                    self.mark_offline(client);
                    return Err(CommandError::new(
                        ErrorCode::CLIENT_OFFLINE,
                        format!("client '{client}' is not connected"),
                    ));
                }
                return Err(CommandError::from(error));
            }
        };
        let response: clacks_core::rpc::Response = serde_json::from_slice(&reply).map_err(|e| {
            CommandError::new(ErrorCode::INTERNAL_ERROR, format!("client '{client}' answered badly: {e}"))
        })?;
        response.into_result().map_err(CommandError::from)
    }

    /// The clients a fan-out of `method` reaches: every joined machine and every client
    /// heard of that matches, by id, with the name it is targeted by; and the ids the
    /// filter names that no such machine has (`unknown`).
    async fn fan_out_targets(&self, method: Option<&str>, filter: &FanOutFilter) -> CommandResult<Targets> {
        let inventory_match = match &filter.inventory {
            Some(query) => {
                let rows = self.inventory()?.find(query).await.map_err(inventory_error)?;
                Some(
                    rows.iter()
                        .filter_map(|r| r["client"].as_str().map(str::to_owned))
                        .collect::<std::collections::BTreeSet<_>>(),
                )
            }
            None => None,
        };
        let joined = self.joined().await?;
        let glob = clacks_objects::store::glob_match;
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let mut known: BTreeMap<String, Target> = BTreeMap::new();
        for (id, name) in &joined {
            let entry = table.get(id).cloned().unwrap_or_default();
            known.insert(id.clone(), Target { name: name.clone(), hostname: entry.name.clone(), joined: true, entry });
        }
        for (id, entry) in table.iter().filter(|(id, _)| !joined.contains_key(*id)) {
            // Not joined (it logs in as an agent): what it announces is all there is.
            known.insert(
                id.clone(),
                Target { name: entry.name.clone(), hostname: entry.name.clone(), joined: false, entry: entry.clone() },
            );
        }
        drop(table);
        let unknown: Vec<String> = filter
            .clients
            .iter()
            .flatten()
            .filter(|id| !known.contains_key(*id))
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let reached = known
            .into_iter()
            .filter(|(id, _)| filter.clients.as_ref().is_none_or(|list| list.iter().any(|c| c == id)))
            .filter(|(id, _)| filter.id.as_deref().is_none_or(|p| glob(p, id)))
            .filter(|(_, t)| filter.name.as_deref().is_none_or(|p| glob(p, &t.name)))
            .filter(|(_, t)| filter.hostname.as_deref().is_none_or(|p| glob(p, &t.hostname)))
            .filter(|(_, t)| filter.online.is_none_or(|online| t.entry.online == online))
            // A machine not heard from yet offers nothing known: it is targeted (and
            // reported offline) unless a capability is asked for explicitly.
            .filter(|(_, t)| match (&filter.capability, method) {
                (Some(capability), _) => t.entry.methods.contains_key(capability),
                (None, Some(method)) => t.entry.methods.is_empty() || t.entry.methods.contains_key(method),
                (None, None) => true,
            })
            .filter(|(id, _)| inventory_match.as_ref().is_none_or(|set| set.contains(id)))
            .collect();
        Ok(Targets { reached, unknown })
    }

    /// The joined machines by client id, with the name they are targeted by — from the
    /// device objects, so an agent that just started knows every one of them, and a
    /// machine cannot rename itself into another group. Empty without an object store.
    async fn joined(&self) -> CommandResult<BTreeMap<String, String>> {
        let Some(store) = &self.store else { return Ok(BTreeMap::new()) };
        let devices = store.index().of_type("Device").await.map_err(clacks_objects::ObjectError::from)?;
        let first = |doc: &clacks_objects::index::IndexDoc, attr: &str| {
            doc.values.get(attr).and_then(|v| v.first()).cloned().unwrap_or_default()
        };
        Ok(devices
            .iter()
            .filter(|doc| doc.extensions.iter().any(|e| e == "RegisteredDevice"))
            .map(|doc| (first(doc, "cn"), first(doc, "clientName")))
            .filter(|(id, _)| !id.is_empty())
            .collect())
    }

    fn entry(&self, client: &str) -> CommandResult<ClientEntry> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner).get(client).cloned().ok_or_else(|| unknown(client))
    }

    fn store(&self) -> CommandResult<&Arc<ObjectStore>> {
        self.store.as_ref().ok_or_else(|| {
            CommandError::new(
                ErrorCode::COMMAND_FAILED,
                "clients are kept as device objects; this agent has no object store",
            )
        })
    }

    fn broker_admin(&self) -> CommandResult<&BrokerAdmin> {
        self.options.broker_admin.as_ref().ok_or_else(|| {
            CommandError::new(
                ErrorCode::BROKER_ADMIN_FAILED,
                "joining needs the broker's management API: set [clients] broker_api, broker_api_user and broker_api_password",
            )
        })
    }

    /// `x` on `<domain>.client.<id>.<method>`, with the call's arguments as options.
    fn check_dispatch(&self, ctx: &CallContext, client: &str, method: &str, args: &Value) -> CommandResult<()> {
        let Some(acl) = &self.acl else { return Ok(()) };
        let topic = self.domain.client_topic(client, method);
        let user = ctx.user.as_deref();
        acl.authorize(user, &topic, "x", args.as_object(), &|| {
            format!("{} may not call {method} on client {client}", user.unwrap_or("nobody"))
        })
        .map_err(CommandError::from)
    }
}

/// A client a fan-out reaches.
struct Target {
    /// The name it is targeted by: the device's `clientName` for a joined machine.
    name: String,
    /// The host name it announces.
    hostname: String,
    /// It has a device object (it joined); otherwise it was only heard of.
    joined: bool,
    entry: ClientEntry,
}

/// What a fan-out's filter finds.
struct Targets {
    reached: BTreeMap<String, Target>,
    /// Ids the filter names that no joined or known client has.
    unknown: Vec<String>,
}

/// Which clients a fan-out reaches.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FanOutFilter {
    /// Exactly these client ids.
    clients: Option<Vec<String>>,
    /// A glob on the client id.
    id: Option<String>,
    /// A glob on the name the client is targeted by (given at join).
    name: Option<String>,
    /// A glob on the host name the client announces.
    hostname: Option<String>,
    /// Only clients offering this command; default the command called.
    capability: Option<String>,
    /// Only clients whose inventory matches (as `findClients`).
    inventory: Option<crate::inventory::Query>,
    /// Only clients online (true) or offline (false); default all, offline ones
    /// reported as errors.
    online: Option<bool>,
}

/// How a fan-out runs.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FanOutOptions {
    /// Calls in flight at once.
    #[serde(default = "default_batch")]
    batch: usize,
    /// Seconds each client may take.
    #[serde(default = "default_call_timeout")]
    timeout: f64,
    /// Only list the clients that would be called.
    #[serde(default)]
    dry_run: bool,
    /// Seconds to wait between batches: with a pause the clients are called `batch` at a
    /// time, each batch finished before the pause (a rolling change across a fleet);
    /// without, `batch` calls are kept in flight.
    #[serde(default)]
    pause: f64,
}

fn default_batch() -> usize {
    32
}

fn default_call_timeout() -> f64 {
    10.0
}

/// A bad query is the caller's mistake; anything else is the database's.
fn inventory_error(e: clacks_objects::backend::BackendError) -> CommandError {
    match e {
        clacks_objects::backend::BackendError::Invalid(m) => CommandError::new(ErrorCode::INVALID_PARAMS, m),
        other => clacks_objects::ObjectError::from(other).into(),
    }
}

/// One client's outcome in a fan-out.
fn outcome_row(client: &str, name: &str, result: Result<Value, CommandError>, took: Duration) -> Value {
    let ms = (took.as_secs_f64() * 1000.0).round();
    match result {
        Ok(value) => json!({"client": client, "name": name, "status": "ok", "result": value, "ms": ms}),
        Err(e) => {
            let status = if e.code == ErrorCode::TIMEOUT { "timeout" } else { "error" };
            json!({"client": client, "name": name, "status": status, "code": e.code.as_str(), "message": e.message, "ms": ms})
        }
    }
}

#[clacks_core::plugin(target = "clients")]
impl ClientsPlugin {
    /// The joined machines and the clients this agent has heard of: id, name (given at join), hostname (announced), joined, online, last seen, last announce, number of methods, user sessions.
    #[command]
    async fn get_clients(&self) -> CommandResult<Vec<Value>> {
        let Targets { reached, .. } = self.fan_out_targets(None, &FanOutFilter::default()).await?;
        let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        };
        let mut rows: Vec<Value> = reached
            .iter()
            .map(|(id, t)| {
                json!({
                    "id": id, "name": t.name, "hostname": t.hostname, "joined": t.joined,
                    "online": t.entry.online, "lastSeen": time(t.entry.last_seen_at),
                    "lastAnnounce": time(t.entry.announced_at), "methods": t.entry.methods.len(), "sessions": t.entry.sessions,
                })
            })
            .collect();
        rows.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()).then(a["id"].as_str().cmp(&b["id"].as_str())));
        Ok(rows)
    }

    /// The commands a client offers: name → {signature, help}.
    #[command]
    fn get_client_methods(&self, client: String) -> CommandResult<BTreeMap<String, Value>> {
        let entry = self.entry(&client)?;
        Ok(entry
            .methods
            .into_iter()
            .map(|(name, (signature, help))| (name, json!({"signature": signature, "help": help})))
            .collect())
    }

    /// A client's network interfaces as it announced them.
    #[command]
    fn get_client_net_info(&self, client: String) -> CommandResult<Value> {
        Ok(self.entry(&client)?.network)
    }

    /// Users logged in on one client, or on every client (client id → user names).
    #[command]
    fn get_user_sessions(&self, client: Option<String>) -> CommandResult<BTreeMap<String, Vec<String>>> {
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = &client
            && !table.contains_key(client)
        {
            return Err(unknown(client));
        }
        Ok(table
            .iter()
            .filter(|(id, _)| client.as_ref().is_none_or(|c| c == *id))
            .map(|(id, e)| (id.clone(), e.sessions.clone()))
            .collect())
    }

    /// Call a command on a client; args: a list (positional) or a map (named).
    #[command(needs_user)]
    async fn client_dispatch(
        &self,
        ctx: &CallContext,
        client: String,
        method: String,
        args: Option<Value>,
    ) -> CommandResult<Value> {
        let entry = self.entry(&client)?;
        if !entry.online {
            return Err(CommandError::new(
                ErrorCode::CLIENT_OFFLINE,
                format!("client '{client}' ({}) is offline", entry.name),
            ));
        }
        if !entry.methods.contains_key(&method) {
            return Err(CommandError::new(
                ErrorCode::COMMAND_NOT_DEFINED,
                format!("client '{client}' ({}) offers no '{method}'", entry.name),
            )
            .with_details(json!({"method": method, "client": client})));
        }
        let args = args.unwrap_or(Value::Null);
        self.check_dispatch(ctx, &client, &method, &args)?;
        self.call_client(&client, &method, args, ctx.deadline, ctx.user.clone()).await
    }

    /// Call a command on many clients at once: filter {clients, id, name (the name given at join), hostname (the one announced), capability, inventory, online}, options {batch, timeout, pause (seconds between batches), dryRun}. Every joined machine that matches is listed as ok, error or timeout, and every id named in clients that no machine has as unknown.
    #[command(needs_user)]
    async fn client_fan_out(
        &self,
        ctx: &CallContext,
        method: String,
        args: Option<Value>,
        filter: Option<Map<String, Value>>,
        options: Option<Map<String, Value>>,
    ) -> CommandResult<Value> {
        let invalid =
            |what: &str, e: serde_json::Error| CommandError::new(ErrorCode::INVALID_PARAMS, format!("{what}: {e}"));
        let filter: FanOutFilter =
            serde_json::from_value(Value::Object(filter.unwrap_or_default())).map_err(|e| invalid("filter", e))?;
        let options: FanOutOptions =
            serde_json::from_value(Value::Object(options.unwrap_or_default())).map_err(|e| invalid("options", e))?;
        if !(options.timeout.is_finite() && options.timeout > 0.0) || options.batch == 0 {
            return Err(CommandError::new(ErrorCode::INVALID_PARAMS, "options: timeout and batch must be positive"));
        }
        if !(options.pause.is_finite() && options.pause >= 0.0) {
            return Err(CommandError::new(ErrorCode::INVALID_PARAMS, "options: pause must be 0 or more seconds"));
        }
        let args = args.unwrap_or(Value::Null);
        let Targets { reached, unknown } = self.fan_out_targets(Some(&method), &filter).await?;
        if options.dry_run {
            let rows: Vec<Value> = reached
                .iter()
                .map(|(id, t)| json!({"client": id, "name": t.name, "hostname": t.hostname, "online": t.entry.online}))
                .chain(unknown.iter().map(|id| json!({"client": id, "name": "", "unknown": true})))
                .collect();
            return Ok(json!({"targets": rows}));
        }
        // Answer before the caller gives up: calls not finished by then count as timeouts.
        let finish_by = ctx.deadline.checked_sub(Duration::from_millis(500)).unwrap_or(ctx.deadline);
        let per_call = Duration::from_secs_f64(options.timeout);
        let calls = reached.into_iter().map(|(client, Target { name, entry, .. })| {
            let args = args.clone();
            let method = method.clone();
            async move {
                let started = Instant::now();
                let result = if !entry.online {
                    Err(CommandError::new(ErrorCode::CLIENT_OFFLINE, format!("client '{client}' is offline")))
                } else if let Err(e) = self.check_dispatch(ctx, &client, &method, &args) {
                    Err(e)
                } else if Instant::now() >= finish_by {
                    Err(CommandError::new(ErrorCode::TIMEOUT, "not reached before the call's deadline"))
                } else {
                    let deadline = (Instant::now() + per_call).min(finish_by);
                    let call = self.call_client(&client, &method, args, deadline, ctx.user.clone());
                    match tokio::time::timeout_at(deadline, call).await {
                        Ok(result) => result,
                        Err(_) => Err(CommandError::new(
                            ErrorCode::TIMEOUT,
                            format!("no answer within {:.1} s", options.timeout),
                        )),
                    }
                };
                outcome_row(&client, &name, result, started.elapsed())
            }
        });
        let mut results: Vec<Value> = if options.pause > 0.0 {
            let pause = Duration::from_secs_f64(options.pause);
            let mut calls = calls.collect::<Vec<_>>().into_iter();
            let mut results = Vec::new();
            loop {
                let batch: Vec<_> = calls.by_ref().take(options.batch).collect();
                results.extend(futures_util::future::join_all(batch).await);
                if calls.len() == 0 {
                    break results;
                }
                // Calls a pause pushes past the deadline are reported as timeouts.
                tokio::time::sleep_until((Instant::now() + pause).min(finish_by)).await;
            }
        } else {
            use futures_util::StreamExt;
            futures_util::stream::iter(calls).buffer_unordered(options.batch).collect().await
        };
        // A named id no machine has gets its row too: every named target is accounted for.
        results.extend(unknown.iter().map(|id| {
            json!({"client": id, "name": "", "status": "unknown", "code": ErrorCode::CLIENT_UNKNOWN.as_str(),
                   "message": format!("no client '{id}' has joined this domain"), "ms": 0})
        }));
        results.sort_by(|a, b| a["client"].as_str().cmp(&b["client"].as_str()));
        let count = |status: &str| results.iter().filter(|r| r["status"] == json!(status)).count();
        let summary = json!({"targeted": results.len(), "ok": count("ok"), "error": count("error"),
                             "timeout": count("timeout"), "unknown": count("unknown")});
        info!(%method, summary = %summary, "fan-out done");
        Ok(json!({"summary": summary, "results": results}))
    }

    /// Register a machine: creates its RegisteredDevice below ou=devices, a client id, a machine secret and its broker login. Returns {id, secret, dn, agentUsers}.
    #[command(needs_user)]
    async fn join_client(
        &self,
        ctx: &CallContext,
        device_uuid: String,
        name: Option<String>,
        info: Option<Map<String, Value>>,
    ) -> CommandResult<Value> {
        let store = self.store()?;
        let admin = self.broker_admin()?;
        let device_uuid = device_uuid.trim().to_owned();
        if device_uuid.is_empty() || !device_uuid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(CommandError::new(
                ErrorCode::INVALID_PARAMS,
                "device_uuid must be the machine id (letters, digits, '-')",
            ));
        }
        if let Some(existing) = store
            .index()
            .with_value("RegisteredDevice", "deviceUUID", &device_uuid)
            .await
            .map_err(clacks_objects::ObjectError::from)?
            .first()
        {
            return Err(CommandError::new(
                ErrorCode::DEVICE_EXISTS,
                format!("this machine ({device_uuid}) has joined already as {}; run `clacks leave` on it or remove the device first", existing.dn),
            )
            .with_details(json!({"dn": existing.dn})));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let secret = {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
        };
        let devices = format!("ou=devices,{}", store.base());
        if let Err(e) = store.load(&devices).await {
            if e.code != ErrorCode::OBJECT_NOT_FOUND {
                return Err(e.into());
            }
            let mut container = store.new_object(store.base(), "DeviceContainer").await?;
            store.commit(&mut container, ctx.user.as_deref()).await?;
        }
        let mut device = store.new_object(&devices, "Device").await?;
        store.set(&mut device, "cn", &json!(id)).await?;
        store.extend(&mut device, "RegisteredDevice")?;
        if let Some(name) = name.as_deref().filter(|n| !n.is_empty()) {
            store.set(&mut device, "clientName", &json!(name)).await?;
        }
        store.set(&mut device, "deviceUUID", &json!(device_uuid)).await?;
        let key = clacks_objects::password::hash(&secret, "argon2")
            .map_err(|e| CommandError::new(ErrorCode::INTERNAL_ERROR, e))?;
        store.set(&mut device, "deviceKey", &json!(key)).await?;
        for (field, value) in info.into_iter().flatten() {
            if field == "deviceType" || field == "serialNumber" || field == "l" || field == "ou" || field == "o" {
                store.set(&mut device, &field, &value).await?;
            } else {
                return Err(CommandError::new(
                    ErrorCode::INVALID_PARAMS,
                    format!("info: '{field}' is not one of deviceType, serialNumber, l, ou, o"),
                ));
            }
        }
        store.commit(&mut device, ctx.user.as_deref()).await?;
        let dn = device.dn.clone().unwrap_or_default();
        if let Err(e) = admin.create_client(&self.domain, &id, &secret).await {
            // No broker login, no client: take the device back out.
            let _ = store.remove(&dn, false, ctx.user.as_deref()).await;
            return Err(CommandError::new(
                ErrorCode::BROKER_ADMIN_FAILED,
                format!("cannot create the client's broker login: {e}"),
            ));
        }
        info!(client = %id, %dn, by = ?ctx.user, "client joined");
        Ok(json!({"id": id, "secret": secret, "dn": dn, "agentUsers": self.options.agent_users}))
    }

    /// The stored inventory of a client (as it sent it, plus Received).
    #[command]
    async fn get_inventory(&self, client: String) -> CommandResult<Value> {
        let store = self.inventory()?;
        let found = store.get(&client).await.map_err(clacks_objects::ObjectError::from)?;
        found.ok_or_else(|| {
            CommandError::new(ErrorCode::CLIENT_UNKNOWN, format!("no inventory of client '{client}' is stored"))
        })
    }

    /// Clients whose inventory matches every condition: package, packageBelow, packageAtLeast (versions compared like dpkg), service (running), os (glob on name and version).
    #[command]
    async fn find_clients(&self, conditions: Map<String, Value>) -> CommandResult<Vec<Value>> {
        let query: crate::inventory::Query = serde_json::from_value(Value::Object(conditions))
            .map_err(|e| CommandError::new(ErrorCode::INVALID_PARAMS, format!("conditions: {e}")))?;
        let store = self.inventory()?;
        let mut rows = store.find(&query).await.map_err(inventory_error)?;
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        for row in &mut rows {
            let online = row["client"].as_str().and_then(|c| table.get(c)).is_some_and(|e| e.online);
            row["online"] = json!(online);
        }
        Ok(rows)
    }

    /// Remove a client: its inventory, its broker login, its device object, and every agent's presence entry.
    #[command(needs_user)]
    async fn leave_client(&self, ctx: &CallContext, client: String) -> CommandResult<bool> {
        let store = self.store()?;
        let admin = self.broker_admin()?;
        let dn = format!("cn={client},ou=devices,{}", store.base());
        let state = store
            .load(&dn)
            .await
            .map_err(|e| if e.code == ErrorCode::OBJECT_NOT_FOUND { unknown(&client) } else { e.into() })?;
        if !state.effective_types().iter().any(|t| t == "RegisteredDevice") {
            return Err(unknown(&client));
        }
        // The inventory first: if that fails, nothing is gone yet and leaving can be retried.
        if let Some(inventory) = &self.inventory {
            inventory.remove(&client).await.map_err(inventory_error)?;
        }
        admin.delete_client(&client).await.map_err(|e| CommandError::new(ErrorCode::BROKER_ADMIN_FAILED, e))?;
        store.remove(&dn, false, ctx.user.as_deref()).await?;
        self.table.lock().unwrap_or_else(PoisonError::into_inner).remove(&client);
        // The other agents drop their presence entry when they hear it left and find its
        // device gone.
        let leave = Map::from_iter([("Id".to_owned(), json!(client))]);
        if let Err(e) = self.events.publish_fields("ClientLeave", &leave).await {
            warn!(%client, error = %e, "cannot tell the other agents that the client left");
        }
        info!(%client, by = ?ctx.user, "client left the domain");
        Ok(true)
    }
}
