//! The primary backend: where an object's entry (DN, UUID, types, version) lives.
//!
//! The store asks this trait, never "is it the directory?": reading and identifying an
//! entry, creating, changing, renaming and deleting it, and two properties that decide
//! how a commit is guarded ([`PrimaryBackend::asserts_versions`],
//! [`PrimaryBackend::versions_rows`]). The directory keeps the values of its types on
//! the entry and marks types by object class; the database marks types by name and
//! keeps every value in rows.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;

use super::{ObjectError, Result, not_found};
use crate::backend::ldap::{LdapBackend, LoadedEntry};
use crate::backend::sql::SqlBackend;
use crate::backend::{BackendError, Entry};
use crate::description::{Catalogue, ObjectType};
use clacks_core::dn::split_rdn;
use clacks_core::rpc::ErrorCode;

type BackendResult<T> = std::result::Result<T, BackendError>;

/// An entry by both its names: the directory addresses by DN, the database by UUID.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EntryAt<'a> {
    pub uuid: &'a str,
    pub dn: &'a str,
}

/// A change to an entry itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct EntryChange {
    /// Attributes kept on the entry (backend names) and their new values; an empty list
    /// removes the attribute.
    pub attrs: Vec<(String, Vec<String>)>,
    /// Markers added and removed (see [`PrimaryBackend::markers`]).
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Every marker after the change.
    pub markers: Vec<String>,
}

impl EntryChange {
    /// The change that puts back what `self` changes, given the attribute values before.
    pub(crate) fn inverse(&self, attrs_before: Vec<(String, Vec<String>)>, markers_before: Vec<String>) -> EntryChange {
        EntryChange {
            attrs: attrs_before,
            added: self.removed.clone(),
            removed: self.added.clone(),
            markers: markers_before,
        }
    }
}

#[async_trait]
pub(crate) trait PrimaryBackend: Send + Sync {
    /// For messages: "the directory", "the database".
    fn label(&self) -> &'static str;

    /// Whether entries here are directory entries (recorded in open references).
    fn is_directory(&self) -> bool;

    /// Whether the entry itself records that the object has type `t`; otherwise a row in
    /// `t`'s table does.
    fn marks(&self, t: &ObjectType) -> bool;

    /// What the entry records for these types: object classes, or type names.
    fn markers(&self, types: &[&ObjectType]) -> Vec<String>;

    /// Whether a write can assert the version it read, checked by the server in the same
    /// operation. Without it a commit holds a lock while it checks and writes.
    fn asserts_versions(&self) -> bool;

    /// Whether the entry's version moves when the object's SQL rows change. Without it a
    /// commit compares the rows themselves.
    fn versions_rows(&self) -> bool;

    /// Which base type and (marked) extensions an entry has.
    fn identify(&self, catalogue: &Catalogue, entry: &Entry) -> Result<(String, BTreeSet<String>)>;

    /// The entry at a DN (or with a UUID) and the attribute values it keeps, keys
    /// lowercased; binary ones (named in `binary`) base64 encoded.
    async fn read(&self, target: &str, by_uuid: bool, binary: &HashSet<String>) -> BackendResult<Option<LoadedEntry>>;

    /// Adds an entry; returns its UUID and version when the backend tells it.
    async fn create(
        &self,
        dn: &str,
        markers: &[String],
        attrs: &[(String, Vec<String>)],
        binary: &HashSet<String>,
    ) -> BackendResult<(String, Option<String>)>;

    /// Applies `change` if the entry is still at version `expect` ([`BackendError::Conflict`]
    /// otherwise); returns the new version when the backend tells it.
    async fn update(
        &self,
        at: EntryAt<'_>,
        change: &EntryChange,
        binary: &HashSet<String>,
        expect: Option<&str>,
    ) -> BackendResult<Option<String>>;

    /// Gives the entry (and what is below it) a new RDN and/or parent if it is still at
    /// `expect`; returns the new DN and version.
    async fn rename(
        &self,
        at: EntryAt<'_>,
        new_rdn: &str,
        new_parent: Option<&str>,
        expect: Option<&str>,
    ) -> BackendResult<(String, Option<String>)>;

    async fn delete(&self, at: EntryAt<'_>) -> BackendResult<()>;

    /// The entry's version now; `None` when it is gone.
    async fn version(&self, at: EntryAt<'_>) -> BackendResult<Option<String>>;

    /// DNs directly below `dn`.
    async fn children(&self, dn: &str) -> BackendResult<Vec<String>>;

    /// Every entry this backend holds below `base`, for the index scan.
    async fn entries(&self, base: &str) -> BackendResult<Vec<Entry>>;
}

fn classes_of(t: &ObjectType) -> Vec<String> {
    t.param_list("LDAP", "objectClasses")
}

#[async_trait]
impl PrimaryBackend for LdapBackend {
    fn label(&self) -> &'static str {
        "the directory"
    }

    fn is_directory(&self) -> bool {
        true
    }

    fn marks(&self, t: &ObjectType) -> bool {
        t.backend == "LDAP"
    }

    fn markers(&self, types: &[&ObjectType]) -> Vec<String> {
        let mut classes: Vec<String> = types.iter().filter(|t| self.marks(t)).flat_map(|t| classes_of(t)).collect();
        classes.dedup();
        classes
    }

    fn asserts_versions(&self) -> bool {
        true
    }

    fn versions_rows(&self) -> bool {
        false
    }

    fn identify(&self, catalogue: &Catalogue, entry: &Entry) -> Result<(String, BTreeSet<String>)> {
        let classes: HashSet<String> = entry.markers.iter().map(|c| c.to_lowercase()).collect();
        let has_all = |t: &ObjectType| {
            let wanted = classes_of(t);
            !wanted.is_empty() && wanted.iter().all(|c| classes.contains(&c.to_lowercase()))
        };
        let rdn = split_rdn(&entry.dn).0.to_lowercase();
        let candidates: Vec<&Arc<ObjectType>> = catalogue
            .types()
            .filter(|t| t.base_object && self.marks(t) && has_all(t))
            .filter(|t| t.fixed_rdn.as_ref().is_none_or(|f| f.to_lowercase() == rdn))
            .collect();
        // A fixed-RDN container wins over the general type it shares classes with; among
        // the rest, the most specific (most classes) wins, and a tie is an error.
        let chosen = candidates.iter().find(|t| t.fixed_rdn.is_some()).copied().or_else(|| {
            let best = candidates.iter().map(|t| classes_of(t).len()).max()?;
            let top: Vec<_> = candidates.iter().filter(|t| classes_of(t).len() == best).collect();
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
            .filter(|e| self.marks(e) && has_all(e))
            .map(|e| e.name.clone())
            .collect();
        Ok((base.name.clone(), active))
    }

    async fn read(&self, target: &str, by_uuid: bool, binary: &HashSet<String>) -> BackendResult<Option<LoadedEntry>> {
        LdapBackend::read(self, target, by_uuid, binary).await
    }

    async fn create(
        &self,
        dn: &str,
        markers: &[String],
        attrs: &[(String, Vec<String>)],
        binary: &HashSet<String>,
    ) -> BackendResult<(String, Option<String>)> {
        let attrs: Vec<(String, Vec<String>)> = attrs.iter().filter(|(_, v)| !v.is_empty()).cloned().collect();
        LdapBackend::create(self, dn, markers, &attrs, binary).await
    }

    async fn update(
        &self,
        at: EntryAt<'_>,
        change: &EntryChange,
        binary: &HashSet<String>,
        expect: Option<&str>,
    ) -> BackendResult<Option<String>> {
        let nothing_to_write = change.attrs.is_empty() && change.added.is_empty() && change.removed.is_empty();
        if nothing_to_write {
            // No write carries the assertion: compare explicitly.
            let now = LdapBackend::version(self, at.dn).await?.ok_or_else(|| BackendError::NotFound(at.dn.into()))?;
            return match expect {
                Some(expect) if expect != now => Err(BackendError::Conflict(format!("{} changed meanwhile", at.dn))),
                _ => Ok(Some(now)),
            };
        }
        self.modify_checked(at.dn, &change.attrs, &change.added, &change.removed, binary, expect).await
    }

    async fn rename(
        &self,
        at: EntryAt<'_>,
        new_rdn: &str,
        new_parent: Option<&str>,
        expect: Option<&str>,
    ) -> BackendResult<(String, Option<String>)> {
        self.rename_checked(at.dn, new_rdn, new_parent, expect).await
    }

    async fn delete(&self, at: EntryAt<'_>) -> BackendResult<()> {
        LdapBackend::delete(self, at.dn).await
    }

    async fn version(&self, at: EntryAt<'_>) -> BackendResult<Option<String>> {
        LdapBackend::version(self, at.dn).await
    }

    async fn children(&self, dn: &str) -> BackendResult<Vec<String>> {
        LdapBackend::children(self, dn).await
    }

    async fn entries(&self, base: &str) -> BackendResult<Vec<Entry>> {
        self.subtree(base).await
    }
}

impl SqlBackend {
    /// Refuses a write when the entry is gone or no longer at `expect`. The database has
    /// no assertion in the write itself; commits hold the object's lock around both.
    async fn check_version(&self, at: EntryAt<'_>, expect: Option<&str>) -> BackendResult<()> {
        let entry = self.entry_by_uuid(at.uuid).await?.ok_or_else(|| BackendError::NotFound(at.dn.into()))?;
        match expect {
            Some(expect) if entry.version.as_deref() != Some(expect) => {
                Err(BackendError::Conflict(format!("{} changed meanwhile", at.dn)))
            }
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl PrimaryBackend for SqlBackend {
    fn label(&self) -> &'static str {
        "the database"
    }

    fn is_directory(&self) -> bool {
        false
    }

    fn marks(&self, _: &ObjectType) -> bool {
        true
    }

    fn markers(&self, types: &[&ObjectType]) -> Vec<String> {
        types.iter().map(|t| t.name.clone()).collect()
    }

    fn asserts_versions(&self) -> bool {
        false
    }

    fn versions_rows(&self) -> bool {
        true
    }

    fn identify(&self, catalogue: &Catalogue, entry: &Entry) -> Result<(String, BTreeSet<String>)> {
        let base = entry.markers.first().cloned().ok_or_else(|| not_found(&entry.dn))?;
        super::ObjectStore::type_of(catalogue, &base)?;
        Ok((base, entry.markers.iter().skip(1).cloned().collect()))
    }

    async fn read(&self, target: &str, by_uuid: bool, _: &HashSet<String>) -> BackendResult<Option<LoadedEntry>> {
        let entry = if by_uuid { self.entry_by_uuid(target).await? } else { self.entry_by_dn(target).await? };
        Ok(entry.map(|entry| LoadedEntry { entry, attrs: HashMap::new() }))
    }

    async fn create(
        &self,
        dn: &str,
        markers: &[String],
        _: &[(String, Vec<String>)],
        _: &HashSet<String>,
    ) -> BackendResult<(String, Option<String>)> {
        Ok((self.create_entry(dn, markers).await?, None))
    }

    async fn update(
        &self,
        at: EntryAt<'_>,
        change: &EntryChange,
        _: &HashSet<String>,
        expect: Option<&str>,
    ) -> BackendResult<Option<String>> {
        self.check_version(at, expect).await?;
        // Setting the types also moves the version on: every commit is visible to others.
        self.set_types(at.uuid, &change.markers).await?;
        Ok(None)
    }

    async fn rename(
        &self,
        at: EntryAt<'_>,
        new_rdn: &str,
        new_parent: Option<&str>,
        expect: Option<&str>,
    ) -> BackendResult<(String, Option<String>)> {
        self.check_version(at, expect).await?;
        let parent = new_parent.unwrap_or_else(|| clacks_core::dn::parent_dn(at.dn));
        let target = format!("{new_rdn},{parent}");
        self.rename_subtree(at.dn, &target).await?;
        Ok((target, None))
    }

    async fn delete(&self, at: EntryAt<'_>) -> BackendResult<()> {
        self.delete_entry(at.uuid).await
    }

    async fn version(&self, at: EntryAt<'_>) -> BackendResult<Option<String>> {
        Ok(self.entry_by_uuid(at.uuid).await?.and_then(|e| e.version))
    }

    async fn children(&self, dn: &str) -> BackendResult<Vec<String>> {
        SqlBackend::children(self, dn).await
    }

    async fn entries(&self, _: &str) -> BackendResult<Vec<Entry>> {
        // Entries outside the base are indexed too: they were made through Clacks.
        self.all_entries().await
    }
}
