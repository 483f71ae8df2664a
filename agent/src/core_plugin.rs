//! The built-in commands every agent provides on target `core`: discovery
//! (`getMethods`, `getNodes`, `rpc.discover`), identity (`getBase`, `getSessionUser`), liveness
//! (`ping`, `echo`), events (`sendEvent`, `getEventTypes`, `getEventSchema`,
//! `reloadEventSchemas`) and
//! `shutdown`.

use std::collections::BTreeMap;
use std::sync::Arc;

use clacks_core::command::{CallContext, CommandError, CommandResult};
use clacks_core::domain::{CommandQueue, Domain};
use clacks_core::events::PresenceEvent;
use clacks_core::registry::{MethodInfo, NodeRow, Registry};
use clacks_core::rpc::ErrorCode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

impl CorePlugin {
    fn check_send(&self, ctx: &CallContext, event_type: &str) -> CommandResult<()> {
        let Some(acl) = &self.acl else { return Ok(()) };
        let topic = self.domain.event_topic(event_type);
        let user = ctx.user.as_deref();
        acl.authorize(user, &topic, "x", None, &|| {
            format!("{} may not send {event_type} events", user.unwrap_or("nobody"))
        })
        .map_err(CommandError::from)
    }
}

/// The `core` plugin.
pub struct CorePlugin {
    pub(crate) domain: Domain,
    pub(crate) base: String,
    pub(crate) registry: Arc<Registry>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) events: clacks_core::events::EventPublisher,
    pub(crate) acl: Option<Arc<dyn clacks_core::dispatch::Authorizer>>,
}

#[clacks_core::plugin(target = "core")]
impl CorePlugin {
    /// List every command of the domain with its signature, help and providers.
    /// `queue` may name a node's private queue (D.command.core.NODE) to list only that node's commands.
    ///
    /// - queue: a node's private queue, to list only its commands
    /// - locale: accepted for compatibility; help texts are in English
    #[command(idempotent)]
    fn get_methods(
        &self,
        queue: Option<String>,
        locale: Option<String>,
    ) -> CommandResult<BTreeMap<String, MethodInfo>> {
        // Help texts are English only for now; the locale is accepted for compatibility.
        let _ = locale;
        let only_node = match queue.as_deref().map(|q| self.domain.parse_command_queue(q)) {
            None => None,
            Some(Some(CommandQueue::Private { node, .. })) => Some(node),
            Some(Some(CommandQueue::Shared { .. })) => None,
            Some(None) => {
                return Err(CommandError::new(
                    ErrorCode::INVALID_PARAMS,
                    format!("'{}' is not a command queue of domain {}", queue.unwrap_or_default(), self.domain),
                ));
            }
        };
        if let Some(node) = only_node.as_deref().filter(|node| !self.registry.knows_node(node)) {
            return Err(CommandError::new(
                ErrorCode::INVALID_PARAMS,
                format!("no live node '{node}' in domain {}", self.domain),
            )
            .with_details(serde_json::json!({"param": "queue"})));
        }
        Ok(self.registry.method_table(only_node.as_deref()))
    }

    /// The domain's API as an OpenRPC 1.3 document: every command the live nodes provide, with its parameters, result schema, errors and the ACL permission it needs.
    #[command(name = "rpc.discover", idempotent)]
    fn rpc_discover(&self) -> CommandResult<Value> {
        let specs: Vec<clacks_core::command::CommandSpec> =
            self.registry.method_table(None).into_values().map(|info| info.spec).collect();
        Ok(clacks_core::schema::openrpc(&self.domain, &specs))
    }

    /// List the live nodes of the domain with their load.
    #[command(idempotent)]
    fn get_nodes(&self) -> CommandResult<Vec<NodeRow>> {
        Ok(self.registry.node_rows())
    }

    /// The directory base DN this agent serves.
    #[command(idempotent)]
    fn get_base(&self) -> CommandResult<String> {
        Ok(self.base.clone())
    }

    /// The user name the domain knows the caller by.
    #[command(needs_user, idempotent)]
    fn get_session_user(&self, ctx: &CallContext) -> CommandResult<Option<String>> {
        Ok(ctx.user.clone())
    }

    /// Stop the node that receives the call; refused on the shared queue unless force is true.
    #[command(needs_queue)]
    fn shutdown(&self, ctx: &CallContext, force: Option<bool>) -> CommandResult<bool> {
        let private = self.domain.node_queue("core", &ctx.node);
        if ctx.queue != private && !force.unwrap_or(false) {
            return Err(CommandError::new(
                ErrorCode::COMMAND_INVALID_QUEUE,
                format!(
                    "shutdown on a shared queue would stop whichever node takes it; call it on {private} or pass force=true"
                ),
            ));
        }
        tracing::warn!(user = ?ctx.user, "shutdown requested");
        self.shutdown.cancel();
        Ok(true)
    }

    /// Answer "pong": proves the domain and a node are reachable.
    #[command(idempotent)]
    fn ping(&self) -> CommandResult<&'static str> {
        Ok("pong")
    }

    /// Validate an event and publish it: an XML document, or a map with "@type" (or "type") and the event's fields, as events read in JSON.
    #[command(needs_user)]
    async fn send_event(&self, ctx: &CallContext, event: Value) -> CommandResult<String> {
        let xml = match &event {
            Value::String(xml) => xml.clone(),
            Value::Object(fields) => {
                let mut fields = fields.clone();
                // "@type" as events read in JSON; "type", the older spelling, when absent.
                let named = fields.remove(clacks_core::events::TYPE_KEY).or_else(|| fields.remove("type"));
                let Some(Value::String(event_type)) = named else {
                    return Err(CommandError::new(
                        ErrorCode::INVALID_PARAMS,
                        "an event map needs \"@type\": the event type",
                    ));
                };
                self.events.validator().build(&event_type, &fields)
            }
            _ => {
                return Err(CommandError::new(
                    ErrorCode::INVALID_PARAMS,
                    "event must be an XML string or a map with \"@type\"",
                ));
            }
        };
        // The type is known only once the document is valid; then the ACLs decide
        // (`x` on `<domain>.event.<Type>`) before anything is published.
        let event_type =
            self.events.validator().validate(xml.as_bytes()).await.map_err(|e| CommandError::from(e.to_rpc_error()))?;
        // Receivers believe node presence and a machine's own events because an agent or
        // that machine sent them; published here they would go out under this agent's
        // identity, letting any caller speak for a node or a machine (its inventory and
        // facts decide fan-outs).
        let spoken_for = PresenceEvent::TYPES.iter().chain(clacks_core::bus::permissions::CLIENT_EVENTS);
        if spoken_for.into_iter().any(|t| *t == event_type) {
            return Err(CommandError::new(
                ErrorCode::PERMISSION_EXEC,
                format!("{event_type} events come from the node or machine itself; sendEvent does not speak for one"),
            ));
        }
        self.check_send(ctx, &event_type)?;
        match self.events.publish(xml.as_bytes()).await {
            Ok(event_type) => {
                tracing::debug!(user = ?ctx.user, %event_type, "event published");
                Ok(event_type)
            }
            Err(e) => Err(CommandError::from(e.to_rpc_error())),
        }
    }

    /// The event types this node validates.
    #[command(idempotent)]
    fn get_event_types(&self) -> CommandResult<Vec<String>> {
        Ok(self.events.validator().types())
    }

    /// The XSD of an event type, as this node validates it: subscribers validate events against it.
    ///
    /// - event_type: the event type, as getEventTypes() lists them
    #[command(idempotent)]
    fn get_event_schema(&self, event_type: String) -> CommandResult<String> {
        self.events.validator().schema_text(&event_type).ok_or_else(|| {
            CommandError::new(
                ErrorCode::INVALID_PARAMS,
                format!("no event type '{event_type}' on this node; getEventTypes() lists them"),
            )
            .with_details(serde_json::json!({"param": "eventType"}))
        })
    }

    /// Read the event schema folders again on every node, so new XSD files become event types.
    #[command(call_type = "cumulative", idempotent)]
    async fn reload_event_schemas(&self) -> CommandResult<Vec<String>> {
        self.events.validator().reload().await.map_err(|e| CommandError::from(e.to_rpc_error()))
    }

    /// Return the value unchanged.
    #[command(idempotent)]
    fn echo(&self, value: Value) -> CommandResult<Value> {
        Ok(value)
    }
}
