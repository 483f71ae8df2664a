//! The ACL engine: who may do what, where.
//!
//! An ACL set belongs to a DN and holds ACLs in priority order (lower first). An ACL
//! names its members (regular expressions anchored at the start of the user name, or
//! `N@<group>`: every machine of a named group of clients, a nodegroup) and
//! grants either actions — a topic regex, permission letters `rwcdsxeom`, and option
//! constraints on the call's arguments — or a role, a named and possibly nested list
//! of such grants. A check walks from the target DN up to the tree's root: `reset`
//! revokes what higher levels would grant, `psub` cannot be revoked, `sub` covers the
//! subtree, `one` only the set's own DN. Nothing granted means denied.
//!
//! Differences from the original, on purpose: option constraints are enforced, roles
//! and sets sort their entries the same way, and a role cycle is refused when it is
//! made, not only when it is checked.
//!
//! This crate depends on the wire (`clacks-core`: errors, DN rules, the dispatcher's
//! [`Authorizer`] trait, which the engine implements) and never on the object layer:
//! ACLs are stored as objects, but checking them needs none.

use std::collections::{BTreeMap, BTreeSet};

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use clacks_core::dispatch::Authorizer;
use clacks_core::dn::dn_key;

/// Every permission letter: read, write, create, delete, search, execute, receive
/// events, and the owner-only and manager-only modifiers.
pub const PERMISSIONS: &str = "rwcdsxeom";

/// How far an ACL reaches below its set's DN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The set's DN only.
    One,
    /// The set's DN and everything below, unless a `reset` below revokes it.
    Sub,
    /// Like `sub`, and no `reset` revokes it.
    Psub,
    /// Revokes what sets higher up would grant here and below.
    Reset,
}

impl std::str::FromStr for Scope {
    type Err = AclError;
    fn from_str(s: &str) -> Result<Scope, AclError> {
        match s.to_ascii_lowercase().as_str() {
            "one" => Ok(Scope::One),
            "sub" => Ok(Scope::Sub),
            "psub" => Ok(Scope::Psub),
            "reset" => Ok(Scope::Reset),
            _ => Err(AclError::Invalid(format!("unknown scope '{s}' (use one, sub, psub or reset)"))),
        }
    }
}

/// What may be done to topics matching `topic`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// A regular expression, matched from the start of the topic.
    pub topic: String,
    /// Permission letters.
    pub acls: String,
    /// Call arguments that must be present and match: a string is a regular expression
    /// for the whole value, anything else must be equal.
    #[serde(default)]
    pub options: Map<String, Value>,
}

/// What an ACL or role entry grants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    Actions(Vec<Action>),
    Role(String),
}

/// One ACL of a set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Acl {
    pub id: u64,
    pub scope: Scope,
    pub priority: i32,
    /// Regular expressions, matched from the start of the user name; `N@<group>` names
    /// the machines of a group of clients.
    pub members: Vec<String>,
    pub grant: Grant,
}

/// How an ACL member names a group of machines: `N@<group>` (Salt's nodegroup prefix).
pub const NODE_GROUP_PREFIX: &str = "N@";

/// The group a member names, if it names one.
pub fn node_group(member: &str) -> Option<&str> {
    member.strip_prefix(NODE_GROUP_PREFIX)
}

/// Whether `name` may name a group of clients: a letter, then letters, digits, `.`, `_`
/// or `-`, at most 64 in all.
pub fn is_group_name(name: &str) -> bool {
    name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The client ids of each named group of machines, as the agent's clients plugin
/// computes them from the groups' stored filters. Shared: the engine reads it on every
/// check, the plugin replaces it when groups, machines or inventories change, and an
/// engine rebuilt from stored ACLs keeps the same one.
#[derive(Clone, Debug, Default)]
pub struct NodeGroups(std::sync::Arc<std::sync::RwLock<BTreeMap<String, BTreeSet<String>>>>);

impl NodeGroups {
    /// Whether the group `group` holds the client `user`.
    pub fn contains(&self, group: &str, user: &str) -> bool {
        let groups = self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        groups.get(group).is_some_and(|members| members.contains(user))
    }

    /// Replaces every group's members.
    pub fn replace(&self, groups: BTreeMap<String, BTreeSet<String>>) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = groups;
    }
}

/// A member is a group of machines or a regular expression; either must be well formed.
fn check_member(member: &str) -> Result<(), AclError> {
    match node_group(member) {
        Some(group) if is_group_name(group) => Ok(()),
        Some(group) => Err(AclError::Invalid(format!(
            "'{group}' cannot name a group of clients (a letter, then letters, digits, '.', '_' or '-')"
        ))),
        None => anchored(member, false).map(drop),
    }
}

/// One entry of a role: like an ACL without members (the ACL using the role has them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoleEntry {
    pub id: u64,
    pub scope: Scope,
    pub priority: i32,
    pub grant: Grant,
}

/// Why an ACL operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    /// Bad input: a scope, priority, letter, regex or reference.
    #[error("{0}")]
    Invalid(String),
    #[error("no ACL or role entry with id {0}")]
    UnknownId(u64),
    #[error("no role named '{0}'")]
    UnknownRole(String),
    #[error("role '{0}' is in use by {1}")]
    RoleInUse(String, String),
    #[error("roles refer to each other in a circle: {0}")]
    Loop(String),
}

impl From<AclError> for clacks_core::command::CommandError {
    fn from(e: AclError) -> clacks_core::command::CommandError {
        clacks_core::rpc::RpcError::from(e).into()
    }
}

impl From<AclError> for clacks_core::rpc::RpcError {
    fn from(e: AclError) -> clacks_core::rpc::RpcError {
        use clacks_core::rpc::ErrorCode;
        let code = match &e {
            AclError::Invalid(_) | AclError::Loop(_) => ErrorCode::ACL_INVALID,
            AclError::UnknownId(_) | AclError::UnknownRole(_) => ErrorCode::ACL_NOT_FOUND,
            AclError::RoleInUse(..) => ErrorCode::ACL_ROLE_IN_USE,
        };
        clacks_core::rpc::RpcError::new(code, e.to_string())
    }
}

/// Answers for the relative permissions `o` and `m`: who owns a DN (its `uid`) and who
/// manages it (the uids of its `manager` DNs).
pub trait RelativeLookup {
    fn owner(&self, dn: &str) -> Option<String>;
    fn managers(&self, dn: &str) -> Vec<String>;
}

/// A lookup for callers without objects: nobody owns or manages anything.
#[derive(Debug, Default)]
pub struct NoRelatives;

impl RelativeLookup for NoRelatives {
    fn owner(&self, _: &str) -> Option<String> {
        None
    }
    fn managers(&self, _: &str) -> Vec<String> {
        Vec::new()
    }
}

/// A permission question.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// The caller; `None` for internal calls, which are always allowed.
    pub user: Option<&'a str>,
    /// `<domain>.command.<target>.<method>`, `<domain>.objects.<Type>.attributes.<attr>`, …
    pub topic: &'a str,
    /// The letters needed, e.g. `"x"` or `"rw"`.
    pub letters: &'a str,
    /// The DN acted on; default the tree's root.
    pub target: Option<&'a str>,
    /// Call arguments by name, for option constraints.
    pub options: Option<&'a Map<String, Value>>,
}

/// Compiled patterns by source: checks run on every call, compiling does not.
#[derive(Debug, Default)]
struct Patterns(std::sync::RwLock<std::collections::HashMap<(String, bool), Regex>>);

impl Clone for Patterns {
    fn clone(&self) -> Patterns {
        Patterns::default()
    }
}

impl Patterns {
    fn matches(&self, pattern: &str, whole: bool, text: &str) -> bool {
        let key = (pattern.to_owned(), whole);
        if let Ok(cache) = self.0.read()
            && let Some(re) = cache.get(&key)
        {
            return re.is_match(text);
        }
        // Patterns were checked when they were added; one that fails now matches nothing.
        let Ok(re) = anchored(pattern, whole) else { return false };
        let matched = re.is_match(text);
        if let Ok(mut cache) = self.0.write() {
            cache.insert(key, re);
        }
        matched
    }
}

/// All ACL sets and roles of a domain, plus its administrators.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AclEngine {
    /// The tree's root: checks walk up to here.
    base: String,
    admins: BTreeSet<String>,
    /// By the set's DN key: `(DN as given, ACLs)`.
    sets: BTreeMap<String, (String, Vec<Acl>)>,
    roles: BTreeMap<String, Vec<RoleEntry>>,
    next_id: u64,
    #[serde(skip)]
    patterns: Patterns,
    #[serde(skip)]
    node_groups: NodeGroups,
}

fn anchored(pattern: &str, whole: bool) -> Result<Regex, AclError> {
    let source = if whole { format!("^(?:{pattern})$") } else { format!("^(?:{pattern})") };
    Regex::new(&source).map_err(|e| AclError::Invalid(format!("bad regular expression '{pattern}': {e}")))
}

fn check_priority(priority: i32) -> Result<(), AclError> {
    if (-100..=100).contains(&priority) {
        Ok(())
    } else {
        Err(AclError::Invalid(format!("priority {priority} is outside -100…100")))
    }
}

fn check_letters(letters: &str) -> Result<(), AclError> {
    match letters.chars().find(|c| !PERMISSIONS.contains(*c)) {
        Some(bad) => Err(AclError::Invalid(format!("'{bad}' is not a permission (use {PERMISSIONS})"))),
        None if letters.is_empty() => Err(AclError::Invalid("an action needs at least one permission".into())),
        None => Ok(()),
    }
}

impl AclEngine {
    pub fn new(base: &str, admins: impl IntoIterator<Item = String>) -> AclEngine {
        AclEngine { base: base.to_owned(), admins: admins.into_iter().collect(), next_id: 1, ..AclEngine::default() }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn is_admin(&self, user: &str) -> bool {
        self.admins.contains(user)
    }

    /// Whether one of `acl`'s members names `user`: a pattern matching it, or a group of
    /// machines holding it.
    pub fn is_member(&self, acl: &Acl, user: &str) -> bool {
        acl.members.iter().any(|m| match node_group(m) {
            Some(group) => self.node_groups.contains(group, user),
            None => self.patterns.matches(m, false, user),
        })
    }

    /// The groups of machines `N@<group>` members name (shared by clones).
    pub fn node_groups(&self) -> &NodeGroups {
        &self.node_groups
    }

    /// Reads group members from `groups` — an engine rebuilt from stored ACLs takes
    /// the one in use.
    pub fn with_node_groups(mut self, groups: NodeGroups) -> AclEngine {
        self.node_groups = groups;
        self
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id.max(1);
        self.next_id = id + 1;
        id
    }

    fn check_grant(&self, grant: &Grant, own_role: Option<&str>) -> Result<(), AclError> {
        match grant {
            Grant::Actions(actions) => {
                for action in actions {
                    anchored(&action.topic, false)?;
                    check_letters(&action.acls)?;
                    for value in action.options.values() {
                        if let Value::String(pattern) = value {
                            anchored(pattern, true)?;
                        }
                    }
                }
                Ok(())
            }
            Grant::Role(name) if Some(name.as_str()) == own_role => Err(AclError::Loop(format!("{name} → {name}"))),
            Grant::Role(name) if !self.roles.contains_key(name) => Err(AclError::UnknownRole(name.clone())),
            Grant::Role(name) => match own_role {
                Some(own) => self.refuse_cycle(own, name),
                None => Ok(()),
            },
        }
    }

    /// Refuses `from` → `to` when `to` already leads back to `from`.
    fn refuse_cycle(&self, from: &str, to: &str) -> Result<(), AclError> {
        let mut path = vec![from.to_owned(), to.to_owned()];
        if self.reaches(to, from, &mut path) { Err(AclError::Loop(path.join(" → "))) } else { Ok(()) }
    }

    fn reaches(&self, from: &str, goal: &str, path: &mut Vec<String>) -> bool {
        for entry in self.roles.get(from).into_iter().flatten() {
            if let Grant::Role(next) = &entry.grant {
                path.push(next.clone());
                if next == goal || (path.len() < 64 && self.reaches(next, goal, path)) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }

    /// Adds an ACL to the set of `base`; returns its id.
    pub fn add_acl(
        &mut self,
        base: &str,
        scope: Scope,
        priority: i32,
        members: Vec<String>,
        grant: Grant,
    ) -> Result<u64, AclError> {
        check_priority(priority)?;
        if members.is_empty() {
            return Err(AclError::Invalid("an ACL needs at least one member".into()));
        }
        for member in &members {
            check_member(member)?;
        }
        self.check_grant(&grant, None)?;
        let id = self.take_id();
        let set = self.sets.entry(dn_key(base)).or_insert_with(|| (base.to_owned(), Vec::new()));
        set.1.push(Acl { id, scope, priority, members, grant });
        // Stable: equal priorities keep the order they were added in.
        set.1.sort_by_key(|acl| acl.priority);
        Ok(id)
    }

    fn acl_mut(&mut self, id: u64) -> Result<&mut Acl, AclError> {
        self.sets.values_mut().flat_map(|(_, acls)| acls.iter_mut()).find(|a| a.id == id).ok_or(AclError::UnknownId(id))
    }

    /// Changes what is given of an ACL.
    pub fn update_acl(
        &mut self,
        id: u64,
        scope: Option<Scope>,
        priority: Option<i32>,
        members: Option<Vec<String>>,
        grant: Option<Grant>,
    ) -> Result<(), AclError> {
        if let Some(p) = priority {
            check_priority(p)?;
        }
        for member in members.iter().flatten() {
            check_member(member)?;
        }
        if let Some(g) = &grant {
            self.check_grant(g, None)?;
        }
        let acl = self.acl_mut(id)?;
        if let Some(s) = scope {
            acl.scope = s;
        }
        if let Some(p) = priority {
            acl.priority = p;
        }
        if let Some(m) = members {
            acl.members = m;
        }
        if let Some(g) = grant {
            acl.grant = g;
        }
        for (_, acls) in self.sets.values_mut() {
            acls.sort_by_key(|acl| acl.priority);
        }
        Ok(())
    }

    pub fn remove_acl(&mut self, id: u64) -> Result<(), AclError> {
        let before: usize = self.sets.values().map(|(_, a)| a.len()).sum();
        for (_, acls) in self.sets.values_mut() {
            acls.retain(|a| a.id != id);
        }
        self.sets.retain(|_, (_, acls)| !acls.is_empty());
        let after: usize = self.sets.values().map(|(_, a)| a.len()).sum();
        if before == after { Err(AclError::UnknownId(id)) } else { Ok(()) }
    }

    /// Removes the whole set of `base`; returns how many ACLs it held.
    pub fn remove_set(&mut self, base: &str) -> usize {
        self.sets.remove(&dn_key(base)).map(|(_, acls)| acls.len()).unwrap_or(0)
    }

    /// Takes `user` out of every ACL (under `base`, when given) that names it literally;
    /// an ACL left without members goes. Returns how many ACLs changed.
    pub fn remove_acls_for_user(&mut self, user: &str, base: Option<&str>) -> usize {
        let only = base.map(dn_key);
        let mut changed = 0;
        for (key, (_, acls)) in self.sets.iter_mut() {
            if only.as_ref().is_some_and(|b| b != key) {
                continue;
            }
            for acl in acls.iter_mut() {
                let before = acl.members.len();
                acl.members.retain(|m| m != user);
                changed += usize::from(acl.members.len() != before);
            }
            acls.retain(|a| !a.members.is_empty());
        }
        self.sets.retain(|_, (_, acls)| !acls.is_empty());
        changed
    }

    pub fn add_role(&mut self, name: &str) -> Result<(), AclError> {
        if name.trim().is_empty() {
            return Err(AclError::Invalid("a role needs a name".into()));
        }
        if self.roles.contains_key(name) {
            return Err(AclError::Invalid(format!("role '{name}' exists already")));
        }
        self.roles.insert(name.to_owned(), Vec::new());
        Ok(())
    }

    /// Adds an entry to a role; returns its id.
    pub fn add_role_entry(&mut self, role: &str, scope: Scope, priority: i32, grant: Grant) -> Result<u64, AclError> {
        check_priority(priority)?;
        if !self.roles.contains_key(role) {
            return Err(AclError::UnknownRole(role.to_owned()));
        }
        self.check_grant(&grant, Some(role))?;
        let id = self.take_id();
        let entries = self.roles.entry(role.to_owned()).or_default();
        entries.push(RoleEntry { id, scope, priority, grant });
        entries.sort_by_key(|e| e.priority);
        Ok(id)
    }

    /// Changes what is given of a role entry.
    pub fn update_role_entry(
        &mut self,
        id: u64,
        scope: Option<Scope>,
        priority: Option<i32>,
        grant: Option<Grant>,
    ) -> Result<(), AclError> {
        if let Some(p) = priority {
            check_priority(p)?;
        }
        let role = self
            .roles
            .iter()
            .find(|(_, entries)| entries.iter().any(|e| e.id == id))
            .map(|(name, _)| name.clone())
            .ok_or(AclError::UnknownId(id))?;
        if let Some(g) = &grant {
            self.check_grant(g, Some(&role))?;
        }
        let entries = self.roles.entry(role).or_default();
        if let Some(entry) = entries.iter_mut().find(|e| e.id == id) {
            if let Some(s) = scope {
                entry.scope = s;
            }
            if let Some(p) = priority {
                entry.priority = p;
            }
            if let Some(g) = grant {
                entry.grant = g;
            }
        }
        entries.sort_by_key(|e| e.priority);
        Ok(())
    }

    pub fn remove_role_entry(&mut self, id: u64) -> Result<(), AclError> {
        for entries in self.roles.values_mut() {
            if let Some(at) = entries.iter().position(|e| e.id == id) {
                entries.remove(at);
                return Ok(());
            }
        }
        Err(AclError::UnknownId(id))
    }

    /// Removes a role nobody uses.
    pub fn remove_role(&mut self, name: &str) -> Result<(), AclError> {
        if !self.roles.contains_key(name) {
            return Err(AclError::UnknownRole(name.to_owned()));
        }
        let uses = |grant: &Grant| matches!(grant, Grant::Role(r) if r == name);
        if let Some(acl) = self.sets.values().flat_map(|(_, a)| a).find(|a| uses(&a.grant)) {
            return Err(AclError::RoleInUse(name.to_owned(), format!("ACL {}", acl.id)));
        }
        if let Some((role, _)) = self.roles.iter().find(|(_, entries)| entries.iter().any(|e| uses(&e.grant))) {
            return Err(AclError::RoleInUse(name.to_owned(), format!("role '{role}'")));
        }
        self.roles.remove(name);
        Ok(())
    }

    /// Rebuilds an engine from stored sets and roles. Stored data may have been edited
    /// by hand, so every entry is checked as if it were added now; an entry that fails
    /// (bad regex, unknown role, a role circle, a repeated id) is left out or renumbered
    /// and described in the returned problems — one bad entry never locks out the rest.
    pub fn restore(
        base: &str,
        admins: impl IntoIterator<Item = String>,
        sets: Vec<(String, Vec<Acl>)>,
        roles: Vec<(String, Vec<RoleEntry>)>,
    ) -> (AclEngine, Vec<String>) {
        let mut engine = AclEngine::new(base, admins);
        let mut problems = Vec::new();
        let all_ids = sets.iter().flat_map(|(_, a)| a.iter().map(|a| a.id));
        let all_ids = all_ids.chain(roles.iter().flat_map(|(_, e)| e.iter().map(|e| e.id)));
        engine.next_id = all_ids.max().unwrap_or(0) + 1;
        let mut seen = BTreeSet::new();
        let mut fresh_id = |engine: &mut AclEngine, id: u64, what: &str, problems: &mut Vec<String>| {
            if id != 0 && seen.insert(id) {
                return id;
            }
            let new = engine.take_id();
            problems.push(format!("{what}: id {id} is used twice; it is {new} now"));
            new
        };
        for (name, _) in &roles {
            if let Err(e) = engine.add_role(name) {
                problems.push(format!("role '{name}': {e}"));
            }
        }
        for (name, entries) in roles {
            for mut entry in entries {
                let checked =
                    check_priority(entry.priority).and_then(|()| engine.check_grant(&entry.grant, Some(&name)));
                if let Err(e) = checked {
                    problems.push(format!("role '{name}', entry {}: {e}; left out", entry.id));
                    continue;
                }
                entry.id = fresh_id(&mut engine, entry.id, &format!("role '{name}'"), &mut problems);
                let list = engine.roles.entry(name.clone()).or_default();
                list.push(entry);
                list.sort_by_key(|e| e.priority);
            }
        }
        for (dn, acls) in sets {
            for mut acl in acls {
                let checked = check_priority(acl.priority)
                    .and_then(|()| match acl.members.is_empty() {
                        true => Err(AclError::Invalid("an ACL needs at least one member".into())),
                        false => acl.members.iter().try_for_each(|m| check_member(m)),
                    })
                    .and_then(|()| engine.check_grant(&acl.grant, None));
                if let Err(e) = checked {
                    problems.push(format!("ACL {} at {dn}: {e}; left out", acl.id));
                    continue;
                }
                acl.id = fresh_id(&mut engine, acl.id, &format!("ACL at {dn}"), &mut problems);
                let set = engine.sets.entry(dn_key(&dn)).or_insert_with(|| (dn.clone(), Vec::new()));
                set.1.push(acl);
                set.1.sort_by_key(|a| a.priority);
            }
        }
        (engine, problems)
    }

    /// The ACLs of the set at `base` (empty when it has none).
    pub fn set_at(&self, base: &str) -> &[Acl] {
        self.sets.get(&dn_key(base)).map(|(_, acls)| acls.as_slice()).unwrap_or_default()
    }

    /// The sets, for listing: `(base, ACLs)`.
    pub fn sets(&self) -> impl Iterator<Item = (&str, &[Acl])> {
        self.sets.values().map(|(base, acls)| (base.as_str(), acls.as_slice()))
    }

    /// The roles, for listing.
    pub fn roles(&self) -> &BTreeMap<String, Vec<RoleEntry>> {
        &self.roles
    }

    /// Whether `request` is allowed.
    pub fn check(&self, request: &Request<'_>, relatives: &dyn RelativeLookup) -> Result<bool, AclError> {
        let Some(user) = request.user else { return Ok(true) };
        if self.admins.contains(user) {
            return Ok(true);
        }
        let target = request.target.unwrap_or(&self.base);
        let target_key = dn_key(target);
        let base_key = dn_key(&self.base);
        let mut level = target.to_owned();
        let mut reset = false;
        loop {
            let key = dn_key(&level);
            if key != base_key && !key.ends_with(&format!(",{base_key}")) {
                return Ok(false);
            }
            if let Some((_, acls)) = self.sets.get(&key) {
                for acl in acls {
                    let Some(scope) = self.matching_scope(acl, user, request, target, relatives)? else { continue };
                    match scope {
                        Scope::Reset => reset = true,
                        Scope::Psub => return Ok(true),
                        Scope::Sub if !reset => return Ok(true),
                        Scope::One if !reset && key == target_key => return Ok(true),
                        _ => {}
                    }
                }
            }
            if key == base_key {
                return Ok(false);
            }
            level = clacks_core::dn::parent_dn(&level).to_owned();
        }
    }

    /// Every option must be among the call's arguments and match it.
    fn options_hold(&self, required: &Map<String, Value>, given: Option<&Map<String, Value>>) -> bool {
        required.iter().all(|(name, wanted)| {
            let Some(value) = given.and_then(|g| g.get(name)) else { return false };
            match (wanted, value) {
                (Value::String(pattern), Value::String(actual)) => self.patterns.matches(pattern, true, actual),
                (Value::String(pattern), other) => self.patterns.matches(pattern, true, &other.to_string()),
                (wanted, actual) => wanted == actual,
            }
        })
    }

    /// The scope under which `acl` grants `request` to `user`, if it does.
    fn matching_scope(
        &self,
        acl: &Acl,
        user: &str,
        request: &Request<'_>,
        target: &str,
        relatives: &dyn RelativeLookup,
    ) -> Result<Option<Scope>, AclError> {
        let is_member = self.is_member(acl, user);
        match &acl.grant {
            Grant::Actions(actions) => {
                Ok(self.actions_grant(actions, is_member, user, request, target, relatives).then_some(acl.scope))
            }
            Grant::Role(role) if is_member => self.role_scope(role, user, request, target, relatives, &mut Vec::new()),
            Grant::Role(_) => Ok(None),
        }
    }

    fn role_scope(
        &self,
        role: &str,
        user: &str,
        request: &Request<'_>,
        target: &str,
        relatives: &dyn RelativeLookup,
        path: &mut Vec<String>,
    ) -> Result<Option<Scope>, AclError> {
        if path.iter().any(|r| r == role) {
            path.push(role.to_owned());
            return Err(AclError::Loop(path.join(" → ")));
        }
        path.push(role.to_owned());
        let entries = self.roles.get(role).ok_or_else(|| AclError::UnknownRole(role.to_owned()))?;
        for entry in entries {
            let scope = match &entry.grant {
                Grant::Actions(actions) => {
                    self.actions_grant(actions, true, user, request, target, relatives).then_some(entry.scope)
                }
                // A nested role decides with the scope of the entry that points at it.
                Grant::Role(inner) => {
                    self.role_scope(inner, user, request, target, relatives, path)?.map(|_| entry.scope)
                }
            };
            if scope.is_some() {
                path.pop();
                return Ok(scope);
            }
        }
        path.pop();
        Ok(None)
    }

    fn actions_grant(
        &self,
        actions: &[Action],
        is_member: bool,
        user: &str,
        request: &Request<'_>,
        target: &str,
        relatives: &dyn RelativeLookup,
    ) -> bool {
        actions.iter().any(|action| {
            // `o` and `m` replace the member list by the target's owner and managers.
            let (owner_only, manager_only) = (action.acls.contains('o'), action.acls.contains('m'));
            let allowed_user = match (owner_only, manager_only) {
                (false, false) => is_member,
                (o, m) => {
                    (o && relatives.owner(target).as_deref() == Some(user))
                        || (m && relatives.managers(target).iter().any(|u| u == user))
                }
            };
            allowed_user
                && self.patterns.matches(&action.topic, false, request.topic)
                && request.letters.chars().filter(|c| *c != 'o' && *c != 'm').all(|c| action.acls.contains(c))
                && self.options_hold(&action.options, request.options)
        })
    }
}

/// The engine as every agent shares it: read on every call, rebuilt when ACL data changes.
pub type SharedAcl = std::sync::Arc<std::sync::RwLock<AclEngine>>;

/// The engine as the dispatcher, the HTTP endpoint and the plugins that check plain
/// topics (no target, no relatives) see it.
#[derive(Clone, Debug)]
pub struct AclAuthorizer(pub SharedAcl);

impl Authorizer for AclAuthorizer {
    fn authorize(
        &self,
        user: Option<&str>,
        topic: &str,
        letters: &str,
        options: Option<&Map<String, Value>>,
        refusal: &dyn Fn() -> String,
    ) -> Result<(), clacks_core::rpc::RpcError> {
        let request = Request { user, topic, letters, target: None, options };
        require(&self.0, &request, &NoRelatives, refusal)
    }
}

/// Allows `request`, or refuses it as a caller sees it: `PERMISSION_EXEC` with
/// `refusal` as the message and the topic (and target) in the details. An engine that
/// cannot decide (a role cycle) refuses too.
pub fn require(
    acl: &std::sync::RwLock<AclEngine>,
    request: &Request<'_>,
    relatives: &dyn RelativeLookup,
    refusal: impl FnOnce() -> String,
) -> Result<(), clacks_core::rpc::RpcError> {
    use clacks_core::rpc::{ErrorCode, RpcError};
    let verdict = acl.read().map(|engine| engine.check(request, relatives)).unwrap_or(Ok(false));
    match verdict {
        Ok(true) => Ok(()),
        Ok(false) => {
            let mut details = serde_json::json!({"topic": request.topic, "needs": request.letters});
            if let Some(target) = request.target {
                details["target"] = serde_json::json!(target);
            }
            Err(RpcError::new(ErrorCode::PERMISSION_EXEC, refusal()).with_details(details))
        }
        Err(e) => Err(RpcError::new(ErrorCode::PERMISSION_EXEC, format!("the ACLs cannot decide: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BASE: &str = "dc=example,dc=net";

    fn actions(topic: &str, acls: &str) -> Grant {
        Grant::Actions(vec![Action { topic: topic.into(), acls: acls.into(), options: Map::new() }])
    }

    fn allowed(engine: &AclEngine, user: &str, topic: &str, letters: &str, target: &str) -> bool {
        let request = Request { user: Some(user), topic, letters, target: Some(target), options: None };
        engine.check(&request, &NoRelatives).expect("check")
    }

    /// Original acceptance case 1: ACLs and roles changed step by step.
    #[test]
    fn roles_and_acls_change_access_step_by_step() {
        let mut e = AclEngine::new(BASE, []);
        let target = format!("dc=1,{BASE}");
        e.add_role("rolle1").expect("role");
        let entry = e.add_role_entry("rolle1", Scope::Sub, 0, actions("com.wurstpelle.de", "rwcds")).expect("entry");
        e.add_role("rolle2").expect("role");
        let pointer = e.add_role_entry("rolle2", Scope::Sub, 0, Grant::Role("rolle1".into())).expect("entry");
        let acl = e.add_acl(BASE, Scope::Sub, 0, vec!["peter".into()], Grant::Role("rolle2".into())).expect("acl");
        assert!(allowed(&e, "peter", "com.wurstpelle.de", "r", &target));
        e.update_acl(acl, None, None, None, Some(actions("com.*", "rwcds"))).expect("update");
        assert!(allowed(&e, "peter", "com.wurstpelle.de", "r", &target));
        e.update_acl(acl, None, None, None, Some(actions("com.nope", "rwcds"))).expect("update");
        assert!(!allowed(&e, "peter", "com.wurstpelle.de", "r", &target));
        e.update_acl(acl, None, None, None, Some(Grant::Role("rolle2".into()))).expect("update");
        assert!(allowed(&e, "peter", "com.wurstpelle.de", "r", &target));
        e.add_role("empty").expect("role");
        e.update_role_entry(pointer, None, None, Some(Grant::Role("empty".into()))).expect("repoint");
        assert!(!allowed(&e, "peter", "com.wurstpelle.de", "r", &target));
        e.update_role_entry(pointer, None, None, Some(actions("com.wurstpelle.de", "rwcds"))).expect("actions");
        assert!(allowed(&e, "peter", "com.wurstpelle.de", "r", &target));
        e.remove_role_entry(pointer).expect("remove entry");
        assert!(!allowed(&e, "peter", "com.wurstpelle.de", "r", &target));
        assert!(matches!(e.remove_role("rolle2"), Err(AclError::RoleInUse(..))));
        let _ = entry;
    }

    /// Case 2: a role in use stays until its ACL set goes.
    #[test]
    fn a_role_in_use_cannot_be_removed() {
        let mut e = AclEngine::new(BASE, []);
        e.add_role("r").expect("role");
        e.add_role_entry("r", Scope::Sub, 0, actions("com.x", "r")).expect("entry");
        e.add_acl(BASE, Scope::Sub, 0, vec!["peter".into()], Grant::Role("r".into())).expect("acl");
        assert!(matches!(e.remove_role("r"), Err(AclError::RoleInUse(..))));
        assert_eq!(e.remove_set(BASE), 1);
        assert!(!allowed(&e, "peter", "com.x", "r", BASE));
        e.remove_role("r").expect("now unused");
        assert!(e.roles().is_empty());
    }

    /// Case 3: removing one member keeps the other.
    #[test]
    fn removing_a_member_keeps_the_others() {
        let mut e = AclEngine::new(BASE, []);
        e.add_acl(BASE, Scope::Sub, 0, vec!["peter".into(), "paul".into()], actions("com.x", "r")).expect("acl");
        assert_eq!(e.remove_acls_for_user("peter", None), 1);
        assert!(!allowed(&e, "peter", "com.x", "r", BASE));
        assert!(allowed(&e, "paul", "com.x", "r", BASE));
    }

    /// Case 4: circular roles are refused when made, and caught when checked.
    #[test]
    fn role_cycles_are_refused() {
        let mut e = AclEngine::new(BASE, []);
        for r in ["r1", "r2", "r3"] {
            e.add_role(r).expect("role");
        }
        e.add_role_entry("r1", Scope::Sub, 0, Grant::Role("r2".into())).expect("1→2");
        e.add_role_entry("r2", Scope::Sub, 0, Grant::Role("r3".into())).expect("2→3");
        assert_eq!(
            e.add_role_entry("r3", Scope::Sub, 0, Grant::Role("r1".into())),
            Err(AclError::Loop("r3 → r1 → r2 → r3".into()))
        );
        // A cycle smuggled in (an engine read from storage) is still caught when checked.
        e.roles.get_mut("r3").expect("r3").push(RoleEntry {
            id: 99,
            scope: Scope::Sub,
            priority: 0,
            grant: Grant::Role("r1".into()),
        });
        e.add_acl(BASE, Scope::Sub, 0, vec!["peter".into()], Grant::Role("r1".into())).expect("acl");
        let request = Request { user: Some("peter"), topic: "com.x", letters: "r", target: None, options: None };
        assert!(matches!(e.check(&request, &NoRelatives), Err(AclError::Loop(_))));
    }

    /// Case 5: member regexes match from the start.
    #[test]
    fn member_patterns() {
        let mut e = AclEngine::new(BASE, []);
        e.add_acl(BASE, Scope::Sub, 0, vec!["^clacks_.*_test$".into()], actions("com.x", "r")).expect("acl");
        assert!(allowed(&e, "clacks_user_test", "com.x", "r", BASE));
        assert!(allowed(&e, "clacks__test", "com.x", "r", BASE));
        assert!(!allowed(&e, "clacks_test_testWrong", "com.x", "r", BASE));
    }

    /// `N@<group>` names the machines the clients plugin put in that group, whatever
    /// their ids look like, and follows the group as it changes.
    #[test]
    fn group_members_name_the_machines_of_a_group() {
        let mut e = AclEngine::new(BASE, []);
        e.add_acl(BASE, Scope::Sub, 0, vec!["N@kiosks".into()], actions("com.x", "x")).expect("acl");
        assert!(!allowed(&e, "c-1", "com.x", "x", BASE), "no group known yet");
        e.node_groups().replace(BTreeMap::from([("kiosks".into(), BTreeSet::from(["c-1".into()]))]));
        assert!(allowed(&e, "c-1", "com.x", "x", BASE));
        assert!(!allowed(&e, "c-2", "com.x", "x", BASE));
        assert!(!allowed(&e, "N@kiosks", "com.x", "x", BASE), "not a pattern");
        // An engine rebuilt from storage keeps reading the same groups.
        let (rebuilt, problems) = AclEngine::restore(BASE, [], vec![(BASE.into(), e.set_at(BASE).to_vec())], vec![]);
        assert!(problems.is_empty(), "{problems:?}");
        let rebuilt = rebuilt.with_node_groups(e.node_groups().clone());
        assert!(allowed(&rebuilt, "c-1", "com.x", "x", BASE));
        assert!(rebuilt.is_member(&rebuilt.set_at(BASE)[0], "c-1"));
        e.node_groups().replace(BTreeMap::new());
        assert!(!allowed(&rebuilt, "c-1", "com.x", "x", BASE));
        let bad = e.add_acl(BASE, Scope::Sub, 0, vec!["N@1st group".into()], actions("com.x", "x"));
        assert!(matches!(bad, Err(AclError::Invalid(m)) if m.contains("group of clients")));
    }

    /// Case 6: nested roles grant.
    #[test]
    fn nested_roles_grant() {
        let mut e = AclEngine::new(BASE, []);
        e.add_role("role1").expect("role");
        e.add_role_entry("role1", Scope::Sub, 0, actions("com.x", "rw")).expect("entry");
        e.add_role("role2").expect("role");
        e.add_role_entry("role2", Scope::Sub, 0, Grant::Role("role1".into())).expect("entry");
        e.add_acl(BASE, Scope::Sub, 0, vec!["peter".into()], Grant::Role("role2".into())).expect("acl");
        assert!(allowed(&e, "peter", "com.x", "w", &format!("dc=a,{BASE}")));
        assert!(!allowed(&e, "peter", "com.x", "d", BASE));
    }

    /// Case 7: a RESET of higher precedence (lower number) beats a ONE in the same set.
    #[test]
    fn priority_orders_a_set() {
        let mut e = AclEngine::new(BASE, []);
        e.add_acl(BASE, Scope::One, 100, vec!["peter".into()], actions("com.x", "r")).expect("one");
        assert!(allowed(&e, "peter", "com.x", "r", BASE));
        e.add_acl(BASE, Scope::Reset, 99, vec!["peter".into()], actions("com.x", "r")).expect("reset");
        assert!(!allowed(&e, "peter", "com.x", "r", BASE));
    }

    /// Case 8: RESET revokes below, not above.
    #[test]
    fn reset_revokes_below() {
        let mut e = AclEngine::new(BASE, []);
        let (a, b, c) = (format!("dc=a,{BASE}"), format!("dc=b,dc=a,{BASE}"), format!("dc=c,dc=b,dc=a,{BASE}"));
        e.add_acl(&a, Scope::Sub, 0, vec!["peter".into()], actions("com.x", "r")).expect("sub");
        assert!(allowed(&e, "peter", "com.x", "r", &a) && allowed(&e, "peter", "com.x", "r", &c));
        assert!(!allowed(&e, "peter", "com.x", "r", BASE));
        e.add_acl(&b, Scope::Reset, 0, vec!["peter".into()], actions("com.x", "r")).expect("reset");
        assert!(allowed(&e, "peter", "com.x", "r", &a));
        assert!(!allowed(&e, "peter", "com.x", "r", &b) && !allowed(&e, "peter", "com.x", "r", &c));
        // PSUB cannot be revoked.
        e.add_acl(&a, Scope::Psub, 0, vec!["paul".into()], actions("com.x", "r")).expect("psub");
        e.add_acl(&b, Scope::Reset, 0, vec!["paul".into()], actions("com.x", "r")).expect("reset");
        assert!(allowed(&e, "paul", "com.x", "r", &c));
    }

    /// Case 9: SUB grants the letters given, here and below, not above.
    #[test]
    fn sub_scope_and_letters() {
        let mut e = AclEngine::new(BASE, []);
        let a = format!("dc=a,{BASE}");
        e.add_acl(&a, Scope::Sub, 0, vec!["peter".into()], actions("com.x", "rwx")).expect("sub");
        assert!(allowed(&e, "peter", "com.x", "rw", &a) && allowed(&e, "peter", "com.x", "x", &format!("dc=b,{a}")));
        assert!(!allowed(&e, "peter", "com.x", "d", &a));
        assert!(!allowed(&e, "peter", "com.x", "r", BASE));
    }

    /// Case 10: ONE is the set's own DN only.
    #[test]
    fn one_scope_is_the_dn_only() {
        let mut e = AclEngine::new(BASE, []);
        let a = format!("dc=a,{BASE}");
        e.add_acl(&a, Scope::One, 0, vec!["peter".into()], actions("com.x", "r")).expect("one");
        assert!(allowed(&e, "peter", "com.x", "r", &a));
        assert!(!allowed(&e, "peter", "com.x", "r", &format!("dc=b,{a}")));
        assert!(!allowed(&e, "peter", "com.x", "r", BASE));
    }

    #[test]
    fn admins_internal_calls_options_and_relatives() {
        struct Relatives;
        impl RelativeLookup for Relatives {
            fn owner(&self, dn: &str) -> Option<String> {
                dn.strip_prefix("uid=").and_then(|r| r.split(',').next()).map(str::to_owned)
            }
            fn managers(&self, _: &str) -> Vec<String> {
                vec!["boss".into()]
            }
        }
        let mut e = AclEngine::new(BASE, ["admin".to_owned()]);
        assert!(allowed(&e, "admin", "anything", "rwcdsxe", BASE));
        assert!(
            e.check(&Request { user: None, topic: "x", letters: "d", target: None, options: None }, &NoRelatives)
                .expect("check")
        );
        assert!(!allowed(&e, "peter", "net.example.command.core.ping", "x", BASE));

        // Options are enforced: shutdown only with force = false.
        let mut options = Map::new();
        options.insert("force".into(), json!(false));
        let grant = Grant::Actions(vec![Action {
            topic: r"net\.example\.command\.core\.shutdown".into(),
            acls: "x".into(),
            options,
        }]);
        e.add_acl(BASE, Scope::Sub, 0, vec!["ops".into()], grant).expect("acl");
        let check = |force: Option<Value>| {
            let args: Map<String, Value> =
                force.map(|f| [("force".to_owned(), f)].into_iter().collect()).unwrap_or_default();
            let request = Request {
                user: Some("ops"),
                topic: "net.example.command.core.shutdown",
                letters: "x",
                target: None,
                options: Some(&args),
            };
            e.check(&request, &NoRelatives).expect("check")
        };
        assert!(check(Some(json!(false))) && !check(Some(json!(true))) && !check(None));

        // Owner and manager relative permissions.
        e.add_acl(
            BASE,
            Scope::Sub,
            0,
            vec![".*".into()],
            actions(r"net\.example\.objects\.User\.attributes\.mail", "rwo"),
        )
        .expect("self");
        e.add_acl(
            BASE,
            Scope::Sub,
            0,
            vec![".*".into()],
            actions(r"net\.example\.objects\.User\.attributes\.title", "wm"),
        )
        .expect("manager");
        let ada = format!("uid=ada,ou=people,{BASE}");
        let ask = |user: &str, attr: &str| {
            let topic = format!("net.example.objects.User.attributes.{attr}");
            e.check(
                &Request { user: Some(user), topic: &topic, letters: "w", target: Some(&ada), options: None },
                &Relatives,
            )
            .expect("check")
        };
        assert!(ask("ada", "mail") && !ask("bob", "mail"));
        assert!(ask("boss", "title") && !ask("ada", "title"));
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let mut e = AclEngine::new(BASE, []);
        let bad = |r: Result<u64, AclError>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            bad(e.add_acl(BASE, Scope::Sub, 101, vec!["p".into()], actions("x", "r"))).contains("outside -100…100")
        );
        assert!(
            bad(e.add_acl(BASE, Scope::Sub, 0, vec!["p".into()], actions("x", "rq")))
                .contains("'q' is not a permission")
        );
        assert!(
            bad(e.add_acl(BASE, Scope::Sub, 0, vec!["(".into()], actions("x", "r"))).contains("bad regular expression")
        );
        assert!(bad(e.add_acl(BASE, Scope::Sub, 0, vec![], actions("x", "r"))).contains("at least one member"));
        assert!(
            bad(e.add_acl(BASE, Scope::Sub, 0, vec!["p".into()], Grant::Role("ghost".into())))
                .contains("no role named 'ghost'")
        );
        assert_eq!("psub".parse::<Scope>(), Ok(Scope::Psub));
        assert!("wide".parse::<Scope>().is_err());
        assert_eq!(e.remove_acl(42), Err(AclError::UnknownId(42)));
    }

    /// Stored data edited by hand: bad entries are left out, repeated ids renumbered,
    /// a circle between roles broken — and each is reported.
    #[test]
    fn restoring_stored_data_keeps_what_is_valid() {
        let acl = |id, members: &[&str], grant| Acl {
            id,
            scope: Scope::Sub,
            priority: 0,
            members: members.iter().map(|m| m.to_string()).collect(),
            grant,
        };
        let entry = |id, grant| RoleEntry { id, scope: Scope::Sub, priority: 0, grant };
        let sets = vec![
            (
                "ou=a,dc=example,dc=net".to_owned(),
                vec![acl(3, &["ada"], actions("net.*", "r")), acl(4, &["("], actions("x", "r"))],
            ),
            ("ou=b,dc=example,dc=net".to_owned(), vec![acl(3, &["bob"], Grant::Role("editor".into()))]),
        ];
        let roles = vec![
            (
                "editor".to_owned(),
                vec![entry(7, actions("net.objects.*", "rw")), entry(8, Grant::Role("viewer".into()))],
            ),
            ("viewer".to_owned(), vec![entry(9, Grant::Role("editor".into())), entry(10, actions("net.*", "r"))]),
        ];
        let (engine, problems) = AclEngine::restore(BASE, ["root".to_owned()], sets, roles);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("ACL 4") && p.contains("bad regular expression")));
        assert!(problems.iter().any(|p| p.contains("id 3 is used twice")));
        assert!(problems.iter().any(|p| p.contains("circle")));
        assert!(allowed(&engine, "ada", "net.x", "r", "uid=x,ou=a,dc=example,dc=net"));
        assert!(allowed(&engine, "bob", "net.objects.User", "w", "uid=x,ou=b,dc=example,dc=net"));
        assert!(allowed(&engine, "root", "anything", "d", BASE));
        let bob = engine.set_at("ou=b,dc=example,dc=net");
        assert_eq!(bob.len(), 1);
        assert!(bob[0].id > 10, "renumbered past every stored id");
    }
}
