//! The remote object API on target `objects`: open an object (or a new one), read and
//! set its properties, run its methods, commit; remove, search and describe objects.
//!
//! An open object is a reference (`ref`) that belongs to the user who opened it. Its
//! state lives in the index database, so the next call may reach any agent of the
//! domain sharing that database; an idle reference expires.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use clacks_core::command::{CallContext, CommandError, CommandResult};
use clacks_core::dispatch::Dispatcher;
use clacks_core::rpc::{ErrorCode, Params};
use clacks_objects::filters::BoxFuture;
use clacks_objects::index::IndexDoc;
use clacks_objects::index::SearchScope;
use clacks_objects::store::{CommandRunner, ObjectError, SearchOptions, SearchPage};
use clacks_objects::{ObjectState, ObjectStore};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

/// The `objects` plugin.
pub struct ObjectsPlugin {
    pub(crate) store: Arc<ObjectStore>,
    /// With ACLs: every operation needs its permission on `<domain>.objects.…`.
    pub(crate) acl: Option<clacks_acl::SharedAcl>,
    pub(crate) domain: clacks_core::domain::Domain,
}

/// Who owns and who manages one object, looked up before a check (`o`, `m`).
struct Relatives {
    owner: Option<String>,
    managers: Vec<String>,
}

impl clacks_acl::RelativeLookup for Relatives {
    fn owner(&self, _: &str) -> Option<String> {
        self.owner.clone()
    }
    fn managers(&self, _: &str) -> Vec<String> {
        self.managers.clone()
    }
}

fn verb(letters: &str) -> &'static str {
    match letters.chars().next() {
        Some('r') => "read",
        Some('w') => "write",
        Some('c') => "create",
        Some('d') => "delete",
        Some('s') => "find",
        Some('x') => "run",
        _ => "use",
    }
}

fn user_of(ctx: &CallContext) -> CommandResult<&str> {
    ctx.user
        .as_deref()
        .ok_or_else(|| CommandError::new(ErrorCode::COMMAND_NO_USERNAME, "objects belong to a user; call as one"))
}

fn invalid(message: impl Into<String>) -> CommandError {
    CommandError::new(ErrorCode::INVALID_PARAMS, message)
}

impl ObjectsPlugin {
    /// The owner (its uid) and managers (their uids) of the object at `dn`, from the index.
    async fn relatives(&self, dn: &str) -> Relatives {
        match self.store.index().by_dn(dn).await.ok().flatten() {
            Some(doc) => self.relatives_of(&doc).await,
            None => Relatives { owner: None, managers: Vec::new() },
        }
    }

    /// The owner and managers of an object whose index document is at hand (a search
    /// or find hit): only its managers are looked up.
    async fn relatives_of(&self, doc: &IndexDoc) -> Relatives {
        let uid_of = |d: &IndexDoc| d.values.get("uid").and_then(|v| v.first()).cloned();
        let mut managers = Vec::new();
        for manager in doc.values.get("manager").into_iter().flatten() {
            if let Ok(Some(m)) = self.store.index().by_dn(manager).await
                && let Some(uid) = uid_of(&m)
            {
                managers.push(uid);
            }
        }
        Relatives { owner: uid_of(doc), managers }
    }

    /// The caller's permissions for one command.
    fn guard<'a>(&'a self, ctx: &'a CallContext) -> Guard<'a> {
        let user = ctx.user.as_deref();
        // The engine lets these through without looking at the target: no ACLs, an
        // internal call (no user), an administrator. Decided once, so their commands
        // look up no owners or managers.
        let unrestricted = match (&self.acl, user) {
            (Some(acl), Some(user)) => acl.read().is_ok_and(|engine| engine.is_admin(user)),
            _ => true,
        };
        Guard { plugin: self, user, unrestricted, relatives: HashMap::new() }
    }

    /// The permission a `dispatchObjectMethod` call needs, checked before it runs.
    async fn check_method(
        guard: &mut Guard<'_>,
        state: &ObjectState,
        method: &str,
        args: &[Value],
    ) -> CommandResult<()> {
        let target = ObjectsPlugin::target_of(state);
        let text = |i: usize| args.get(i).and_then(Value::as_str).unwrap_or_default().to_owned();
        match method {
            "commit" if state.dn.is_none() => guard.require(&state.base_type, "c", &target).await,
            "extend" => guard.require(&text(0), "c", &target).await,
            "retract" => guard.require(&text(0), "d", &target).await,
            "remove" => guard.require(&state.base_type, "d", &target).await,
            "move" => {
                guard.require(&format!("{}.attributes.base", state.base_type), "w", &target).await?;
                guard.require(&state.base_type, "c", &text(0)).await
            }
            "commit" | "reload" | "diff" | "close" => Ok(()),
            other => {
                let catalogue = guard.plugin.store.catalogue();
                let owner = state
                    .effective_types()
                    .into_iter()
                    .find(|t| catalogue.get(t).is_some_and(|d| d.methods.iter().any(|m| m.name == other)))
                    .unwrap_or_else(|| state.base_type.clone());
                guard.require(&format!("{owner}.methods.{other}"), "x", &target).await
            }
        }
    }

    /// Where a state's checks apply: its DN, or for a new object its parent.
    fn target_of(state: &ObjectState) -> String {
        state.dn.clone().unwrap_or_else(|| state.parent.clone())
    }

    /// The type owning attribute `name` on `state`'s objects (for attribute topics).
    fn owner_of(&self, state: &ObjectState, name: &str) -> String {
        self.store
            .catalogue()
            .find_attribute(&state.base_type, name)
            .map(|(owner, _)| owner.name.clone())
            .unwrap_or_else(|| state.base_type.clone())
    }

    /// The view without the attributes the caller may not read.
    async fn readable_view(&self, guard: &mut Guard<'_>, state: &ObjectState, mut view: Value) -> Value {
        if self.acl.is_none() {
            return view;
        }
        let target = ObjectsPlugin::target_of(state);
        if let Some(Value::Object(attributes)) = view.get_mut("attributes") {
            let names: Vec<String> = attributes.keys().cloned().collect();
            for name in names {
                let topic = format!("{}.attributes.{name}", self.owner_of(state, &name));
                if !guard.allowed(&topic, "r", &target).await {
                    attributes.remove(&name);
                }
            }
        }
        view
    }

    async fn open_state(&self, target: &str, object_type: Option<&str>) -> CommandResult<ObjectState> {
        Ok(match object_type {
            Some(t) => self.store.new_object(target, t).await?,
            None => self.store.load(target).await?,
        })
    }

    /// Loads the reference, lets `change` work on it (checking permissions with the
    /// guard), saves it back, returns the view.
    async fn with_reference<F>(&self, ctx: &CallContext, reference: &str, change: F) -> CommandResult<Value>
    where
        F: AsyncFnOnce(&ObjectStore, &mut ObjectState, &mut Guard<'_>) -> CommandResult<Option<Value>>,
    {
        let user = user_of(ctx)?;
        let mut guard = self.guard(ctx);
        let mut state = self.store.reference(reference, user).await?;
        let opened = state.clone();
        let outcome = change(&self.store, &mut state, &mut guard).await;
        // Whatever happened, the reference keeps what succeeded (a failed commit keeps
        // the pending changes, so the caller can fix one attribute and commit again).
        // A call that changed nothing (a read, a refused value) writes nothing back.
        if state != opened {
            self.store.save_reference(reference, user, &state).await?;
        }
        match outcome? {
            Some(value) => Ok(value),
            None => Ok(self.readable_view(&mut guard, &state, self.store.view(reference, &state)).await),
        }
    }
}

/// The caller's permissions during one command: each target's owner and managers are
/// looked up once, however many attributes or hits are checked.
struct Guard<'a> {
    plugin: &'a ObjectsPlugin,
    user: Option<&'a str>,
    /// Every check passes (see [`ObjectsPlugin::guard`]).
    unrestricted: bool,
    relatives: HashMap<String, Relatives>,
}

impl Guard<'_> {
    /// Refuses with `PERMISSION_EXEC` unless the caller has `letters` on
    /// `<domain>.objects.<topic>` at `target`.
    async fn require(&mut self, topic: &str, letters: &str, target: &str) -> CommandResult<()> {
        let Some(acl) = self.plugin.acl.as_ref().filter(|_| !self.unrestricted) else { return Ok(()) };
        if !self.relatives.contains_key(target) {
            let found = self.plugin.relatives(target).await;
            self.relatives.insert(target.to_owned(), found);
        }
        let full_topic = self.plugin.domain.objects_topic(topic);
        let request =
            clacks_acl::Request { user: self.user, topic: &full_topic, letters, target: Some(target), options: None };
        let relatives = self.relatives.get(target).unwrap_or(&NOBODY);
        let user = self.user.unwrap_or("nobody");
        clacks_acl::require(acl, &request, relatives, || {
            format!("{user} may not {} {topic} at {target}", verb(letters))
        })
        .map_err(CommandError::from)
    }

    async fn allowed(&mut self, topic: &str, letters: &str, target: &str) -> bool {
        self.require(topic, letters, target).await.is_ok()
    }

    /// Learns a hit's relatives from its index document, sparing a lookup per hit.
    async fn know(&mut self, doc: &IndexDoc) {
        if !self.unrestricted && !self.relatives.contains_key(&doc.dn) {
            let found = self.plugin.relatives_of(doc).await;
            self.relatives.insert(doc.dn.clone(), found);
        }
    }
}

/// Relatives of an object nobody owns or manages.
static NOBODY: Relatives = Relatives { owner: None, managers: Vec::new() };

#[clacks_core::plugin(target = "objects")]
impl ObjectsPlugin {
    /// Open an object by DN or UUID, or, with object_type, a new object of that type to be created below the DN; returns a reference and the object's properties.
    #[command(needs_user)]
    async fn open_object(
        &self,
        ctx: &CallContext,
        target: String,
        object_type: Option<String>,
    ) -> CommandResult<Value> {
        let state = self.open_state(&target, object_type.as_deref()).await?;
        let letters = if state.dn.is_none() { "c" } else { "r" };
        let mut guard = self.guard(ctx);
        guard.require(&state.base_type, letters, &ObjectsPlugin::target_of(&state)).await?;
        let view = self.store.open_reference(user_of(ctx)?, state.clone()).await?;
        Ok(self.readable_view(&mut guard, &state, view).await)
    }

    /// Read one property of an open object.
    #[command(needs_user, idempotent)]
    async fn get_object_property(&self, ctx: &CallContext, reference: String, name: String) -> CommandResult<Value> {
        let view = self
            .with_reference(ctx, &reference, async |_, state, guard| {
                let topic = format!("{}.attributes.{name}", self.owner_of(state, &name));
                guard.require(&topic, "r", &ObjectsPlugin::target_of(state)).await?;
                Ok(None)
            })
            .await?;
        view.get("attributes").and_then(|a| a.get(&name)).cloned().ok_or_else(|| {
            CommandError::new(ErrorCode::ATTRIBUTE_NOT_FOUND, format!("the object has no active attribute '{name}'"))
        })
    }

    /// Set one property of an open object (checked now, written on commit); returns the stored value.
    #[command(needs_user)]
    async fn set_object_property(
        &self,
        ctx: &CallContext,
        reference: String,
        name: String,
        value: Value,
    ) -> CommandResult<Value> {
        let view = self
            .with_reference(ctx, &reference, async |store, state, guard| {
                let topic = format!("{}.attributes.{name}", self.owner_of(state, &name));
                guard.require(&topic, "w", &ObjectsPlugin::target_of(state)).await?;
                store.set(state, &name, &value).await?;
                Ok(None)
            })
            .await?;
        Ok(view.get("attributes").and_then(|a| a.get(&name)).cloned().unwrap_or(Value::Null))
    }

    /// Run a method of an open object: commit, extend(type), retract(type), move(parent), remove(recursive), reload, diff, close, or one its description defines.
    #[command(needs_user)]
    async fn dispatch_object_method(
        &self,
        ctx: &CallContext,
        reference: String,
        method: String,
        args: Option<Vec<Value>>,
    ) -> CommandResult<Value> {
        let args = args.unwrap_or_default();
        let user = user_of(ctx)?.to_owned();
        let text_arg = |i: usize, what: &str| -> CommandResult<String> {
            args.get(i)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| invalid(format!("{method} needs {what}")))
        };
        match method.as_str() {
            "commit" => {
                self.with_reference(ctx, &reference, async |store, state, guard| {
                    ObjectsPlugin::check_method(guard, state, &method, &args).await?;
                    store.commit(state, Some(&user)).await?;
                    Ok(None)
                })
                .await
            }
            "extend" => {
                let ext = text_arg(0, "the extension's type")?;
                self.with_reference(ctx, &reference, async |store, state, guard| {
                    ObjectsPlugin::check_method(guard, state, &method, &args).await?;
                    store.extend(state, &ext)?;
                    Ok(None)
                })
                .await
            }
            "retract" => {
                let ext = text_arg(0, "the extension's type")?;
                self.with_reference(ctx, &reference, async |store, state, guard| {
                    ObjectsPlugin::check_method(guard, state, &method, &args).await?;
                    store.retract(state, &ext)?;
                    Ok(None)
                })
                .await
            }
            "move" => {
                let parent = text_arg(0, "the new parent DN")?;
                self.with_reference(ctx, &reference, async |store, state, guard| {
                    ObjectsPlugin::check_method(guard, state, &method, &args).await?;
                    store.move_object(state, &parent, Some(&user)).await?;
                    Ok(None)
                })
                .await
            }
            "remove" => {
                let recursive = args.first().and_then(Value::as_bool).unwrap_or(false);
                let state = self.store.reference(&reference, &user).await?;
                ObjectsPlugin::check_method(&mut self.guard(ctx), &state, &method, &args).await?;
                let Some(dn) = state.dn.clone() else {
                    self.store.close_reference(&reference, &user).await?;
                    return Ok(json!([]));
                };
                let removed = self.store.remove(&dn, recursive, Some(&user)).await?;
                self.store.close_reference(&reference, &user).await?;
                Ok(json!(removed))
            }
            "reload" => self.reload_object(ctx, reference).await,
            "diff" => self.diff_object(ctx, reference).await,
            "close" => self.close_object(ctx, reference).await.map(Value::Bool),
            other => {
                let other = other.to_owned();
                self.with_reference(ctx, &reference, async |store, state, guard| {
                    ObjectsPlugin::check_method(guard, state, &method, &args).await?;
                    let result = store.call_method(state, &other, &args, Some(&user)).await?;
                    // A method's command may change the object (changePassword, lock):
                    // an object without pending changes follows it, so a later commit
                    // does not trip over the method's own write.
                    let pending = !state.changed.is_empty() || !state.extend.is_empty() || !state.retract.is_empty();
                    if !pending && let Some(uuid) = state.uuid.clone() {
                        *state = store.load(&uuid).await?;
                    }
                    Ok(Some(result))
                })
                .await
            }
        }
    }

    /// Remove the object at a DN or UUID; with recursive=true also everything below it.
    #[command(needs_user)]
    async fn remove_object(
        &self,
        ctx: &CallContext,
        target: String,
        recursive: Option<bool>,
    ) -> CommandResult<Vec<String>> {
        let state = self.store.load(&target).await?;
        self.guard(ctx).require(&state.base_type, "d", &ObjectsPlugin::target_of(&state)).await?;
        Ok(self.store.remove(&target, recursive.unwrap_or(false), Some(user_of(ctx)?)).await?)
    }

    /// Forget an open object (its unsaved changes are dropped).
    #[command(needs_user)]
    async fn close_object(&self, ctx: &CallContext, reference: String) -> CommandResult<bool> {
        self.store.close_reference(&reference, user_of(ctx)?).await?;
        Ok(true)
    }

    /// Read an open object again from its backends, dropping unsaved changes.
    #[command(needs_user)]
    async fn reload_object(&self, ctx: &CallContext, reference: String) -> CommandResult<Value> {
        self.with_reference(ctx, &reference, async |store, state, _| {
            let fresh = match &state.uuid {
                Some(uuid) => store.load(uuid).await?,
                None => store.new_object(&state.parent, &state.base_type).await?,
            };
            *state = fresh;
            Ok(None)
        })
        .await
    }

    /// The unsaved changes of an open object: attributes added, removed, changed; extensions added, removed.
    #[command(needs_user, idempotent)]
    async fn diff_object(&self, ctx: &CallContext, reference: String) -> CommandResult<Value> {
        self.with_reference(ctx, &reference, async |store, state, _| Ok(Some(store.diff(state)))).await
    }

    /// The object types: base or extension, backend, what extends them, what they contain, their methods.
    #[command(idempotent)]
    fn get_object_types(&self) -> CommandResult<Value> {
        Ok(self.store.types_info())
    }

    /// The attributes of an object type and its extensions, with their rules.
    #[command(idempotent)]
    fn get_object_schema(&self, object_type: String) -> CommandResult<Value> {
        Ok(self.store.schema_of(&object_type)?)
    }

    /// Problems found in the object descriptions (file, line, reason) and entries this node could not index (dn, uuid, reason).
    #[command(idempotent)]
    fn get_object_diagnostics(&self) -> CommandResult<Value> {
        let catalogue = self.store.catalogue();
        let descriptions = catalogue.diagnostics.iter().map(|d| json!(d));
        Ok(Value::Array(descriptions.chain(self.store.entry_problems().iter().map(|p| json!(p))).collect()))
    }

    /// Read the object descriptions again on every node; returns the problems found.
    #[command(call_type = "cumulative", idempotent)]
    async fn reload_object_descriptions(&self) -> CommandResult<Value> {
        Ok(json!(self.store.reload().await?))
    }

    /// Keyword search below base (default: the tree's root) with scope BASE, ONE, SUB or CHILDREN; options: category, fallback, secondary, limit (default 200, at most 10,000). Returns {hits, truncated}: truncated is true when more objects matched than the limit let through.
    ///
    /// - query: words to find in the objects' indexed attributes
    /// - base: the DN to search below (default: the tree's root)
    /// - scope (BASE|ONE|SUB|CHILDREN): how far below base (default SUB)
    /// - options: category, fallback, secondary, limit
    #[command(idempotent)]
    async fn search(
        &self,
        ctx: &CallContext,
        query: String,
        base: Option<String>,
        scope: Option<String>,
        options: Option<Map<String, Value>>,
    ) -> CommandResult<SearchPage> {
        let scope: SearchScope = scope.as_deref().unwrap_or("SUB").parse().map_err(invalid)?;
        let options: SearchOptions = serde_json::from_value(Value::Object(options.unwrap_or_default()))
            .map_err(|e| invalid(format!("search options: {e}")))?;
        let base = base.unwrap_or_else(|| self.store.base().to_owned());
        let mut guard = self.guard(ctx);
        let limit = options.effective_limit();
        // The limit counts what this caller may see, so hidden objects neither take
        // places nor make a page look complete.
        let mut page = SearchPage { hits: Vec::new(), truncated: false };
        for hit in self.store.ranked_search(&base, scope, &query, &options).await? {
            if guard.allowed(&hit.doc.object_type, "s", &hit.doc.dn).await {
                if page.hits.len() == limit {
                    page.truncated = true;
                    break;
                }
                page.hits.push(self.store.search_result(&hit));
            }
        }
        Ok(page)
    }

    /// Objects matching every condition: attribute: value (or list; * as wildcard), _type, _base, dn.
    #[command(idempotent)]
    async fn find(&self, ctx: &CallContext, conditions: Map<String, Value>) -> CommandResult<Vec<Value>> {
        let catalogue = self.store.catalogue();
        let mut guard = self.guard(ctx);
        // Each (type, attribute) pair's topic is worked out once, not once per hit.
        let mut topics: HashMap<(String, String), String> = HashMap::new();
        let mut visible = Vec::new();
        for mut d in self.store.find(&conditions).await? {
            if !guard.unrestricted {
                guard.know(&d).await;
                if !guard.allowed(&d.object_type, "s", &d.dn).await {
                    continue;
                }
                let names: Vec<String> = d.values.keys().cloned().collect();
                for name in names {
                    let topic = topics.entry((d.object_type.clone(), name.clone())).or_insert_with(|| {
                        let owner = catalogue.find_attribute(&d.object_type, &name).map(|(o, _)| o.name.clone());
                        format!("{}.attributes.{name}", owner.unwrap_or_else(|| d.object_type.clone()))
                    });
                    if !guard.allowed(topic, "r", &d.dn).await {
                        d.values.remove(&name);
                    }
                }
            }
            visible.push(json!({"dn": d.dn, "uuid": d.uuid, "type": d.object_type, "extensions": d.extensions, "attributes": d.values}));
        }
        Ok(visible)
    }

    /// Create objects of one type below parent, one per row (a map of attribute values), each with the given extensions; every row is tried. Returns per row {dn} or {error: {code, message, details}}. At most 1,000 rows per call.
    #[command(needs_user)]
    async fn create_objects(
        &self,
        ctx: &CallContext,
        parent: String,
        object_type: String,
        rows: Vec<Map<String, Value>>,
        extensions: Option<Vec<String>>,
    ) -> CommandResult<Vec<Value>> {
        // Bounded, so one call finishes well within a command's deadline; an import
        // sends its rows in batches.
        const MAX_ROWS: usize = 1000;
        const ROWS_AT_ONCE: usize = 8;
        if rows.len() > MAX_ROWS {
            return Err(invalid(format!("{} rows in one call; send at most {MAX_ROWS} at a time", rows.len())));
        }
        let user = user_of(ctx)?;
        let extensions = extensions.unwrap_or_default();
        let mut guard = self.guard(ctx);
        guard.require(&object_type, "c", &parent).await?;
        // The parent, the type and the extensions are checked once; every row starts
        // from the same new object with its defaults.
        let mut template = self.store.new_object(&parent, &object_type).await?;
        for ext in &extensions {
            guard.require(ext, "c", &parent).await?;
            self.store.extend(&mut template, ext)?;
        }
        // Checked before any row is written, in order: what the caller may write (one
        // answer per attribute name) and values a unique attribute has twice in this
        // call, which the rows' own checks, running side by side, would each let pass.
        let mut may_write: HashMap<String, Result<(), CommandError>> = HashMap::new();
        let mut refused: Vec<Option<CommandError>> = Vec::with_capacity(rows.len());
        let catalogue = self.store.catalogue();
        let unique: Vec<_> =
            catalogue.attributes_of(&object_type).into_iter().map(|(_, a)| a).filter(|a| a.must_be_unique()).collect();
        let mut first_row_with: HashMap<(String, String), usize> = HashMap::new();
        for (number, row) in rows.iter().enumerate() {
            let mut problem = None;
            for name in row.keys() {
                if !may_write.contains_key(name) {
                    let topic = format!("{}.attributes.{name}", self.owner_of(&template, name));
                    may_write.insert(name.clone(), guard.require(&topic, "w", &parent).await);
                }
                if let Some(Err(e)) = may_write.get(name) {
                    problem.get_or_insert_with(|| e.clone());
                }
            }
            for attr in &unique {
                let values = match row.get(&attr.name) {
                    Some(Value::Array(items)) => items.iter().map(clacks_objects::filters::text).collect(),
                    Some(one) => vec![clacks_objects::filters::text(one)],
                    None => Vec::new(),
                };
                for value in values {
                    let key = if attr.case_sensitive { value.clone() } else { value.to_lowercase() };
                    match first_row_with.entry((attr.name.clone(), key)) {
                        std::collections::hash_map::Entry::Vacant(slot) => {
                            slot.insert(number);
                        }
                        std::collections::hash_map::Entry::Occupied(first) => {
                            problem.get_or_insert_with(|| {
                                CommandError::new(
                                    ErrorCode::ATTRIBUTE_CHECK_FAILED,
                                    format!(
                                        "'{}': '{}' is also in row {} of this call",
                                        attr.name,
                                        clacks_objects::filters::clip(&value),
                                        first.get() + 1
                                    ),
                                )
                            });
                        }
                    }
                }
            }
            refused.push(problem);
        }
        // Rows are written a few at a time: each spends most of its time waiting for the
        // directory and the database, and one at a time leaves both idle.
        let create_row = |(row, refused): (Map<String, Value>, Option<CommandError>)| {
            let mut state = template.clone();
            async move {
                if let Some(e) = refused {
                    return Err(e);
                }
                for (name, value) in &row {
                    self.store.set(&mut state, name, value).await?;
                }
                self.store.commit(&mut state, Some(user)).await?;
                Ok::<_, CommandError>(state.dn.clone().unwrap_or_default())
            }
        };
        let results: Vec<Value> = futures_util::stream::iter(rows.into_iter().zip(refused))
            .map(create_row)
            .buffered(ROWS_AT_ONCE)
            .map(|created| match created {
                Ok(dn) => json!({"dn": dn}),
                Err(e) => json!({"error": {"code": e.code.as_str(), "message": e.message, "details": e.details}}),
            })
            .collect()
            .await;
        Ok(results)
    }

    /// Change the object at a DN or UUID in one call: add the extensions, set each value ("" or null clears it), commit. Returns the committed object's properties; when a value is refused nothing is written.
    #[command(needs_user)]
    async fn update_object(
        &self,
        ctx: &CallContext,
        target: String,
        values: Map<String, Value>,
        extensions: Option<Vec<String>>,
    ) -> CommandResult<Value> {
        let mut state = self.store.load(&target).await?;
        let at = ObjectsPlugin::target_of(&state);
        let mut guard = self.guard(ctx);
        for ext in extensions.unwrap_or_default() {
            guard.require(&ext, "c", &at).await?;
            self.store.extend(&mut state, &ext)?;
        }
        for (name, value) in &values {
            let topic = format!("{}.attributes.{name}", self.owner_of(&state, name));
            guard.require(&topic, "w", &at).await?;
            self.store.set(&mut state, name, value).await?;
        }
        self.store.commit(&mut state, Some(user_of(ctx)?)).await?;
        let mut view = self.readable_view(&mut guard, &state, self.store.view("", &state)).await;
        if let Some(fields) = view.as_object_mut() {
            // Nothing stays open: there is no reference to continue.
            fields.remove("ref");
        }
        Ok(view)
    }

    /// Lock a user's password (a '!' after the hash scheme), so logins fail until unlocked.
    #[command(needs_user, idempotent)]
    async fn lock_account(&self, ctx: &CallContext, dn: String) -> CommandResult<bool> {
        self.set_lock(ctx, &dn, true).await
    }

    /// Unlock a user's password.
    #[command(needs_user, idempotent)]
    async fn unlock_account(&self, ctx: &CallContext, dn: String) -> CommandResult<bool> {
        self.set_lock(ctx, &dn, false).await
    }

    /// Set a user's password (hashed as the User description says, Argon2 as shipped); a locked account stays locked unless unlock is true; a password-ageing account records the day of the change.
    #[command(needs_user)]
    async fn set_user_password(
        &self,
        ctx: &CallContext,
        dn: String,
        password: String,
        unlock: Option<bool>,
    ) -> CommandResult<bool> {
        if password.is_empty() {
            return Err(invalid("the password must not be empty"));
        }
        let mut state = self.store.load(&dn).await?;
        self.guard(ctx).require("User.attributes.userPassword", "w", &dn).await?;
        let stored = state.values.get("userPassword").and_then(|v| v.first()).and_then(Value::as_str);
        let keep_locked = stored.is_some_and(clacks_objects::password::is_locked) && unlock != Some(true);
        // Hashed here, so the lock is part of the one write: no moment with the new
        // password unlocked.
        let scheme = self.store.password_scheme();
        let hashed = clacks_objects::password::hash(&password, &scheme).map_err(invalid)?;
        let value = clacks_objects::password::set_locked(&hashed, keep_locked);
        self.store.set(&mut state, "userPassword", &json!(value)).await?;
        if state.effective_types().iter().any(|t| t == "ShadowUser") {
            let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
            self.store.set_generated(&mut state, "shadowLastChange", &json!(today))?;
        }
        self.store.commit(&mut state, Some(user_of(ctx)?)).await?;
        Ok(true)
    }

    /// Whether a user's password is locked.
    #[command(idempotent)]
    async fn is_account_locked(&self, ctx: &CallContext, dn: String) -> CommandResult<bool> {
        let state = self.store.load(&dn).await?;
        self.guard(ctx).require("User.attributes.userPassword", "r", &dn).await?;
        let stored =
            state.values.get("userPassword").and_then(|v| v.first()).and_then(Value::as_str).unwrap_or_default();
        Ok(clacks_objects::password::is_locked(stored))
    }
}

impl ObjectsPlugin {
    async fn set_lock(&self, ctx: &CallContext, dn: &str, lock: bool) -> CommandResult<bool> {
        let mut state = self.store.load(dn).await?;
        self.guard(ctx).require("User.attributes.userPassword", "w", dn).await?;
        let Some(stored) =
            state.values.get("userPassword").and_then(|v| v.first()).and_then(Value::as_str).map(str::to_owned)
        else {
            return Err(CommandError::new(
                ErrorCode::ATTRIBUTE_MANDATORY,
                format!("{dn} has no password to lock or unlock"),
            ));
        };
        let updated = clacks_objects::password::set_locked(&stored, lock);
        if updated == stored {
            return Ok(false);
        }
        // Stored hashes start with a scheme, which the out filter passes unchanged.
        self.store.set(&mut state, "userPassword", &json!(updated)).await?;
        self.store.commit(&mut state, Some(user_of(ctx)?)).await?;
        Ok(true)
    }
}

/// Runs object methods and hooks through the agent's dispatcher, so they reach
/// whichever node provides the command.
pub(crate) struct DispatchRunner {
    pub(crate) dispatcher: Weak<Dispatcher>,
    /// Who internal calls (hooks) act as.
    pub(crate) agent_user: String,
    pub(crate) timeout: Duration,
}

impl CommandRunner for DispatchRunner {
    fn run<'a>(
        &'a self,
        user: Option<&'a str>,
        command: &'a str,
        args: Vec<Value>,
    ) -> BoxFuture<'a, Result<Value, ObjectError>> {
        Box::pin(async move {
            let dispatcher = self
                .dispatcher
                .upgrade()
                .ok_or_else(|| ObjectError::new(ErrorCode::AGENT_STOPPING, "the agent is stopping"))?;
            let caller = user.unwrap_or(&self.agent_user).to_owned();
            let origin = dispatcher.local_origin(Some(caller), Some(tokio::time::Instant::now() + self.timeout));
            dispatcher.call(command, Params::Positional(args), &origin).await.map_err(|e| {
                let code = e.symbolic();
                ObjectError {
                    code,
                    message: format!("{command}: {}", e.message),
                    details: e.data.and_then(|d| d.details),
                }
            })
        })
    }
}
