//! The object store: descriptions, backends and index working together.
//!
//! An object is a base type plus the extensions active on it; its attributes are spread
//! over backends as the descriptions wire them (most in the primary backend, some in
//! SQL, computed ones nowhere, relations in other objects). [`ObjectState`] is an open
//! object: its values as loaded, the changes made since, and pending extensions. It is
//! plain data, so open references can live in the shared index database and any agent
//! can continue them.
//!
//! Invariants:
//! - a value reaches a backend only after its type, allowed values, validators,
//!   read-only and blocked-by rules, out filters and the mandatory check have passed;
//! - the primary backend is written first; if a later backend fails, the primary is put
//!   back (a new entry removed, changed values restored) before the error is returned;
//! - a commit compares the object's version with the one it was opened at and refuses
//!   with `OBJECT_CONFLICT`, naming the attributes someone else changed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::backend::ldap::{LdapBackend, LdapSettings};
use super::backend::sql::{Db, SqlBackend};
use super::backend::{BackendError, Entry};
use super::description::{AttributeDef, Catalogue, Diagnostic, HookType, ObjectType};
use super::filters::{self, BoxFuture, FilterEnv, Props, Scope};
use super::index::{Index, IndexDoc, SearchScope};
use super::relation::RelationSpec;
use clacks_core::dn::{escape_rdn_value, parent_dn, split_rdn};
use clacks_core::events::{EventPublisher, EventValidator};
use clacks_core::rpc::ErrorCode;

/// An object-layer failure, with the symbolic code callers see.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ObjectError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<Value>,
}

impl ObjectError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ObjectError {
        ObjectError { code, message: message.into(), details: None }
    }

    pub fn with_details(mut self, details: Value) -> ObjectError {
        self.details = Some(details);
        self
    }
}

impl From<BackendError> for ObjectError {
    fn from(e: BackendError) -> ObjectError {
        match e {
            BackendError::Unavailable(m) => ObjectError::new(ErrorCode::BACKEND_UNAVAILABLE, m),
            BackendError::NotFound(dn) => ObjectError::new(ErrorCode::OBJECT_NOT_FOUND, format!("no object {dn}")),
            BackendError::Refused { code: 68, message } => ObjectError::new(ErrorCode::OBJECT_EXISTS, message),
            other => ObjectError::new(ErrorCode::BACKEND_FAILED, other.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, ObjectError>;

fn not_found(what: &str) -> ObjectError {
    ObjectError::new(ErrorCode::OBJECT_NOT_FOUND, format!("no object {what}"))
}

/// Runs commands for object methods and hooks (the agent dispatches them).
pub trait CommandRunner: Send + Sync {
    fn run<'a>(&'a self, user: Option<&'a str>, command: &'a str, args: Vec<Value>) -> BoxFuture<'a, Result<Value>>;
}

/// Where the store keeps things.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The directory; without it, objects live in the SQL database.
    #[serde(default)]
    pub ldap: Option<LdapSettings>,
    /// The SQL database for SQL-wired attributes (and all objects without a directory).
    /// Default: SQLite `objects.db` in the agent's data folder.
    #[serde(default)]
    pub sql_url: Option<String>,
    /// The index database; default: the SQL database.
    #[serde(default)]
    pub index_url: Option<String>,
    /// The tree's root without a directory (default `dc=clacks,dc=local`).
    #[serde(default)]
    pub base: Option<String>,
    /// Extra description folders, read after the shipped ones.
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    /// Seconds an open reference may stay idle (default 3600).
    #[serde(default)]
    pub reference_idle_secs: Option<i64>,
}

/// An open object: what was loaded and what changed since.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ObjectState {
    pub uuid: Option<String>,
    pub dn: Option<String>,
    /// The parent DN (for a new object: where it will be created).
    pub parent: String,
    pub base_type: String,
    /// Extensions active in the backends.
    pub active: BTreeSet<String>,
    /// Pending until commit.
    pub extend: BTreeSet<String>,
    pub retract: BTreeSet<String>,
    /// Current values (as users see them).
    pub values: BTreeMap<String, Vec<Value>>,
    /// Values when opened, for the diff and conflict detection.
    pub loaded: BTreeMap<String, Vec<Value>>,
    pub changed: BTreeSet<String>,
    /// Backend version at open.
    pub version: Option<String>,
    /// Whether the entry lives in the directory (else in SQL).
    pub in_ldap: bool,
}

impl ObjectState {
    fn is_new(&self) -> bool {
        self.uuid.is_none()
    }

    /// Base type plus extensions after pending changes.
    pub fn effective_types(&self) -> Vec<String> {
        let mut types = vec![self.base_type.clone()];
        types.extend(self.active.iter().chain(&self.extend).filter(|e| !self.retract.contains(*e)).cloned());
        types.dedup();
        types
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Storage {
    Ldap,
    Sql,
    Null,
    Relation,
}

/// The object layer of one agent.
pub struct ObjectStore {
    catalogue: RwLock<Arc<Catalogue>>,
    validator: EventValidator,
    dirs: Vec<PathBuf>,
    ldap: Option<LdapBackend>,
    sql: SqlBackend,
    index: Index,
    base: String,
    id_start: i64,
    idle_secs: i64,
    events: RwLock<Option<EventPublisher>>,
    runner: RwLock<Option<Arc<dyn CommandRunner>>>,
}

impl std::fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStore").field("base", &self.base).field("ldap", &self.ldap).finish_non_exhaustive()
    }
}

const LOCK_TTL_SECS: i64 = 30;

/// How many of the best direct search hits have their `<Resolve>` relations followed.
const RESOLVED_HITS: usize = 20;

impl ObjectStore {
    /// Opens the backends and index and loads the descriptions. Description problems
    /// are returned as diagnostics, not errors: the store runs with what loaded.
    pub async fn open(config: &StoreConfig, default_sql: &str, validator: EventValidator) -> Result<Arc<ObjectStore>> {
        let timeout = Duration::from_secs(config.ldap.as_ref().map_or(10, |l| l.timeout_secs.max(1)));
        let sql_url = config.sql_url.clone().unwrap_or_else(|| default_sql.to_owned());
        let db = Db::connect(&sql_url, timeout).await?;
        let index_db = match &config.index_url {
            Some(url) if *url != sql_url => Db::connect(url, timeout).await?,
            _ => db.clone(),
        };
        let ldap = match &config.ldap {
            Some(settings) => Some(LdapBackend::connect(settings.clone()).await?),
            None => None,
        };
        let base = match (&ldap, &config.base) {
            (Some(l), _) => l.base().to_owned(),
            (None, Some(b)) => b.clone(),
            (None, None) => "dc=clacks,dc=local".to_owned(),
        };
        let validator_for_load = validator.clone();
        let dirs = config.dirs.clone();
        let catalogue = tokio::task::spawn_blocking(move || Catalogue::load(&validator_for_load, &dirs))
            .await
            .map_err(|e| ObjectError::new(ErrorCode::INTERNAL_ERROR, e.to_string()))?;
        for d in &catalogue.diagnostics {
            tracing::warn!("object description: {d}");
        }
        let store = ObjectStore {
            catalogue: RwLock::new(Arc::new(catalogue)),
            validator,
            dirs: config.dirs.clone(),
            id_start: config.ldap.as_ref().map_or(10000, |l| l.id_start),
            ldap,
            sql: SqlBackend::open(db).await?,
            index: Index::open(index_db).await?,
            base,
            idle_secs: config.reference_idle_secs.unwrap_or(3600),
            events: RwLock::new(None),
            runner: RwLock::new(None),
        };
        store.ensure_root().await?;
        Ok(Arc::new(store))
    }

    /// Without a directory, the root entry is created on first start so objects have a
    /// place to live.
    async fn ensure_root(&self) -> Result<()> {
        if self.ldap.is_some() || self.sql.entry_by_dn(&self.base).await?.is_some() {
            return Ok(());
        }
        let (rdn, _) = split_rdn(&self.base);
        let Some((attr, value)) = rdn.split_once('=') else {
            return Err(ObjectError::new(ErrorCode::INVALID_PARAMS, format!("'{}' is not a DN", self.base)));
        };
        let catalogue = self.catalogue();
        let root_type = catalogue
            .types()
            .find(|t| {
                t.base_object
                    && t.fixed_rdn.is_none()
                    && t.rdn_attributes().first().is_some_and(|r| r.eq_ignore_ascii_case(attr))
            })
            .map(|t| t.name.clone())
            .ok_or_else(|| {
                ObjectError::new(ErrorCode::OBJECT_TYPE_MISMATCH, format!("no object type is named by '{attr}'"))
            })?;
        let uuid = self.sql.create_entry(&self.base, std::slice::from_ref(&root_type)).await?;
        let column = catalogue.get(&root_type).and_then(|t| t.attribute(attr)).map(|a| a.backend_name.clone());
        if let Some(column) = column {
            self.sql.write(&root_type, &uuid, &[(column, Some(value.to_owned()))]).await?;
        }
        self.reindex(&uuid).await?;
        Ok(())
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Whether `password` is right for the user `uid`: with a directory, by binding as
    /// the user; without one, against the stored `userPassword` hash. A locked account
    /// never matches.
    pub async fn check_user_password(&self, uid: &str, password: &str) -> Result<bool> {
        if let Some(ldap) = &self.ldap {
            return Ok(ldap.bind_as(uid, password).await?);
        }
        if uid.is_empty() || password.is_empty() {
            return Ok(false);
        }
        let docs = self.index.with_value("User", "uid", uid).await?;
        let [doc] = docs.as_slice() else { return Ok(false) };
        let state = self.load(&doc.uuid).await?;
        let stored = state.values.get("userPassword").and_then(|v| v.first()).and_then(Value::as_str);
        Ok(stored.is_some_and(|stored| super::password::verify(stored, password)))
    }

    pub fn has_directory(&self) -> bool {
        self.ldap.is_some()
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The descriptions in force.
    pub fn catalogue(&self) -> Arc<Catalogue> {
        self.catalogue.read().map(|c| c.clone()).unwrap_or_default()
    }

    /// Reads the descriptions again. A set with problems still loads what is sound;
    /// the problems are returned.
    pub async fn reload(&self) -> Result<Vec<Diagnostic>> {
        let (validator, dirs) = (self.validator.clone(), self.dirs.clone());
        let catalogue = tokio::task::spawn_blocking(move || Catalogue::load(&validator, &dirs))
            .await
            .map_err(|e| ObjectError::new(ErrorCode::INTERNAL_ERROR, e.to_string()))?;
        let diagnostics = catalogue.diagnostics.clone();
        if let Ok(mut current) = self.catalogue.write() {
            *current = Arc::new(catalogue);
        }
        Ok(diagnostics)
    }

    pub fn set_publisher(&self, publisher: EventPublisher) {
        if let Ok(mut p) = self.events.write() {
            *p = Some(publisher);
        }
    }

    pub fn set_runner(&self, runner: Arc<dyn CommandRunner>) {
        if let Ok(mut r) = self.runner.write() {
            *r = Some(runner);
        }
    }

    fn runner(&self) -> Option<Arc<dyn CommandRunner>> {
        self.runner.read().ok().and_then(|r| r.clone())
    }

    fn storage(&self, owner: &ObjectType, attr: &AttributeDef) -> Storage {
        match attr.backend.as_deref().unwrap_or(&owner.backend) {
            "LDAP" if self.ldap.is_some() => Storage::Ldap,
            "NULL" => Storage::Null,
            "Relation" => Storage::Relation,
            _ => Storage::Sql,
        }
    }

    fn primary(&self, t: &ObjectType) -> Storage {
        if t.backend == "LDAP" && self.ldap.is_some() { Storage::Ldap } else { Storage::Sql }
    }

    fn type_of<'c>(catalogue: &'c Catalogue, name: &str) -> Result<&'c Arc<ObjectType>> {
        catalogue
            .get(name)
            .ok_or_else(|| ObjectError::new(ErrorCode::ATTRIBUTE_NOT_FOUND, format!("unknown object type '{name}'")))
    }

    // ----- identification and loading -----

    /// Which base type and extensions an LDAP entry has.
    fn identify_ldap(&self, catalogue: &Catalogue, entry: &Entry) -> Result<(String, BTreeSet<String>)> {
        let classes: HashSet<String> = entry.markers.iter().map(|c| c.to_lowercase()).collect();
        let has_all = |t: &ObjectType| {
            let wanted = t.param_list("LDAP", "objectClasses");
            !wanted.is_empty() && wanted.iter().all(|c| classes.contains(&c.to_lowercase()))
        };
        let rdn = split_rdn(&entry.dn).0.to_lowercase();
        let candidates: Vec<&Arc<ObjectType>> = catalogue
            .types()
            .filter(|t| t.base_object && self.primary(t) == Storage::Ldap && has_all(t))
            .filter(|t| t.fixed_rdn.as_ref().is_none_or(|f| f.to_lowercase() == rdn))
            .collect();
        // A fixed-RDN container wins over the general type it shares classes with; among
        // the rest, the most specific (most classes) wins, and a tie is an error.
        let chosen = candidates.iter().find(|t| t.fixed_rdn.is_some()).copied().or_else(|| {
            let best = candidates.iter().map(|t| t.param_list("LDAP", "objectClasses").len()).max()?;
            let top: Vec<_> =
                candidates.iter().filter(|t| t.param_list("LDAP", "objectClasses").len() == best).collect();
            (top.len() == 1).then(|| *top[0])
        });
        let Some(base) = chosen else {
            let names: Vec<&str> = candidates.iter().map(|t| t.name.as_str()).collect();
            return Err(ObjectError::new(
                ErrorCode::OBJECT_TYPE_MISMATCH,
                if names.is_empty() {
                    format!("{} matches no object type (object classes: {})", entry.dn, entry.markers.join(", "))
                } else {
                    format!("{} matches several object types: {}", entry.dn, names.join(", "))
                },
            ));
        };
        let active = catalogue
            .extensions_of(&base.name)
            .into_iter()
            .filter(|e| self.primary(e) == Storage::Ldap && has_all(e))
            .map(|e| e.name.clone())
            .collect();
        Ok((base.name.clone(), active))
    }

    /// Opens the object at a DN or with a UUID.
    pub async fn load(&self, target: &str) -> Result<ObjectState> {
        let catalogue = self.catalogue();
        let by_uuid = !target.contains('=');
        if let Some(ldap) = &self.ldap {
            // The type is known only after the read: any type's binary attributes count.
            if let Some(found) = ldap.read(target, by_uuid, catalogue.binary_attributes()).await? {
                let (base, active) = self.identify_ldap(&catalogue, &found.entry)?;
                return self.assemble(&catalogue, found.entry, true, base, active, Some(found.attrs)).await;
            }
        }
        let entry = if by_uuid { self.sql.entry_by_uuid(target).await? } else { self.sql.entry_by_dn(target).await? };
        let entry = entry.ok_or_else(|| not_found(target))?;
        let base = entry.markers.first().cloned().ok_or_else(|| not_found(target))?;
        ObjectStore::type_of(&catalogue, &base)?;
        let active = entry.markers.iter().skip(1).cloned().collect();
        self.assemble(&catalogue, entry, false, base, active, None).await
    }

    async fn assemble(
        &self,
        catalogue: &Catalogue,
        entry: Entry,
        in_ldap: bool,
        base: String,
        mut active: BTreeSet<String>,
        ldap_values: Option<HashMap<String, Vec<String>>>,
    ) -> Result<ObjectState> {
        // SQL-primary extensions on a directory entry are active when they have a row.
        for ext in catalogue.extensions_of(&base) {
            if in_ldap && self.primary(ext) == Storage::Sql && self.sql.has_row(&ext.name, &entry.uuid).await? {
                active.insert(ext.name.clone());
            }
        }
        let mut state = ObjectState {
            uuid: Some(entry.uuid.clone()),
            parent: parent_dn(&entry.dn).to_owned(),
            dn: Some(entry.dn),
            base_type: base,
            active,
            version: entry.version,
            in_ldap,
            ..ObjectState::default()
        };
        let mut props = self.read_values(catalogue, &state, ldap_values).await?;
        let types = state.effective_types();
        // Computed attributes start from their defaults; then in-filters shape the rest.
        for (owner, attr) in catalogue.attributes_of(&state.base_type) {
            if !types.contains(&owner.name) {
                continue;
            }
            if self.storage(owner, attr) == Storage::Null
                && let Some(default) = &attr.default
            {
                props.insert(attr.name.clone(), attr.value_type.parse_text(default).into_iter().collect());
            }
        }
        let env = StoreEnv { store: self };
        for (owner, attr) in catalogue.attributes_of(&state.base_type) {
            if types.contains(&owner.name)
                && !attr.in_filter.is_empty()
                && props.get(&attr.name).is_some_and(|v| !v.is_empty())
            {
                let scope = Scope { env: &env, owner: &owner.name, attr: &attr.name, uuid: state.uuid.as_deref() };
                filters::run_chains(&attr.in_filter, &attr.name, &mut props, &scope)
                    .await
                    .map_err(|e| ObjectError::new(ErrorCode::ATTRIBUTE_INVALID, format!("{}: {e}", attr.name)))?;
            }
        }
        state.loaded = props.clone();
        state.values = props;
        Ok(state)
    }

    /// Reads every attribute of the object's active types from where it is stored.
    async fn read_values(
        &self,
        catalogue: &Catalogue,
        state: &ObjectState,
        ldap_values: Option<HashMap<String, Vec<String>>>,
    ) -> Result<Props> {
        let uuid = state.uuid.clone().unwrap_or_default();
        let types = state.effective_types();
        let mut props = Props::new();
        let mut sql_by_owner: BTreeMap<String, Vec<&AttributeDef>> = BTreeMap::new();
        let mut relations = Vec::new();
        for (owner, attr) in catalogue.attributes_of(&state.base_type) {
            if !types.contains(&owner.name) {
                continue;
            }
            match self.storage(owner, attr) {
                Storage::Ldap => {
                    let texts = ldap_values.as_ref().and_then(|v| v.get(&attr.backend_name.to_lowercase()));
                    props.insert(attr.name.clone(), texts.map(|t| from_backend(attr, t)).unwrap_or_default());
                }
                Storage::Sql => sql_by_owner.entry(owner.name.clone()).or_default().push(attr),
                Storage::Relation => relations.push((owner.clone(), attr)),
                Storage::Null => {}
            }
        }
        for (owner, attrs) in sql_by_owner {
            let columns: Vec<String> = attrs.iter().map(|a| a.backend_name.clone()).collect();
            let row = self.sql.load(&owner, &uuid, &columns).await?.unwrap_or_default();
            for attr in attrs {
                let values = row.get(&attr.backend_name).map(|text| decode_column(attr, text)).unwrap_or_default();
                props.insert(attr.name.clone(), values.iter().map(|t| from_backend_one(attr, t)).collect());
            }
        }
        for (owner, attr) in relations {
            let values = self.relation_values(&owner, attr, &props).await?;
            props.insert(attr.name.clone(), values);
        }
        Ok(props)
    }

    async fn relation_values(&self, owner: &ObjectType, attr: &AttributeDef, props: &Props) -> Result<Vec<Value>> {
        let spec = relation_spec(owner, attr)?;
        let Some(local) = props.get(&spec.local_match).and_then(|v| v.first()).map(filters::text) else {
            return Ok(Vec::new());
        };
        let mut values: Vec<Value> = self
            .index
            .with_value(&spec.foreign_type, &spec.foreign_match, &local)
            .await?
            .into_iter()
            .flat_map(|doc| doc.values.get(&spec.foreign_value).cloned().unwrap_or_default())
            .map(Value::String)
            .collect();
        values.sort_by_key(filters::text);
        values.dedup();
        Ok(values)
    }

    /// A new, unsaved object of `type_name` below `parent`, with defaults applied.
    pub async fn new_object(&self, parent: &str, type_name: &str) -> Result<ObjectState> {
        let catalogue = self.catalogue();
        let t = ObjectStore::type_of(&catalogue, type_name)?;
        if !t.base_object {
            return Err(ObjectError::new(
                ErrorCode::EXTENSION_REFUSED,
                format!("{type_name} is an extension; open a {} and extend it", t.extends.join(" or ")),
            ));
        }
        self.check_container(&catalogue, parent, type_name).await?;
        let mut state =
            ObjectState { parent: parent.to_owned(), base_type: type_name.to_owned(), ..ObjectState::default() };
        apply_defaults(&mut state, t);
        Ok(state)
    }

    /// Refuses a parent that is missing or whose type does not allow `type_name` below it.
    async fn check_container(&self, catalogue: &Catalogue, parent: &str, type_name: &str) -> Result<()> {
        match self.load(parent).await {
            Ok(p) => {
                let parent_type = ObjectStore::type_of(catalogue, &p.base_type)?;
                if parent_type.container.iter().any(|c| c == type_name) {
                    Ok(())
                } else {
                    Err(ObjectError::new(
                        ErrorCode::OBJECT_NOT_SUB_FOR,
                        format!("a {type_name} cannot be placed below the {} {parent}", p.base_type),
                    ))
                }
            }
            // An entry of no known type (the directory's own root, say) takes anything.
            Err(e) if e.code == ErrorCode::OBJECT_TYPE_MISMATCH => Ok(()),
            Err(e) if e.code == ErrorCode::OBJECT_NOT_FOUND => {
                Err(ObjectError::new(ErrorCode::OBJECT_NOT_FOUND, format!("the parent {parent} does not exist")))
            }
            Err(e) => Err(e),
        }
    }

    // ----- changing -----

    /// Sets an attribute after every check that can be made on its own.
    pub async fn set(&self, state: &mut ObjectState, name: &str, value: &Value) -> Result<()> {
        let catalogue = self.catalogue();
        let (owner, attr) = catalogue.find_attribute(&state.base_type, name).ok_or_else(|| {
            ObjectError::new(ErrorCode::ATTRIBUTE_NOT_FOUND, format!("{} has no attribute '{name}'", state.base_type))
        })?;
        if !state.effective_types().contains(&owner.name) {
            return Err(ObjectError::new(
                ErrorCode::ATTRIBUTE_NOT_FOUND,
                format!(
                    "'{name}' belongs to the extension {}, which is not active; extend the object first",
                    owner.name
                ),
            ));
        }
        if attr.read_only {
            return Err(ObjectError::new(ErrorCode::ATTRIBUTE_READ_ONLY, format!("'{name}' is read-only")));
        }
        if let Some((other, blocking)) = blocked(attr, &state.values) {
            return Err(ObjectError::new(
                ErrorCode::ATTRIBUTE_BLOCKED,
                format!("'{name}' cannot be changed while '{other}' is {blocking}"),
            ));
        }
        let list: Vec<Value> = match value {
            Value::Null => Vec::new(),
            Value::Array(items) if attr.multi_value => items.clone(),
            Value::Array(items) if items.len() <= 1 => items.clone(),
            Value::Array(_) => {
                return Err(ObjectError::new(
                    ErrorCode::ATTRIBUTE_INVALID,
                    format!("'{name}' takes a single value, not a list"),
                ));
            }
            single => vec![single.clone()],
        };
        if list.is_empty() && attr.mandatory {
            return Err(ObjectError::new(
                ErrorCode::ATTRIBUTE_MANDATORY,
                format!("'{name}' is mandatory and cannot be emptied"),
            ));
        }
        let mut accepted = Vec::with_capacity(list.len());
        for v in &list {
            let v = attr.value_type.accept(v).map_err(|e| {
                ObjectError::new(ErrorCode::ATTRIBUTE_INVALID, format!("'{name}': {e}"))
                    .with_details(json!({"attribute": name}))
            })?;
            if !attr.values.fixed.is_empty() && !attr.values.fixed.iter().any(|(key, _)| *key == filters::text(&v)) {
                let allowed: Vec<&str> = attr.values.fixed.iter().map(|(k, _)| k.as_str()).collect();
                return Err(ObjectError::new(
                    ErrorCode::ATTRIBUTE_INVALID,
                    format!("'{name}': '{}' is not one of {}", filters::text(&v), allowed.join(", ")),
                )
                .with_details(json!({"attribute": name, "allowed": allowed})));
            }
            accepted.push(v);
        }
        if let Some(command) = &attr.values.populate {
            let allowed = self.populated_values(command).await?;
            if let Some(v) = accepted.iter().find(|v| !allowed.contains(&filters::text(v))) {
                return Err(ObjectError::new(
                    ErrorCode::ATTRIBUTE_INVALID,
                    format!("'{name}': '{}' is not one of {} (from {command})", filters::text(v), allowed.join(", ")),
                )
                .with_details(json!({"attribute": name, "allowed": allowed})));
            }
        }
        self.validate(owner, attr, &accepted, &state.values, state.uuid.as_deref()).await?;
        state.values.insert(name.to_owned(), accepted);
        state.changed.insert(name.to_owned());
        Ok(())
    }

    /// The allowed values a `<Values populate="command">` command lists: an array of
    /// values, or a map whose keys are the values.
    async fn populated_values(&self, command: &str) -> Result<Vec<String>> {
        let runner = self.runner().ok_or_else(|| {
            ObjectError::new(ErrorCode::COMMAND_NOT_DEFINED, "allowed values need an agent to list them")
        })?;
        Ok(match runner.run(None, command, Vec::new()).await? {
            Value::Array(items) => items.iter().map(filters::text).collect(),
            Value::Object(map) => map.keys().cloned().collect(),
            other => vec![filters::text(&other)],
        })
    }

    async fn validate(
        &self,
        owner: &ObjectType,
        attr: &AttributeDef,
        values: &[Value],
        props: &Props,
        uuid: Option<&str>,
    ) -> Result<()> {
        let Some(condition) = &attr.validators else { return Ok(()) };
        let env = StoreEnv { store: self };
        let scope = Scope { env: &env, owner: &owner.name, attr: &attr.name, uuid };
        filters::check(condition, values, props, &scope).await.map_err(|errors| {
            ObjectError::new(ErrorCode::ATTRIBUTE_CHECK_FAILED, format!("'{}': {}", attr.name, errors.join("; ")))
                .with_details(json!({"attribute": attr.name, "errors": errors}))
        })
    }

    /// Marks an extension to be added at commit (with its defaults).
    pub fn extend(&self, state: &mut ObjectState, ext: &str) -> Result<()> {
        let catalogue = self.catalogue();
        let t = ObjectStore::type_of(&catalogue, ext)?;
        let refuse = |m: String| Err(ObjectError::new(ErrorCode::EXTENSION_REFUSED, m));
        if t.base_object || !t.extends.contains(&state.base_type) {
            return refuse(format!("{ext} cannot extend a {}", state.base_type));
        }
        if state.retract.remove(ext) {
            return Ok(()); // undoing a pending retraction
        }
        if state.effective_types().contains(&ext.to_owned()) {
            return refuse(format!("{ext} is already active"));
        }
        let types = state.effective_types();
        let missing: Vec<&String> = t.requires.iter().filter(|r| !types.contains(r)).collect();
        if !missing.is_empty() {
            return refuse(format!(
                "{ext} needs {} first",
                missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        state.extend.insert(ext.to_owned());
        apply_defaults(state, t);
        Ok(())
    }

    /// Marks an extension to be removed at commit.
    pub fn retract(&self, state: &mut ObjectState, ext: &str) -> Result<()> {
        let catalogue = self.catalogue();
        ObjectStore::type_of(&catalogue, ext)?;
        let refuse = |m: String| Err(ObjectError::new(ErrorCode::EXTENSION_REFUSED, m));
        if state.extend.remove(ext) {
            return Ok(());
        }
        if !state.active.contains(ext) || state.retract.contains(ext) {
            return refuse(format!("{ext} is not active"));
        }
        let types = state.effective_types();
        let needing: Vec<&str> = types
            .iter()
            .filter_map(|t| catalogue.get(t))
            .filter(|t| t.requires.iter().any(|r| r == ext))
            .map(|t| t.name.as_str())
            .collect();
        if !needing.is_empty() {
            return refuse(format!("{ext} is needed by {}; retract that first", needing.join(", ")));
        }
        state.retract.insert(ext.to_owned());
        Ok(())
    }

    /// Writes the object. On success the state is fresh again (nothing changed).
    pub async fn commit(&self, state: &mut ObjectState, user: Option<&str>) -> Result<()> {
        let catalogue = self.catalogue();
        let types = state.effective_types();
        let env = StoreEnv { store: self };
        let creating = state.is_new();

        // 1. What changes: set attributes, their dependants, and on create or extend
        //    everything with an out filter (generated values).
        let mut changed = state.changed.clone();
        for (owner, attr) in catalogue.attributes_of(&state.base_type) {
            let fresh_part = creating || state.extend.contains(&owner.name);
            if types.contains(&owner.name)
                && fresh_part
                && (!attr.out_filter.is_empty() || !state.values.get(&attr.name).is_none_or(Vec::is_empty))
            {
                changed.insert(attr.name.clone());
            }
        }
        for _ in 0..10 {
            let before = changed.len();
            for (owner, attr) in catalogue.attributes_of(&state.base_type) {
                if types.contains(&owner.name) && attr.depends_on.iter().any(|d| changed.contains(d)) {
                    changed.insert(attr.name.clone());
                }
            }
            if changed.len() == before {
                break;
            }
        }

        // 2. Out filters, on a copy: what the backends get.
        let mut props = state.values.clone();
        for (owner, attr) in catalogue.attributes_of(&state.base_type) {
            if types.contains(&owner.name) && changed.contains(&attr.name) && !attr.out_filter.is_empty() {
                let scope = Scope { env: &env, owner: &owner.name, attr: &attr.name, uuid: state.uuid.as_deref() };
                filters::run_chains(&attr.out_filter, &attr.name, &mut props, &scope)
                    .await
                    .map_err(|e| ObjectError::new(ErrorCode::ATTRIBUTE_INVALID, format!("'{}': {e}", attr.name)))?;
                // Filters produce text; bring the result back to the attribute's type.
                if let Some(values) = props.get_mut(&attr.name) {
                    for v in values.iter_mut() {
                        if let Ok(typed) = attr.value_type.accept(v) {
                            *v = typed;
                        }
                    }
                }
            }
        }

        // 3. Mandatory attributes of every active part, unless blocked.
        let missing: Vec<String> = catalogue
            .attributes_of(&state.base_type)
            .into_iter()
            .filter(|(owner, attr)| types.contains(&owner.name) && attr.mandatory && blocked(attr, &props).is_none())
            .filter(|(_, attr)| props.get(&attr.name).is_none_or(Vec::is_empty))
            .map(|(_, attr)| attr.name.clone())
            .collect();
        if !missing.is_empty() {
            return Err(ObjectError::new(
                ErrorCode::ATTRIBUTE_MANDATORY,
                format!("mandatory attributes are empty: {}", missing.join(", ")),
            )
            .with_details(json!({"attributes": missing})));
        }

        // 4. Generated values are validated like typed ones.
        for (owner, attr) in catalogue.attributes_of(&state.base_type) {
            if types.contains(&owner.name) && changed.contains(&attr.name) && !state.changed.contains(&attr.name) {
                let values = props.get(&attr.name).cloned().unwrap_or_default();
                self.validate(owner, attr, &values, &props, state.uuid.as_deref()).await?;
            }
        }

        // 5. Relations must point at existing objects before anything is written.
        let relation_changes = self.relation_changes(&catalogue, state, &props, &changed, &types).await?;

        // A directory write asserts the version it read, so the directory alone needs no
        // lock; SQL parts are checked, then written, which two agents must not interleave.
        let has_sql_parts = catalogue
            .attributes_of(&state.base_type)
            .into_iter()
            .any(|(owner, attr)| types.contains(&owner.name) && self.storage(owner, attr) == Storage::Sql);
        let needs_lock = !creating && (!state.in_ldap || has_sql_parts);
        let lock = match &state.uuid {
            Some(uuid) if needs_lock => {
                let (name, holder) = (format!("object:{uuid}"), uuid::Uuid::new_v4().to_string());
                self.acquire(&name, &holder).await?;
                Some((name, holder))
            }
            _ => None,
        };
        // An update that keeps the DN can be indexed while the backends are written: the
        // index entry is known before, and a failed write puts the index back from the
        // backends. Creations and renames learn their UUID or DN from the write.
        let keeps_dn = !creating && !self.renames(&catalogue, state, &props, &changed);
        let early_doc = keeps_dn.then(|| IndexDoc {
            extensions: types.iter().skip(1).cloned().collect(),
            values: text_values(&props),
            ..self.index_doc(state)
        });
        let result = match &early_doc {
            Some(doc) => {
                let (written, indexed) =
                    tokio::join!(self.write(&catalogue, state, &props, &changed, &types), self.index.put(doc));
                if (written.is_err() || indexed.is_err())
                    && let Err(e) = self.reindex(state.uuid.as_deref().unwrap_or_default()).await
                {
                    tracing::warn!("cannot bring the index back in line for {:?}: {e}", state.dn);
                }
                written
            }
            None => self.write(&catalogue, state, &props, &changed, &types).await,
        };
        if let Some((name, holder)) = lock {
            let _ = self.index.unlock(&name, &holder).await;
        }
        let (old_dn, renamed_values) = result?;

        // 6. After the object itself: relations, references, index, events, hooks.
        for (foreign_type, foreign_value, local_attr, local_value, add) in relation_changes {
            self.update_foreign(&foreign_type, &foreign_value, &local_attr, &local_value, add, user).await?;
        }
        let new_dn = state.dn.clone().unwrap_or_default();
        if let Some(old) = &old_dn {
            self.index.rename_subtree(old, &new_dn).await?;
            self.rewrite_references(&catalogue, "dn", &state.base_type, old, Some(&new_dn), user).await?;
        }
        for (attr, old, new) in renamed_values {
            self.rewrite_references(&catalogue, &attr, &state.base_type, &old, Some(&new), user).await?;
        }
        let uuid = state.uuid.clone().unwrap_or_default();
        if early_doc.is_none() {
            // The state is what the backends now hold: index it as it is.
            self.index.put(&self.index_doc(state)).await?;
        }
        let change = if creating {
            "create"
        } else if old_dn.is_some() {
            "move"
        } else {
            "update"
        };
        self.announce(&uuid, &new_dn, change).await;
        let hook = if creating { HookType::PostCreate } else { HookType::PostUpdate };
        self.run_hooks(&catalogue, state, hook).await?;
        Ok(())
    }

    async fn acquire(&self, name: &str, holder: &str) -> Result<()> {
        for _ in 0..100 {
            if self.index.try_lock(name, holder, LOCK_TTL_SECS).await? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(ObjectError::new(ErrorCode::OBJECT_CONFLICT, "the object is being committed by someone else; try again"))
    }

    /// Which foreign objects a commit must update for relation attributes:
    /// `(foreign type, its value attribute = name, its match attribute, our value, add?)`.
    async fn relation_changes(
        &self,
        catalogue: &Catalogue,
        state: &ObjectState,
        props: &Props,
        changed: &BTreeSet<String>,
        types: &[String],
    ) -> Result<Vec<(String, String, String, String, bool)>> {
        let mut out = Vec::new();
        for (owner, attr) in catalogue.attributes_of(&state.base_type) {
            if !types.contains(&owner.name)
                || !changed.contains(&attr.name)
                || self.storage(owner, attr) != Storage::Relation
            {
                continue;
            }
            let spec = relation_spec(owner, attr)?;
            let Some(local) = props.get(&spec.local_match).and_then(|v| v.first()).map(filters::text) else { continue };
            let old: BTreeSet<String> = state.loaded.get(&attr.name).into_iter().flatten().map(filters::text).collect();
            let new: BTreeSet<String> = props.get(&attr.name).into_iter().flatten().map(filters::text).collect();
            for name in new.difference(&old) {
                if self.index.with_value(&spec.foreign_type, &spec.foreign_value, name).await?.is_empty() {
                    return Err(ObjectError::new(
                        ErrorCode::ATTRIBUTE_CHECK_FAILED,
                        format!(
                            "'{}': there is no {} with {} '{name}'",
                            attr.name, spec.foreign_type, spec.foreign_value
                        ),
                    )
                    .with_details(json!({"attribute": attr.name})));
                }
                out.push((spec.foreign_type.clone(), name.clone(), spec.foreign_match.clone(), local.clone(), true));
            }
            for name in old.difference(&new) {
                out.push((spec.foreign_type.clone(), name.clone(), spec.foreign_match.clone(), local.clone(), false));
            }
        }
        Ok(out)
    }

    /// Adds or removes `value` in `attr` of the objects of `of_type` whose
    /// relation value attribute is `name`.
    async fn update_foreign(
        &self,
        of_type: &str,
        name: &str,
        attr: &str,
        value: &str,
        add: bool,
        user: Option<&str>,
    ) -> Result<()> {
        let catalogue = self.catalogue();
        let Some(t) = catalogue.get(of_type) else { return Ok(()) };
        let relation_attr = catalogue
            .types()
            .flat_map(|o| o.backend_params.get("Relation").into_iter().flatten().map(move |(k, v)| (o, k, v)))
            .find_map(|(_, _, spec)| {
                RelationSpec::parse(spec).ok().filter(|s| s.foreign_type == of_type).map(|s| s.foreign_value)
            })
            .unwrap_or_else(|| t.rdn_attributes().first().cloned().unwrap_or_default());
        for doc in self.index.with_value(of_type, &relation_attr, name).await? {
            let mut other = self.load(&doc.uuid).await?;
            let mut values = other.values.get(attr).cloned().unwrap_or_default();
            let present = values.iter().any(|v| filters::text(v) == value);
            match (add, present) {
                (true, false) => values.push(Value::String(value.to_owned())),
                (false, true) => values.retain(|v| filters::text(v) != value),
                _ => continue,
            }
            other.values.insert(attr.to_owned(), values);
            other.changed.insert(attr.to_owned());
            Box::pin(self.commit(&mut other, user)).await?;
        }
        Ok(())
    }

    /// Replaces (or, with `new = None`, removes) `old` wherever an attribute declares a
    /// reference to `target_type.attr` (`dn`: the object's DN).
    async fn rewrite_references(
        &self,
        catalogue: &Catalogue,
        attr: &str,
        target_type: &str,
        old: &str,
        new: Option<&str>,
        user: Option<&str>,
    ) -> Result<()> {
        let mut referring: Vec<(String, String)> = Vec::new();
        for t in catalogue.types() {
            for a in &t.attributes {
                if a.references.iter().any(|(rt, ra)| ra == attr && (rt == target_type || rt == "*")) {
                    referring.push((t.name.clone(), a.name.clone()));
                }
            }
        }
        for (of_type, ref_attr) in referring {
            for doc in self.index.with_value(&of_type, &ref_attr, old).await? {
                let mut other = match self.load(&doc.uuid).await {
                    Ok(o) => o,
                    Err(e) if e.code == ErrorCode::OBJECT_NOT_FOUND => continue,
                    Err(e) => return Err(e),
                };
                let Some(values) = other.values.get(&ref_attr).cloned() else { continue };
                let updated: Vec<Value> = values
                    .iter()
                    .filter_map(|v| {
                        if filters::text(v).eq_ignore_ascii_case(old) {
                            new.map(|n| Value::String(n.to_owned()))
                        } else {
                            Some(v.clone())
                        }
                    })
                    .collect();
                if updated == values {
                    continue;
                }
                let mandatory_empty = updated.is_empty()
                    && catalogue.find_attribute(&other.base_type, &ref_attr).is_some_and(|(_, a)| a.mandatory);
                if mandatory_empty {
                    tracing::warn!("{} keeps its reference to {old}: {ref_attr} is mandatory", doc.dn);
                    continue;
                }
                other.values.insert(ref_attr.clone(), updated);
                other.changed.insert(ref_attr.clone());
                Box::pin(self.commit(&mut other, user)).await?;
            }
        }
        Ok(())
    }

    /// The backend writes of a commit. Returns the old DN when it changed, and the
    /// `(attribute, old, new)` of changed values other objects may refer to.
    async fn write(
        &self,
        catalogue: &Catalogue,
        state: &mut ObjectState,
        props: &Props,
        changed: &BTreeSet<String>,
        types: &[String],
    ) -> Result<(Option<String>, Vec<(String, String, String)>)> {
        let base = ObjectStore::type_of(catalogue, &state.base_type)?.clone();
        let creating = state.is_new();
        if !creating {
            self.check_sql_parts(catalogue, state).await?;
        }
        self.run_hooks(catalogue, state, if creating { HookType::PreCreate } else { HookType::PreUpdate }).await?;

        let binary = catalogue.binary_attributes();
        let mut primary_changes: Vec<(String, Vec<String>)> = Vec::new();
        let mut sql_rows: BTreeMap<String, Vec<(String, Option<String>)>> = BTreeMap::new();
        for (owner, attr) in catalogue.attributes_of(&state.base_type) {
            let part_of = types.contains(&owner.name);
            let retracted = state.retract.contains(&owner.name);
            if !(retracted || part_of && changed.contains(&attr.name)) {
                continue;
            }
            let values = if retracted { Vec::new() } else { props.get(&attr.name).cloned().unwrap_or_default() };
            let texts = to_backend(attr, &values)?;
            match self.storage(owner, attr) {
                Storage::Ldap if retracted && state.loaded.get(&attr.name).is_none_or(Vec::is_empty) => {}
                Storage::Ldap => primary_changes.push((attr.backend_name.clone(), texts)),
                Storage::Sql => {
                    sql_rows
                        .entry(owner.name.clone())
                        .or_default()
                        .push((attr.backend_name.clone(), encode_column(attr, &texts)));
                }
                Storage::Null | Storage::Relation => {}
            }
        }
        // Newly extended SQL parts get a row even without values: the row is the marker.
        for ext in &state.extend {
            if let Some(t) = catalogue.get(ext)
                && (self.primary(t) == Storage::Sql || !state.in_ldap && !creating)
            {
                sql_rows.entry(ext.clone()).or_default();
            }
        }
        if creating {
            sql_rows.entry(state.base_type.clone()).or_default();
        }

        let classes_of = |names: &mut dyn Iterator<Item = &String>| -> Vec<String> {
            names
                .filter_map(|n| catalogue.get(n))
                .filter(|t| self.primary(t) == Storage::Ldap)
                .flat_map(|t| t.param_list("LDAP", "objectClasses"))
                .collect()
        };

        // The primary write.
        let mut new_version: Option<String> = None;
        let mut old_dn = None;
        let mut renamed_values = Vec::new();
        let uses_ldap = self.primary(&base) == Storage::Ldap;
        if creating {
            let dn = new_dn(&base, &state.parent, props)?;
            let uuid = if uses_ldap {
                let ldap = self.ldap.as_ref().ok_or_else(|| not_found("directory"))?;
                let mut classes = classes_of(&mut types.iter());
                classes.dedup();
                let attrs: Vec<(String, Vec<String>)> =
                    primary_changes.iter().filter(|(_, v)| !v.is_empty()).cloned().collect();
                let (uuid, version) = ldap
                    .create(&dn, &classes, &attrs, binary)
                    .await
                    .map_err(|e| backend_failure(e, "the directory"))?;
                new_version = version;
                uuid
            } else {
                let sql_types: Vec<String> = types.to_vec();
                self.sql.create_entry(&dn, &sql_types).await.map_err(|e| backend_failure(e, "the database"))?
            };
            state.uuid = Some(uuid.clone());
            state.dn = Some(dn.clone());
            state.in_ldap = uses_ldap;
            if let Err(e) = self.write_sql_rows(&uuid, &sql_rows).await {
                // Leave nothing behind: the primary entry goes again.
                let undo = if uses_ldap {
                    match &self.ldap {
                        Some(ldap) => ldap.delete(&dn).await,
                        None => Ok(()),
                    }
                } else {
                    self.sql.delete_entry(&uuid).await
                };
                for t in sql_rows.keys() {
                    let _ = self.sql.delete(t, &uuid).await;
                }
                state.uuid = None;
                state.dn = None;
                return Err(second_backend_failure(e, undo.err(), "the new entry was removed again"));
            }
        } else {
            let uuid = state.uuid.clone().unwrap_or_default();
            let dn = state.dn.clone().unwrap_or_default();
            // An RDN attribute changed: the entry is renamed first, since the directory
            // refuses to drop a naming value by modify.
            let (rdn, _) = split_rdn(&dn);
            let mut rdn_backend_name = None;
            if base.fixed_rdn.is_none()
                && let Some((rdn_attr, rdn_value)) = rdn.split_once('=')
                && let Some((_, attr)) = catalogue
                    .attributes_of(&state.base_type)
                    .into_iter()
                    .find(|(_, a)| a.backend_name.eq_ignore_ascii_case(rdn_attr))
                && changed.contains(&attr.name)
                && let Some(new_value) = props.get(&attr.name).and_then(|v| v.first()).map(filters::text)
                && unescape_rdn_value(rdn_value) != new_value
            {
                let new_rdn = format!("{}={}", rdn_attr, escape_rdn_value(&new_value));
                let renamed = if state.in_ldap {
                    let ldap = self.ldap.as_ref().ok_or_else(|| not_found("directory"))?;
                    match ldap.rename_checked(&dn, &new_rdn, state.version.as_deref()).await {
                        Ok((renamed, version)) => {
                            // The rename moved the version on; the modify asserts the new one.
                            state.version = version;
                            renamed
                        }
                        Err(BackendError::Refused { code: 122, .. }) => {
                            return Err(self.conflict(state, Vec::new()).await);
                        }
                        Err(e) => return Err(backend_failure(e, "the directory")),
                    }
                } else {
                    let target = format!("{new_rdn},{}", parent_dn(&dn));
                    self.sql.rename_subtree(&dn, &target).await?;
                    target
                };
                rdn_backend_name = Some(attr.backend_name.clone());
                old_dn = Some(dn.clone());
                state.dn = Some(renamed);
            }
            let dn = state.dn.clone().unwrap_or_default();
            if let Some(name) = &rdn_backend_name
                && state.in_ldap
            {
                primary_changes.retain(|(n, _)| n != name);
            }
            // Puts the old name back when a later step fails.
            let undo_rename = async |failure: ObjectError| -> ObjectError {
                if let (Some(old), Some(ldap)) = (&old_dn, &self.ldap) {
                    let (old_rdn, _) = split_rdn(old);
                    if let Err(e) = ldap.rename(&dn, old_rdn, None).await {
                        tracing::error!("cannot rename {dn} back to {old} after a failed commit: {e}");
                    }
                }
                failure
            };
            let added: Vec<String> = state.extend.iter().cloned().collect();
            let removed: Vec<String> = state.retract.iter().cloned().collect();
            if state.in_ldap {
                let ldap = self.ldap.as_ref().ok_or_else(|| not_found("directory"))?;
                let add_classes = classes_of(&mut added.iter());
                let remove_classes = classes_of(&mut removed.iter());
                let nothing_for_the_directory =
                    primary_changes.is_empty() && add_classes.is_empty() && remove_classes.is_empty();
                if nothing_for_the_directory && old_dn.is_none() {
                    // No write carries the version assertion: compare explicitly.
                    self.check_primary_version(state).await?;
                }
                let expect = state.version.clone();
                match ldap
                    .modify_checked(&dn, &primary_changes, &add_classes, &remove_classes, binary, expect.as_deref())
                    .await
                {
                    Ok(Some(version)) => new_version = Some(version),
                    Ok(None) => new_version = state.version.clone(),
                    Err(BackendError::Refused { code: 122, .. }) => {
                        let conflict = self.conflict(state, Vec::new()).await;
                        return Err(undo_rename(conflict).await);
                    }
                    Err(e) => return Err(undo_rename(backend_failure(e, "the directory")).await),
                }
                if let Err(e) = self.write_sql_rows(&uuid, &sql_rows).await {
                    let restore: Vec<(String, Vec<String>)> = primary_changes
                        .iter()
                        .map(|(name, _)| {
                            let attr = catalogue
                                .attributes_of(&state.base_type)
                                .into_iter()
                                .find(|(_, a)| a.backend_name == *name);
                            let old = attr
                                .and_then(|(_, a)| {
                                    to_backend(a, state.loaded.get(&a.name).map(Vec::as_slice).unwrap_or_default()).ok()
                                })
                                .unwrap_or_default();
                            (name.clone(), old)
                        })
                        .collect();
                    let undo = ldap.modify(&dn, &restore, &remove_classes, &add_classes, binary).await;
                    let failure = second_backend_failure(e, undo.err(), "the directory entry was restored");
                    return Err(undo_rename(failure).await);
                }
            } else {
                self.check_primary_version(state).await?;
                // Everything is in one database here; the entry's types follow the extensions.
                self.write_sql_rows(&uuid, &sql_rows).await.map_err(|e| backend_failure(e, "the database"))?;
                self.sql.set_types(&uuid, types).await?;
            }
            for ext in &removed {
                if catalogue.get(ext).is_some_and(|t| self.primary(t) == Storage::Sql || !state.in_ldap) {
                    self.sql.delete(ext, &uuid).await?;
                }
            }
            if !state.in_ldap {
                self.sql.touch(&uuid).await?;
            }

            for name in changed {
                if let (Some(old), Some(new)) = (
                    state.loaded.get(name).and_then(|v| v.first()).map(filters::text),
                    props.get(name).and_then(|v| v.first()).map(filters::text),
                ) && old != new
                {
                    renamed_values.push((name.clone(), old, new));
                }
            }
        }

        // The state is now what the backends hold.
        state.active = types.iter().skip(1).cloned().collect();
        state.extend.clear();
        state.retract.clear();
        state.values = props.clone();
        state.loaded = props.clone();
        state.changed.clear();
        state.version = match new_version {
            Some(version) => Some(version),
            None => self.current_version(state).await?,
        };
        Ok((old_dn, renamed_values))
    }

    async fn write_sql_rows(
        &self,
        uuid: &str,
        rows: &BTreeMap<String, Vec<(String, Option<String>)>>,
    ) -> std::result::Result<(), BackendError> {
        for (owner, values) in rows {
            self.sql.write(owner, uuid, values).await?;
        }
        Ok(())
    }

    async fn current_version(&self, state: &ObjectState) -> Result<Option<String>> {
        let dn = state.dn.clone().unwrap_or_default();
        if state.in_ldap {
            Ok(self.ldap.as_ref().ok_or_else(|| not_found("directory"))?.version(&dn).await?)
        } else {
            Ok(self.sql.entry_by_dn(&dn).await?.and_then(|e| e.version))
        }
    }

    /// Refuses the commit when SQL-wired attributes changed since the object was opened
    /// (they do not move the directory's version).
    async fn check_sql_parts(&self, catalogue: &Catalogue, state: &ObjectState) -> Result<()> {
        if !state.in_ldap {
            return Ok(());
        }
        let types = state.effective_types();
        let sql_attrs: Vec<&AttributeDef> = catalogue
            .attributes_of(&state.base_type)
            .into_iter()
            .filter(|(owner, attr)| types.contains(&owner.name) && self.storage(owner, attr) == Storage::Sql)
            .map(|(_, attr)| attr)
            .collect();
        if sql_attrs.is_empty() {
            return Ok(());
        }
        let fresh = self.read_values(catalogue, state, Some(HashMap::new())).await?;
        let changed: Vec<String> = sql_attrs
            .iter()
            .filter(|a| {
                fresh.get(&a.name).filter(|v| !v.is_empty()) != state.loaded.get(&a.name).filter(|v| !v.is_empty())
            })
            .map(|a| a.name.clone())
            .collect();
        if changed.is_empty() { Ok(()) } else { Err(self.conflict(state, changed).await) }
    }

    /// Refuses the commit when the primary entry's version moved since it was opened.
    async fn check_primary_version(&self, state: &ObjectState) -> Result<()> {
        let now = self.current_version(state).await?;
        if now.is_none() {
            let what = state.dn.clone().or_else(|| state.uuid.clone()).unwrap_or_default();
            return Err(ObjectError::new(ErrorCode::OBJECT_NOT_FOUND, format!("{what} was removed meanwhile")));
        }
        if now == state.version { Ok(()) } else { Err(self.conflict(state, Vec::new()).await) }
    }

    /// The conflict error, naming what someone else changed since the object was opened.
    async fn conflict(&self, state: &ObjectState, mut changed: Vec<String>) -> ObjectError {
        let uuid = state.uuid.clone().unwrap_or_default();
        if let Ok(fresh) = self.load(&uuid).await {
            changed.extend(
                fresh
                    .loaded
                    .iter()
                    .filter(|(name, values)| {
                        let before = state.loaded.get(*name).filter(|v| !v.is_empty());
                        before != Some(*values).filter(|v| !v.is_empty())
                    })
                    .map(|(name, _)| name.clone()),
            );
            changed.extend(
                state
                    .loaded
                    .iter()
                    .filter(|(name, v)| !v.is_empty() && !fresh.loaded.contains_key(*name))
                    .map(|(n, _)| n.clone()),
            );
            if fresh.active != state.active {
                changed.push("extensions".into());
            }
        }
        changed.sort();
        changed.dedup();
        ObjectError::new(
            ErrorCode::OBJECT_CONFLICT,
            format!(
                "{} was changed by someone else since you opened it ({}); reload it and apply your change again",
                state.dn.clone().unwrap_or_default(),
                if changed.is_empty() { "metadata".to_owned() } else { changed.join(", ") }
            ),
        )
        .with_details(json!({"changed": changed}))
    }

    /// Hooks run as internal calls, like the original's: they act for the object layer,
    /// not for whoever triggered them.
    async fn run_hooks(&self, catalogue: &Catalogue, state: &ObjectState, hook: HookType) -> Result<()> {
        let hooks: Vec<_> = state
            .effective_types()
            .iter()
            .filter_map(|t| catalogue.get(t))
            .flat_map(|t| t.hooks.iter().filter(|h| h.hook_type == hook).cloned().collect::<Vec<_>>())
            .collect();
        if hooks.is_empty() {
            return Ok(());
        }
        let runner = self
            .runner()
            .ok_or_else(|| ObjectError::new(ErrorCode::COMMAND_NOT_DEFINED, "hooks need an agent to run them"))?;
        for h in hooks {
            let args = h.command_parameters.iter().map(|p| parameter_value(p, state, &BTreeMap::new())).collect();
            runner.run(None, &h.command, args).await?;
        }
        Ok(())
    }

    /// Runs a description method of the object.
    pub async fn call_method(
        &self,
        state: &ObjectState,
        name: &str,
        args: &[Value],
        user: Option<&str>,
    ) -> Result<Value> {
        let catalogue = self.catalogue();
        let method = state
            .effective_types()
            .iter()
            .filter_map(|t| catalogue.get(t))
            .find_map(|t| t.methods.iter().find(|m| m.name == name).cloned())
            .ok_or_else(|| {
                ObjectError::new(ErrorCode::ATTRIBUTE_NOT_FOUND, format!("{} has no method '{name}'", state.base_type))
            })?;
        let mut params = BTreeMap::new();
        for (i, p) in method.parameters.iter().enumerate() {
            let given = args.get(i).filter(|v| !v.is_null()).cloned();
            let value = match (given, &p.default) {
                (Some(v), _) => p
                    .value_type
                    .accept(&v)
                    .map_err(|e| ObjectError::new(ErrorCode::INVALID_PARAMS, format!("{}: {e}", p.name)))?,
                (None, Some(d)) => {
                    p.value_type.parse_text(d).map_err(|e| ObjectError::new(ErrorCode::INVALID_PARAMS, e))?
                }
                (None, None) if p.required => {
                    return Err(ObjectError::new(
                        ErrorCode::INVALID_PARAMS,
                        format!("{name} needs the parameter '{}'", p.name),
                    ));
                }
                (None, None) => Value::Null,
            };
            params.insert(p.name.clone(), value);
        }
        if args.len() > method.parameters.len() {
            return Err(ObjectError::new(
                ErrorCode::INVALID_PARAMS,
                format!("{name} takes {} parameter(s)", method.parameters.len()),
            ));
        }
        let runner = self
            .runner()
            .ok_or_else(|| ObjectError::new(ErrorCode::COMMAND_NOT_DEFINED, "methods need an agent to run them"))?;
        let command_args = method.command_parameters.iter().map(|p| parameter_value(p, state, &params)).collect();
        runner.run(user, &method.command, command_args).await
    }

    /// Removes an object; with `recursive`, everything below it first.
    pub async fn remove(&self, target: &str, recursive: bool, user: Option<&str>) -> Result<Vec<String>> {
        let catalogue = self.catalogue();
        let state = self.load(target).await?;
        let dn = state.dn.clone().unwrap_or_default();
        let children = self.children(&dn).await?;
        let mut removed = Vec::new();
        if !children.is_empty() {
            if !recursive {
                return Err(ObjectError::new(
                    ErrorCode::OBJECT_HAS_CHILDREN,
                    format!("{dn} has {} object(s) below it; remove them first or remove recursively", children.len()),
                )
                .with_details(json!({"children": children})));
            }
            for child in children {
                removed.extend(Box::pin(self.remove(&child, true, user)).await?);
            }
        }
        self.run_hooks(&catalogue, &state, HookType::PreRemove).await?;
        let uuid = state.uuid.clone().unwrap_or_default();
        // Secondary data first, the primary entry last.
        for t in state.effective_types() {
            let owns_sql = catalogue.get(&t).is_some_and(|ty| {
                ty.attributes.iter().any(|a| self.storage(ty, a) == Storage::Sql) || self.primary(ty) == Storage::Sql
            });
            if owns_sql {
                self.sql.delete(&t, &uuid).await?;
            }
        }
        if state.in_ldap {
            self.ldap
                .as_ref()
                .ok_or_else(|| not_found("directory"))?
                .delete(&dn)
                .await
                .map_err(|e| backend_failure(e, "the directory"))?;
        } else {
            self.sql.delete_entry(&uuid).await?;
        }
        self.index.remove(&uuid).await?;
        // Others referring to it lose the reference.
        self.rewrite_references(&catalogue, "dn", &state.base_type, &dn, None, user).await?;
        for (name, values) in &state.loaded {
            if let Some(v) = values.first() {
                self.rewrite_references(&catalogue, name, &state.base_type, &filters::text(v), None, user).await?;
            }
        }
        self.announce(&uuid, &dn, "remove").await;
        self.run_hooks(&catalogue, &state, HookType::PostRemove).await?;
        removed.push(dn);
        Ok(removed)
    }

    /// DNs directly below `dn`, from whichever backends hold entries.
    pub async fn children(&self, dn: &str) -> Result<Vec<String>> {
        let mut out = self.sql.children(dn).await?;
        if let Some(ldap) = &self.ldap {
            out.extend(ldap.children(dn).await?);
        }
        Ok(out)
    }

    /// Moves an object (and what is below it) under `new_parent`.
    pub async fn move_object(&self, state: &mut ObjectState, new_parent: &str, user: Option<&str>) -> Result<()> {
        if state.is_new() {
            state.parent = new_parent.to_owned();
            return Ok(());
        }
        let catalogue = self.catalogue();
        self.check_container(&catalogue, new_parent, &state.base_type).await?;
        self.check_sql_parts(&catalogue, state).await?;
        self.check_primary_version(state).await?;
        let dn = state.dn.clone().unwrap_or_default();
        let (rdn, _) = split_rdn(&dn);
        let new_dn = if state.in_ldap {
            self.ldap.as_ref().ok_or_else(|| not_found("directory"))?.rename(&dn, rdn, Some(new_parent)).await?
        } else {
            let target = format!("{rdn},{new_parent}");
            self.sql.rename_subtree(&dn, &target).await?;
            target
        };
        state.dn = Some(new_dn.clone());
        state.parent = new_parent.to_owned();
        state.version = self.current_version(state).await?;
        self.index.rename_subtree(&dn, &new_dn).await?;
        self.rewrite_references(&catalogue, "dn", &state.base_type, &dn, Some(&new_dn), user).await?;
        self.announce(state.uuid.as_deref().unwrap_or_default(), &new_dn, "move").await;
        Ok(())
    }

    // ----- index -----

    /// Reads the object again from its backends and puts it into the index.
    pub async fn reindex(&self, uuid: &str) -> Result<()> {
        let state = self.load(uuid).await?;
        self.index.put(&self.index_doc(&state)).await?;
        Ok(())
    }

    /// Whether committing `props` renames the object (an RDN attribute changes).
    fn renames(&self, catalogue: &Catalogue, state: &ObjectState, props: &Props, changed: &BTreeSet<String>) -> bool {
        let Some(dn) = &state.dn else { return false };
        let Some((rdn_attr, rdn_value)) = split_rdn(dn).0.split_once('=') else { return false };
        catalogue
            .attributes_of(&state.base_type)
            .into_iter()
            .find(|(_, a)| a.backend_name.eq_ignore_ascii_case(rdn_attr))
            .is_some_and(|(_, attr)| {
                changed.contains(&attr.name)
                    && props.get(&attr.name).and_then(|v| v.first()).map(filters::text).as_deref()
                        != Some(unescape_rdn_value(rdn_value).as_str())
            })
    }

    fn index_doc(&self, state: &ObjectState) -> IndexDoc {
        IndexDoc {
            uuid: state.uuid.clone().unwrap_or_default(),
            dn: state.dn.clone().unwrap_or_default(),
            object_type: state.base_type.clone(),
            extensions: state.active.iter().cloned().collect(),
            modified: crate::backend::sql::now(),
            values: text_values(&state.loaded),
        }
    }

    /// Publishes a change made through Clacks (ObjectChanged).
    async fn announce(&self, uuid: &str, dn: &str, change: &str) {
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.publish_change("ObjectChanged", uuid, dn, change, &time).await;
    }

    /// Publishes a change noticed in a backend, made outside Clacks (BackendChange).
    async fn announce_backend_change(&self, uuid: &str, dn: &str, change: &str, time: &str) {
        self.publish_change("BackendChange", uuid, dn, change, time).await;
    }

    async fn publish_change(&self, event_type: &str, uuid: &str, dn: &str, change: &str, time: &str) {
        let Some(publisher) = self.events.read().ok().and_then(|p| p.clone()) else { return };
        let mut fields = serde_json::Map::new();
        fields.insert("UUID".into(), json!(uuid));
        fields.insert("DN".into(), json!(dn));
        fields.insert("ModificationTime".into(), json!(time));
        fields.insert("ChangeType".into(), json!(change));
        if let Err(e) = publisher.publish_fields(event_type, &fields).await {
            tracing::warn!("cannot publish {event_type} for {dn}: {e}");
        }
    }

    /// Walks every backend and brings the index in line: new and changed objects are
    /// indexed, vanished ones dropped and announced as BackendChange `delete`. Only one agent scans at a time (a shared lock in
    /// the index database); the others return `Ok(None)`.
    pub async fn scan(&self, holder: &str) -> Result<Option<ScanReport>> {
        if !self.index.try_lock("index-scan", holder, 600).await? {
            return Ok(None);
        }
        let outcome = self.scan_locked().await;
        let _ = self.index.unlock("index-scan", holder).await;
        outcome.map(Some)
    }

    async fn scan_locked(&self) -> Result<ScanReport> {
        let mut report = ScanReport::default();
        let known = self.index.all_modified().await?;
        let mut seen = BTreeSet::new();
        let mut entries: Vec<Entry> = self.sql.all_entries().await?;
        if let Some(ldap) = &self.ldap {
            entries.extend(ldap.subtree(&self.base).await?);
        }
        // Parents before children, so relation attributes find what they point at.
        entries.sort_by_key(|e| e.dn.matches(',').count());
        for entry in entries {
            seen.insert(entry.uuid.clone());
            let modified = entry.modified.clone().unwrap_or_default();
            let stamp = |m: &str| super::values::parse_timestamp(m).map(|t| t.timestamp());
            let unchanged = known.get(&entry.uuid).is_some_and(|(indexed, dn)| {
                dn == &entry.dn && stamp(indexed).zip(stamp(&modified)).is_some_and(|(i, m)| i >= m)
            });
            if unchanged {
                continue;
            }
            match self.reindex(&entry.uuid).await {
                Ok(()) => report.indexed += 1,
                Err(e) if e.code == ErrorCode::OBJECT_TYPE_MISMATCH => report.skipped += 1,
                Err(e) => return Err(e),
            }
        }
        // Gone from every backend: removed behind Clacks' back (ldapdelete, say).
        for (uuid, (_, dn)) in known.iter().filter(|(u, _)| !seen.contains(*u)) {
            self.index.remove(uuid).await?;
            self.announce_backend_change(uuid, dn, "delete", &chrono::Utc::now().format("%Y%m%d%H%M%SZ").to_string())
                .await;
            report.removed += 1;
        }
        Ok(report)
    }

    /// Picks up directory changes made outside Clacks since the last poll: re-indexes
    /// them and publishes BackendChange. Returns the number of changes seen.
    pub async fn poll_directory(&self) -> Result<usize> {
        let Some(ldap) = &self.ldap else { return Ok(0) };
        let since = match self.index.meta("ldap-poll").await? {
            Some(s) => s,
            None => {
                self.index.set_meta("ldap-poll", &chrono::Utc::now().format("%Y%m%d%H%M%SZ").to_string()).await?;
                return Ok(0);
            }
        };
        let started = chrono::Utc::now().format("%Y%m%d%H%M%SZ").to_string();
        let mut seen = 0;
        for entry in ldap.changed_since(&since).await? {
            let indexed = self.index.by_uuid(&entry.uuid).await?;
            // Our own commits are indexed already with at least this version's values.
            let state = match self.load(&entry.uuid).await {
                Ok(s) => s,
                Err(e) if e.code == ErrorCode::OBJECT_TYPE_MISMATCH => continue,
                Err(e) => return Err(e),
            };
            let doc = self.index_doc(&state);
            let same = indexed
                .as_ref()
                .is_some_and(|i| i.dn == doc.dn && i.values == doc.values && i.extensions == doc.extensions);
            if same {
                continue;
            }
            let change = match &indexed {
                None => "add",
                Some(i) if i.dn != doc.dn => "modrdn",
                Some(_) => "modify",
            };
            self.index.put(&doc).await?;
            self.announce_backend_change(&doc.uuid, &doc.dn, change, entry.modified.as_deref().unwrap_or_default())
                .await;
            seen += 1;
        }
        // Deletions leave no modifyTimestamp behind; the periodic scan finds them.
        self.index.set_meta("ldap-poll", &started).await?;
        Ok(seen)
    }

    /// Keyword search below `base`. Each result: `{dn, uuid, type, title, description,
    /// relevance, lastChanged}`, best first.
    pub async fn search(
        &self,
        base: &str,
        scope: SearchScope,
        query: &str,
        options: &SearchOptions,
    ) -> Result<Vec<Value>> {
        let catalogue = self.catalogue();
        let mut words: Vec<String> = shlex_words(query);
        let whole = query.trim().to_lowercase();
        if words.len() > 1 && !whole.is_empty() {
            words.push(whole);
        }
        // A word naming a type's keyword narrows to that type (`user ada`).
        let mut categories: BTreeSet<String> = BTreeSet::new();
        words.retain(|w| {
            let hits: Vec<String> = catalogue
                .types()
                .filter(|t| t.find.iter().any(|a| a.keywords.iter().any(|k| k.eq_ignore_ascii_case(w))))
                .map(|t| t.name.clone())
                .collect();
            let keep = hits.is_empty();
            categories.extend(hits);
            keep
        });
        if let Some(category) = &options.category {
            categories.insert(category.clone());
        }
        let base_key = clacks_core::dn::dn_key(base);
        let in_scope = |dn: &str| {
            let key = clacks_core::dn::dn_key(dn);
            match scope {
                SearchScope::Base => key == base_key,
                SearchScope::One => clacks_core::dn::dn_key(parent_dn(dn)) == base_key,
                SearchScope::Sub => key == base_key || key.ends_with(&format!(",{base_key}")),
                SearchScope::Children => key.ends_with(&format!(",{base_key}")),
            }
        };
        let mut scored: HashMap<String, (f64, IndexDoc)> = HashMap::new();
        if words.is_empty() {
            for doc in self.index.under(base, scope).await? {
                scored.insert(doc.uuid.clone(), (1.0, doc));
            }
        }
        for word in &words {
            for (doc, attr, exact) in self.index.matching(word, true, options.fallback).await? {
                if !in_scope(&doc.dn) {
                    continue;
                }
                let searchable = catalogue
                    .get(&doc.object_type)
                    .is_some_and(|t| t.find.iter().any(|a| a.search.contains(&attr)) || options.fallback);
                if !searchable {
                    continue;
                }
                let score = if exact { 1.0 } else { 0.5 };
                let slot = scored.entry(doc.uuid.clone()).or_insert((0.0, doc));
                slot.0 += score;
            }
        }
        // Secondary hits (`<Resolve>`): objects related to a hit, e.g. a user's groups,
        // ranked well below direct hits.
        if options.secondary.unwrap_or(true) {
            // Only the best direct hits are followed: a broad query must not turn into
            // thousands of lookups.
            let mut best: Vec<(&f64, &IndexDoc)> = scored.values().map(|(s, d)| (s, d)).collect();
            best.sort_by(|a, b| b.0.total_cmp(a.0).then_with(|| a.1.dn.cmp(&b.1.dn)));
            best.truncate(RESOLVED_HITS);
            let mut secondary: Vec<(f64, IndexDoc)> = Vec::new();
            for (score, doc) in best {
                let resolves = catalogue
                    .get(&doc.object_type)
                    .map(|t| t.find.iter().flat_map(|a| a.resolve.clone()).collect::<Vec<_>>());
                for (own_attr, their_attr, their_type) in resolves.unwrap_or_default() {
                    for value in doc.values.get(&own_attr).into_iter().flatten().take(20) {
                        for related in self.index.with_value(&their_type, &their_attr, value).await? {
                            if in_scope(&related.dn) && !scored.contains_key(&related.uuid) {
                                secondary.push((score / 10.0, related));
                            }
                        }
                    }
                }
            }
            for (score, doc) in secondary {
                let slot = scored.entry(doc.uuid.clone()).or_insert((0.0, doc));
                slot.0 = slot.0.max(score);
            }
        }
        let mut results: Vec<(f64, IndexDoc)> = scored
            .into_values()
            .filter(|(_, doc)| {
                categories.is_empty()
                    || categories.contains(&doc.object_type)
                    || doc.extensions.iter().any(|e| categories.contains(e))
            })
            .collect();
        results.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.dn.cmp(&b.1.dn)));
        results.truncate(options.limit.unwrap_or(200));
        Ok(results.into_iter().map(|(score, doc)| result_entry(&catalogue, score, &doc)).collect())
    }

    /// Objects matching every condition (`attribute: value`, `*` as wildcard;
    /// `_type` for the type, `_base` for a subtree).
    pub async fn find(&self, conditions: &serde_json::Map<String, Value>) -> Result<Vec<IndexDoc>> {
        let base = conditions.get("_base").map(filters::text).unwrap_or_else(|| self.base.clone());
        // Start from the narrowest set the index can give: one exact attribute value, or
        // one type; only without either is the whole subtree read.
        let exact = conditions.iter().find_map(|(key, wanted)| match wanted {
            Value::String(v) if !key.starts_with('_') && key != "dn" && !v.contains('*') => Some((key, v)),
            _ => None,
        });
        let one_type = conditions.get("_type").and_then(Value::as_str);
        let mut candidates = match (exact, one_type) {
            (Some((attr, value)), _) => self.index.with_value(one_type.unwrap_or(""), attr, value).await?,
            (None, Some(t)) => self.index.of_type(t).await?,
            (None, None) => self.index.under(&base, SearchScope::Sub).await?,
        };
        let base_key = clacks_core::dn::dn_key(&base);
        candidates.retain(|doc| {
            let key = clacks_core::dn::dn_key(&doc.dn);
            key == base_key || key.ends_with(&format!(",{base_key}"))
        });
        for (key, wanted) in conditions {
            let wanted_values: Vec<String> = match wanted {
                Value::Array(items) => items.iter().map(filters::text).collect(),
                other => vec![filters::text(other)],
            };
            candidates.retain(|doc| match key.as_str() {
                "_base" => true,
                "_type" => wanted_values.iter().any(|w| *w == doc.object_type || doc.extensions.contains(w)),
                "dn" => wanted_values.iter().any(|w| glob_match(w, &doc.dn)),
                attr => doc
                    .values
                    .get(attr)
                    .is_some_and(|have| wanted_values.iter().any(|w| have.iter().any(|h| glob_match(w, h)))),
            });
        }
        Ok(candidates)
    }

    // ----- open references -----

    /// Opens an object for `user` and returns the reference and its view.
    pub async fn open_reference(&self, user: &str, state: ObjectState) -> Result<Value> {
        let reference = uuid::Uuid::new_v4().to_string();
        self.save_reference(&reference, user, &state).await?;
        Ok(self.view(&reference, &state))
    }

    pub async fn save_reference(&self, reference: &str, user: &str, state: &ObjectState) -> Result<()> {
        let text =
            serde_json::to_string(state).map_err(|e| ObjectError::new(ErrorCode::INTERNAL_ERROR, e.to_string()))?;
        self.index.save_ref(reference, user, &text).await?;
        Ok(())
    }

    /// The state behind a reference; only its owner gets it.
    pub async fn reference(&self, reference: &str, user: &str) -> Result<ObjectState> {
        let gone = || {
            ObjectError::new(
                ErrorCode::REFERENCE_NOT_FOUND,
                format!("no open object {reference} (closed, expired or never opened)"),
            )
        };
        let (owner, text) = self.index.load_ref(reference, self.idle_secs).await?.ok_or_else(gone)?;
        if owner != user {
            return Err(gone());
        }
        serde_json::from_str(&text)
            .map_err(|e| ObjectError::new(ErrorCode::INTERNAL_ERROR, format!("stored reference unreadable: {e}")))
    }

    pub async fn close_reference(&self, reference: &str, user: &str) -> Result<()> {
        self.reference(reference, user).await?;
        self.index.drop_ref(reference).await?;
        Ok(())
    }

    /// Forgets references idle for longer than the configured time.
    pub async fn expire_references(&self) -> Result<u64> {
        Ok(self.index.expire_refs(self.idle_secs).await?)
    }

    /// What a client sees of an open object.
    pub fn view(&self, reference: &str, state: &ObjectState) -> Value {
        let catalogue = self.catalogue();
        let types = state.effective_types();
        let mut attributes = serde_json::Map::new();
        for (owner, attr) in catalogue.attributes_of(&state.base_type) {
            if types.contains(&owner.name) {
                let values = state.values.get(&attr.name).cloned().unwrap_or_default();
                attributes.insert(attr.name.clone(), present(attr, &values));
            }
        }
        let extensions: serde_json::Map<String, Value> = catalogue
            .extensions_of(&state.base_type)
            .iter()
            .map(|e| (e.name.clone(), Value::Bool(types.contains(&e.name))))
            .collect();
        let mut methods = vec!["commit", "extend", "retract", "move", "remove", "reload", "diff", "close"]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        methods.extend(
            types.iter().filter_map(|t| catalogue.get(t)).flat_map(|t| t.methods.iter().map(|m| m.name.clone())),
        );
        json!({
            "ref": reference,
            "dn": state.dn,
            "parent": state.parent,
            "uuid": state.uuid,
            "type": state.base_type,
            "extensions": extensions,
            "attributes": attributes,
            "methods": methods,
            "changed": state.changed,
        })
    }

    /// Changes since open: attributes added, removed, changed; extensions added, removed.
    pub fn diff(&self, state: &ObjectState) -> Value {
        let (mut added, mut removed, mut changed) = (serde_json::Map::new(), Vec::new(), serde_json::Map::new());
        for name in &state.changed {
            let before = state.loaded.get(name).cloned().unwrap_or_default();
            let after = state.values.get(name).cloned().unwrap_or_default();
            match (before.is_empty(), after.is_empty()) {
                (true, false) => {
                    added.insert(name.clone(), Value::Array(after));
                }
                (false, true) => removed.push(name.clone()),
                (false, false) if before != after => {
                    changed.insert(name.clone(), json!({"old": before, "new": after}));
                }
                _ => {}
            }
        }
        json!({
            "attributes": {"added": added, "removed": removed, "changed": changed},
            "extensions": {"added": state.extend, "removed": state.retract},
        })
    }

    /// Type listing for `getObjectTypes`.
    pub fn types_info(&self) -> Value {
        let catalogue = self.catalogue();
        let mut out = serde_json::Map::new();
        for t in catalogue.types() {
            out.insert(
                t.name.clone(),
                json!({
                    "displayName": t.display_name,
                    "description": t.description,
                    "base": t.base_object,
                    "backend": t.backend,
                    "extends": t.extends,
                    "requires": t.requires,
                    "extendedBy": catalogue.extensions_of(&t.name).iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
                    "container": t.container,
                    "fixedRdn": t.fixed_rdn,
                    "methods": t.methods.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
                }),
            );
        }
        Value::Object(out)
    }

    /// The attributes of a type (and its extensions) in detail, for `getObjectSchema`.
    pub fn schema_of(&self, type_name: &str) -> Result<Value> {
        let catalogue = self.catalogue();
        let t = ObjectStore::type_of(&catalogue, type_name)?;
        let attributes: Vec<Value> = catalogue
            .attributes_of(&t.name)
            .into_iter()
            .map(|(owner, a)| {
                json!({
                    "name": a.name, "owner": owner.name, "description": a.description,
                    "type": a.value_type.to_string(), "backend": a.backend.clone().unwrap_or_else(|| owner.backend.clone()),
                    "multiValue": a.multi_value, "mandatory": a.mandatory, "readOnly": a.read_only,
                    "unique": a.unique, "caseSensitive": a.case_sensitive, "default": a.default,
                    "values": a.values.fixed.iter().map(|(k, l)| json!({"key": k, "label": l})).collect::<Vec<_>>(),
                    "dependsOn": a.depends_on, "blockedBy": a.blocked_by.iter().map(|(n, v)| json!({"attribute": n, "value": v})).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(json!({"type": t.name, "description": t.description, "attributes": attributes,
                  "methods": t.methods, "extensions": catalogue.extensions_of(&t.name).iter().map(|e| e.name.clone()).collect::<Vec<_>>()}))
    }
}

/// What a scan did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ScanReport {
    pub indexed: usize,
    pub removed: usize,
    /// Entries of no known type.
    pub skipped: usize,
}

/// Options of `search`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SearchOptions {
    /// Only this type (or extension).
    #[serde(default)]
    pub category: Option<String>,
    /// Also match inside values (slower).
    #[serde(default)]
    pub fallback: bool,
    /// Add related objects (`<Resolve>`, e.g. a user's groups) ranked below the hits;
    /// default on.
    #[serde(default)]
    pub secondary: Option<bool>,
    #[serde(default)]
    pub limit: Option<usize>,
}

fn result_entry(catalogue: &Catalogue, score: f64, doc: &IndexDoc) -> Value {
    let props: Props =
        doc.values.iter().map(|(k, v)| (k.clone(), v.iter().map(|s| Value::String(s.clone())).collect())).collect();
    let aspect = catalogue.get(&doc.object_type).and_then(|t| t.find.first());
    let mapped = |dest: &str| {
        aspect
            .and_then(|a| a.result.iter().find(|(_, d)| d == dest))
            .map(|(source, _)| filters::expand(source, &props).trim().to_owned())
    };
    json!({
        "dn": doc.dn,
        "uuid": doc.uuid,
        "type": doc.object_type,
        "extensions": doc.extensions,
        "title": mapped("title").unwrap_or_else(|| split_rdn(&doc.dn).0.to_owned()),
        "description": mapped("description").unwrap_or_default(),
        "relevance": score,
        "lastChanged": doc.modified,
    })
}

fn shlex_words(query: &str) -> Vec<String> {
    query.split_whitespace().map(|w| w.trim_matches('"').to_lowercase()).filter(|w| !w.is_empty()).collect()
}

/// `*` matches any run of characters; comparison ignores case.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.to_lowercase(), text.to_lowercase());
    let parts: Vec<&str> = p.split('*').collect();
    if parts.len() == 1 {
        return p == t;
    }
    let mut rest = t.as_str();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else { return false };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// A method or hook argument: an attribute's value, a method parameter, `dn` or `uuid`.
fn parameter_value(name: &str, state: &ObjectState, params: &BTreeMap<String, Value>) -> Value {
    match name {
        "dn" => json!(state.dn),
        "uuid" => json!(state.uuid),
        "__self__" => json!({"dn": state.dn, "uuid": state.uuid, "type": state.base_type, "attributes": state.values}),
        other => params.get(other).cloned().unwrap_or_else(|| match state.values.get(other) {
            Some(v) if v.len() == 1 => v[0].clone(),
            Some(v) => Value::Array(v.clone()),
            None => Value::String(other.to_owned()),
        }),
    }
}

fn relation_spec(owner: &ObjectType, attr: &AttributeDef) -> Result<RelationSpec> {
    let spec = owner.param("Relation", &attr.name).unwrap_or_default();
    RelationSpec::parse(spec).map_err(|e| ObjectError::new(ErrorCode::INTERNAL_ERROR, e))
}

/// The first `(other, value)` that blocks `attr` now.
fn blocked(attr: &AttributeDef, values: &Props) -> Option<(String, String)> {
    attr.blocked_by
        .iter()
        .find(|(other, blocking)| {
            values.get(other).and_then(|v| v.first()).is_some_and(|v| filters::text(v).eq_ignore_ascii_case(blocking))
        })
        .cloned()
}

fn apply_defaults(state: &mut ObjectState, t: &ObjectType) {
    for attr in &t.attributes {
        if let Some(default) = &attr.default
            && state.values.get(&attr.name).is_none_or(Vec::is_empty)
            && let Ok(v) = attr.value_type.parse_text(default)
        {
            state.values.insert(attr.name.clone(), vec![v]);
            state.changed.insert(attr.name.clone());
        }
    }
}

/// Attribute values as the index keeps them: text, empty ones left out.
fn text_values(props: &Props) -> BTreeMap<String, Vec<String>> {
    props
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.clone(), v.iter().map(filters::text).collect()))
        .collect()
}

/// A single value as a scalar (or null), a multi-value as a list.
fn present(attr: &AttributeDef, values: &[Value]) -> Value {
    if attr.multi_value { Value::Array(values.to_vec()) } else { values.first().cloned().unwrap_or(Value::Null) }
}

fn from_backend_one(attr: &AttributeDef, text: &str) -> Value {
    let stored = attr.backend_type.from_backend_text(text);
    attr.backend_type.convert(&stored, attr.value_type).unwrap_or(stored)
}

fn from_backend(attr: &AttributeDef, texts: &[String]) -> Vec<Value> {
    texts.iter().map(|t| from_backend_one(attr, t)).collect()
}

fn to_backend(attr: &AttributeDef, values: &[Value]) -> Result<Vec<String>> {
    values
        .iter()
        .map(|v| {
            let converted = attr
                .value_type
                .convert(v, attr.backend_type)
                .map_err(|e| ObjectError::new(ErrorCode::ATTRIBUTE_INVALID, format!("'{}': {e}", attr.name)))?;
            Ok(attr.backend_type.to_backend_text(&converted))
        })
        .collect()
}

/// SQL columns: a single value as its text, several as a JSON array.
fn encode_column(attr: &AttributeDef, texts: &[String]) -> Option<String> {
    match texts {
        [] => None,
        [one] if !attr.multi_value => Some(one.clone()),
        many => serde_json::to_string(many).ok(),
    }
}

fn decode_column(attr: &AttributeDef, text: &str) -> Vec<String> {
    if attr.multi_value {
        serde_json::from_str::<Vec<String>>(text).unwrap_or_else(|_| vec![text.to_owned()])
    } else {
        vec![text.to_owned()]
    }
}

fn unescape_rdn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The DN of a new object: its fixed RDN, or its first RDN attribute with a value.
fn new_dn(t: &ObjectType, parent: &str, props: &Props) -> Result<String> {
    if let Some(fixed) = &t.fixed_rdn {
        return Ok(format!("{fixed},{parent}"));
    }
    for rdn_attr in t.rdn_attributes() {
        if let Some(value) = props.get(&rdn_attr).and_then(|v| v.first()) {
            let backend_name = t.attribute(&rdn_attr).map(|a| a.backend_name.clone()).unwrap_or(rdn_attr);
            return Ok(format!("{backend_name}={},{parent}", escape_rdn_value(&filters::text(value))));
        }
    }
    Err(ObjectError::new(
        ErrorCode::ATTRIBUTE_MANDATORY,
        format!("a {} needs a value for {} to be named", t.name, t.rdn_attributes().join(" or ")),
    ))
}

fn backend_failure(e: BackendError, which: &str) -> ObjectError {
    match e {
        BackendError::Refused { code: 68, message } => ObjectError::new(ErrorCode::OBJECT_EXISTS, message),
        BackendError::Unavailable(m) => ObjectError::new(ErrorCode::BACKEND_UNAVAILABLE, format!("{which}: {m}")),
        other => ObjectError::new(ErrorCode::BACKEND_FAILED, format!("{which} refused the change: {other}")),
    }
}

fn second_backend_failure(e: BackendError, undo: Option<BackendError>, undone: &str) -> ObjectError {
    let message = match undo {
        None => format!("the database refused the change ({e}); {undone}, nothing was saved"),
        Some(u) => format!("the database refused the change ({e}) and undoing the directory part failed too ({u})"),
    };
    ObjectError::new(ErrorCode::BACKEND_FAILED, message)
        .with_details(json!({"backend": "SQL", "reason": e.to_string()}))
}

/// The store as filters and validators see it.
struct StoreEnv<'a> {
    store: &'a ObjectStore,
}

impl FilterEnv for StoreEnv<'_> {
    fn next_id<'a>(&'a self, attr: &'a str) -> BoxFuture<'a, std::result::Result<i64, String>> {
        Box::pin(async move {
            let taken = match &self.store.ldap {
                Some(ldap) => ldap.next_id(attr).await,
                None => self.store.sql.next_id(attr, self.store.id_start).await,
            };
            taken.map_err(|e| e.to_string())
        })
    }

    fn dn_exists<'a>(
        &'a self,
        dn: &'a str,
        of_type: Option<&'a str>,
    ) -> BoxFuture<'a, std::result::Result<bool, String>> {
        Box::pin(async move {
            match self.store.load(dn).await {
                Ok(state) => Ok(of_type.is_none_or(|t| state.base_type == t || state.active.contains(t))),
                Err(e) if e.code == ErrorCode::OBJECT_NOT_FOUND => Ok(false),
                Err(e) if e.code == ErrorCode::OBJECT_TYPE_MISMATCH => Ok(of_type.is_none()),
                Err(e) => Err(e.message),
            }
        })
    }

    fn value_taken<'a>(
        &'a self,
        of_type: &'a str,
        attr: &'a str,
        value: &'a str,
        except: Option<&'a str>,
    ) -> BoxFuture<'a, std::result::Result<bool, String>> {
        Box::pin(async move {
            let docs = self.store.index.with_value(of_type, attr, value).await.map_err(|e| e.to_string())?;
            Ok(docs.iter().any(|d| Some(d.uuid.as_str()) != except))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_rdn_values() {
        assert!(
            glob_match("ada*", "Ada Lovelace") && glob_match("*love*", "Ada Lovelace") && !glob_match("bob*", "ada")
        );
        assert!(glob_match("x", "X") && !glob_match("x", "xy"));
        assert_eq!(unescape_rdn_value("Smith\\, John"), "Smith, John");
    }
}
