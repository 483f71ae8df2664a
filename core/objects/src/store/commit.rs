//! Writing an open object, in three parts:
//!
//! - **plan**: everything that can be decided before a write — which attributes
//!   change (set ones, their dependants, generated values), out filters, the mandatory
//!   check, validators on generated values, relation targets, the new name, and what the
//!   entry and each SQL row get;
//! - **write**: the entry first (create, or rename then update, each asserting the
//!   version the object was opened at), then SQL rows; each step taken is logged;
//! - **undo**: when a step fails, the logged steps are taken back in reverse and the
//!   error says what was put back.
//!
//! After a successful write come the follow-ups: other objects' relation values and
//! references, the index, the ObjectChanged event and post hooks.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::links::ForeignChange;
use super::primary::{EntryAt, EntryChange};
use super::{
    ObjectError, ObjectState, ObjectStore, PrimaryBackend, Result, Storage, StoreEnv, backend_failure, encode_column,
    first_text, new_dn, text_values, to_backend, with_undo_outcome,
};
use crate::backend::BackendError;
use crate::description::{AttributeDef, Catalogue, HookType, ObjectType};
use crate::filters::{self, BoxFuture, Props, Scope};
use crate::index::IndexDoc;
use clacks_core::dn::{split_rdn, unescape_rdn_value};
use clacks_core::rpc::ErrorCode;

/// How long a commit's lock on an object lives if its holder dies.
const LOCK_TTL_SECS: i64 = 30;

/// What a commit writes, decided before anything is written.
struct Plan {
    creating: bool,
    types: Vec<String>,
    /// The values after out filters: what the backends get.
    props: Props,
    /// Attributes written: set ones, their dependants, generated ones.
    changed: BTreeSet<String>,
    /// Relation values to add to or remove from other objects afterwards.
    foreign: Vec<ForeignChange>,
    /// Values the entry itself keeps (backend names), and the same attributes' values
    /// when the object was opened, to put them back.
    entry_attrs: Vec<(String, Vec<String>)>,
    entry_attrs_before: Vec<(String, Vec<String>)>,
    /// SQL rows by type: column values, `None` clearing a column.
    rows: BTreeMap<String, Vec<(String, Option<String>)>>,
    /// The same columns as they were when the object was opened (and the rows a
    /// retraction drops), to put back; rows that a new extension adds are removed.
    rows_before: BTreeMap<String, Vec<(String, Option<String>)>>,
    new_rows: Vec<String>,
    /// Types whose rows go with a retraction.
    dropped_rows: Vec<String>,
    /// The new RDN when an RDN attribute changed.
    new_rdn: Option<String>,
}

/// A write step taken, and so one to take back if a later one fails.
enum Step {
    Created {
        uuid: String,
        dn: String,
    },
    Renamed {
        uuid: String,
        from: String,
        to: String,
    },
    Updated {
        uuid: String,
        dn: String,
        inverse: EntryChange,
    },
    /// Rows of an existing object written or dropped.
    Rows {
        uuid: String,
    },
}

/// Where a write stopped.
enum Failed {
    /// Before anything was written (checks, hooks).
    Early(ObjectError),
    /// Writing the entry: what was asked ("create", "rename", "update") and the refusal.
    Entry(&'static str, BackendError),
    /// Writing the SQL row of a type after the entry.
    Rows(String, BackendError),
    /// A post hook, after the backends were written.
    Hook(ObjectError),
    /// Indexing the written object.
    Index(BackendError),
}

/// What a successful write changed that others may refer to.
struct Written {
    old_dn: Option<String>,
    /// `(attribute, old, new)` of changed single values.
    renamed_values: Vec<(String, String, String)>,
}

impl ObjectStore {
    /// Writes the object. On success the state is fresh again (nothing changed); on
    /// failure nothing was written and the state is as it was.
    ///
    /// Planning runs in the caller's task. From the first write on, the commit runs in
    /// a task of its own to its end — written, or undone — even when the caller stops
    /// waiting (the dispatcher drops a command at its deadline).
    pub async fn commit(&self, state: &mut ObjectState, user: Option<&str>) -> Result<()> {
        let catalogue = self.catalogue();
        let base = ObjectStore::type_of(&catalogue, &state.base_type)?.clone();
        let primary = if state.is_new() { self.primary_for(&base) } else { self.primary_of(state)? };
        let plan = self.plan(&catalogue, primary, &base, state).await?;
        let (mut job, user) = (state.clone(), user.map(str::to_owned));
        let (result, done) = self
            .detached(move |store| async move {
                let result = store.carry_out(&catalogue, &base, plan, &mut job, user.as_deref()).await;
                (result, job)
            })
            .await?;
        *state = done;
        result
    }

    /// Runs `work` in a task of its own, so it goes on to its end when the caller stops
    /// waiting; returns what it returns when the caller is still there.
    pub(super) async fn detached<F, T>(&self, work: impl FnOnce(Arc<ObjectStore>) -> F) -> Result<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let store = self
            .me
            .upgrade()
            .ok_or_else(|| ObjectError::new(ErrorCode::INTERNAL_ERROR, "the object store is shutting down"))?;
        tokio::spawn(work(store))
            .await
            .map_err(|e| ObjectError::new(ErrorCode::INTERNAL_ERROR, format!("the change stopped: {e}")))
    }

    /// A commit of another object from within a commit (relations, references), boxed
    /// as `Send` so the recursion has a type the commit's task can hold.
    pub(super) fn commit_boxed<'a>(
        &'a self,
        state: &'a mut ObjectState,
        user: Option<&'a str>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.commit(state, user))
    }

    /// Everything of a commit after its plan: the writes (under the object's lock where
    /// needed), then what follows from them.
    async fn carry_out(
        &self,
        catalogue: &Catalogue,
        base: &ObjectType,
        plan: Plan,
        state: &mut ObjectState,
        user: Option<&str>,
    ) -> Result<()> {
        let primary = if plan.creating { self.primary_for(base) } else { self.primary_of(state)? };
        // A directory write asserts the version it read, so the directory alone needs no
        // lock; SQL parts are checked, then written, which two agents must not interleave.
        let needs_lock = !plan.creating && (!primary.asserts_versions() || self.has_rows(catalogue, state));
        let lock = match &state.uuid {
            Some(uuid) if needs_lock => {
                let (name, holder) = (format!("object:{uuid}"), uuid::Uuid::new_v4().to_string());
                self.acquire(&name, &holder).await?;
                Some((name, holder))
            }
            _ => None,
        };
        let result = self.write(catalogue, primary, state, &plan).await;
        if let Some((name, holder)) = lock
            && let Err(e) = self.index.unlock(&name, &holder).await
        {
            tracing::warn!("cannot release {name} (it expires in {LOCK_TTL_SECS} s): {e}");
        }
        let written = result?;

        // After the object itself: relations, references, the subtree in the index,
        // events, hooks. Each of these is a whole commit of its own.
        for change in &plan.foreign {
            self.update_foreign(change, user).await?;
        }
        let new_dn = state.dn().to_owned();
        if let Some(old) = &written.old_dn {
            self.index.rename_subtree(old, &new_dn).await?;
            self.rewrite_references(catalogue, "dn", &state.base_type, old, Some(&new_dn), user).await?;
        }
        for (attr, old, new) in written.renamed_values {
            self.rewrite_references(catalogue, &attr, &state.base_type, &old, Some(&new), user).await?;
        }
        let change = match (plan.creating, &written.old_dn) {
            (true, _) => "create",
            (false, Some(_)) => "move",
            (false, None) => "update",
        };
        self.announce(state.uuid(), &new_dn, change).await;
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

    // ----- plan -----

    async fn plan(
        &self,
        catalogue: &Catalogue,
        primary: &dyn PrimaryBackend,
        base: &ObjectType,
        state: &ObjectState,
    ) -> Result<Plan> {
        let types = state.effective_types();
        let creating = state.is_new();
        let attributes = catalogue.attributes_of(&state.base_type);
        let active = |owner: &ObjectType| types.contains(&owner.name);

        // What changes: set attributes, their dependants, and on create or extend
        // everything with an out filter (generated values).
        let mut changed = state.changed.clone();
        for (owner, attr) in &attributes {
            let fresh_part = creating || state.extend.contains(&owner.name);
            if active(owner)
                && fresh_part
                && (!attr.out_filter.is_empty() || !state.values.get(&attr.name).is_none_or(Vec::is_empty))
            {
                changed.insert(attr.name.clone());
            }
        }
        for _ in 0..10 {
            let before = changed.len();
            for (owner, attr) in &attributes {
                if active(owner) && attr.depends_on.iter().any(|d| changed.contains(d)) {
                    changed.insert(attr.name.clone());
                }
            }
            if changed.len() == before {
                break;
            }
        }

        // Out filters, on a copy: what the backends get.
        let env = StoreEnv { store: self };
        let mut props = state.values.clone();
        for (owner, attr) in &attributes {
            if active(owner) && changed.contains(&attr.name) && !attr.out_filter.is_empty() {
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

        // Mandatory attributes of every active part, unless blocked.
        let missing: Vec<String> = attributes
            .iter()
            .filter(|(owner, attr)| active(owner) && attr.mandatory && super::change::blocked(attr, &props).is_none())
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

        // Generated values are validated like typed ones.
        for (owner, attr) in &attributes {
            if active(owner) && changed.contains(&attr.name) && !state.changed.contains(&attr.name) {
                let values = props.get(&attr.name).cloned().unwrap_or_default();
                super::change::check_text(attr, &values)?;
                self.validate(owner, attr, &values, &props, state.uuid.as_deref()).await?;
            }
        }

        // Relations must point at existing objects before anything is written.
        let foreign = self.relation_changes(catalogue, state, &props, &changed, &types).await?;

        // What each backend gets.
        let new_rdn = if creating { None } else { renamed_rdn(catalogue, base, state, &props, &changed) };
        let mut entry_attrs = Vec::new();
        let mut entry_attrs_before = Vec::new();
        let mut rows: BTreeMap<String, Vec<(String, Option<String>)>> = BTreeMap::new();
        let mut rows_before: BTreeMap<String, Vec<(String, Option<String>)>> = BTreeMap::new();
        let loaded_texts = |attr: &AttributeDef| {
            to_backend(attr, state.loaded.get(&attr.name).map(Vec::as_slice).unwrap_or_default()).unwrap_or_default()
        };
        for (owner, attr) in &attributes {
            let retracted = state.retract.contains(&owner.name);
            if !(retracted || active(owner) && changed.contains(&attr.name)) {
                continue;
            }
            let values = if retracted { Vec::new() } else { props.get(&attr.name).cloned().unwrap_or_default() };
            let texts = to_backend(attr, &values)?;
            let was_empty = state.loaded.get(&attr.name).is_none_or(Vec::is_empty);
            match self.storage(owner, attr) {
                Storage::Entry if retracted && was_empty => {}
                // The rename sets the naming value; the directory refuses to drop it by modify.
                Storage::Entry if new_rdn.as_ref().is_some_and(|rdn| names(rdn, &attr.backend_name)) => {}
                Storage::Entry => {
                    if !retracted {
                        self.check_entry_syntax(owner, attr, &texts)?;
                    }
                    entry_attrs.push((attr.backend_name.clone(), texts));
                    entry_attrs_before.push((attr.backend_name.clone(), loaded_texts(attr)));
                }
                Storage::Rows => {
                    let column = |texts: &[String]| (attr.backend_name.clone(), encode_column(attr, texts));
                    rows.entry(owner.name.clone()).or_default().push(column(&texts));
                    rows_before.entry(owner.name.clone()).or_default().push(column(&loaded_texts(attr)));
                }
                Storage::Computed | Storage::Relation => {}
            }
        }
        // Types the entry does not mark get a row even without values: the row is the
        // marker. A new object's base type gets its row where it keeps values in rows.
        let with_rows = self.types_with_rows(catalogue, primary, &types);
        let mut new_rows = Vec::new();
        for ext in &state.extend {
            if catalogue.get(ext).is_some_and(|t| !primary.marks(t)) {
                rows.entry(ext.clone()).or_default();
                new_rows.push(ext.clone());
            }
        }
        if creating && with_rows.contains(&state.base_type) {
            rows.entry(state.base_type.clone()).or_default();
        }
        let retracted: Vec<String> = state.retract.iter().cloned().collect();
        let dropped_rows = self.types_with_rows(catalogue, primary, &retracted);
        for dropped in &dropped_rows {
            rows_before.entry(dropped.clone()).or_default();
        }

        Ok(Plan {
            creating,
            types,
            props,
            changed,
            foreign,
            entry_attrs,
            entry_attrs_before,
            rows,
            rows_before,
            new_rows,
            dropped_rows,
            new_rdn,
        })
    }

    /// The markers of the named types, as `primary` records them.
    fn markers(&self, catalogue: &Catalogue, primary: &dyn PrimaryBackend, names: &[String]) -> Vec<String> {
        let types: Vec<&ObjectType> = names.iter().filter_map(|n| catalogue.get(n)).map(|t| t.as_ref()).collect();
        primary.markers(&types)
    }

    // ----- write -----

    /// The backend writes of a commit. On failure every step taken is undone and the
    /// state is as it was.
    async fn write(
        &self,
        catalogue: &Catalogue,
        primary: &dyn PrimaryBackend,
        state: &mut ObjectState,
        plan: &Plan,
    ) -> Result<Written> {
        if !plan.creating {
            self.check_rows_unchanged(catalogue, state).await?;
        }
        let hook = if plan.creating { HookType::PreCreate } else { HookType::PreUpdate };
        self.run_hooks(catalogue, state, hook).await?;

        let before = state.clone();
        let mut steps = Vec::new();
        // An update that keeps the DN has a known index entry, written beside the
        // backends; a creation or rename learns its UUID or DN from the write, so its
        // index entry follows. Either way a failure of one undoes the other, so nothing
        // is left that search and find see wrongly or not at all.
        let beside = (!plan.creating && plan.new_rdn.is_none()).then(|| self.planned_doc(state, plan));
        let outcome = match &beside {
            Some(doc) => {
                let (written, indexed) =
                    tokio::join!(self.write_and_hook(catalogue, primary, state, plan, &mut steps), self.index.put(doc));
                match (written, indexed) {
                    (Ok(done), Ok(())) => Ok(done),
                    (Ok(_), Err(e)) => Err(Failed::Index(e)),
                    (Err(failed), _) => Err(failed),
                }
            }
            None => match self.write_and_hook(catalogue, primary, state, plan, &mut steps).await {
                Ok(done) => self.index.put(&self.planned_doc(state, plan)).await.map(|()| done).map_err(Failed::Index),
                Err(failed) => Err(failed),
            },
        };
        let (written, version) = match outcome {
            Ok(done) => done,
            Err(failed) => {
                let wrote = !steps.is_empty();
                let (undone, undo_failed) = self.undo(primary, plan, steps).await;
                *state = before;
                // Our own writes and their undo moved the version on; with everything put
                // back, the open object may try again without a false conflict.
                if wrote
                    && undo_failed.is_empty()
                    && !state.is_new()
                    && let Ok(Some(version)) = self.current_version(state).await
                {
                    state.version = Some(version);
                }
                // The index entry written beside the backends goes back to what they hold.
                if beside.is_some()
                    && let Err(e) = self.reindex(state.uuid()).await
                {
                    tracing::warn!("cannot bring the index back in line for {}: {e}", state.dn());
                }
                let failure = self.failure(state, primary, failed).await;
                return Err(with_undo_outcome(failure, &undone, &undo_failed));
            }
        };

        // The state is now what the backends hold.
        state.in_ldap = primary.is_directory();
        state.active = plan.types.iter().skip(1).cloned().collect();
        state.extend.clear();
        state.retract.clear();
        state.values = plan.props.clone();
        state.loaded = plan.props.clone();
        state.changed.clear();
        state.version = match version {
            Some(version) => Some(version),
            None => self.current_version(state).await?,
        };
        Ok(written)
    }

    /// The backend steps, then the post hooks, which see the object written.
    async fn write_and_hook(
        &self,
        catalogue: &Catalogue,
        primary: &dyn PrimaryBackend,
        state: &mut ObjectState,
        plan: &Plan,
        steps: &mut Vec<Step>,
    ) -> std::result::Result<(Written, Option<String>), Failed> {
        let done = if plan.creating {
            self.write_new(catalogue, primary, state, plan, steps).await?
        } else {
            self.write_update(catalogue, primary, state, plan, steps).await?
        };
        let post_hook = if plan.creating { HookType::PostCreate } else { HookType::PostUpdate };
        let written = ObjectState { values: plan.props.clone(), ..state.clone() };
        self.run_hooks(catalogue, &written, post_hook).await.map_err(Failed::Hook)?;
        Ok(done)
    }

    /// The index entry of the object as the plan writes it.
    fn planned_doc(&self, state: &ObjectState, plan: &Plan) -> IndexDoc {
        IndexDoc {
            extensions: plan.types.iter().skip(1).cloned().collect(),
            values: text_values(&plan.props),
            ..self.index_doc(state)
        }
    }

    /// Creates the entry, then its rows. Returns the version the create reported.
    async fn write_new(
        &self,
        catalogue: &Catalogue,
        primary: &dyn PrimaryBackend,
        state: &mut ObjectState,
        plan: &Plan,
        steps: &mut Vec<Step>,
    ) -> std::result::Result<(Written, Option<String>), Failed> {
        let base = ObjectStore::type_of(catalogue, &state.base_type).map_err(Failed::Early)?;
        let dn = new_dn(base, &state.parent, &plan.props).map_err(Failed::Early)?;
        let markers = self.markers(catalogue, primary, &plan.types);
        let binary = catalogue.binary_attributes();
        let (uuid, version) =
            primary.create(&dn, &markers, &plan.entry_attrs, binary).await.map_err(|e| Failed::Entry("create", e))?;
        steps.push(Step::Created { uuid: uuid.clone(), dn: dn.clone() });
        state.uuid = Some(uuid.clone());
        state.dn = Some(dn);
        self.write_rows(&uuid, &plan.rows).await?;
        Ok((Written { old_dn: None, renamed_values: Vec::new() }, version))
    }

    /// Renames the entry if its RDN attribute changed, updates it, then its rows.
    async fn write_update(
        &self,
        catalogue: &Catalogue,
        primary: &dyn PrimaryBackend,
        state: &mut ObjectState,
        plan: &Plan,
        steps: &mut Vec<Step>,
    ) -> std::result::Result<(Written, Option<String>), Failed> {
        let uuid = state.uuid().to_owned();
        let mut version = state.version.clone();
        let mut old_dn = None;
        if let Some(new_rdn) = &plan.new_rdn {
            let dn = state.dn().to_owned();
            let at = EntryAt { uuid: &uuid, dn: &dn };
            let (renamed, after) =
                primary.rename(at, new_rdn, None, version.as_deref()).await.map_err(|e| Failed::Entry("rename", e))?;
            steps.push(Step::Renamed { uuid: uuid.clone(), from: dn.clone(), to: renamed.clone() });
            // The rename moved the version on; the update asserts the new one.
            version = match after {
                Some(v) => Some(v),
                None => primary
                    .version(EntryAt { uuid: &uuid, dn: &renamed })
                    .await
                    .map_err(|e| Failed::Entry("rename", e))?,
            };
            old_dn = Some(dn);
            state.dn = Some(renamed);
        }

        let dn = state.dn().to_owned();
        let added: Vec<String> = state.extend.iter().cloned().collect();
        let removed: Vec<String> = state.retract.iter().cloned().collect();
        let change = EntryChange {
            attrs: plan.entry_attrs.clone(),
            added: self.markers(catalogue, primary, &added),
            removed: self.markers(catalogue, primary, &removed),
            markers: self.markers(catalogue, primary, &plan.types),
        };
        let at = EntryAt { uuid: &uuid, dn: &dn };
        let binary = catalogue.binary_attributes();
        let new_version =
            primary.update(at, &change, binary, version.as_deref()).await.map_err(|e| Failed::Entry("update", e))?;
        let types_before: Vec<String> = std::iter::once(&state.base_type).chain(&state.active).cloned().collect();
        let markers_before = self.markers(catalogue, primary, &types_before);
        let inverse = change.inverse(plan.entry_attrs_before.clone(), markers_before);
        steps.push(Step::Updated { uuid: uuid.clone(), dn: dn.clone(), inverse });

        steps.push(Step::Rows { uuid: uuid.clone() });
        self.write_rows(&uuid, &plan.rows).await?;
        for t in &plan.dropped_rows {
            self.sql.delete(t, &uuid).await.map_err(|e| Failed::Rows(t.clone(), e))?;
        }

        let mut renamed_values = Vec::new();
        for name in &plan.changed {
            if let (Some(old), Some(new)) = (first_text(&state.loaded, name), first_text(&plan.props, name))
                && old != new
            {
                renamed_values.push((name.clone(), old, new));
            }
        }
        Ok((Written { old_dn, renamed_values }, new_version))
    }

    /// Writes each type's row; a refusal names the type.
    async fn write_rows(
        &self,
        uuid: &str,
        rows: &BTreeMap<String, Vec<(String, Option<String>)>>,
    ) -> std::result::Result<(), Failed> {
        for (owner, values) in rows {
            self.sql.write(owner, uuid, values).await.map_err(|e| Failed::Rows(owner.clone(), e))?;
        }
        Ok(())
    }

    // ----- undo -----

    /// Takes back the steps in reverse. Returns what was put back and what could not be.
    async fn undo(&self, primary: &dyn PrimaryBackend, plan: &Plan, steps: Vec<Step>) -> (Vec<String>, Vec<String>) {
        let (mut undone, mut failed) = (Vec::new(), Vec::new());
        let binary = HashSet::new();
        for step in steps.into_iter().rev() {
            let (outcome, what) = match &step {
                Step::Created { uuid, dn } => {
                    for t in plan.rows.keys() {
                        if let Err(e) = self.sql.delete(t, uuid).await {
                            tracing::error!("cannot remove the {t} row of {dn} after a failed commit: {e}");
                        }
                    }
                    (primary.delete(EntryAt { uuid, dn }).await, "the new entry was removed again".to_owned())
                }
                Step::Renamed { uuid, from, to } => {
                    let (old_rdn, _) = split_rdn(from);
                    let at = EntryAt { uuid, dn: to };
                    (primary.rename(at, old_rdn, None, None).await.map(|_| ()), "the old name was put back".to_owned())
                }
                Step::Rows { uuid } => {
                    let mut outcome = match self.write_rows(uuid, &plan.rows_before).await {
                        Err(Failed::Rows(_, e)) => Err(e),
                        _ => Ok(()),
                    };
                    for t in &plan.new_rows {
                        outcome = outcome.and(self.sql.delete(t, uuid).await);
                    }
                    (outcome, "the database rows were restored".to_owned())
                }
                Step::Updated { uuid, dn, inverse } => (
                    primary.update(EntryAt { uuid, dn }, inverse, &binary, None).await.map(|_| ()),
                    format!("{} entry was restored", primary.label()),
                ),
            };
            match outcome {
                Ok(()) => undone.push(what),
                Err(e) => {
                    tracing::error!("a failed commit could not be undone ({what}): {e}");
                    failed.push(format!("{what}: no ({e})"));
                }
            }
        }
        (undone, failed)
    }

    /// The error for where a write stopped; `state` is as before the write.
    async fn failure(&self, state: &ObjectState, primary: &dyn PrimaryBackend, failed: Failed) -> ObjectError {
        match failed {
            Failed::Early(e) | Failed::Hook(e) => e,
            Failed::Entry(doing, e) => self.entry_failure(state, e, primary.label(), doing).await,
            Failed::Index(e) => {
                ObjectError::new(ErrorCode::BACKEND_FAILED, format!("the index refused the change ({e})"))
                    .with_details(json!({"backend": "index", "reason": e.to_string()}))
            }
            Failed::Rows(of_type, e) => {
                let what = state.dn.clone().unwrap_or_else(|| format!("the new {}", state.base_type));
                ObjectError::new(
                    ErrorCode::BACKEND_FAILED,
                    format!("the database refused the change ({e}) to the {of_type} values of {what}"),
                )
                .with_details(json!({"backend": "SQL", "table": of_type, "reason": e.to_string()}))
            }
        }
    }

    /// A refused write of the entry: a conflict names what changed, a vanished entry
    /// says so.
    pub(super) async fn entry_failure(
        &self,
        state: &ObjectState,
        e: BackendError,
        label: &str,
        doing: &str,
    ) -> ObjectError {
        match e {
            BackendError::Conflict(_) => self.conflict(state, Vec::new()).await,
            BackendError::NotFound(_) => {
                let what = state.dn.clone().or_else(|| state.uuid.clone()).unwrap_or_default();
                ObjectError::new(ErrorCode::OBJECT_NOT_FOUND, format!("{what} was removed meanwhile"))
            }
            other => {
                let what = state.dn.clone().unwrap_or_else(|| format!("the new {}", state.base_type));
                backend_failure(other, label, &format!("{doing} {what}"))
            }
        }
    }

    // ----- versions and conflicts -----

    pub(super) async fn current_version(&self, state: &ObjectState) -> Result<Option<String>> {
        let primary = self.primary_of(state)?;
        Ok(primary.version(EntryAt { uuid: state.uuid(), dn: state.dn() }).await?)
    }

    /// Refuses the commit when SQL-wired attributes changed since the object was opened
    /// and the entry's version does not tell (the directory knows nothing of rows).
    pub(super) async fn check_rows_unchanged(&self, catalogue: &Catalogue, state: &ObjectState) -> Result<()> {
        if self.primary_of(state)?.versions_rows() {
            return Ok(());
        }
        let types = state.effective_types();
        let row_attrs: Vec<&str> = catalogue
            .attributes_of(&state.base_type)
            .into_iter()
            .filter(|(owner, attr)| types.contains(&owner.name) && self.storage(owner, attr) == Storage::Rows)
            .map(|(_, attr)| attr.name.as_str())
            .collect();
        if row_attrs.is_empty() {
            return Ok(());
        }
        let fresh = self.read_values(catalogue, state, &Default::default()).await?;
        let changed: Vec<String> = row_attrs
            .iter()
            .filter(|a| fresh.get(**a).filter(|v| !v.is_empty()) != state.loaded.get(**a).filter(|v| !v.is_empty()))
            .map(|a| (*a).to_owned())
            .collect();
        if changed.is_empty() { Ok(()) } else { Err(self.conflict(state, changed).await) }
    }

    /// The conflict error, naming what someone else changed since the object was opened.
    async fn conflict(&self, state: &ObjectState, mut changed: Vec<String>) -> ObjectError {
        if let Ok(fresh) = self.load(state.uuid()).await {
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
                state.dn(),
                if changed.is_empty() { "metadata".to_owned() } else { changed.join(", ") }
            ),
        )
        .with_details(json!({"changed": changed}))
    }
}

/// The new RDN when committing `props` changes the value of the object's RDN attribute.
fn renamed_rdn(
    catalogue: &Catalogue,
    base: &ObjectType,
    state: &ObjectState,
    props: &Props,
    changed: &BTreeSet<String>,
) -> Option<String> {
    if base.fixed_rdn.is_some() {
        return None;
    }
    let (rdn, _) = split_rdn(state.dn.as_deref()?);
    let (rdn_attr, rdn_value) = rdn.split_once('=')?;
    let (_, attr) = catalogue
        .attributes_of(&state.base_type)
        .into_iter()
        .find(|(_, a)| a.backend_name.eq_ignore_ascii_case(rdn_attr))?;
    let new_value = first_text(props, &attr.name).filter(|_| changed.contains(&attr.name))?;
    (unescape_rdn_value(rdn_value) != new_value).then(|| format!("{rdn_attr}={}", ldap3::dn_escape(new_value.as_str())))
}

/// Whether `rdn` (`attr=value`) is named by the attribute `backend_name`.
fn names(rdn: &str, backend_name: &str) -> bool {
    rdn.split_once('=').is_some_and(|(attr, _)| attr.eq_ignore_ascii_case(backend_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdn_attributes_name_rdns() {
        assert!(names("uid=ada", "UID") && !names("cn=ada", "uid"));
    }
}
