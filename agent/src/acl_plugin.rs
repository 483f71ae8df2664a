//! ACL management on target `acl`: list, add, change and remove ACLs and roles.
//!
//! The engine every check consults is built from object data — the `Acl` extension
//! (`aclEntry`, one JSON document per ACL) on the DN a set belongs to, and `AclRole`
//! objects (`cn=<role>,ou=roles,<base>`, `aclRoleEntry`) — so every agent sharing the
//! object store decides the same way. An edit takes a lock shared through the index
//! database, reads the stored ACLs afresh, applies the change with the engine's own
//! checks, writes back only the sets and roles that differ, and rebuilds the engine
//! from what is stored. Other agents rebuild theirs when an `ObjectChanged` or
//! `BackendChange` event names an object holding ACL data.
//!
//! Reading needs `r`, editing `w` on `<domain>.acl` at the set's DN (roles: the base),
//! so an ACL can delegate the management of a subtree.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clacks_acl::SharedAcl;
use clacks_acl::{Acl, AclEngine, AclError, Action, Grant, RoleEntry, Scope};
use clacks_core::command::{CallContext, CommandError, CommandResult};
use clacks_core::dn::{dn_key, parent_dn};
use clacks_core::rpc::ErrorCode;
use clacks_objects::{ObjectError, ObjectState, ObjectStore};
use serde_json::{Map, Value, json};
use tracing::{info, warn};

/// The object types that hold ACL data.
const ACL_EXTENSION: &str = "Acl";
const ROLE_TYPE: &str = "AclRole";
/// Name of the edit lock in the index database.
const EDIT_LOCK: &str = "acl-edit";
/// How long an edit waits for another agent's edit to finish.
const EDIT_WAIT: Duration = Duration::from_secs(10);

/// The `acl` plugin.
pub struct AclPlugin {
    store: Arc<ObjectStore>,
    acl: SharedAcl,
    /// Administrators and service identities from the configuration: they are never
    /// stored, so no edit can lock them out.
    admins: Vec<String>,
    domain: clacks_core::domain::Domain,
    /// Who holds the edit lock: `<domain>:<node>`.
    holder: String,
    /// One edit at a time within this agent (the index lock orders agents).
    editing: tokio::sync::Mutex<()>,
    /// One rebuild at a time: a rebuild that read the store earlier must not replace the
    /// engine a later one built (an edit's own rebuild racing one started by the event
    /// of an earlier change).
    reloading: tokio::sync::Mutex<()>,
    /// UUIDs of the objects the engine was built from: a change to one means a rebuild.
    sources: Mutex<BTreeSet<String>>,
    /// What the last rebuild left out, and why.
    problems: Mutex<Vec<String>>,
}

/// What is stored, read in one go.
struct Stored {
    engine: AclEngine,
    sources: BTreeSet<String>,
    problems: Vec<String>,
    /// Role name → the DN of its object.
    role_dns: BTreeMap<String, String>,
}

fn first_text(values: Option<&Vec<Value>>) -> Option<String> {
    values.and_then(|v| v.first()).and_then(Value::as_str).map(str::to_owned)
}

/// Role names become RDN values; keeping them plain keeps DNs and regexes simple.
fn check_role_name(name: &str) -> Result<(), AclError> {
    let plain = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if plain {
        Ok(())
    } else {
        Err(AclError::Invalid(format!("role name '{name}' may hold only letters, digits, '-', '_' and '.'")))
    }
}

/// Exactly one of `actions` and `role`: what an ACL or role entry grants.
fn grant_of(actions: Option<Vec<Action>>, role: Option<String>) -> Result<Grant, AclError> {
    match (actions, role) {
        (Some(actions), None) if !actions.is_empty() => Ok(Grant::Actions(actions)),
        (None, Some(role)) => Ok(Grant::Role(role)),
        (Some(_), Some(_)) => Err(AclError::Invalid("give actions or a role, not both".into())),
        _ => Err(AclError::Invalid("give actions (a list of {topic, acls, options}) or a role".into())),
    }
}

fn maybe_grant(actions: Option<Vec<Action>>, role: Option<String>) -> Result<Option<Grant>, AclError> {
    if actions.is_none() && role.is_none() { Ok(None) } else { grant_of(actions, role).map(Some) }
}

fn parse_scope(scope: Option<&str>) -> Result<Option<Scope>, AclError> {
    scope.map(str::parse).transpose()
}

/// One ACL as the commands show it: flat, with its set's DN.
fn acl_row(base: &str, acl: &Acl) -> Value {
    let mut row = json!({
        "id": acl.id, "base": base, "scope": acl.scope, "priority": acl.priority, "members": acl.members,
    });
    grant_fields(&mut row, &acl.grant);
    row
}

fn role_entry_row(role: &str, entry: &RoleEntry) -> Value {
    let mut row = json!({"id": entry.id, "role": role, "scope": entry.scope, "priority": entry.priority});
    // Inside a role, `role` names the role itself; a nested role is `uses`.
    match &entry.grant {
        Grant::Actions(actions) => row["actions"] = json!(actions),
        Grant::Role(inner) => row["uses"] = json!(inner),
    }
    row
}

fn grant_fields(row: &mut Value, grant: &Grant) {
    match grant {
        Grant::Actions(actions) => row["actions"] = json!(actions),
        Grant::Role(role) => row["role"] = json!(role),
    }
}

fn to_documents<T: serde::Serialize>(items: &[T]) -> Value {
    Value::Array(items.iter().filter_map(|i| serde_json::to_string(i).ok()).map(Value::String).collect())
}

fn from_documents<T: serde::de::DeserializeOwned>(
    values: Option<&Vec<Value>>,
    whose: &str,
    problems: &mut Vec<String>,
) -> Vec<T> {
    let mut items = Vec::new();
    for value in values.into_iter().flatten() {
        match value.as_str().map(serde_json::from_str::<T>) {
            Some(Ok(item)) => items.push(item),
            Some(Err(e)) => problems.push(format!("{whose}: an entry is not readable ({e}); left out")),
            None => problems.push(format!("{whose}: an entry is not text; left out")),
        }
    }
    items
}

impl AclPlugin {
    pub(crate) fn new(
        store: Arc<ObjectStore>,
        acl: SharedAcl,
        admins: Vec<String>,
        domain: &clacks_core::domain::Domain,
        node: &str,
    ) -> Self {
        AclPlugin {
            store,
            acl,
            admins,
            domain: domain.clone(),
            holder: format!("{domain}:{node}"),
            editing: tokio::sync::Mutex::default(),
            reloading: tokio::sync::Mutex::default(),
            sources: Mutex::default(),
            problems: Mutex::default(),
        }
    }

    fn roles_dn(&self) -> String {
        format!("ou=roles,{}", self.store.base())
    }

    /// The objects of `kind` (a type or an extension) by DN, noting them as sources;
    /// objects gone since they were indexed are skipped.
    async fn objects_of(&self, kind: &str, sources: &mut BTreeSet<String>) -> Result<Vec<ObjectState>, ObjectError> {
        let mut docs = self.store.index().of_type(kind).await?;
        docs.sort_by(|a, b| a.dn.cmp(&b.dn));
        let mut states = Vec::new();
        for doc in docs {
            match self.store.load(&doc.uuid).await {
                Ok(state) => states.push(state),
                Err(e) if e.code == ErrorCode::OBJECT_NOT_FOUND => continue,
                Err(e) => return Err(e),
            }
            sources.insert(doc.uuid);
        }
        Ok(states)
    }

    /// Reads every stored set and role.
    async fn read_stored(&self) -> Result<Stored, ObjectError> {
        let mut problems = Vec::new();
        let mut sources = BTreeSet::new();
        let mut roles = Vec::new();
        let mut role_dns = BTreeMap::new();
        for state in self.objects_of(ROLE_TYPE, &mut sources).await? {
            let (Some(name), Some(dn)) = (first_text(state.values.get("cn")), state.dn.clone()) else { continue };
            if let Some(first) = role_dns.get(&name) {
                problems.push(format!("role '{name}' at {dn} is left out: {first} has that name"));
                continue;
            }
            let entries = from_documents(state.values.get("aclRoleEntry"), &format!("role '{name}'"), &mut problems);
            role_dns.insert(name.clone(), dn);
            roles.push((name, entries));
        }
        let mut sets = Vec::new();
        for state in self.objects_of(ACL_EXTENSION, &mut sources).await? {
            let Some(dn) = state.dn.clone() else { continue };
            let acls = from_documents(state.values.get("aclEntry"), &format!("ACLs at {dn}"), &mut problems);
            sets.push((dn, acls));
        }
        let (engine, restored) = AclEngine::restore(self.store.base(), self.admins.iter().cloned(), sets, roles);
        problems.extend(restored);
        Ok(Stored { engine, sources, problems, role_dns })
    }

    /// Rebuilds the engine from the store. On failure the engine in use stays.
    pub(crate) async fn reload(&self) -> Result<(), ObjectError> {
        let _one_at_a_time = self.reloading.lock().await;
        let stored = self.read_stored().await?;
        for problem in &stored.problems {
            warn!(%problem, "stored ACL data left out");
        }
        let count: usize = stored.engine.sets().map(|(_, acls)| acls.len()).sum();
        info!(acls = count, roles = stored.engine.roles().len(), "ACLs loaded");
        let mut engine = self.acl.write().unwrap_or_else(PoisonError::into_inner);
        let groups = engine.node_groups().clone();
        *engine = stored.engine.with_node_groups(groups);
        drop(engine);
        *self.sources.lock().unwrap_or_else(PoisonError::into_inner) = stored.sources;
        *self.problems.lock().unwrap_or_else(PoisonError::into_inner) = stored.problems;
        Ok(())
    }

    /// Whether a change to the object `uuid` may change the ACLs.
    pub(crate) async fn concerns(&self, uuid: &str) -> bool {
        if self.sources.lock().unwrap_or_else(PoisonError::into_inner).contains(uuid) {
            return true;
        }
        match self.store.index().by_uuid(uuid).await {
            Ok(Some(doc)) => doc.object_type == ROLE_TYPE || doc.extensions.iter().any(|e| e == ACL_EXTENSION),
            _ => false,
        }
    }

    /// Follows changes to ACL data made anywhere in the domain until `stopped`.
    pub(crate) async fn watch(
        self: Arc<Self>,
        mut events: tokio::sync::mpsc::Receiver<clacks_core::bus::EventMessage>,
        stopped: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let message = tokio::select! {
                _ = stopped.cancelled() => return,
                m = events.recv() => match m { Some(m) => m, None => return },
            };
            let mut changed = self.names_acl_data(&message).await;
            // A burst of changes (an import) costs one rebuild.
            while let Ok(more) = events.try_recv() {
                changed = changed || self.names_acl_data(&more).await;
            }
            if changed && let Err(e) = self.reload().await {
                warn!(error = %e, "cannot reload the ACLs; the previous ones stay in force");
            }
        }
    }

    async fn names_acl_data(&self, message: &clacks_core::bus::EventMessage) -> bool {
        let event = clacks_core::events::event_json(&message.event_type, &message.body);
        match event.get("UUID").and_then(Value::as_str) {
            Some(uuid) => self.concerns(uuid).await,
            None => false,
        }
    }

    /// Refuses unless the caller has `letters` on `<domain>.acl` at `target`.
    fn require(&self, ctx: &CallContext, letters: &str, target: &str) -> CommandResult<()> {
        let topic = self.domain.acl_topic();
        let request = clacks_acl::Request {
            user: ctx.user.as_deref(),
            topic: &topic,
            letters,
            target: Some(target),
            options: None,
        };
        let user = ctx.user.as_deref().unwrap_or("nobody");
        let verb = if letters == "r" { "read" } else { "change" };
        clacks_acl::require(&self.acl, &request, &clacks_acl::NoRelatives, || {
            format!("{user} may not {verb} the ACLs at {target}")
        })
        .map_err(CommandError::from)
    }

    /// The DN of the set holding ACL `id`, from the engine in use.
    fn set_holding(&self, id: u64) -> CommandResult<String> {
        let engine = self.acl.read().unwrap_or_else(PoisonError::into_inner);
        engine
            .sets()
            .find(|(_, acls)| acls.iter().any(|a| a.id == id))
            .map(|(base, _)| base.to_owned())
            .ok_or_else(|| CommandError::from(AclError::UnknownId(id)))
    }

    /// A set's DN must be an object under the tree's root: checks never look elsewhere.
    fn check_set_dn(&self, dn: &str) -> CommandResult<()> {
        let (key, root) = (dn_key(dn), dn_key(self.store.base()));
        if key == root || key.ends_with(&format!(",{root}")) {
            Ok(())
        } else {
            Err(CommandError::from(AclError::Invalid(format!(
                "{dn} is not below the tree's root {}",
                self.store.base()
            ))))
        }
    }

    /// Applies `change` to the stored ACLs and writes back what differs.
    async fn edit<T>(
        &self,
        ctx: &CallContext,
        change: impl FnOnce(&mut AclEngine) -> Result<T, AclError>,
    ) -> CommandResult<T> {
        let _local = self.editing.lock().await;
        let deadline = tokio::time::Instant::now() + EDIT_WAIT;
        loop {
            if self.store.index().try_lock(EDIT_LOCK, &self.holder, 60).await.map_err(ObjectError::from)? {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CommandError::new(
                    ErrorCode::TIMEOUT,
                    "another agent has been editing the ACLs for 10 s; try again",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let outcome = self.edit_locked(ctx, change).await;
        // Whatever happened, the engine follows what is stored now.
        let reloaded = self.reload().await;
        let _ = self.store.index().unlock(EDIT_LOCK, &self.holder).await;
        let value = outcome?;
        reloaded?;
        Ok(value)
    }

    async fn edit_locked<T>(
        &self,
        ctx: &CallContext,
        change: impl FnOnce(&mut AclEngine) -> Result<T, AclError>,
    ) -> CommandResult<T> {
        let stored = self.read_stored().await?;
        let mut after = stored.engine.clone();
        let value = change(&mut after).map_err(CommandError::from)?;
        let user = ctx.user.as_deref();
        let before: BTreeMap<String, (&str, &[Acl])> =
            stored.engine.sets().map(|(dn, acls)| (dn_key(dn), (dn, acls))).collect();
        let now: BTreeMap<String, (&str, &[Acl])> = after.sets().map(|(dn, acls)| (dn_key(dn), (dn, acls))).collect();
        for key in before.keys().chain(now.keys()).collect::<BTreeSet<_>>() {
            let (old, new) = (before.get(key), now.get(key));
            if old.map(|o| o.1) != new.map(|n| n.1) {
                let dn = new.or(old).map(|s| s.0).unwrap_or_default();
                self.write_set(dn, new.map(|n| n.1).unwrap_or_default(), user).await?;
            }
        }
        let (old_roles, new_roles) = (stored.engine.roles(), after.roles());
        for name in old_roles.keys().chain(new_roles.keys()).collect::<BTreeSet<_>>() {
            if old_roles.get(name) == new_roles.get(name) {
                continue;
            }
            let dn = stored.role_dns.get(name).map(String::as_str);
            match (new_roles.get(name), dn) {
                (Some(entries), _) => self.write_role(name, entries, dn, user).await?,
                (None, Some(dn)) => {
                    self.store.remove(dn, false, user).await?;
                }
                (None, None) => {}
            }
        }
        Ok(value)
    }

    async fn write_set(&self, dn: &str, acls: &[Acl], user: Option<&str>) -> CommandResult<()> {
        let mut state = self.store.load(dn).await?;
        let active = state.effective_types().iter().any(|t| t == ACL_EXTENSION);
        let cannot = |e: ObjectError| {
            let message = format!("ACLs cannot be kept at {dn}: {}", e.message);
            CommandError::from(ObjectError { message, ..e })
        };
        match (acls.is_empty(), active) {
            (true, false) => return Ok(()),
            (true, true) => self.store.retract(&mut state, ACL_EXTENSION).map_err(cannot)?,
            (false, active) => {
                if !active {
                    self.store.extend(&mut state, ACL_EXTENSION).map_err(cannot)?;
                }
                self.store.set(&mut state, "aclEntry", &to_documents(acls)).await.map_err(cannot)?;
            }
        }
        self.store.commit(&mut state, user).await.map_err(cannot)
    }

    async fn write_role(
        &self,
        name: &str,
        entries: &[RoleEntry],
        dn: Option<&str>,
        user: Option<&str>,
    ) -> CommandResult<()> {
        let mut state = match dn {
            Some(dn) => self.store.load(dn).await?,
            None => {
                let parent = self.roles_dn();
                if let Err(e) = self.store.load(&parent).await {
                    if e.code != ErrorCode::OBJECT_NOT_FOUND {
                        return Err(e.into());
                    }
                    let mut container = self.store.new_object(parent_dn(&parent), "RoleContainer").await?;
                    self.store.commit(&mut container, user).await?;
                }
                let mut state = self.store.new_object(&parent, ROLE_TYPE).await?;
                self.store.set(&mut state, "cn", &json!(name)).await?;
                state
            }
        };
        self.store.set(&mut state, "aclRoleEntry", &to_documents(entries)).await?;
        self.store.commit(&mut state, user).await?;
        Ok(())
    }
}

// A command's parameters are its wire signature, however many there are.
#[allow(clippy::too_many_arguments)]
#[clacks_core::plugin(target = "acl")]
impl AclPlugin {
    /// List the ACLs, all or those of the set at base, optionally only those whose members match user.
    #[command(name = "getACLs", needs_user, idempotent)]
    fn get_acls(&self, ctx: &CallContext, base: Option<String>, user: Option<String>) -> CommandResult<Vec<Value>> {
        self.require(ctx, "r", base.as_deref().unwrap_or(self.store.base()))?;
        let engine = self.acl.read().unwrap_or_else(PoisonError::into_inner);
        let only = base.as_deref().map(dn_key);
        let member_of = |acl: &Acl| user.as_deref().is_none_or(|u| engine.is_member(acl, u));
        Ok(engine
            .sets()
            .filter(|(dn, _)| only.as_ref().is_none_or(|o| *o == dn_key(dn)))
            .flat_map(|(dn, acls)| acls.iter().filter(|a| member_of(a)).map(move |a| acl_row(dn, a)))
            .collect())
    }

    /// Add an ACL to the set at base; returns its id.
    ///
    /// - base: the DN whose ACL set it joins
    /// - scope (one|sub|psub|reset): which objects at and below base it covers
    /// - priority: -100…100, lower first
    /// - members: regexes of the user names it applies to
    /// - actions: what it grants, [{topic, acls, options}] (or give role)
    /// - role: the ACL role whose grants it gives (or give actions)
    #[command(name = "addACL", needs_user)]
    async fn add_acl(
        &self,
        ctx: &CallContext,
        base: String,
        scope: String,
        priority: i32,
        members: Vec<String>,
        actions: Option<Vec<Action>>,
        role: Option<String>,
    ) -> CommandResult<u64> {
        self.check_set_dn(&base)?;
        self.require(ctx, "w", &base)?;
        let scope: Scope = scope.parse().map_err(CommandError::from)?;
        let grant = grant_of(actions, role).map_err(CommandError::from)?;
        self.edit(ctx, |engine| engine.add_acl(&base, scope, priority, members, grant)).await
    }

    /// Change an ACL: any of scope, priority, members, and actions or role.
    ///
    /// - id: the ACL, as addACL or getACLs gives it
    /// - scope (one|sub|psub|reset): which objects at and below its base it covers
    #[command(name = "updateACL", needs_user)]
    async fn update_acl(
        &self,
        ctx: &CallContext,
        id: u64,
        scope: Option<String>,
        priority: Option<i32>,
        members: Option<Vec<String>>,
        actions: Option<Vec<Action>>,
        role: Option<String>,
    ) -> CommandResult<bool> {
        self.require(ctx, "w", &self.set_holding(id)?)?;
        let scope = parse_scope(scope.as_deref()).map_err(CommandError::from)?;
        let grant = maybe_grant(actions, role).map_err(CommandError::from)?;
        self.edit(ctx, |engine| engine.update_acl(id, scope, priority, members, grant)).await?;
        Ok(true)
    }

    /// Remove an ACL by id.
    #[command(name = "removeACL", needs_user)]
    async fn remove_acl(&self, ctx: &CallContext, id: u64) -> CommandResult<bool> {
        self.require(ctx, "w", &self.set_holding(id)?)?;
        self.edit(ctx, |engine| engine.remove_acl(id)).await?;
        Ok(true)
    }

    /// Take user out of every ACL that names it literally (below base, when given); an ACL left without members goes. Returns how many ACLs changed.
    #[command(name = "removeACLsForUser", needs_user)]
    async fn remove_acls_for_user(
        &self,
        ctx: &CallContext,
        user: String,
        base: Option<String>,
    ) -> CommandResult<usize> {
        self.require(ctx, "w", base.as_deref().unwrap_or(self.store.base()))?;
        self.edit(ctx, |engine| Ok(engine.remove_acls_for_user(&user, base.as_deref()))).await
    }

    /// List the roles with their entries, all or the one named.
    #[command(name = "getACLRoles", needs_user, idempotent)]
    fn get_acl_roles(&self, ctx: &CallContext, name: Option<String>) -> CommandResult<Vec<Value>> {
        self.require(ctx, "r", self.store.base())?;
        let engine = self.acl.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(name) = &name
            && !engine.roles().contains_key(name)
        {
            return Err(CommandError::from(AclError::UnknownRole(name.clone())));
        }
        Ok(engine
            .roles()
            .iter()
            .filter(|(role, _)| name.as_ref().is_none_or(|n| n == *role))
            .map(|(role, entries)| {
                json!({"name": role, "entries": entries.iter().map(|e| role_entry_row(role, e)).collect::<Vec<_>>()})
            })
            .collect())
    }

    /// Create an empty role (an AclRole object below ou=roles).
    #[command(name = "addACLRole", needs_user)]
    async fn add_acl_role(&self, ctx: &CallContext, name: String) -> CommandResult<String> {
        self.require(ctx, "w", self.store.base())?;
        check_role_name(&name).map_err(CommandError::from)?;
        self.edit(ctx, |engine| engine.add_role(&name)).await?;
        Ok(format!("cn={name},{}", self.roles_dn()))
    }

    /// Remove a role no ACL or role uses.
    #[command(name = "removeACLRole", needs_user)]
    async fn remove_acl_role(&self, ctx: &CallContext, name: String) -> CommandResult<bool> {
        self.require(ctx, "w", self.store.base())?;
        self.edit(ctx, |engine| engine.remove_role(&name)).await?;
        Ok(true)
    }

    /// Add an entry to a role: scope, priority, and actions [{topic, acls, options}] or another role it uses; returns the entry's id.
    ///
    /// - role: the ACL role
    /// - scope (one|sub|psub|reset): which objects the entry covers where the role is granted
    /// - uses: another role whose grants this entry gives
    #[command(name = "addACLToRole", needs_user)]
    async fn add_acl_to_role(
        &self,
        ctx: &CallContext,
        role: String,
        scope: String,
        priority: i32,
        actions: Option<Vec<Action>>,
        uses: Option<String>,
    ) -> CommandResult<u64> {
        self.require(ctx, "w", self.store.base())?;
        let scope: Scope = scope.parse().map_err(CommandError::from)?;
        let grant = grant_of(actions, uses).map_err(CommandError::from)?;
        self.edit(ctx, |engine| engine.add_role_entry(&role, scope, priority, grant)).await
    }

    /// Change a role entry: any of scope, priority, and actions or the role it uses.
    ///
    /// - scope (one|sub|psub|reset): which objects the entry covers where the role is granted
    #[command(name = "updateACLRoleEntry", needs_user)]
    async fn update_acl_role_entry(
        &self,
        ctx: &CallContext,
        id: u64,
        scope: Option<String>,
        priority: Option<i32>,
        actions: Option<Vec<Action>>,
        uses: Option<String>,
    ) -> CommandResult<bool> {
        self.require(ctx, "w", self.store.base())?;
        let scope = parse_scope(scope.as_deref()).map_err(CommandError::from)?;
        let grant = maybe_grant(actions, uses).map_err(CommandError::from)?;
        self.edit(ctx, |engine| engine.update_role_entry(id, scope, priority, grant)).await?;
        Ok(true)
    }

    /// Remove a role entry by id.
    #[command(name = "removeACLRoleEntry", needs_user)]
    async fn remove_acl_role_entry(&self, ctx: &CallContext, id: u64) -> CommandResult<bool> {
        self.require(ctx, "w", self.store.base())?;
        self.edit(ctx, |engine| engine.remove_role_entry(id)).await?;
        Ok(true)
    }

    /// Whether user may do letters on topic at target (default: the tree's root), given call options.
    #[command(name = "checkACL", needs_user, idempotent)]
    fn check_acl(
        &self,
        ctx: &CallContext,
        user: String,
        topic: String,
        letters: String,
        target: Option<String>,
        options: Option<Map<String, Value>>,
    ) -> CommandResult<bool> {
        let target = target.unwrap_or_else(|| self.store.base().to_owned());
        self.require(ctx, "r", &target)?;
        let request = clacks_acl::Request {
            user: Some(&user),
            topic: &topic,
            letters: &letters,
            target: Some(&target),
            options: options.as_ref(),
        };
        let engine = self.acl.read().unwrap_or_else(PoisonError::into_inner);
        // Owner and manager relations are not looked up here: `o` and `m` grants count as not given.
        engine.check(&request, &clacks_acl::NoRelatives).map_err(CommandError::from)
    }

    /// What the last load of the stored ACLs left out, and why.
    #[command(name = "getACLDiagnostics", needs_user, idempotent)]
    fn get_acl_diagnostics(&self, ctx: &CallContext) -> CommandResult<Vec<String>> {
        self.require(ctx, "r", self.store.base())?;
        Ok(self.problems.lock().unwrap_or_else(PoisonError::into_inner).clone())
    }
}
