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
//!
//! Fan-outs select clients with a [`ClientFilter`]; groups of clients (nodegroups) are
//! stored filters, `ClientGroup` objects beside the devices. Each agent keeps every
//! group's members current — after a change of groups, devices or inventories, and
//! every half minute — in the [`NodeGroups`] its ACL engine reads for `N@<group>`
//! members.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
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
use crate::client_filter::{Candidate, ClientFilter};
use clacks_acl::NodeGroups;

/// The events the clients plugin follows: the clients' presence and their inventories
/// (and object changes too when it keeps group members for ACLs: see
/// [`ClientsPlugin::event_types`]).
pub const CLIENT_EVENTS: [&str; 6] =
    ["ClientAnnounce", "ClientSignature", "ClientPing", "ClientLeave", "UserSession", "Inventory"];

/// How often group members are worked out again when nothing said they changed (an
/// inventory condition, a machine going offline).
const GROUP_REFRESH: Duration = Duration::from_secs(30);
/// Least time between two refreshes of group members: a fleet's inventories arriving
/// at once cause one refresh a second, not one each.
const GROUP_REFRESH_GAP: Duration = Duration::from_secs(1);

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
    /// Group members as the ACL engine reads them (`None`: this agent checks no ACLs).
    node_groups: Option<NodeGroups>,
    /// Something that may change group members happened.
    groups_changed: tokio::sync::Notify,
}

/// A group of clients as stored: its name, description, and filter (as given, and
/// parsed — a filter edited by hand that no longer parses says why).
struct StoredGroup {
    name: String,
    description: String,
    raw_filter: Value,
    filter: Result<ClientFilter, String>,
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
    /// With `acl`, calls to clients are checked and groups of clients name ACL members.
    pub(crate) async fn new(
        domain: Domain,
        bus: Bus,
        events: EventPublisher,
        store: Option<Arc<ObjectStore>>,
        acl: Option<&clacks_acl::SharedAcl>,
        mut options: ClientsOptions,
        trusted: Vec<String>,
    ) -> ClientsPlugin {
        let node_groups = acl.map(|engine| engine.read().unwrap_or_else(PoisonError::into_inner).node_groups().clone());
        let acl = acl.map(|engine| {
            Arc::new(clacks_acl::AclAuthorizer(engine.clone())) as Arc<dyn clacks_core::dispatch::Authorizer>
        });
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
            node_groups,
            groups_changed: tokio::sync::Notify::new(),
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
        tokio::spawn(self.clone().groups_loop(stopped.clone()));
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

    /// What [`ClientsPlugin::watch`] must be given: the clients' events, and object
    /// changes (a group or a device edited through any agent) only when group members
    /// are kept for ACLs — otherwise every commit of the domain would be read for nothing.
    pub(crate) fn event_types(&self) -> Vec<&'static str> {
        let follows_groups = self.node_groups.is_some() && self.store.is_some();
        CLIENT_EVENTS.iter().copied().chain(follows_groups.then_some("ObjectChanged")).collect()
    }

    /// Keeps the group members the ACL engine reads current until `stopped`.
    async fn groups_loop(self: Arc<Self>, stopped: CancellationToken) {
        if self.node_groups.is_none() || self.store.is_none() {
            return;
        }
        loop {
            self.refresh_groups().await;
            tokio::select! {
                _ = stopped.cancelled() => return,
                _ = tokio::time::sleep(GROUP_REFRESH_GAP) => {}
            }
            tokio::select! {
                _ = stopped.cancelled() => return,
                _ = self.groups_changed.notified() => {}
                _ = tokio::time::sleep(GROUP_REFRESH) => {}
            }
        }
    }

    /// Works out every group's members again; a group whose filter fails has none.
    async fn refresh_groups(&self) {
        let Some(shared) = &self.node_groups else { return };
        let (groups, known) = match (self.stored_groups().await, self.known().await) {
            (Ok(groups), Ok(known)) => (groups, known),
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, "cannot work out the groups of clients; their members stay as they were");
                return;
            }
        };
        let mut members = BTreeMap::new();
        let selections = self.members_of_all(&groups, &known).await;
        for (group, selected) in groups.iter().zip(selections) {
            if let Some(why) = acl_refusal(&group.name, &groups) {
                debug!(group = %group.name, %why, "group of clients names no ACL members");
                continue;
            }
            match selected {
                Ok(mut ids) => {
                    // Only joined machines: their ids are broker logins, vouched for.
                    ids.retain(|id| known.get(id).is_some_and(|t| t.joined));
                    members.insert(group.name.to_lowercase(), ids);
                }
                Err(e) => warn!(group = %group.name, error = %e.message, "group of clients has no members"),
            }
        }
        debug!(groups = members.len(), "group members worked out");
        shared.replace(members);
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
        if message.event_type == "ObjectChanged" {
            // Groups of clients and devices live below ou=devices.
            if let Some(store) = &self.store
                && clacks_core::dn::dn_key(&text(event.get("DN")))
                    .ends_with(&clacks_core::dn::dn_key(&format!("ou=devices,{}", store.base())))
            {
                self.groups_changed.notify_one();
            }
            return;
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
        fields.remove(clacks_core::events::TYPE_KEY);
        match store.put(&client, &fields).await {
            Ok(true) => {
                info!(%client, "inventory stored");
                self.groups_changed.notify_one();
            }
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

    /// Every client there is to target, by id: each joined machine (from its device
    /// object, with the name it is targeted by) and each client heard of.
    async fn known(&self) -> CommandResult<BTreeMap<String, Target>> {
        let joined = self.joined().await?;
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
        Ok(known)
    }

    /// The clients a fan-out of `method` reaches: those the filter selects that offer
    /// `method` (a joined machine not heard from yet offers nothing known, and is
    /// targeted — to be reported offline); and the ids the filter names that no client
    /// has (`unknown`).
    async fn fan_out_targets(&self, method: Option<&str>, filter: &ClientFilter) -> CommandResult<Targets> {
        let mut known = self.known().await?;
        let selected = self.select(filter, &known, &mut GroupWalk::default()).await?;
        let unknown: Vec<String> = filter
            .named_clients()
            .into_iter()
            .filter(|id| !known.contains_key(*id))
            .map(str::to_owned)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        known.retain(|id, t| {
            selected.contains(id)
                && method.is_none_or(|m| t.entry.methods.is_empty() || t.entry.methods.contains_key(m))
        });
        Ok(Targets { reached: known, unknown })
    }

    /// The ids among `known` that `filter` selects; `groups` tracks the groups met.
    fn select<'a>(
        &'a self,
        filter: &'a ClientFilter,
        known: &'a BTreeMap<String, Target>,
        groups: &'a mut GroupWalk,
    ) -> Pin<Box<dyn Future<Output = CommandResult<BTreeSet<String>>> + Send + 'a>> {
        Box::pin(async move {
            let mut set: BTreeSet<String> = known
                .iter()
                .filter(|(id, t)| {
                    let offers = |c: &str| t.entry.methods.contains_key(c);
                    let candidate =
                        Candidate { id, name: &t.name, hostname: &t.hostname, online: t.entry.online, offers: &offers };
                    filter.matches_presence(&candidate)
                })
                .map(|(id, _)| id.clone())
                .collect();
            if let Some(query) = &filter.inventory {
                let rows = self.inventory()?.find(query).await.map_err(inventory_error)?;
                let with: BTreeSet<&str> = rows.iter().filter_map(|r| r["client"].as_str()).collect();
                set.retain(|id| with.contains(id.as_str()));
            }
            for (name, condition) in filter.facts.iter().flatten() {
                let values = self.inventory()?.fact_values(name).await.map_err(inventory_error)?;
                set.retain(|id| values.get(id).is_some_and(|v| condition.holds(v)));
            }
            if let Some(group) = &filter.group {
                let members = self.group_members(group, known, groups).await?;
                set.retain(|id| members.contains(id));
            }
            for child in filter.all.iter().flatten() {
                let matched = self.select(child, known, groups).await?;
                set.retain(|id| matched.contains(id));
            }
            if let Some(any) = &filter.any {
                let mut matched = BTreeSet::new();
                for child in any {
                    matched.extend(self.select(child, known, groups).await?);
                }
                set.retain(|id| matched.contains(id));
            }
            if let Some(not) = &filter.not {
                let matched = self.select(not, known, groups).await?;
                set.retain(|id| !matched.contains(id));
            }
            Ok(set)
        })
    }

    /// The members of every stored group in `groups` among `known`, in order: one walk,
    /// so a group that others name is worked out once, from the filters already loaded.
    async fn members_of_all(
        &self,
        groups: &[StoredGroup],
        known: &BTreeMap<String, Target>,
    ) -> Vec<CommandResult<BTreeSet<String>>> {
        let loaded = groups.iter().filter_map(|g| Some((g.name.to_lowercase(), g.filter.clone().ok()?)));
        let mut walk = GroupWalk { loaded: loaded.collect(), ..GroupWalk::default() };
        let mut selections = Vec::new();
        for group in groups {
            selections.push(match &group.filter {
                Ok(_) => self.group_members(&group.name, known, &mut walk).await,
                Err(problem) => Err(CommandError::failed(problem.clone())),
            });
        }
        selections
    }

    /// The members of the stored group `group` among `known`, each group worked out once
    /// per walk however often filters name it.
    async fn group_members(
        &self,
        group: &str,
        known: &BTreeMap<String, Target>,
        walk: &mut GroupWalk,
    ) -> CommandResult<BTreeSet<String>> {
        let key = group.to_lowercase();
        if let Some(first) = walk.open.iter().position(|g| *g == key) {
            let circle = walk.open[first..].iter().chain([&key]).cloned().collect::<Vec<_>>().join(" → ");
            return Err(CommandError::new(
                ErrorCode::INVALID_PARAMS,
                format!("groups of clients in a circle: {circle}"),
            ));
        }
        if let Some(members) = walk.done.get(&key) {
            return Ok(members.clone());
        }
        if walk.open.len() >= crate::client_filter::MAX_DEPTH {
            return Err(CommandError::new(ErrorCode::INVALID_PARAMS, "groups of clients nest too deep"));
        }
        let inner = match walk.loaded.get(&key) {
            Some(filter) => filter.clone(),
            None => self.stored_group(group).await?.filter.map_err(CommandError::failed)?,
        };
        walk.open.push(key.clone());
        let members = self.select(&inner, known, walk).await;
        walk.open.pop();
        let members = members?;
        walk.done.insert(key, members.clone());
        Ok(members)
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

    /// `ou=devices` below the base, where devices and groups of clients live.
    fn devices_dn(store: &ObjectStore) -> String {
        format!("ou=devices,{}", store.base())
    }

    /// Creates `ou=devices` when it is missing.
    async fn ensure_devices(&self, store: &ObjectStore, user: Option<&str>) -> CommandResult<String> {
        let devices = Self::devices_dn(store);
        if let Err(e) = store.load(&devices).await {
            if e.code != ErrorCode::OBJECT_NOT_FOUND {
                return Err(e.into());
            }
            let mut container = store.new_object(store.base(), "DeviceContainer").await?;
            store.commit(&mut container, user).await?;
        }
        Ok(devices)
    }

    /// Reads a stored group from its object.
    fn group_from(state: &clacks_objects::ObjectState) -> StoredGroup {
        let first =
            |attr: &str| state.values.get(attr).and_then(|v| v.first()).map(|v| text(Some(v))).unwrap_or_default();
        let source = first("clientFilter");
        let raw_filter = serde_json::from_str(&source).unwrap_or(Value::String(source));
        let name = first("cn");
        let filter = ClientFilter::parse(raw_filter.clone())
            .map_err(|e| format!("the stored filter of group of clients '{name}' does not hold: {e}"));
        StoredGroup { description: first("description"), raw_filter, filter, name }
    }

    /// The stored group `name` (names compare ignoring case).
    async fn stored_group(&self, name: &str) -> CommandResult<StoredGroup> {
        let store = self.store()?;
        let dn = format!("cn={name},{}", Self::devices_dn(store));
        let missing = || CommandError::new(ErrorCode::CLIENT_GROUP_UNKNOWN, format!("no group of clients '{name}'"));
        if !clacks_acl::is_group_name(name) {
            return Err(missing());
        }
        match store.load(&dn).await {
            Ok(state) if state.base_type == "ClientGroup" => Ok(Self::group_from(&state)),
            Ok(_) => Err(missing()),
            Err(e) if e.code == ErrorCode::OBJECT_NOT_FOUND => Err(missing()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every stored group, by name.
    async fn stored_groups(&self) -> CommandResult<Vec<StoredGroup>> {
        let store = self.store()?;
        let docs = store.index().of_type("ClientGroup").await.map_err(clacks_objects::ObjectError::from)?;
        let mut groups = Vec::new();
        for doc in docs {
            match store.load(&doc.dn).await {
                Ok(state) => groups.push(Self::group_from(&state)),
                // Removed meanwhile.
                Err(e) if e.code == ErrorCode::OBJECT_NOT_FOUND => {}
                Err(e) => return Err(e.into()),
            }
        }
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(groups)
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

/// Why the group `name` cannot name ACL members, if it cannot: its filter, or that of a
/// group it names, selects by what machines say of themselves (a machine could report
/// its way into the group and so into the ACL), or does not hold.
fn acl_refusal(name: &str, groups: &[StoredGroup]) -> Option<String> {
    fn walk(name: &str, groups: &[StoredGroup], path: &mut Vec<String>) -> Option<String> {
        let key = name.to_lowercase();
        if path.contains(&key) {
            return Some(format!("groups in a circle: {} → {name}", path.join(" → ")));
        }
        let Some(group) = groups.iter().find(|g| g.name.to_lowercase() == key) else {
            return Some(format!("there is no group '{name}'"));
        };
        let filter = match &group.filter {
            Ok(filter) => filter,
            Err(problem) => return Some(problem.clone()),
        };
        if let Some(key) = filter.self_reported() {
            return Some(format!("the filter of '{}' uses {key}, which machines report about themselves", group.name));
        }
        path.push(key);
        let inner = filter.groups().into_iter().find_map(|inner| walk(inner, groups, path));
        path.pop();
        inner
    }
    walk(name, groups, &mut Vec::new())
}

/// The groups met while a filter is worked out: those being worked out (outermost
/// first; one met again is a circle) and those done (worked out once per walk).
#[derive(Default)]
struct GroupWalk {
    open: Vec<String>,
    done: BTreeMap<String, BTreeSet<String>>,
    /// Filters of stored groups already read, by lower-case name.
    loaded: BTreeMap<String, ClientFilter>,
}

impl GroupWalk {
    /// A walk working out the group `name` itself.
    fn inside(name: &str) -> GroupWalk {
        GroupWalk { open: vec![name.to_lowercase()], ..GroupWalk::default() }
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
    #[command(idempotent)]
    async fn get_clients(&self) -> CommandResult<Vec<Value>> {
        let Targets { reached, .. } = self.fan_out_targets(None, &ClientFilter::default()).await?;
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
    #[command(idempotent)]
    fn get_client_methods(&self, client: String) -> CommandResult<BTreeMap<String, Value>> {
        let entry = self.entry(&client)?;
        Ok(entry
            .methods
            .into_iter()
            .map(|(name, (signature, help))| (name, json!({"signature": signature, "help": help})))
            .collect())
    }

    /// A client's network interfaces as it announced them.
    #[command(idempotent)]
    fn get_client_net_info(&self, client: String) -> CommandResult<Value> {
        Ok(self.entry(&client)?.network)
    }

    /// Users logged in on one client, or on every client (client id → user names).
    #[command(idempotent)]
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

    /// Call a command on many clients at once: filter {clients, id, name (the name given at join), hostname (the one announced), capability, inventory, facts, group, online, all, any, not}, options {batch, timeout, pause (seconds between batches), dryRun}. Every joined machine that matches and offers the command is listed as ok, error or timeout, and every id named in clients that no machine has as unknown.
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
        let filter = ClientFilter::parse(Value::Object(filter.unwrap_or_default()))
            .map_err(|e| CommandError::new(ErrorCode::INVALID_PARAMS, format!("filter: {e}")))?;
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

    /// Register a machine: creates its RegisteredDevice below ou=devices, a client id, a machine secret and its broker login. Returns {id, secret, dn, agentUsers, brokerUrls (every broker address this agent knows, comma-separated, without login)}.
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
        let devices = self.ensure_devices(store, ctx.user.as_deref()).await?;
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
        self.groups_changed.notify_one();
        // Every address of the broker this agent knows (a cluster's nodes), without its login.
        let broker_urls = match &self.bus {
            Bus::Amqp(bus) => clacks_core::bus::amqp::without_credentials(bus.display_url()),
            Bus::Local(_) => String::new(),
        };
        Ok(
            json!({"id": id, "secret": secret, "dn": dn, "agentUsers": self.options.agent_users, "brokerUrls": broker_urls}),
        )
    }

    /// The stored inventory of a client (as it sent it, plus Received).
    #[command(idempotent)]
    async fn get_inventory(&self, client: String) -> CommandResult<Value> {
        let store = self.inventory()?;
        let found = store.get(&client).await.map_err(clacks_objects::ObjectError::from)?;
        found.ok_or_else(|| {
            CommandError::new(ErrorCode::CLIENT_UNKNOWN, format!("no inventory of client '{client}' is stored"))
        })
    }

    /// Clients whose inventory matches every condition: package, packageBelow, packageAtLeast (versions compared like dpkg), service (running), os (glob on name and version).
    #[command(idempotent)]
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
        self.groups_changed.notify_one();
        // The other agents drop their presence entry when they hear it left and find its
        // device gone.
        let leave = Map::from_iter([("Id".to_owned(), json!(client))]);
        if let Err(e) = self.events.publish_fields("ClientLeave", &leave).await {
            warn!(%client, error = %e, "cannot tell the other agents that the client left");
        }
        info!(%client, by = ?ctx.user, "client left the domain");
        Ok(true)
    }

    /// Store a group of clients (a nodegroup), new or replacing one: name (a letter, then letters, digits, '.', '_', '-'), the filter selecting its clients (as clientFanOut's; it may name other groups), a description. Fan-outs target it with {group: name}; ACLs name its joined machines as member N@name, unless the filter selects by what machines report about themselves (hostname, facts, inventory, capability). Returns {name, members, aclMembers, aclNote?}.
    /// - name: the group's name; names compare ignoring case
    /// - filter: which clients belong, a client filter as clientFanOut takes
    /// - description: what the group is for
    #[command(needs_user, idempotent)]
    async fn set_client_group(
        &self,
        ctx: &CallContext,
        name: String,
        filter: Map<String, Value>,
        description: Option<String>,
    ) -> CommandResult<Value> {
        let store = self.store()?;
        if !clacks_acl::is_group_name(&name) {
            return Err(CommandError::new(
                ErrorCode::INVALID_PARAMS,
                format!(
                    "'{name}' cannot name a group of clients: a letter, then letters, digits, '.', '_' or '-' (64 at most)"
                ),
            ));
        }
        let raw_filter = Value::Object(filter);
        let parsed = ClientFilter::parse(raw_filter.clone())
            .map_err(|e| CommandError::new(ErrorCode::INVALID_PARAMS, format!("filter: {e}")))?;
        // Working it out once refuses groups that do not exist and circles through this one.
        let known = self.known().await?;
        let members = self.select(&parsed, &known, &mut GroupWalk::inside(&name)).await?;
        let devices = self.ensure_devices(store, ctx.user.as_deref()).await?;
        let dn = format!("cn={name},{devices}");
        let mut group = match store.load(&dn).await {
            Ok(state) if state.base_type == "ClientGroup" => state,
            Ok(_) => {
                return Err(CommandError::new(
                    ErrorCode::INVALID_PARAMS,
                    format!("{dn} exists and is not a group of clients"),
                ));
            }
            Err(e) if e.code == ErrorCode::OBJECT_NOT_FOUND => {
                let mut state = store.new_object(&devices, "ClientGroup").await?;
                store.set(&mut state, "cn", &json!(name)).await?;
                state
            }
            Err(e) => return Err(e.into()),
        };
        store.set(&mut group, "clientFilter", &json!(raw_filter.to_string())).await?;
        store.set(&mut group, "description", &json!(description.unwrap_or_default())).await?;
        store.commit(&mut group, ctx.user.as_deref()).await?;
        info!(group = %name, members = members.len(), by = ?ctx.user, "group of clients stored");
        // This agent's ACLs follow before the caller hears back; the others follow the
        // ObjectChanged event.
        self.refresh_groups().await;
        let mut answer = json!({"name": name, "members": members, "aclMembers": true});
        if let Some(why) = acl_refusal(&name, &self.stored_groups().await?) {
            (answer["aclMembers"], answer["aclNote"]) =
                (json!(false), json!(format!("N@{name} names no machine: {why}")));
        }
        Ok(answer)
    }

    /// The stored groups of clients: [{name, description, filter, members, aclMembers}] — aclMembers says whether ACL members N@name name its machines (not when it selects by what machines report about themselves: aclNote says why); a group whose filter fails has a problem instead of members.
    #[command(idempotent)]
    async fn get_client_groups(&self) -> CommandResult<Vec<Value>> {
        let groups = self.stored_groups().await?;
        let known = self.known().await?;
        let mut rows = Vec::new();
        let selections = self.members_of_all(&groups, &known).await;
        for (group, selected) in groups.iter().zip(selections) {
            let mut row = json!({"name": group.name, "description": group.description, "filter": group.raw_filter});
            match acl_refusal(&group.name, &groups) {
                None => row["aclMembers"] = json!(true),
                Some(why) => (row["aclMembers"], row["aclNote"]) = (json!(false), json!(why)),
            }
            match selected {
                Ok(members) => row["members"] = json!(members),
                Err(e) => row["problem"] = json!(format!("{}: {}", e.code.as_str(), e.message)),
            }
            rows.push(row);
        }
        Ok(rows)
    }

    /// Remove a group of clients; refused while another group's filter names it. ACL members naming it (N@name) then match no machine.
    #[command(needs_user)]
    async fn remove_client_group(&self, ctx: &CallContext, name: String) -> CommandResult<bool> {
        let store = self.store()?;
        let group = self.stored_group(&name).await?;
        let key = group.name.to_lowercase();
        let used_by: Vec<String> = self
            .stored_groups()
            .await?
            .into_iter()
            .filter(|other| other.name.to_lowercase() != key)
            .filter(|other| other.filter.as_ref().is_ok_and(|f| f.groups().iter().any(|g| g.to_lowercase() == key)))
            .map(|other| other.name)
            .collect();
        if !used_by.is_empty() {
            return Err(CommandError::new(
                ErrorCode::CLIENT_GROUP_IN_USE,
                format!("group of clients '{name}' is named by {}", used_by.join(", ")),
            )
            .with_details(json!({"usedBy": used_by})));
        }
        store.remove(&format!("cn={},{}", group.name, Self::devices_dn(store)), false, ctx.user.as_deref()).await?;
        info!(group = %group.name, by = ?ctx.user, "group of clients removed");
        self.refresh_groups().await;
        Ok(true)
    }
}
