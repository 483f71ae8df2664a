//! Test support shared by the cross-crate integration tests and the benchmarks: probe
//! plugins, agents and callers on the real RabbitMQ, and a private RabbitMQ node for
//! tests that cut or restart the broker.
//!
//! Every test works in a domain of its own ([`unique_domain`]), so tests running side
//! by side on the shared broker never see each other's queues or events.

pub mod broker;
pub mod directory;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use clacks_agent::{Agent, AgentOptions};
use clacks_core::bus::Bus;
use clacks_core::bus::amqp::{AmqpBus, AmqpSettings};
use clacks_core::client::Client;
use clacks_core::command::{CallContext, CommandError, CommandResult, Plugin};
use clacks_core::domain::Domain;
pub use clacks_core::testing::{amqp_url, unique_domain};
use serde_json::Value;

/// A plugin whose commands tell which node ran them, on target `probe`.
pub struct Probe;

#[clacks_core::plugin(target = "probe")]
impl Probe {
    /// Which node ran this call.
    #[command(idempotent)]
    fn where_am_i(&self, ctx: &CallContext) -> CommandResult<String> {
        Ok(ctx.node.clone())
    }

    /// Sleep `ms` milliseconds, then say which node ran the call.
    #[command]
    async fn nap(&self, ctx: &CallContext, ms: u64) -> CommandResult<String> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(ctx.node.clone())
    }

    /// Add two integers.
    #[command]
    fn add(&self, a: i64, b: i64) -> CommandResult<i64> {
        a.checked_add(b).ok_or_else(|| CommandError::new("OVERFLOW", "the sum does not fit in 64 bits"))
    }

    /// Always fail with the plugin's own error code.
    #[command]
    fn fail(&self) -> CommandResult<Value> {
        Err(CommandError::new("PROBE_FAILED", "failing as asked").with_details(serde_json::json!({"asked": true})))
    }

    /// Panic, to prove one broken command cannot take its agent down.
    #[command]
    fn explode(&self) -> CommandResult<Value> {
        panic!("the probe exploded as asked")
    }

    /// Every provider reports its node id.
    #[command(call_type = "cumulative")]
    fn census(&self, ctx: &CallContext) -> CommandResult<String> {
        if ctx.node.starts_with("bad") {
            return Err(CommandError::failed(format!("{} refuses", ctx.node)));
        }
        Ok(ctx.node.clone())
    }

    /// Succeeds only on nodes whose id starts with "good".
    #[command(call_type = "first_result")]
    fn find_good(&self, ctx: &CallContext) -> CommandResult<String> {
        if ctx.node.starts_with("good") {
            Ok(ctx.node.clone())
        } else {
            Err(CommandError::failed(format!("{} is not good", ctx.node)))
        }
    }

    /// The caller as the command sees it.
    #[command(needs_user)]
    fn caller(&self, ctx: &CallContext) -> CommandResult<Option<String>> {
        Ok(ctx.user.clone())
    }
}

/// A second plugin on target `other`.
pub struct Other;

#[clacks_core::plugin(target = "other")]
impl Other {
    /// Which node ran this call.
    #[command(idempotent)]
    fn where_else(&self, ctx: &CallContext) -> CommandResult<String> {
        Ok(ctx.node.clone())
    }
}

/// Agent options with short heartbeats, so presence tests finish quickly.
pub fn fast_options(domain: &Domain, node: &str) -> AgentOptions {
    let mut options = AgentOptions::new(domain.clone(), node);
    options.heartbeat = Duration::from_millis(300);
    options.node_timeout = Duration::from_millis(1500);
    options.rpc_timeout = Duration::from_secs(10);
    options
}

/// Connects to RabbitMQ at `url`, failing the test loudly when it is not there.
pub async fn amqp_bus(url: &str, domain: &Domain, name: &str) -> Bus {
    let settings = AmqpSettings { connection_name: name.to_owned(), ..AmqpSettings::default() };
    match AmqpBus::connect(url, domain.clone(), settings).await {
        Ok(bus) => Bus::Amqp(bus),
        Err(e) => panic!(
            "RabbitMQ is required for this test and is not reachable ({e}). Start it (rabbitmq-server -detached) or point CLACKS_TEST_AMQP_URL at one."
        ),
    }
}

/// Starts an in-process agent on the broker at `url`.
pub async fn start_agent(url: &str, options: AgentOptions, plugins: Vec<Arc<dyn Plugin>>) -> Agent {
    let name = format!("test agent {}", options.node);
    let bus = amqp_bus(url, &options.domain, &name).await;
    match Agent::start(options, bus, plugins).await {
        Ok(agent) => agent,
        Err(e) => panic!("agent did not start: {e}"),
    }
}

/// A caller on the broker at `url`.
pub async fn client(url: &str, domain: &Domain, timeout: Duration) -> Client {
    Client::over_bus(amqp_bus(url, domain, "test caller").await, domain.clone(), timeout)
}

/// Polls `condition` until it holds, panicking with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Consumes RabbitMQ's direct reply-to pseudo-queue on `channel`, as a bare caller
/// must before publishing requests whose `reply_to` is `amq.rabbitmq.reply-to`.
pub async fn direct_reply_consumer(channel: &lapin::Channel) -> lapin::Consumer {
    channel
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            lapin::options::BasicConsumeOptions { no_ack: true, ..lapin::options::BasicConsumeOptions::default() },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot consume direct reply-to: {e}"))
}

/// The node ids `getNodes` reports through `client`.
pub async fn node_ids(client: &Client) -> Vec<String> {
    match client.call("getNodes", clacks_core::rpc::Params::None).await {
        Ok(Value::Array(rows)) => {
            rows.iter().filter_map(|r| r.get("node").and_then(Value::as_str).map(str::to_owned)).collect()
        }
        _ => Vec::new(),
    }
}

/// Object store options for tests: `store`'s backends, SQL in `default_sql`, and the
/// background work (directory polling, reference expiry, sweeps) out of the way.
pub fn quiet_objects(store: clacks_objects::StoreConfig, default_sql: String) -> clacks_agent::daemon::ObjectsOptions {
    clacks_agent::daemon::ObjectsOptions {
        store,
        default_sql,
        poll: Duration::from_secs(3600),
        expire: Duration::from_secs(3600),
        sweep: Duration::from_secs(3600),
    }
}

/// SQLite in `dir`, as a database URL.
pub fn sqlite_in(dir: &std::path::Path) -> String {
    format!("sqlite://{}", dir.join("objects.db").display())
}

/// Options of an agent that lets machines join: devices in SQLite in `dir`, broker
/// logins made through `broker`'s management API (guest is its administrator).
pub fn joining_agent_options(
    broker: &broker::PrivateBroker,
    domain: &Domain,
    node: &str,
    dir: &std::path::Path,
) -> AgentOptions {
    let mut options = fast_options(domain, node);
    options.objects = Some(quiet_objects(clacks_objects::StoreConfig::default(), sqlite_in(dir)));
    let api = broker.management_url().unwrap_or_else(|| panic!("the broker was started without its management API"));
    let admin = clacks_agent::broker_admin::BrokerAdmin::new(&api, "guest", "guest", "/");
    options.clients.broker_admin = Some(admin.unwrap_or_else(|e| panic!("{e}")));
    options
}

/// An agent serving objects from SQLite in a temporary folder, on the in-process bus,
/// and a way to call it as any user.
pub struct LocalDomain {
    pub agent: Agent,
    pub bus: clacks_core::bus::local::LocalBus,
    pub domain: Domain,
    pub base: String,
    _data: tempfile::TempDir,
}

impl LocalDomain {
    /// Starts it with `plugins`; with `acl`, the agent checks ACLs.
    pub async fn start(
        store: clacks_objects::StoreConfig,
        plugins: Vec<Arc<dyn Plugin>>,
        acl: Option<clacks_agent::daemon::AclOptions>,
    ) -> LocalDomain {
        let data = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary folder: {e}"));
        let mut options = AgentOptions::new(unique_domain(), "solo");
        options.acl = acl;
        options.objects = Some(quiet_objects(store, sqlite_in(data.path())));
        let domain = options.domain.clone();
        let bus = clacks_core::bus::local::LocalBus::new("clacks-agent");
        let agent = match Agent::start(options, Bus::Local(bus.clone()), plugins).await {
            Ok(agent) => agent,
            Err(e) => panic!("agent did not start: {e}"),
        };
        let base = agent.options().base.clone();
        LocalDomain { agent, bus, domain, base, _data: data }
    }

    /// A caller acting as `user`.
    pub fn caller(&self, user: &str) -> Client {
        Client::over_bus(Bus::Local(self.bus.view(user)), self.domain.clone(), Duration::from_secs(10))
    }
}
