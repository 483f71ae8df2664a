//! The agent proper: plugin loading, queue consumption, presence and graceful stop.
//!
//! Start-up order matters: the agent subscribes to presence events before it announces
//! itself (so it hears every answer), and consumes its queues only after its commands
//! are registered (so no request finds it half-ready). Stopping is the reverse:
//! NodeLeave first so others stop routing here, then no new requests, then the ones in
//! flight finish and are acknowledged, then the connection closes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clacks_acl::{AclEngine, SharedAcl};
use clacks_core::bus::{Bus, BusError, RequestHandler, ServeOptions};
use clacks_core::command::{Command, Plugin};
use clacks_core::dispatch::{Authorizer, DispatchConfig, Dispatcher};
use clacks_core::domain::Domain;
use clacks_core::events::{EventError, EventPublisher, EventValidator, PresenceEvent};
use clacks_core::registry::Registry;
use clacks_scripting::Limits;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use clacks_objects::ObjectStore;

use crate::core_plugin::CorePlugin;
use crate::objects_plugin::{DispatchRunner, ObjectsPlugin};
use crate::rhai_plugin;

/// Everything an agent needs to know, resolved from config, environment and flags.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The domain.
    pub domain: Domain,
    /// This node's id.
    pub node: String,
    /// What `getBase` reports.
    pub base: String,
    /// Deadline of calls that bring none.
    pub rpc_timeout: Duration,
    /// Largest request body.
    pub max_request_bytes: usize,
    /// Requests in flight per queue.
    pub prefetch: u16,
    /// Interval between NodeStatus heartbeats.
    pub heartbeat: Duration,
    /// Silence after which a node is dropped.
    pub node_timeout: Duration,
    /// Folder of `.rhai` plugins.
    pub plugins_dir: Option<PathBuf>,
    /// Extra event XSD folders.
    pub schema_dirs: Vec<PathBuf>,
    /// Broker users of the domain's other agents: their forwarding header, presence
    /// events and replies are believed (the agent's own user always is).
    pub trusted_forwarders: Vec<String>,
    /// Limits for `.rhai` plugin runs.
    pub script_limits: Limits,
    /// Shipped optional plugins to enable: `telephony`, `statistics`.
    pub enable: Vec<String>,
    /// The object store, when this agent serves objects.
    pub objects: Option<ObjectsOptions>,
    /// ACL checks: `None` = none (for programs embedding an agent); the agent binary and
    /// the embedded shell domain always check, denying what no ACL grants.
    pub acl: Option<AclOptions>,
    /// Client presence, joining and dispatch (target `clients`).
    pub clients: crate::clients_plugin::ClientsOptions,
}

/// Who is exempt from ACLs.
#[derive(Clone, Debug, Default)]
pub struct AclOptions {
    /// Administrators: allowed everything. The agent's own broker user (its service
    /// identity) always is.
    pub admins: Vec<String>,
}

/// How an agent runs its object store.
#[derive(Clone, Debug)]
pub struct ObjectsOptions {
    /// Backends, index and description folders.
    pub store: clacks_objects::StoreConfig,
    /// The SQL database when `store.sql_url` is unset (SQLite in the data folder).
    pub default_sql: String,
    /// How often the directory is checked for changes made outside Clacks.
    pub poll: Duration,
    /// How often idle references are expired.
    pub expire: Duration,
    /// How often every backend is walked for deletions made outside Clacks.
    pub sweep: Duration,
}

impl AgentOptions {
    /// Defaults for `node` in `domain`.
    pub fn new(domain: Domain, node: impl Into<String>) -> AgentOptions {
        AgentOptions {
            base: crate::config::base_from_domain(domain.as_str()),
            domain,
            node: node.into(),
            rpc_timeout: Duration::from_secs(30),
            max_request_bytes: 4 * 1024 * 1024,
            prefetch: 32,
            heartbeat: Duration::from_secs(10),
            node_timeout: Duration::from_secs(35),
            plugins_dir: None,
            schema_dirs: Vec::new(),
            trusted_forwarders: Vec::new(),
            script_limits: Limits::default(),
            enable: Vec::new(),
            objects: None,
            acl: None,
            clients: crate::clients_plugin::ClientsOptions::default(),
        }
    }
}

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A bus operation failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The event schemas could not be loaded.
    #[error(transparent)]
    Events(#[from] EventError),
    /// Two plugins export the same command.
    #[error(transparent)]
    Duplicate(#[from] clacks_core::registry::DuplicateCommand),
    /// Another running agent already uses this node id in the domain.
    #[error("node id '{node}' is already in use in domain {domain}; give this agent another --node")]
    NodeIdInUse {
        /// The node id.
        node: String,
        /// The domain.
        domain: String,
    },
    /// `enable` names a plugin that is not shipped.
    #[error("unknown plugin '{0}' in plugins.enable (shipped: telephony, statistics)")]
    UnknownPlugin(String),
    /// A name is not valid.
    #[error(transparent)]
    Name(#[from] clacks_core::domain::NameError),
    /// The object store could not be opened (directory or database unreachable).
    #[error("object store: {0}")]
    Objects(#[from] clacks_objects::ObjectError),
}

struct Inner {
    options: AgentOptions,
    bus: Bus,
    registry: Arc<Registry>,
    dispatcher: Arc<Dispatcher>,
    events: EventPublisher,
    objects: Option<Arc<ObjectStore>>,
    acl_plugin: Option<Arc<crate::acl_plugin::AclPlugin>>,
    /// The ACL engine, when this agent checks ACLs (the dispatcher sees it as its
    /// authorizer).
    acl: Option<SharedAcl>,
    shutdown_requested: CancellationToken,
    stopped: CancellationToken,
}

/// A running agent. Cloning gives another handle to the same agent.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("node", &self.inner.options.node).finish_non_exhaustive()
    }
}

impl Agent {
    /// Starts an agent on `bus` with the built-in plugin, the `.rhai` plugins of the
    /// configured folder and `plugins`.
    pub async fn start(options: AgentOptions, bus: Bus, plugins: Vec<Arc<dyn Plugin>>) -> Result<Agent, AgentError> {
        clacks_core::domain::check_node_id(&options.node)?;
        // Plugins bring their own event types in `<plugins>/events/*.xsd`.
        let mut schema_dirs = options.schema_dirs.clone();
        if let Some(dir) = options.plugins_dir.as_ref().map(|d| d.join("events")).filter(|d| d.is_dir()) {
            schema_dirs.push(dir);
        }
        let validator = EventValidator::start(&schema_dirs)?;
        let registry = Registry::new(options.node.clone());
        let shutdown_requested = CancellationToken::new();

        let events = EventPublisher::new(bus.clone(), validator.clone());
        let acl: Option<SharedAcl> = options.acl.as_ref().map(|acl| {
            let admins = acl.admins.iter().cloned().chain([bus.user().to_owned()]);
            Arc::new(std::sync::RwLock::new(AclEngine::new(&options.base, admins)))
        });
        // Plain topic checks (commands, events, client commands) see only this.
        let authorizer: Option<Arc<dyn Authorizer>> =
            acl.clone().map(|engine| Arc::new(clacks_acl::AclAuthorizer(engine)) as Arc<dyn Authorizer>);
        let core = Arc::new(CorePlugin {
            domain: options.domain.clone(),
            base: options.base.clone(),
            registry: registry.clone(),
            shutdown: shutdown_requested.clone(),
            events: events.clone(),
            acl: authorizer.clone(),
        });
        let mut commands: Vec<Command> = core.commands();
        for name in &options.enable {
            match name.as_str() {
                "telephony" => {
                    commands.extend(
                        Arc::new(crate::plugins::telephony::TelephonyPlugin { events: events.clone() }).commands(),
                    );
                }
                "statistics" => commands.extend(
                    crate::plugins::statistics::StatisticsPlugin::start(&bus, validator.clone()).await?.commands(),
                ),
                other => return Err(AgentError::UnknownPlugin(other.to_owned())),
            }
        }
        let objects = match &options.objects {
            Some(config) => {
                let mut store_config = config.store.clone();
                if store_config.base.is_none() {
                    store_config.base = Some(options.base.clone());
                }
                let store = ObjectStore::open(&store_config, &config.default_sql, validator.clone()).await?;
                store.set_publisher(events.clone());
                let plugin = ObjectsPlugin { store: store.clone(), acl: acl.clone(), domain: options.domain.clone() };
                commands.extend(Arc::new(plugin).commands());
                Some(store)
            }
            None => None,
        };
        // ACLs live in the object store; without one only the configured admins get in.
        let acl_plugin = match (&objects, &acl, &options.acl) {
            (Some(store), Some(engine), Some(acl_options)) => {
                let admins = acl_options.admins.iter().cloned().chain([bus.user().to_owned()]).collect();
                let plugin = Arc::new(crate::acl_plugin::AclPlugin::new(
                    store.clone(),
                    engine.clone(),
                    admins,
                    &options.domain,
                    &options.node,
                ));
                if let Err(e) = plugin.reload().await {
                    warn!(error = %e, "cannot load the stored ACLs; only the administrators get in until they load");
                }
                commands.extend(plugin.clone().commands());
                Some(plugin)
            }
            _ => None,
        };
        let mut trusted = options.trusted_forwarders.clone();
        trusted.push(bus.user().to_owned());
        let clients = Arc::new(
            crate::clients_plugin::ClientsPlugin::new(
                options.domain.clone(),
                bus.clone(),
                events.clone(),
                objects.clone(),
                acl.as_ref(),
                options.clients.clone(),
                trusted.clone(),
            )
            .await,
        );
        commands.extend(clients.clone().commands());
        for plugin in plugins {
            commands.extend(plugin.commands());
        }
        if let Some(dir) = &options.plugins_dir {
            let (scripted, problems) = rhai_plugin::load_dir(dir, &options.script_limits);
            for problem in problems {
                warn!(%problem, "plugin not loaded");
            }
            commands.extend(scripted);
        }
        for command in &commands {
            clacks_core::domain::check_target(&command.spec.target)?;
        }
        registry.register(commands)?;

        let dispatcher = Dispatcher::new(
            DispatchConfig {
                domain: options.domain.clone(),
                node: options.node.clone(),
                default_timeout: options.rpc_timeout,
                max_request_bytes: options.max_request_bytes,
                trusted_forwarders: trusted,
                authorizer: authorizer.clone(),
            },
            registry.clone(),
            bus.clone(),
        );
        if let Some(store) = &objects {
            store.set_runner(Arc::new(DispatchRunner {
                dispatcher: Arc::downgrade(&dispatcher),
                agent_user: bus.user().to_owned(),
                timeout: options.rpc_timeout,
            }));
        }
        let agent = Agent {
            inner: Arc::new(Inner {
                options,
                bus,
                registry,
                dispatcher,
                events,
                objects,
                acl_plugin: acl_plugin.clone(),
                acl: acl.clone(),
                shutdown_requested,
                stopped: CancellationToken::new(),
            }),
        };

        let presence = agent.subscribe(&PresenceEvent::TYPES).await?;
        tokio::spawn(agent.clone().presence_loop(presence));

        let handler: RequestHandler = {
            let dispatcher = agent.inner.dispatcher.clone();
            Arc::new(move |message| {
                let dispatcher = dispatcher.clone();
                Box::pin(async move { dispatcher.handle_message(message).await })
            })
        };
        if let Err(e) = agent.consume_queues(handler).await {
            // Leave nothing behind: a half-started agent must not take requests.
            agent.inner.stopped.cancel();
            agent.inner.bus.stop_serving().await;
            agent.inner.bus.close().await;
            return Err(e);
        }

        let opts = &agent.inner.options;
        agent.publish(PresenceEvent::Announce { id: opts.node.clone() }).await;
        agent.publish_capabilities().await;
        tokio::spawn(agent.clone().heartbeat_loop());
        if agent.inner.objects.is_some() {
            tokio::spawn(agent.clone().objects_loop());
        }
        let client_events = agent.subscribe(&clients.event_types()).await?;
        tokio::spawn(clients.clone().watch(client_events, agent.inner.stopped.clone()));
        // Clients that were there before this agent announce themselves again.
        clients.poll().await;
        if let Some(plugin) = acl_plugin {
            let changes = agent.subscribe(&["ObjectChanged", "BackendChange"]).await?;
            tokio::spawn(plugin.watch(changes, agent.inner.stopped.clone()));
        }
        info!(node = %opts.node, domain = %opts.domain, targets = ?agent.inner.registry.local_targets(), "agent started");
        Ok(agent)
    }

    /// Consumes the private queue of every target (first, so a node id already in use
    /// is found before any shared queue is taken), then the shared ones.
    async fn consume_queues(&self, handler: RequestHandler) -> Result<(), AgentError> {
        let opts = &self.inner.options;
        let targets = self.inner.registry.local_targets();
        for target in &targets {
            let private = ServeOptions { private: true, prefetch: opts.prefetch };
            let queue = opts.domain.node_queue(target, &opts.node);
            self.inner.bus.serve(&queue, private, handler.clone()).await.map_err(|e| match e {
                BusError::InUse(_) => {
                    AgentError::NodeIdInUse { node: opts.node.clone(), domain: opts.domain.to_string() }
                }
                other => AgentError::Bus(other),
            })?;
        }
        for target in &targets {
            let shared = ServeOptions { private: false, prefetch: opts.prefetch };
            self.inner.bus.serve(&opts.domain.command_queue(target), shared, handler.clone()).await?;
        }
        Ok(())
    }

    /// Events of `types` that passed this agent's schemas (see
    /// [`clacks_core::events::filter::subscribe`]).
    async fn subscribe(
        &self,
        types: &[&str],
    ) -> Result<tokio::sync::mpsc::Receiver<clacks_core::bus::EventMessage>, BusError> {
        let types: Vec<String> = types.iter().map(|t| (*t).to_owned()).collect();
        let validator = self.inner.events.validator();
        clacks_core::events::filter::subscribe(&self.inner.bus, validator, &types, Default::default()).await
    }

    /// The dispatcher, shared with the HTTP endpoint.
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.inner.dispatcher
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// The bus.
    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    /// The options it runs with.
    pub fn options(&self) -> &AgentOptions {
        &self.inner.options
    }

    /// Resolves when someone called `shutdown` on this node.
    pub async fn shutdown_requested(&self) {
        self.inner.shutdown_requested.cancelled().await;
    }

    /// Stops gracefully: NodeLeave, no new requests, in-flight requests finish (up to
    /// the RPC timeout), connection closed.
    pub async fn stop(&self) {
        self.stop_within(self.inner.options.rpc_timeout).await;
    }

    /// Like [`Agent::stop`], waiting at most `grace` for calls in flight.
    pub async fn stop_within(&self, grace: std::time::Duration) {
        if self.inner.stopped.is_cancelled() {
            return;
        }
        self.inner.stopped.cancel();
        let node = self.inner.options.node.clone();
        info!(%node, in_flight = self.inner.dispatcher.in_flight(), "stopping");
        self.publish(PresenceEvent::Leave { id: node.clone() }).await;
        self.inner.bus.stop_serving().await;
        if tokio::time::timeout(grace, self.inner.bus.drain()).await.is_err() {
            warn!(?grace, "calls still running after the grace period; stopping anyway");
        }
        self.inner.dispatcher.begin_stopping();
        if let Some(store) = &self.inner.objects {
            // Changes answered before the stop still announce themselves.
            store.flush_events(grace).await;
        }
        self.inner.bus.close().await;
        info!(%node, "stopped");
    }

    async fn publish(&self, event: PresenceEvent) {
        // Our own events pass our own schema like anyone's; one that does not is a bug,
        // and publishing it would only make every other node drop it.
        if let Err(e) = self.inner.events.publish(event.to_xml().as_bytes()).await {
            warn!(error = %e, event = event.event_type(), "presence event not published");
        }
    }

    /// The ACL engine, when this agent checks ACLs.
    pub fn acl(&self) -> Option<&SharedAcl> {
        self.inner.acl.as_ref()
    }

    /// The object store, when this agent serves objects.
    pub fn objects(&self) -> Option<&Arc<ObjectStore>> {
        self.inner.objects.as_ref()
    }

    /// Keeps the object index current: the initial scan (one agent at a time), then
    /// polling the directory for outside changes and expiring idle references.
    async fn objects_loop(self) {
        let (Some(store), Some(config)) = (self.inner.objects.clone(), self.inner.options.objects.clone()) else {
            return;
        };
        let holder = format!("{}:{}", self.inner.options.domain, self.inner.options.node);
        // A large directory takes a while to scan; stopping does not wait for it.
        let scanned = tokio::select! {
            _ = self.inner.stopped.cancelled() => {
                // Another agent may scan at once rather than after the lock's timeout.
                let _ = store.index().unlock("index-scan", &holder).await;
                return;
            }
            scanned = store.scan(&holder) => scanned,
        };
        match scanned {
            Ok(Some(report)) => {
                info!(?report, "object index scanned");
                // A new index finds stored ACLs only now.
                if let Some(acl) = self.inner.acl_plugin.as_ref().filter(|_| report.indexed > 0)
                    && let Err(e) = acl.reload().await
                {
                    warn!(error = %e, "cannot reload the ACLs after the index scan");
                }
            }
            Ok(None) => info!("another agent is scanning the object index"),
            Err(e) => warn!(error = %e, "object index scan failed"),
        }
        let mut poll = tokio::time::interval(config.poll);
        let mut expire = tokio::time::interval(config.expire);
        // Deletions made behind Clacks' back leave no trace to poll for; a scan finds them.
        let mut sweep = tokio::time::interval(config.sweep);
        sweep.tick().await;
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        expire.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.inner.stopped.cancelled() => return,
                _ = poll.tick() => {
                    if let Err(e) = store.poll_directory().await {
                        warn!(error = %e, "polling the directory for changes failed");
                    }
                }
                _ = sweep.tick() => {
                    match store.scan(&holder).await {
                        Ok(Some(report)) if report.removed > 0 || report.indexed > 0 => info!(?report, "object index swept"),
                        Ok(_) => {}
                        Err(e) => warn!(error = %e, "sweeping the object index failed"),
                    }
                }
                _ = expire.tick() => {
                    match store.expire_references().await {
                        Ok(0) => {}
                        Ok(n) => debug!(expired = n, "idle object references expired"),
                        Err(e) => warn!(error = %e, "expiring object references failed"),
                    }
                }
            }
        }
    }

    /// The publisher plugins use: validates, then publishes on this agent's bus.
    pub fn events(&self) -> &EventPublisher {
        &self.inner.events
    }

    async fn publish_capabilities(&self) {
        let id = self.inner.options.node.clone();
        self.publish(PresenceEvent::Capabilities { id, methods: self.inner.registry.local_specs() }).await;
    }

    fn load(&self) -> f64 {
        let in_flight = self.inner.dispatcher.in_flight() as f64;
        in_flight + system_load_share()
    }

    async fn heartbeat_loop(self) {
        let mut tick = tokio::time::interval(self.inner.options.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.inner.stopped.cancelled() => return,
                _ = tick.tick() => {}
            }
            let (load, workers) = (self.load(), self.inner.dispatcher.in_flight());
            self.inner.registry.update_status(&self.inner.options.node, load, workers);
            self.publish(PresenceEvent::Status { id: self.inner.options.node.clone(), load, workers }).await;
            for gone in self.inner.registry.expire(self.inner.options.node_timeout) {
                info!(node = %gone, "node timed out");
            }
        }
    }

    /// Whether presence from broker user `sender` is believed: only agents speak for
    /// nodes, or anyone able to publish could route admins' calls to a queue of theirs.
    /// The agent identities are the dispatcher's trusted forwarders (own user included).
    fn speaks_for_nodes(&self, sender: Option<&str>) -> bool {
        match &self.inner.bus {
            Bus::Local(_) => true,
            Bus::Amqp(_) => {
                let agents = &self.inner.dispatcher.config().trusted_forwarders;
                sender.is_some_and(|s| agents.iter().any(|a| a == s))
            }
        }
    }

    async fn presence_loop(self, mut events: tokio::sync::mpsc::Receiver<clacks_core::bus::EventMessage>) {
        let own = self.inner.options.node.clone();
        let mut last_reannounce: Option<Instant> = None;
        let forgers = clacks_core::refusals::Refusals::default();
        loop {
            let message = tokio::select! {
                _ = self.inner.stopped.cancelled() => return,
                m = events.recv() => match m { Some(m) => m, None => return },
            };
            if !self.speaks_for_nodes(message.user.as_deref()) {
                forgers.log(
                    message.user.as_deref(),
                    &message.event_type,
                    "dropped presence from a broker user that is not an agent",
                );
                continue;
            }
            let event = match PresenceEvent::from_xml(&message.body) {
                Ok(Some(event)) => event,
                Ok(None) => continue,
                Err(e) => {
                    warn!(error = %e, "dropping an unreadable presence event");
                    continue;
                }
            };
            debug!(?event, "presence");
            match event {
                PresenceEvent::Announce { id } => {
                    if id != own {
                        info!(node = %id, "node announced");
                    }
                    self.publish_capabilities().await;
                }
                PresenceEvent::Capabilities { id, methods } if id != own => {
                    self.inner.registry.update_capabilities(&id, methods);
                }
                PresenceEvent::Status { id, load, workers }
                    if id != own
                    // A heartbeat from a node we do not know (we missed its capabilities,
                    // e.g. during a broker outage): ask everyone to announce again, at
                    // most once per heartbeat interval.
                    && !self.inner.registry.update_status(&id, load, workers)
                        && last_reannounce.is_none_or(|t| t.elapsed() >= self.inner.options.heartbeat) =>
                {
                    last_reannounce = Some(Instant::now());
                    self.publish(PresenceEvent::Announce { id: own.clone() }).await;
                }
                PresenceEvent::Leave { id } if id != own => {
                    info!(node = %id, "node left");
                    self.inner.registry.remove_node(&id);
                }
                _ => {}
            }
        }
    }
}

/// The 1-minute load average per CPU, a second opinion beside calls in flight.
fn system_load_share() -> f64 {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()))
        .map(|l| l / cpus)
        .unwrap_or(0.0)
}
