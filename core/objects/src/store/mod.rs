//! The object store: descriptions, backends and index working together.
//!
//! An object is a base type plus the extensions active on it. Its entry (DN, UUID,
//! types) lives in a primary backend — the directory for LDAP types when one is
//! configured, the SQL database otherwise — reached only through [`PrimaryBackend`];
//! its attributes are spread as the descriptions wire them: on the entry itself
//! (directory attributes), in SQL rows keyed by the UUID, computed (nowhere) or in
//! other objects (relations). [`ObjectState`] is an open object: its values as loaded,
//! the changes made since, and pending extensions. It is plain data, so open
//! references can live in the shared index database and any agent can continue them.
//!
//! The work is split by operation: [`load`] reads objects, [`change`] checks and
//! applies edits to an open object, [`commit`] writes them (plan → write → undo),
//! [`links`] keeps relations and references between objects true, [`lifecycle`]
//! moves and removes, [`sync`] keeps the index in line with the backends, [`search`]
//! finds objects, [`references`] keeps open objects between calls and [`views`] says
//! what a client sees.
//!
//! Invariants:
//! - a value reaches a backend only after its type, allowed values, validators,
//!   read-only and blocked-by rules, out filters and the mandatory check have passed;
//! - the primary backend is written first; if a later step fails, every step taken is
//!   undone in reverse (a new entry removed, changed values and a new name restored)
//!   before the error is returned;
//! - a commit compares the object's version with the one it was opened at and refuses
//!   with `OBJECT_CONFLICT`, naming the attributes someone else changed;
//! - backends report "exists" and "changed meanwhile" as typed errors; the store never
//!   looks at a server's result codes.

mod change;
mod commit;
mod lifecycle;
mod links;
mod load;
mod primary;
mod references;
mod search;
mod sync;
mod views;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backend::BackendError;
use crate::backend::ldap::{LdapBackend, LdapSettings};
use crate::backend::sql::{Db, SqlBackend};
use crate::description::{AttributeDef, Catalogue, Diagnostic, ObjectType};
use crate::filters::{self, BoxFuture, FilterEnv, Props};
use crate::index::Index;
use crate::relation::RelationSpec;
use clacks_core::dn::split_rdn;
use clacks_core::events::{EventPublisher, EventValidator};
use clacks_core::rpc::ErrorCode;

pub(crate) use primary::PrimaryBackend;
pub use search::{DEFAULT_SEARCH_LIMIT, MAX_SEARCH_LIMIT, SearchHit, SearchOptions, SearchPage, glob_match};
pub use sync::{EntryProblem, ScanReport};

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
            BackendError::Exists(m) => ObjectError::new(ErrorCode::OBJECT_EXISTS, m),
            BackendError::Conflict(m) => ObjectError::new(ErrorCode::OBJECT_CONFLICT, m),
            other => ObjectError::new(ErrorCode::BACKEND_FAILED, other.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, ObjectError>;

fn not_found(what: &str) -> ObjectError {
    ObjectError::new(ErrorCode::OBJECT_NOT_FOUND, format!("no object {}", filters::clip(what)))
}

/// A write a backend refused, saying which backend (`which`: "the directory", …) and
/// what it was asked to do (`doing`: "create uid=ada,…").
fn backend_failure(e: BackendError, which: &str, doing: &str) -> ObjectError {
    match e {
        BackendError::Exists(message) => ObjectError::new(ErrorCode::OBJECT_EXISTS, message),
        BackendError::Unavailable(m) => {
            ObjectError::new(ErrorCode::BACKEND_UNAVAILABLE, format!("{which} could not {doing}: {m}"))
        }
        other => ObjectError::new(ErrorCode::BACKEND_FAILED, format!("{which} refused to {doing}: {other}")),
    }
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
    /// The lowest uidNumber/gidNumber `IsUnixId` allows (default
    /// [`DEFAULT_MIN_UNIX_ID`]).
    #[serde(default)]
    pub min_unix_id: Option<i64>,
}

/// Below 1000 are the system's own accounts (Debian's `FIRST_UID`); 0 is root.
pub const DEFAULT_MIN_UNIX_ID: i64 = 1000;

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
    /// Whether the entry lives in the directory (else in SQL). Kept under this name
    /// because open references are stored in this form.
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

    fn uuid(&self) -> &str {
        self.uuid.as_deref().unwrap_or_default()
    }

    fn dn(&self) -> &str {
        self.dn.as_deref().unwrap_or_default()
    }
}

/// Where one attribute's values are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Storage {
    /// On the directory entry itself.
    Entry,
    /// In the SQL row of its type, keyed by the object's UUID.
    Rows,
    /// Nowhere: computed from defaults and filters.
    Computed,
    /// In other objects (`<Backend>Relation</Backend>`).
    Relation,
}

/// The object layer of one agent.
pub struct ObjectStore {
    /// The store itself, for work that must outlive its caller (a commit's writes).
    me: std::sync::Weak<ObjectStore>,
    catalogue: RwLock<Arc<Catalogue>>,
    validator: EventValidator,
    dirs: Vec<PathBuf>,
    ldap: Option<LdapBackend>,
    sql: SqlBackend,
    index: Index,
    base: String,
    id_start: i64,
    min_unix_id: i64,
    idle_secs: i64,
    events: RwLock<Option<sync::ChangeQueue>>,
    runner: RwLock<Option<Arc<dyn CommandRunner>>>,
    problems: sync::Problems,
}

impl std::fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStore").field("base", &self.base).field("ldap", &self.ldap).finish_non_exhaustive()
    }
}

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
        let (sql, index) = (SqlBackend::open(db).await?, Index::open(index_db).await?);
        let store = Arc::new_cyclic(|me| ObjectStore {
            me: me.clone(),
            catalogue: RwLock::new(Arc::new(catalogue)),
            validator,
            dirs: config.dirs.clone(),
            id_start: config.ldap.as_ref().map_or(10000, |l| l.id_start),
            min_unix_id: config.min_unix_id.unwrap_or(DEFAULT_MIN_UNIX_ID),
            ldap,
            sql,
            index,
            base,
            idle_secs: config.reference_idle_secs.unwrap_or(3600),
            events: RwLock::new(None),
            runner: RwLock::new(None),
            problems: sync::Problems::default(),
        });
        store.ensure_root().await?;
        Ok(store)
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
        Ok(stored.is_some_and(|stored| crate::password::verify(stored, password)))
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

    /// Publishes the store's change events with `publisher` from now on, in the order
    /// of the changes, without a commit waiting for the broker.
    pub fn set_publisher(&self, publisher: EventPublisher) {
        if let Ok(mut p) = self.events.write() {
            *p = Some(sync::ChangeQueue::start(publisher));
        }
    }

    /// Waits (at most `within`) until every change event announced so far has been
    /// handed to the bus; for a stopping agent, before it closes its connection.
    pub async fn flush_events(&self, within: std::time::Duration) {
        let queue = self.events.read().ok().and_then(|q| q.clone());
        if let Some(queue) = queue {
            queue.flush(within).await;
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
            "LDAP" if self.ldap.is_some() => Storage::Entry,
            "NULL" => Storage::Computed,
            "Relation" => Storage::Relation,
            _ => Storage::Rows,
        }
    }

    /// Every primary backend, the directory first: an entry is looked for there before
    /// the database.
    fn primaries(&self) -> impl Iterator<Item = &dyn PrimaryBackend> {
        let directory = self.ldap.as_ref().map(|l| l as &dyn PrimaryBackend);
        directory.into_iter().chain([&self.sql as &dyn PrimaryBackend])
    }

    /// Where new objects of type `t` get their entry: the directory for LDAP types when
    /// there is one, else the database.
    fn primary_for(&self, t: &ObjectType) -> &dyn PrimaryBackend {
        match &self.ldap {
            Some(ldap) if t.backend == "LDAP" => ldap,
            _ => &self.sql,
        }
    }

    /// Where an open object's entry is.
    fn primary_of(&self, state: &ObjectState) -> Result<&dyn PrimaryBackend> {
        if !state.in_ldap {
            return Ok(&self.sql);
        }
        match &self.ldap {
            Some(ldap) => Ok(ldap),
            None => Err(ObjectError::new(
                ErrorCode::BACKEND_UNAVAILABLE,
                format!("{} lives in the directory, and no directory is configured", state.dn()),
            )),
        }
    }

    /// Whether the object keeps values of its active types in SQL rows.
    fn has_rows(&self, catalogue: &Catalogue, state: &ObjectState) -> bool {
        let types = state.effective_types();
        catalogue
            .attributes_of(&state.base_type)
            .into_iter()
            .any(|(owner, attr)| types.contains(&owner.name) && self.storage(owner, attr) == Storage::Rows)
    }

    /// Refuses what the directory would refuse for an attribute kept on its entry (the
    /// attribute's LDAP syntax: ASCII-only gecos, say), before anything is written.
    fn check_entry_syntax(&self, owner: &ObjectType, attr: &AttributeDef, texts: &[String]) -> Result<()> {
        let Some(ldap) = self.ldap.as_ref().filter(|_| self.storage(owner, attr) == Storage::Entry) else {
            return Ok(());
        };
        match texts.iter().find_map(|text| ldap.refuses(&attr.backend_name, text)) {
            None => Ok(()),
            Some(why) => Err(ObjectError::new(ErrorCode::ATTRIBUTE_CHECK_FAILED, format!("'{}': {why}", attr.name))
                .with_details(serde_json::json!({"attribute": attr.name}))),
        }
    }

    fn type_of<'c>(catalogue: &'c Catalogue, name: &str) -> Result<&'c Arc<ObjectType>> {
        catalogue.get(name).ok_or_else(|| {
            ObjectError::new(ErrorCode::ATTRIBUTE_NOT_FOUND, format!("unknown object type '{}'", filters::clip(name)))
        })
    }
}

fn relation_spec(owner: &ObjectType, attr: &AttributeDef) -> Result<RelationSpec> {
    let spec = owner.param("Relation", &attr.name).unwrap_or_default();
    RelationSpec::parse(spec).map_err(|e| ObjectError::new(ErrorCode::INTERNAL_ERROR, e))
}

/// Attribute values as the index keeps them: text, empty ones left out.
fn text_values(props: &Props) -> BTreeMap<String, Vec<String>> {
    props
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.clone(), v.iter().map(filters::text).collect()))
        .collect()
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

/// The DN of a new object: its fixed RDN, or its first RDN attribute with a value.
fn new_dn(t: &ObjectType, parent: &str, props: &Props) -> Result<String> {
    if let Some(fixed) = &t.fixed_rdn {
        return Ok(format!("{fixed},{parent}"));
    }
    for rdn_attr in t.rdn_attributes() {
        if let Some(value) = props.get(&rdn_attr).and_then(|v| v.first()) {
            let backend_name = t.attribute(&rdn_attr).map(|a| a.backend_name.clone()).unwrap_or(rdn_attr);
            return Ok(format!("{backend_name}={},{parent}", ldap3::dn_escape(filters::text(value))));
        }
    }
    Err(ObjectError::new(
        ErrorCode::ATTRIBUTE_MANDATORY,
        format!("a {} needs a value for {} to be named", t.name, t.rdn_attributes().join(" or ")),
    ))
}

/// The store as filters and validators see it.
struct StoreEnv<'a> {
    store: &'a ObjectStore,
}

impl FilterEnv for StoreEnv<'_> {
    fn next_id<'a>(&'a self, attr: &'a str) -> BoxFuture<'a, std::result::Result<i64, String>> {
        Box::pin(async move {
            // Numbers come from the directory when there is one, so accounts made
            // outside Clacks draw from the same pool.
            let taken = match &self.store.ldap {
                Some(ldap) => ldap.next_id(attr).await,
                None => self.store.sql.next_id(attr, self.store.id_start).await,
            };
            taken.map_err(|e| e.to_string())
        })
    }

    fn min_unix_id(&self) -> i64 {
        self.store.min_unix_id
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

/// Values users set are JSON; what they mean for one attribute is text.
fn first_text(props: &Props, name: &str) -> Option<String> {
    props.get(name).and_then(|v| v.first()).map(filters::text)
}

/// The error of a failed step, with what undoing the steps before it did.
fn with_undo_outcome(failure: ObjectError, undone: &[String], undo_failed: &[String]) -> ObjectError {
    if undone.is_empty() && undo_failed.is_empty() {
        return failure;
    }
    let mut message = failure.message;
    if !undone.is_empty() {
        message.push_str(&format!("; {}", undone.join(" and ")));
    }
    if undo_failed.is_empty() {
        message.push_str(", nothing was saved");
    } else {
        message.push_str(&format!("; undoing failed too: {}", undo_failed.join("; ")));
    }
    ObjectError { message, ..failure }
}
