//! Moving and removing objects, and what lies below them.

use serde_json::json;

use super::primary::EntryAt;
use super::{
    ObjectError, ObjectState, ObjectStore, PrimaryBackend, Result, Storage, backend_failure, with_undo_outcome,
};
use crate::description::{Catalogue, HookType};
use crate::filters;
use clacks_core::dn::{parent_dn, split_rdn};
use clacks_core::rpc::ErrorCode;

impl ObjectStore {
    /// Removes an object; with `recursive`, everything below it first.
    pub async fn remove(&self, target: &str, recursive: bool, user: Option<&str>) -> Result<Vec<String>> {
        let catalogue = self.catalogue();
        let state = self.load(target).await?;
        let dn = state.dn().to_owned();
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
        self.check_removable(&catalogue, &state).await?;
        self.run_hooks(&catalogue, &state, HookType::PreRemove).await?;
        let primary = self.primary_of(&state)?;
        let uuid = state.uuid();
        // Secondary data first, the primary entry last.
        for t in self.types_with_rows(&catalogue, primary, &state.effective_types()) {
            self.sql.delete(&t, uuid).await?;
        }
        primary
            .delete(EntryAt { uuid, dn: &dn })
            .await
            .map_err(|e| backend_failure(e, primary.label(), &format!("remove {dn}")))?;
        self.index.remove(uuid).await?;
        // Others referring to it lose the reference.
        self.rewrite_references(&catalogue, "dn", &state.base_type, &dn, None, user).await?;
        for (name, values) in &state.loaded {
            if let Some(v) = values.first() {
                self.rewrite_references(&catalogue, name, &state.base_type, &filters::text(v), None, user).await?;
            }
        }
        self.announce(uuid, &dn, "remove").await;
        self.run_hooks(&catalogue, &state, HookType::PostRemove).await?;
        removed.push(dn);
        Ok(removed)
    }

    /// Which of the named types may have an SQL row for an entry in `primary`: those
    /// with SQL-wired attributes, and those the entry does not mark (their row is the
    /// marker).
    pub(super) fn types_with_rows(
        &self,
        catalogue: &Catalogue,
        primary: &dyn PrimaryBackend,
        names: &[String],
    ) -> Vec<String> {
        names
            .iter()
            .filter(|name| {
                catalogue.get(name).is_some_and(|t| {
                    !primary.marks(t) || t.attributes.iter().any(|a| self.storage(t, a) == Storage::Rows)
                })
            })
            .cloned()
            .collect()
    }

    /// DNs directly below `dn`, from whichever backends hold entries.
    pub async fn children(&self, dn: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for primary in self.primaries() {
            out.extend(primary.children(dn).await?);
        }
        Ok(out)
    }

    /// Moves an object (and what is below it) under `new_parent`. Like a commit, the
    /// move runs to its end (or is undone) even when the caller stops waiting.
    pub async fn move_object(&self, state: &mut ObjectState, new_parent: &str, user: Option<&str>) -> Result<()> {
        if state.is_new() {
            state.parent = new_parent.to_owned();
            return Ok(());
        }
        let catalogue = self.catalogue();
        self.check_container(&catalogue, new_parent, &state.base_type).await?;
        self.check_rows_unchanged(&catalogue, state).await?;
        let (mut job, parent, user) = (state.clone(), new_parent.to_owned(), user.map(str::to_owned));
        let (result, done) = self
            .detached(move |store| async move {
                let result = store.carry_out_move(&catalogue, &mut job, &parent, user.as_deref()).await;
                (result, job)
            })
            .await?;
        *state = done;
        result
    }

    async fn carry_out_move(
        &self,
        catalogue: &Catalogue,
        state: &mut ObjectState,
        new_parent: &str,
        user: Option<&str>,
    ) -> Result<()> {
        let primary = self.primary_of(state)?;
        let dn = state.dn().to_owned();
        let (rdn, _) = split_rdn(&dn);
        let at = EntryAt { uuid: state.uuid(), dn: &dn };
        let new_dn = match primary.rename(at, rdn, Some(new_parent), state.version.as_deref()).await {
            Ok((new_dn, _)) => new_dn,
            Err(e) => return Err(self.entry_failure(state, e, primary.label(), "move").await),
        };
        if let Err(e) = self.index.rename_subtree(&dn, &new_dn).await {
            // The index must follow, or the object could not be found where it is: move it back.
            let failure = ObjectError::new(ErrorCode::BACKEND_FAILED, format!("the index refused the move ({e})"))
                .with_details(json!({"backend": "index", "reason": e.to_string()}));
            let back = EntryAt { uuid: state.uuid(), dn: &new_dn };
            return Err(match primary.rename(back, rdn, Some(parent_dn(&dn)), None).await {
                Ok(_) => {
                    // Back as it was: the open object may try again without a false conflict.
                    if let Ok(version) = self.current_version(state).await {
                        state.version = version;
                    }
                    with_undo_outcome(failure, &["the entry was moved back".to_owned()], &[])
                }
                Err(u) => with_undo_outcome(failure, &[], &[format!("moving the entry back: {u}")]),
            });
        }
        state.dn = Some(new_dn.clone());
        state.parent = new_parent.to_owned();
        state.version = self.current_version(state).await?;
        self.rewrite_references(catalogue, "dn", &state.base_type, &dn, Some(&new_dn), user).await?;
        self.announce(state.uuid(), &new_dn, "move").await;
        Ok(())
    }
}
