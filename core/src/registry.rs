//! The domain-wide view a node keeps: its own commands, and every live node with its
//! load and the commands it announced.
//!
//! Presence events feed it; the dispatcher reads it to choose a provider; `getMethods`
//! and `getNodes` report it. A node that stays silent past the timeout simply stops
//! being listed — unlike the original, a leaving node removes only its own entries.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;

use crate::command::{Command, CommandSpec};

/// What is known about one node.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// Its commands, as announced.
    pub methods: Vec<CommandSpec>,
    /// Its last reported load (calls in flight per worker, plus the OS load share).
    pub load: f64,
    /// Calls it had in flight at its last heartbeat.
    pub workers: u64,
    /// When we last heard from it.
    pub last_seen: Instant,
    /// Wall-clock time of the last message, for display.
    pub last_seen_wall: SystemTime,
}

/// One row of `getNodes`.
#[derive(Clone, Debug, Serialize, PartialEq, crate::ResultSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeRow {
    /// Node id.
    pub node: String,
    /// Last reported load.
    pub load: f64,
    /// Calls in flight at the last heartbeat.
    pub workers: u64,
    /// Number of commands it provides.
    pub methods: usize,
    /// Seconds since its last message.
    pub last_seen_secs: f64,
    /// Whether this is the node answering.
    #[serde(rename = "self")]
    pub is_self: bool,
}

/// One entry of the `getMethods` table.
#[derive(Clone, Debug, Serialize, PartialEq, crate::ResultSchema)]
#[serde(rename_all = "camelCase")]
pub struct MethodInfo {
    /// The command's description.
    #[serde(flatten)]
    pub spec: CommandSpec,
    /// `name(a: string, …)`.
    pub signature: String,
    /// The live nodes providing it, least loaded first.
    pub providers: Vec<String>,
}

/// The registry of one node.
pub struct Registry {
    node: String,
    // Arc: the dispatcher takes a command per call without copying its description.
    local: RwLock<HashMap<String, Arc<Command>>>,
    nodes: RwLock<HashMap<String, NodeInfo>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("node", &self.node).finish_non_exhaustive()
    }
}

/// A second command with an already registered name.
#[derive(Debug, thiserror::Error)]
#[error("command '{name}' is exported twice (targets '{first}' and '{second}')")]
pub struct DuplicateCommand {
    /// The command name.
    pub name: String,
    /// Target of the first registration.
    pub first: String,
    /// Target of the refused one.
    pub second: String,
}

impl Registry {
    /// An empty registry for `node`.
    pub fn new(node: impl Into<String>) -> Arc<Registry> {
        Arc::new(Registry { node: node.into(), local: RwLock::default(), nodes: RwLock::default() })
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Adds local commands and lists this node as their provider. Names are unique per
    /// node: a second command of the same name is refused rather than silently winning.
    pub fn register(&self, commands: Vec<Command>) -> Result<(), DuplicateCommand> {
        {
            let mut local = write(&self.local);
            for cmd in &commands {
                if let Some(existing) = local.get(&cmd.spec.name) {
                    return Err(DuplicateCommand {
                        name: cmd.spec.name.clone(),
                        first: existing.spec.target.clone(),
                        second: cmd.spec.target.clone(),
                    });
                }
            }
            for cmd in commands {
                local.insert(cmd.spec.name.clone(), Arc::new(cmd));
            }
        }
        let specs = self.local_specs();
        self.update_capabilities(&self.node.clone(), specs);
        Ok(())
    }

    /// A local command by name.
    pub fn local_command(&self, name: &str) -> Option<Arc<Command>> {
        read(&self.local).get(name).cloned()
    }

    /// This node's command descriptions, sorted by name.
    pub fn local_specs(&self) -> Vec<CommandSpec> {
        let mut specs: Vec<CommandSpec> = read(&self.local).values().map(|c| c.spec.clone()).collect();
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        specs
    }

    /// The targets this node serves.
    pub fn local_targets(&self) -> Vec<String> {
        let mut targets: Vec<String> = read(&self.local).values().map(|c| c.spec.target.clone()).collect();
        targets.sort();
        targets.dedup();
        targets
    }

    /// Records a node's announced commands (NodeCapabilities).
    pub fn update_capabilities(&self, node: &str, methods: Vec<CommandSpec>) {
        let mut nodes = write(&self.nodes);
        let entry = nodes.entry(node.to_owned()).or_insert_with(|| fresh_node(Vec::new()));
        entry.methods = methods;
        entry.last_seen = Instant::now();
        entry.last_seen_wall = SystemTime::now();
    }

    /// Records a heartbeat (NodeStatus). Returns `false` when the node is unknown, so the
    /// caller can ask it to announce itself again.
    pub fn update_status(&self, node: &str, load: f64, workers: u64) -> bool {
        let mut nodes = write(&self.nodes);
        match nodes.get_mut(node) {
            Some(info) => {
                info.load = load;
                info.workers = workers;
                info.last_seen = Instant::now();
                info.last_seen_wall = SystemTime::now();
                true
            }
            None => false,
        }
    }

    /// Forgets a node (NodeLeave). This node itself is never removed.
    pub fn remove_node(&self, node: &str) {
        if node != self.node {
            write(&self.nodes).remove(node);
        }
    }

    /// Forgets nodes not heard from within `timeout`; returns their ids.
    pub fn expire(&self, timeout: Duration) -> Vec<String> {
        let now = Instant::now();
        let mut gone = Vec::new();
        write(&self.nodes).retain(|id, info| {
            let alive = *id == self.node || now.duration_since(info.last_seen) <= timeout;
            if !alive {
                gone.push(id.clone());
            }
            alive
        });
        gone
    }

    /// The node ids known to be alive.
    pub fn node_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = read(&self.nodes).keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Whether a node is currently listed.
    pub fn knows_node(&self, node: &str) -> bool {
        read(&self.nodes).contains_key(node)
    }

    /// The description of a command from any live provider (this node's first).
    pub fn find_spec(&self, name: &str) -> Option<CommandSpec> {
        if let Some(cmd) = read(&self.local).get(name) {
            return Some(cmd.spec.clone());
        }
        read(&self.nodes).values().flat_map(|n| n.methods.iter()).find(|s| s.name == name).cloned()
    }

    /// The live providers of a command, least loaded first (ties by id, so the order
    /// is stable).
    pub fn providers(&self, name: &str) -> Vec<String> {
        let nodes = read(&self.nodes);
        let mut providers: Vec<(&String, f64)> = nodes
            .iter()
            .filter(|(_, info)| info.methods.iter().any(|s| s.name == name))
            .map(|(id, info)| (id, info.load))
            .collect();
        providers.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(b.0)));
        providers.into_iter().map(|(id, _)| id.clone()).collect()
    }

    /// The `getMethods` table, optionally limited to one node.
    pub fn method_table(&self, only_node: Option<&str>) -> BTreeMap<String, MethodInfo> {
        let nodes = read(&self.nodes);
        let mut table: BTreeMap<String, MethodInfo> = BTreeMap::new();
        for (id, info) in nodes.iter().filter(|(id, _)| only_node.is_none_or(|n| n == *id)) {
            for spec in &info.methods {
                table
                    .entry(spec.name.clone())
                    .or_insert_with(|| MethodInfo {
                        signature: spec.signature(),
                        spec: spec.clone(),
                        providers: Vec::new(),
                    })
                    .providers
                    .push(id.clone());
            }
        }
        drop(nodes);
        for info in table.values_mut() {
            let by_load = self.providers(&info.spec.name);
            info.providers.sort_by_key(|p| by_load.iter().position(|q| q == p).unwrap_or(usize::MAX));
        }
        table
    }

    /// The `getNodes` table, sorted by node id.
    pub fn node_rows(&self) -> Vec<NodeRow> {
        let now = Instant::now();
        let mut rows: Vec<NodeRow> = read(&self.nodes)
            .iter()
            .map(|(id, info)| NodeRow {
                node: id.clone(),
                load: info.load,
                workers: info.workers,
                methods: info.methods.len(),
                last_seen_secs: now.duration_since(info.last_seen).as_secs_f64(),
                is_self: *id == self.node,
            })
            .collect();
        rows.sort_by(|a, b| a.node.cmp(&b.node));
        rows
    }
}

fn fresh_node(methods: Vec<CommandSpec>) -> NodeInfo {
    NodeInfo { methods, load: 0.0, workers: 0, last_seen: Instant::now(), last_seen_wall: SystemTime::now() }
}

// A poisoned lock only means another thread panicked while holding it; the maps stay
// structurally valid, so keep serving rather than propagate the panic.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::CallType;

    fn spec(name: &str) -> CommandSpec {
        CommandSpec {
            name: name.into(),
            target: "t".into(),
            params: vec![],
            help: "h".into(),
            needs_user: false,
            needs_queue: false,
            call_type: CallType::Normal,
            result: Default::default(),
            idempotent: false,
        }
    }

    #[test]
    fn providers_follow_load_and_leave() {
        let reg = Registry::new("a");
        reg.update_capabilities("b", vec![spec("x"), spec("y")]);
        reg.update_capabilities("c", vec![spec("x")]);
        reg.update_status("b", 0.5, 1);
        reg.update_status("c", 0.1, 0);
        assert_eq!(reg.providers("x"), ["c", "b"]);
        assert_eq!(reg.method_table(None)["x"].providers, ["c", "b"]);
        assert_eq!(reg.method_table(Some("c")).len(), 1);
        reg.remove_node("c");
        // Only c's entries go; b keeps both of its commands.
        assert_eq!(reg.providers("x"), ["b"]);
        assert_eq!(reg.providers("y"), ["b"]);
        assert!(!reg.update_status("c", 0.0, 0));
    }

    #[test]
    fn expiry_spares_self() {
        let reg = Registry::new("a");
        reg.update_capabilities("a", vec![spec("x")]);
        reg.update_capabilities("b", vec![spec("x")]);
        assert_eq!(reg.expire(Duration::ZERO), ["b"]);
        assert_eq!(reg.node_ids(), ["a"]);
    }
}
