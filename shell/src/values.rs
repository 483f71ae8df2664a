//! Values the shell completes inside calls — object types, the DNs of the tree, node
//! names, event types — kept locally like the command catalogue, so a TAB never waits
//! for the network: filled at start and refreshed in the background when the domain
//! says something changed (and every half minute).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use clacks_core::client::Client;
use clacks_core::rpc::Params;
use serde_json::{Value, json};

use crate::catalog::Catalog;

/// At most this many DNs are kept: enough for a department's tree, bounded for a large one.
pub const MAX_DNS: usize = 2_000;

/// The least time between two reads of the DNs prompted by object changes.
const DNS_REFRESH_GAP: Duration = Duration::from_secs(5);

/// What a parameter takes, read from its name: `objectType`, `target`/`parent`/`dn`/
/// `base`, `node`, `eventType`/`eventTypes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    ObjectType,
    Dn,
    Node,
    EventType,
}

impl ValueKind {
    /// The kind of value a parameter called `name` takes, if the shell knows such values.
    pub fn of_param(name: &str) -> Option<ValueKind> {
        match name {
            "objectType" => Some(ValueKind::ObjectType),
            "target" | "parent" | "dn" | "base" => Some(ValueKind::Dn),
            "node" => Some(ValueKind::Node),
            "eventType" | "eventTypes" => Some(ValueKind::EventType),
            _ => None,
        }
    }
}

/// One completable value and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    pub value: String,
    pub description: String,
}

/// The values, by kind; each list sorted by value.
#[derive(Default)]
pub struct ValueHints {
    object_types: RwLock<Vec<Known>>,
    dns: RwLock<Vec<Known>>,
    nodes: RwLock<Vec<Known>>,
    event_types: RwLock<Vec<Known>>,
}

impl ValueHints {
    fn slot(&self, kind: ValueKind) -> &RwLock<Vec<Known>> {
        match kind {
            ValueKind::ObjectType => &self.object_types,
            ValueKind::Dn => &self.dns,
            ValueKind::Node => &self.nodes,
            ValueKind::EventType => &self.event_types,
        }
    }

    /// Replaces the values of one kind.
    pub fn set(&self, kind: ValueKind, mut values: Vec<Known>) {
        values.sort_by(|a, b| a.value.cmp(&b.value));
        values.dedup_by(|a, b| a.value == b.value);
        if let Ok(mut slot) = self.slot(kind).write() {
            *slot = values;
        }
    }

    /// The values of `kind` that `keep` accepts, sorted.
    pub fn matching(&self, kind: ValueKind, keep: impl Fn(&Known) -> bool) -> Vec<Known> {
        let Ok(values) = self.slot(kind).read() else { return Vec::new() };
        values.iter().filter(|k| keep(k)).cloned().collect()
    }
}

/// Asks the domain for every kind of value it offers now; a kind whose command is not
/// there (no objects plugin) stays empty, one whose call fails keeps what it had.
pub async fn refresh(client: &Client, catalog: &Catalog, hints: &ValueHints) {
    if catalog.contains("getObjectTypes")
        && let Ok(Value::Object(types)) = client.call("getObjectTypes", Params::None).await
    {
        let known = types
            .iter()
            .map(|(name, t)| Known {
                value: name.clone(),
                description: t.get("description").and_then(Value::as_str).unwrap_or_default().to_owned(),
            })
            .collect();
        hints.set(ValueKind::ObjectType, known);
    }
    refresh_dns(client, catalog, hints).await;
    if let Ok(Value::Array(nodes)) = client.call("getNodes", Params::None).await {
        let known = nodes
            .iter()
            .filter_map(|n| {
                let name = n.get("node").and_then(Value::as_str)?;
                let load = n.get("load").map(Value::to_string).unwrap_or_default();
                Some(Known { value: name.to_owned(), description: format!("load {load}") })
            })
            .collect();
        hints.set(ValueKind::Node, known);
    }
    if let Ok(Value::Array(types)) = client.call("getEventTypes", Params::None).await {
        let known = types
            .iter()
            .filter_map(Value::as_str)
            .map(|t| Known { value: t.to_owned(), description: "event type".into() })
            .collect();
        hints.set(ValueKind::EventType, known);
    }
}

/// The DNs of the tree from the object index, at most [`MAX_DNS`].
async fn refresh_dns(client: &Client, catalog: &Catalog, hints: &ValueHints) {
    if !catalog.contains("search") {
        return;
    }
    let params = Params::Positional(vec![json!(""), Value::Null, Value::Null, json!({"limit": MAX_DNS})]);
    if let Ok(found) = client.call("search", params).await {
        let known = found
            .get("hits")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|hit| {
                let dn = hit.get("dn").and_then(Value::as_str)?;
                let kind = hit.get("type").and_then(Value::as_str).unwrap_or_default();
                Some(Known { value: dn.to_owned(), description: kind.to_owned() })
            })
            .collect();
        hints.set(ValueKind::Dn, known);
    }
}

/// Keeps `hints` current: after presence and object-change events (a short quiet time
/// gathers a burst into one refresh; DNs are re-read at most every few seconds) and
/// every half minute. Events are read all the while, never left to pile up behind a
/// wait: the subscription must not hold up the connection it shares with calls.
pub(crate) fn watch(client: Arc<Client>, catalog: Arc<Catalog>, hints: Arc<ValueHints>) {
    use tokio::time::Instant;
    tokio::spawn(async move {
        refresh(&client, &catalog, &hints).await;
        let types: Vec<String> =
            ["NodeCapabilities", "NodeLeave", "ObjectChanged", "BackendChange"].map(String::from).to_vec();
        let mut events = client.subscribe(&types, None).await.ok();
        let mut periodic = tokio::time::interval(Duration::from_secs(30));
        periodic.tick().await;
        // The first change after start is followed at once.
        let started = Instant::now();
        let mut dns_refreshed = started.checked_sub(DNS_REFRESH_GAP).unwrap_or(started);
        let (mut everything_due, mut dns_due): (Option<Instant>, Option<Instant>) = (None, None);
        loop {
            let due = [everything_due, dns_due].into_iter().flatten().min();
            tokio::select! {
                event = next_event(&mut events) => {
                    let now = Instant::now();
                    match event {
                        Some(kind) if is_object_change(&kind) => {
                            // A bulk import announces thousands of changes: one index read
                            // per few seconds is plenty for completion.
                            dns_due = dns_due.or(Some((now + QUIET).max(dns_refreshed + DNS_REFRESH_GAP)));
                        }
                        Some(_) => everything_due = everything_due.or(Some(now + QUIET)),
                        None => events = None,
                    }
                }
                _ = periodic.tick() => everything_due = everything_due.or(Some(Instant::now())),
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    let now = Instant::now();
                    if everything_due.is_some_and(|at| at <= now) {
                        refresh(&client, &catalog, &hints).await;
                        (everything_due, dns_due) = (None, None);
                    } else {
                        refresh_dns(&client, &catalog, &hints).await;
                        dns_due = None;
                    }
                    dns_refreshed = Instant::now();
                }
            }
        }
    });
}

/// How long a burst of events may go on before the refresh it asks for.
const QUIET: Duration = Duration::from_millis(300);

fn is_object_change(event_type: &str) -> bool {
    event_type == "ObjectChanged" || event_type == "BackendChange"
}

/// The next event's type; `None` once the subscription is over; never, without one.
async fn next_event(
    events: &mut Option<tokio::sync::mpsc::Receiver<clacks_core::bus::EventMessage>>,
) -> Option<String> {
    match events {
        Some(rx) => rx.recv().await.map(|e| e.event_type),
        None => std::future::pending().await,
    }
}
