//! The shell's local copy of the domain's commands: filled from `getMethods`, kept
//! current by watching presence events, read by completion, hints, help and the Rhai
//! bindings — so a TAB never waits for the network.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use clacks_core::client::Client;
use clacks_core::command::CommandSpec;
use clacks_core::rpc::Params;
use serde_json::Value;

/// One command as the shell knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub spec: CommandSpec,
    pub providers: Vec<String>,
}

/// The command catalogue; its generation changes whenever the command set does.
#[derive(Default)]
pub struct Catalog {
    entries: RwLock<BTreeMap<String, Entry>>,
    /// Commands no live node provides any more, with the nodes that last did: a call
    /// to one is explained instead of being an unknown name.
    departed: RwLock<BTreeMap<String, Vec<String>>>,
    generation: AtomicU64,
}

impl Catalog {
    /// Replaces the content with a `getMethods` result; returns whether the set of
    /// commands (or their descriptions) changed.
    pub fn load(&self, methods: &Value) -> bool {
        let Some(table) = methods.as_object() else { return false };
        let fresh: BTreeMap<String, Entry> = table
            .iter()
            .filter_map(|(name, info)| {
                let spec: CommandSpec = serde_json::from_value(info.clone()).ok()?;
                let providers = info
                    .get("providers")
                    .and_then(Value::as_array)
                    .map(|p| p.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                    .unwrap_or_default();
                Some((name.clone(), Entry { spec, providers }))
            })
            .collect();
        let mut entries = self.entries.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = entries.len() != fresh.len()
            || entries.iter().zip(fresh.iter()).any(|(a, b)| a.0 != b.0 || a.1.spec != b.1.spec);
        if changed {
            let mut departed = self.departed.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (name, entry) in entries.iter().filter(|(name, _)| !fresh.contains_key(*name)) {
                departed.insert(name.clone(), entry.providers.clone());
            }
            departed.retain(|name, _| !fresh.contains_key(name));
        }
        *entries = fresh;
        if changed {
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
        changed
    }

    /// Bumps when the command set changes.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// One command.
    pub(crate) fn get(&self, name: &str) -> Option<Entry> {
        self.read().get(name).cloned()
    }

    /// The help text of one command.
    pub(crate) fn help_of(&self, name: &str) -> Option<String> {
        self.read().get(name).map(|e| e.spec.help.clone())
    }

    /// Every command description.
    pub(crate) fn specs(&self) -> Vec<CommandSpec> {
        self.read().values().map(|e| e.spec.clone()).collect()
    }

    /// Every entry, sorted by name.
    pub(crate) fn entries(&self) -> Vec<Entry> {
        self.read().values().cloned().collect()
    }

    /// The nodes that last provided `name`, when no live node does any more.
    pub(crate) fn departed(&self, name: &str) -> Option<Vec<String>> {
        self.departed.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned()
    }

    /// Every command name, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Command names starting with `prefix`, sorted.
    pub(crate) fn names_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.read()
            .range(prefix.to_owned()..)
            .take_while(|(name, _)| name.starts_with(prefix))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Whether `name` is a known command.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.read().contains_key(name)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.entries.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Fetches the command table now.
pub async fn refresh(client: &Client, catalog: &Catalog) -> Result<bool, clacks_core::client::ClientError> {
    let methods = client.call("getMethods", Params::None).await?;
    Ok(catalog.load(&methods))
}

/// Keeps `catalog` current: refreshes after presence events (agents coming, going,
/// changing their commands) and every half minute for nodes that timed out silently.
pub(crate) fn watch(client: Arc<Client>, catalog: Arc<Catalog>) {
    tokio::spawn(async move {
        let types: Vec<String> = ["NodeCapabilities", "NodeLeave"].map(String::from).to_vec();
        // Over HTTP there is no event stream; the periodic refresh is all there is.
        let mut events = match client.subscribe(&types, None).await {
            Ok(rx) => Some(rx),
            Err(e) => {
                tracing::debug!(error = %e, "cannot watch the domain's commands; refreshing periodically");
                None
            }
        };
        let mut periodic = tokio::time::interval(Duration::from_secs(30));
        loop {
            let event_seen = match events.as_mut() {
                Some(rx) => tokio::select! {
                    e = rx.recv() => match e { Some(_) => true, None => { events = None; false } },
                    _ = periodic.tick() => false,
                },
                None => {
                    periodic.tick().await;
                    false
                }
            };
            if event_seen {
                // Capabilities arrive from every node at once after an announce: wait
                // for the burst to settle, then ask once.
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some(rx) = events.as_mut() {
                    while rx.try_recv().is_ok() {}
                }
            }
            if let Err(e) = refresh(&client, &catalog).await {
                tracing::debug!(error = %e, "command refresh failed");
            }
        }
    });
}

/// A small catalogue for the shell's unit tests.
#[cfg(test)]
pub(crate) fn sample() -> Catalog {
    let command = |name: &str, target: &str, params: serde_json::Value, help: &str| {
        serde_json::json!({"name": name, "target": target, "params": params, "help": help, "needsUser": false,
            "needsQueue": false, "callType": "NORMAL", "providers": ["n1"]})
    };
    let catalog = Catalog::default();
    catalog.load(&serde_json::json!({
        "getMethods": command("getMethods", "core", serde_json::json!([{"name": "queue", "type": "string", "optional": true}]), "List commands"),
        "getNodes": command("getNodes", "core", serde_json::json!([]), "List nodes"),
        "echo": command("echo", "core", serde_json::json!([{"name": "value", "type": "any", "optional": false}]), "Echo"),
        "lockAccount": command("lockAccount", "objects", serde_json::json!([{"name": "dn", "type": "string", "optional": false}]), "Lock an account"),
        "search": command("search", "objects", serde_json::json!([
            {"name": "query", "type": "string", "optional": false},
            {"name": "scope", "type": "string", "optional": true, "allowed": ["BASE", "ONE", "SUB", "CHILDREN"]}
        ]), "Keyword search"),
    }));
    catalog
}
