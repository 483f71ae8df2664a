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
/// gathers a burst into one refresh) and every half minute.
pub(crate) fn watch(client: Arc<Client>, catalog: Arc<Catalog>, hints: Arc<ValueHints>) {
    tokio::spawn(async move {
        refresh(&client, &catalog, &hints).await;
        let types: Vec<String> =
            ["NodeCapabilities", "NodeLeave", "ObjectChanged", "BackendChange"].map(String::from).to_vec();
        let mut events = client.subscribe(&types, None).await.ok();
        let mut periodic = tokio::time::interval(Duration::from_secs(30));
        periodic.tick().await;
        let started = tokio::time::Instant::now();
        let mut dns_refreshed = started.checked_sub(DNS_REFRESH_GAP).unwrap_or(started);
        loop {
            let event = match events.as_mut() {
                Some(rx) => tokio::select! {
                    e = rx.recv() => match e { Some(e) => Some(e.event_type), None => { events = None; None } },
                    _ = periodic.tick() => None,
                },
                None => {
                    periodic.tick().await;
                    None
                }
            };
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut objects_only = event.as_deref().is_some_and(|t| t.ends_with("Change") || t == "ObjectChanged");
            if let Some(rx) = events.as_mut() {
                while let Ok(more) = rx.try_recv() {
                    objects_only &= more.event_type == "ObjectChanged" || more.event_type == "BackendChange";
                }
            }
            if objects_only {
                // A bulk import announces thousands of changes: one index read per
                // few seconds is plenty for completion.
                tokio::time::sleep_until(dns_refreshed + DNS_REFRESH_GAP).await;
                if let Some(rx) = events.as_mut() {
                    while rx.try_recv().is_ok() {}
                }
                refresh_dns(&client, &catalog, &hints).await;
                dns_refreshed = tokio::time::Instant::now();
            } else {
                refresh(&client, &catalog, &hints).await;
            }
        }
    });
}
