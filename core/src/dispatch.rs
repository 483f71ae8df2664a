//! The dispatcher: one code path from a decoded request to its response, used by the
//! AMQP consumer, the HTTP endpoint and the embedded domain alike.
//!
//! For each call it checks the caller's identity, finds the command's description
//! (locally or in the domain-wide registry), binds and type-checks the arguments, and
//! then either runs the local handler or — when this node does not provide the
//! command — forwards the request to the least loaded live provider's private queue
//! and relays the answer. FIRST_RESULT and CUMULATIVE commands fan out over every
//! provider. A request another agent forwarded always runs locally, so forwarding can
//! never loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Map, Value, json};
use tokio::time::Instant;
use tracing::{Instrument, debug, warn};

use crate::bus::{Bus, CallOptions, ReplyFrom, RequestMessage};
use crate::command::{CallContext, CallType, Command, CommandSpec};
use crate::domain::Domain;
use crate::registry::Registry;
use crate::rpc::{ErrorCode, Incoming, Params, Request, Response, RpcError, decode_request_body, decode_response};

/// Dispatcher settings.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    /// The domain.
    pub domain: Domain,
    /// This node's id.
    pub node: String,
    /// Deadline of a call whose caller did not give one.
    pub default_timeout: Duration,
    /// Largest accepted request body.
    pub max_request_bytes: usize,
    /// Broker users whose `x-clacks-user` header is believed (other agents).
    pub trusted_forwarders: Vec<String>,
    /// Who may execute what; `None` = no checks (a library user's own choice; agents
    /// started from configuration always check).
    pub authorizer: Option<Arc<dyn Authorizer>>,
}

/// Decides whether a caller may do something, for the dispatcher (`x` on a command's
/// topic) and the HTTP endpoint (`e` on an event type's). The ACL engine (`clacks-acl`)
/// implements it, so the wire layer does not depend on the ACL model.
pub trait Authorizer: Send + Sync + std::fmt::Debug {
    /// Allows `user` the permission `letters` on `topic`, with `options` (the call's
    /// arguments by name) for option constraints; or refuses with `PERMISSION_EXEC`,
    /// whose message `refusal` makes.
    fn authorize(
        &self,
        user: Option<&str>,
        topic: &str,
        letters: &str,
        options: Option<&serde_json::Map<String, Value>>,
        refusal: &dyn Fn() -> String,
    ) -> Result<(), RpcError>;
}

/// Where a call comes from and how it may be routed.
#[derive(Clone, Debug)]
pub struct Origin {
    /// The authenticated caller (`None` only for internal calls).
    pub user: Option<String>,
    /// The queue it arrived on (HTTP: this node's private core queue).
    pub queue: String,
    /// When the caller gives up.
    pub deadline: Instant,
    /// Run here or nowhere (another agent forwarded it here).
    pub pinned: bool,
    /// The broker delivered this request before, to a consumer that stopped before
    /// acknowledging it: it may have run there.
    pub redelivered: bool,
}

/// Routes calls to local handlers or to the providing node.
pub struct Dispatcher {
    config: DispatchConfig,
    registry: Arc<Registry>,
    bus: Bus,
    in_flight: AtomicU64,
    stopping: AtomicBool,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").field("node", &self.config.node).finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher over `registry`, forwarding through `bus`.
    pub fn new(config: DispatchConfig, registry: Arc<Registry>, bus: Bus) -> Arc<Dispatcher> {
        Arc::new(Dispatcher { config, registry, bus, in_flight: AtomicU64::new(0), stopping: AtomicBool::new(false) })
    }

    /// The settings.
    pub fn config(&self) -> &DispatchConfig {
        &self.config
    }

    /// The registry it routes with.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Calls currently executing on this node.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Refuse new calls from now on (graceful shutdown); running ones finish.
    pub fn begin_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// An origin for a request on this node's own private core queue (HTTP, internal).
    pub fn local_origin(&self, user: Option<String>, deadline: Option<Instant>) -> Origin {
        Origin {
            user,
            queue: self.config.domain.node_queue("core", &self.config.node),
            deadline: deadline.unwrap_or_else(|| Instant::now() + self.config.default_timeout),
            pinned: false,
            redelivered: false,
        }
    }

    /// Serves one message taken from a bus queue: the bus handler of every agent queue.
    pub async fn handle_message(&self, message: RequestMessage) -> Option<Vec<u8>> {
        let now = Instant::now();
        let deadline = message.deadline.unwrap_or(now + self.config.default_timeout);
        // Another agent forwarded it (it names the original caller): run it here or
        // fail, never forward again, so routing cannot loop.
        let pinned = message.on_behalf_of.is_some();
        let user = match (message.user, message.on_behalf_of) {
            (Some(forwarder), Some(caller)) if self.config.trusted_forwarders.contains(&forwarder) => Some(caller),
            (Some(user), Some(_)) => {
                warn!(%user, "ignoring x-clacks-user from a sender that is not a trusted forwarder");
                Some(user)
            }
            (user, _) => user,
        };
        let origin = Origin { user, queue: message.queue, deadline, pinned, redelivered: message.redelivered };
        self.handle_body(&message.body, &origin).await
    }

    /// Decodes a body (single or batch) and answers it; `None` when nothing needs an
    /// answer (only notifications).
    pub async fn handle_body(&self, body: &[u8], origin: &Origin) -> Option<Vec<u8>> {
        if body.len() > self.config.max_request_bytes {
            let err = RpcError::new(
                ErrorCode::MESSAGE_TOO_LARGE,
                format!("request of {} bytes exceeds the limit of {} bytes", body.len(), self.config.max_request_bytes),
            );
            return Some(Response::error(Value::Null, err).to_bytes());
        }
        match decode_request_body(body) {
            Incoming::Single(Err(response)) => Some(response.to_bytes()),
            Incoming::Single(Ok(request)) => self.handle_request(request, origin).await.map(|r| r.to_bytes()),
            Incoming::Batch(entries) => {
                let answers = join_all(entries.into_iter().map(|entry| async move {
                    match entry {
                        Err(response) => Some(response),
                        Ok(request) => self.handle_request(request, origin).await,
                    }
                }))
                .await;
                let answers: Vec<Response> = answers.into_iter().flatten().collect();
                (!answers.is_empty()).then(|| serde_json::to_vec(&answers).unwrap_or_default())
            }
        }
    }

    /// Answers one request; `None` for a notification.
    pub async fn handle_request(&self, request: Request, origin: &Origin) -> Option<Response> {
        let span = tracing::debug_span!("call", method = %request.method, id = ?request.id, user = ?origin.user);
        let outcome = self.call(&request.method, request.params, origin).instrument(span).await;
        let id = request.id?;
        Some(match outcome {
            Ok(value) => Response::result(id, value),
            Err(error) => Response::error(id, error),
        })
    }

    /// Runs or routes one call.
    pub async fn call(&self, method: &str, params: Params, origin: &Origin) -> Result<Value, RpcError> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(RpcError::new(ErrorCode::AGENT_STOPPING, format!("node {} is stopping", self.config.node)));
        }
        if origin.user.is_none() {
            return Err(RpcError::new(ErrorCode::COMMAND_NO_USERNAME, "the request carries no authenticated user"));
        }
        if method.starts_with('_') {
            return Err(RpcError::new(ErrorCode::METHOD_FORBIDDEN, format!("'{method}' is not callable remotely")));
        }
        let local = self.registry.local_command(method);
        // A local command lends its own description; only remote ones are looked up.
        let remote_spec;
        let spec = match &local {
            Some(command) => &command.spec,
            None => match self.registry.find_spec(method) {
                Some(found) => {
                    remote_spec = found;
                    &remote_spec
                }
                None => {
                    return Err(RpcError::new(
                        ErrorCode::COMMAND_NOT_DEFINED,
                        format!("no live node provides '{method}'"),
                    )
                    .with_details(json!({ "method": method })));
                }
            },
        };
        self.check_execute(spec, &params, origin)?;
        if origin.redelivered && !spec.idempotent {
            // At most once: the agent that had it may have run it before its node or
            // connection died, and running it again could do it twice.
            return Err(RpcError::new(
                ErrorCode::REQUEST_REDELIVERED,
                format!(
                    "'{method}' was delivered before to an agent that stopped before answering; it may have run there and is not idempotent, so it is not run again"
                ),
            ));
        }
        if origin.pinned {
            let Some(command) = local.clone() else {
                return Err(RpcError::new(
                    ErrorCode::COMMAND_NOT_DEFINED,
                    format!("node {} does not provide '{method}'", self.config.node),
                ));
            };
            let args = spec.bind_arguments(params)?;
            return self.execute_local(command, args, origin).await;
        }
        match spec.call_type {
            CallType::Normal => match local.clone() {
                Some(command) => {
                    let args = spec.bind_arguments(params)?;
                    self.execute_local(command, args, origin).await
                }
                None => {
                    // Check arguments here too, so a bad call fails before travelling.
                    spec.bind_arguments(params.clone())?;
                    self.forward_to_least_loaded(spec, params, origin).await
                }
            },
            CallType::FirstResult => self.first_result(spec, local.as_ref(), params, origin).await,
            CallType::Cumulative => self.cumulative(spec, local.as_ref(), params, origin).await,
        }
    }

    /// Refuses a call the ACLs do not allow: `x` on `<domain>.command.<target>.<method>`,
    /// with the call's arguments by name for option constraints.
    fn check_execute(&self, spec: &CommandSpec, params: &Params, origin: &Origin) -> Result<(), RpcError> {
        let Some(authorizer) = &self.config.authorizer else { return Ok(()) };
        let topic = self.config.domain.command_topic(&spec.target, &spec.name);
        let arguments: serde_json::Map<String, Value> = match params {
            Params::Named(map) => map.clone(),
            Params::Positional(values) => {
                spec.params.iter().zip(values).map(|(p, v)| (p.name.clone(), v.clone())).collect()
            }
            Params::None => serde_json::Map::new(),
        };
        let caller = origin.user.as_deref();
        authorizer.authorize(caller, &topic, "x", Some(&arguments), &|| {
            format!("{} may not execute {}", caller.unwrap_or("nobody"), spec.name)
        })
    }

    async fn execute_local(&self, command: Arc<Command>, args: Vec<Value>, origin: &Origin) -> Result<Value, RpcError> {
        let spec = &command.spec;
        if spec.needs_user && origin.user.is_none() {
            return Err(RpcError::new(ErrorCode::COMMAND_NO_USERNAME, format!("'{}' needs a user", spec.name)));
        }
        if spec.needs_queue {
            let shared = self.config.domain.command_queue(&spec.target);
            let private = self.config.domain.node_queue(&spec.target, &self.config.node);
            if origin.queue != shared && origin.queue != private {
                return Err(RpcError::new(
                    ErrorCode::COMMAND_INVALID_QUEUE,
                    format!("'{}' must be called on {shared} or {private}", spec.name),
                ));
            }
        }
        let context = CallContext {
            user: origin.user.clone(),
            queue: origin.queue.clone(),
            node: self.config.node.clone(),
            deadline: origin.deadline,
        };
        let _guard = InFlight::enter(&self.in_flight);
        crate::command::run_local(&spec.name, &command.handler, context, args).await
    }

    async fn forward(
        &self,
        spec: &CommandSpec,
        node: &str,
        params: Params,
        origin: &Origin,
    ) -> Result<Value, RpcError> {
        let queue = self.config.domain.node_queue(&spec.target, node);
        debug!(method = %spec.name, %node, "forwarding");
        let request = Request::new(spec.name.clone(), params, Value::from(1));
        let options =
            CallOptions { deadline: origin.deadline, on_behalf_of: origin.user.clone(), reply_from: ReplyFrom::Agent };
        let reply = self.bus.call(&queue, request.to_bytes(), options).await.map_err(|e| match e {
            // The same words as a deadline passed here: where it ran is not the caller's concern.
            crate::bus::BusError::Timeout(_) => crate::command::deadline_passed(&spec.name),
            other => other.to_rpc_error(),
        })?;
        decode_response(&reply)?.into_result()
    }

    async fn forward_to_least_loaded(
        &self,
        spec: &CommandSpec,
        params: Params,
        origin: &Origin,
    ) -> Result<Value, RpcError> {
        let providers: Vec<String> =
            self.registry.providers(&spec.name).into_iter().filter(|p| *p != self.config.node).collect();
        let mut last_error = None;
        for node in providers {
            match self.forward(spec, &node, params.clone(), origin).await {
                // The provider vanished since its last heartbeat: try the next one.
                Err(e) if e.symbolic() == ErrorCode::NO_PROVIDER => last_error = Some(e),
                other => return other,
            }
        }
        Err(last_error.unwrap_or_else(|| {
            RpcError::new(ErrorCode::COMMAND_NOT_DEFINED, format!("no live node provides '{}'", spec.name))
        }))
    }

    fn fan_out_order(&self, spec: &CommandSpec, local: bool) -> Vec<String> {
        let mut nodes: Vec<String> =
            self.registry.providers(&spec.name).into_iter().filter(|p| *p != self.config.node).collect();
        if local {
            nodes.insert(0, self.config.node.clone());
        }
        nodes
    }

    async fn run_on(
        &self,
        spec: &CommandSpec,
        local: Option<&Arc<Command>>,
        node: &str,
        params: Params,
        origin: &Origin,
    ) -> Result<Value, RpcError> {
        match local {
            Some(command) if node == self.config.node => {
                let args = spec.bind_arguments(params)?;
                self.execute_local(command.clone(), args, origin).await
            }
            _ => self.forward(spec, node, params, origin).await,
        }
    }

    async fn first_result(
        &self,
        spec: &CommandSpec,
        local: Option<&Arc<Command>>,
        params: Params,
        origin: &Origin,
    ) -> Result<Value, RpcError> {
        spec.bind_arguments(params.clone())?;
        let mut errors = Map::new();
        let mut last = None;
        for node in self.fan_out_order(spec, local.is_some()) {
            match self.run_on(spec, local, &node, params.clone(), origin).await {
                Ok(value) => return Ok(value),
                Err(e) => {
                    errors.insert(node, error_summary(&e));
                    last = Some(e);
                }
            }
        }
        let Some(last) = last else {
            return Err(RpcError::new(
                ErrorCode::COMMAND_NOT_DEFINED,
                format!("no live node provides '{}'", spec.name),
            ));
        };
        Err(RpcError::new(last.symbolic(), format!("every provider of '{}' failed; last: {}", spec.name, last.message))
            .with_details(json!({ "errors": errors })))
    }

    async fn cumulative(
        &self,
        spec: &CommandSpec,
        local: Option<&Arc<Command>>,
        params: Params,
        origin: &Origin,
    ) -> Result<Value, RpcError> {
        spec.bind_arguments(params.clone())?;
        let nodes = self.fan_out_order(spec, local.is_some());
        let outcomes = join_all(nodes.iter().map(|node| self.run_on(spec, local, node, params.clone(), origin))).await;
        let mut results = Map::new();
        let mut errors = Map::new();
        for (node, outcome) in nodes.into_iter().zip(outcomes) {
            match outcome {
                Ok(value) => {
                    results.insert(node, value);
                }
                Err(e) => {
                    errors.insert(node, error_summary(&e));
                }
            }
        }
        // Every provider is accounted for: a failure is listed, never dropped.
        Ok(json!({ "results": results, "errors": errors }))
    }
}

fn error_summary(e: &RpcError) -> Value {
    json!({ "code": e.symbolic(), "message": e.message })
}

struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicU64) -> InFlight<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
