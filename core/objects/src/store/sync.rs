//! Keeping the index in line with the backends: objects reindexed after a write, the
//! periodic scan of every backend, polling the directory for changes made outside
//! Clacks, and the ObjectChanged / BackendChange events that announce them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::{Value, json};

use super::{ObjectState, ObjectStore, Result, text_values};
use crate::backend::Entry;
use crate::index::IndexDoc;
use clacks_core::events::EventPublisher;
use clacks_core::rpc::ErrorCode;

/// What a scan did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ScanReport {
    pub indexed: usize,
    pub removed: usize,
    /// Entries of no known type.
    pub skipped: usize,
    /// Entries the index could not take (see [`ObjectStore::entry_problems`]).
    pub failed: usize,
}

impl ObjectStore {
    /// Reads the object again from its backends and puts it into the index.
    pub async fn reindex(&self, uuid: &str) -> Result<()> {
        let state = self.load(uuid).await?;
        self.index.put(&self.index_doc(&state)).await?;
        Ok(())
    }

    pub(super) fn index_doc(&self, state: &ObjectState) -> IndexDoc {
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
    pub(super) async fn announce(&self, uuid: &str, dn: &str, change: &str) {
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.publish_change("ObjectChanged", uuid, dn, change, &time).await;
    }

    /// Publishes a change noticed in a backend, made outside Clacks (BackendChange).
    async fn announce_backend_change(&self, uuid: &str, dn: &str, change: &str, time: &str) {
        self.publish_change("BackendChange", uuid, dn, change, time).await;
    }

    async fn publish_change(&self, event_type: &str, uuid: &str, dn: &str, change: &str, time: &str) {
        let Some(queue) = self.events.read().ok().and_then(|q| q.clone()) else { return };
        let mut fields = serde_json::Map::new();
        fields.insert("UUID".into(), json!(uuid));
        fields.insert("DN".into(), json!(dn));
        fields.insert("ModificationTime".into(), json!(time));
        fields.insert("ChangeType".into(), json!(change));
        queue.send(Queued::Change { event_type: event_type.to_owned(), fields }).await;
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
        let mut entries: Vec<Entry> = Vec::new();
        for primary in self.primaries() {
            entries.extend(primary.entries(&self.base).await?);
        }
        // Parents before children, so relation attributes find what they point at.
        entries.sort_by_key(|e| e.dn.matches(',').count());
        for entry in entries {
            seen.insert(entry.uuid.clone());
            let modified = entry.modified.clone().unwrap_or_default();
            let stamp = |m: &str| crate::values::parse_timestamp(m).map(|t| t.timestamp());
            let unchanged = known.get(&entry.uuid).is_some_and(|(indexed, dn)| {
                dn == &entry.dn && stamp(indexed).zip(stamp(&modified)).is_some_and(|(i, m)| i >= m)
            });
            if unchanged {
                continue;
            }
            match self.reindex(&entry.uuid).await {
                Ok(()) => {
                    self.problems.clear(&entry.uuid);
                    report.indexed += 1;
                }
                Err(e) if e.code == ErrorCode::OBJECT_TYPE_MISMATCH => report.skipped += 1,
                Err(e) if e.code == ErrorCode::BACKEND_UNAVAILABLE => return Err(e),
                // One entry the index cannot take must not hold up the others.
                Err(e) => {
                    self.problems.note(&entry.uuid, &entry.dn, &e.message);
                    report.failed += 1;
                }
            }
        }
        // Gone from every backend: removed behind Clacks' back (ldapdelete, say).
        for (uuid, (_, dn)) in known.iter().filter(|(u, _)| !seen.contains(*u)) {
            self.index.remove(uuid).await?;
            self.problems.clear(uuid);
            self.announce_backend_change(uuid, dn, "delete", &chrono::Utc::now().format("%Y%m%d%H%M%SZ").to_string())
                .await;
            report.removed += 1;
        }
        Ok(report)
    }

    /// Picks up directory changes made outside Clacks since the last poll: re-indexes
    /// them and publishes BackendChange. Returns the number of changes seen. An entry
    /// that cannot be read or indexed is skipped and reported
    /// ([`ObjectStore::entry_problems`]); the others go on.
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
        // Deletions first (where slapd's accesslog tells them), so an entry deleted and
        // added again under the same name is dropped before its successor is indexed.
        for dn in ldap.deleted_since(&since).await {
            match self.take_deletion(&dn).await {
                Ok(true) => seen += 1,
                Ok(false) => {}
                Err(e) if e.code == ErrorCode::BACKEND_UNAVAILABLE => return Err(e),
                // One the index cannot drop now is left to the sweep; the rest go on.
                Err(e) => tracing::warn!("cannot take the deletion of {dn} from the accesslog: {e}"),
            }
        }
        for entry in ldap.changed_since(&since).await? {
            match self.take_change(&entry).await {
                Ok(true) => {
                    self.problems.clear(&entry.uuid);
                    seen += 1;
                }
                Ok(false) => self.problems.clear(&entry.uuid),
                Err(e) if e.code == ErrorCode::BACKEND_UNAVAILABLE => return Err(e),
                Err(e) => self.problems.note(&entry.uuid, &entry.dn, &e.message),
            }
        }
        // Without an accesslog, deletions leave nothing to poll for: the periodic scan
        // finds them, and retries the entries skipped here.
        self.index.set_meta("ldap-poll", &started).await?;
        Ok(seen)
    }

    /// Drops from the index and announces an entry deleted outside Clacks; `false` when
    /// the index no longer had it (our own removals) or the entry is still there.
    async fn take_deletion(&self, dn: &str) -> Result<bool> {
        let Some(doc) = self.index.by_dn(dn).await? else { return Ok(false) };
        // Moved away rather than gone (deleted, then added elsewhere with its UUID kept),
        // or an object the database keeps under the same name: not a deletion.
        let catalogue = self.catalogue();
        let mut still_there = false;
        for primary in self.primaries() {
            still_there |= primary.read(&doc.uuid, true, catalogue.binary_attributes()).await?.is_some();
        }
        if still_there {
            return Ok(false);
        }
        self.index.remove(&doc.uuid).await?;
        self.problems.clear(&doc.uuid);
        let time = chrono::Utc::now().format("%Y%m%d%H%M%SZ").to_string();
        self.announce_backend_change(&doc.uuid, &doc.dn, "delete", &time).await;
        Ok(true)
    }

    /// Indexes and announces one entry changed outside Clacks; `false` when there was
    /// nothing new (our own commits are indexed already) or it is of no known type.
    async fn take_change(&self, entry: &Entry) -> Result<bool> {
        let indexed = self.index.by_uuid(&entry.uuid).await?;
        let state = match self.load(&entry.uuid).await {
            Ok(s) => s,
            Err(e) if e.code == ErrorCode::OBJECT_TYPE_MISMATCH => return Ok(false),
            Err(e) => return Err(e),
        };
        let doc = self.index_doc(&state);
        let same = indexed
            .as_ref()
            .is_some_and(|i| i.dn == doc.dn && i.values == doc.values && i.extensions == doc.extensions);
        if same {
            return Ok(false);
        }
        let change = match &indexed {
            None => "add",
            Some(i) if i.dn != doc.dn => "modrdn",
            Some(_) => "modify",
        };
        self.index.put(&doc).await?;
        // A rename made outside Clacks (ldapmodrdn) is followed like one made through
        // it: what is below moves in the index, and references to the old name and
        // values (a group's memberUid) follow.
        if let Some(before) = &indexed {
            let catalogue = self.catalogue();
            if before.dn != doc.dn {
                self.index.rename_subtree(&before.dn, &doc.dn).await?;
                self.rewrite_references(&catalogue, "dn", &doc.object_type, &before.dn, Some(&doc.dn), None).await?;
            }
            for (attr, old) in &before.values {
                let new = doc.values.get(attr).and_then(|v| v.first());
                if let (Some(old), Some(new)) = (old.first(), new)
                    && old != new
                {
                    self.rewrite_references(&catalogue, attr, &doc.object_type, old, Some(new), None).await?;
                }
            }
        }
        self.announce_backend_change(&doc.uuid, &doc.dn, change, entry.modified.as_deref().unwrap_or_default()).await;
        Ok(true)
    }

    /// Entries the index could not take, with why (for `getObjectDiagnostics`).
    pub fn entry_problems(&self) -> Vec<EntryProblem> {
        self.problems.all()
    }
}

/// An entry in a backend that the index could not take.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntryProblem {
    pub dn: String,
    pub uuid: String,
    pub reason: String,
}

/// The entries that failed to sync, each logged once (again only when its reason
/// changes), at most [`Problems::KEPT`] of them.
#[derive(Debug, Default)]
pub(super) struct Problems {
    by_uuid: Mutex<BTreeMap<String, EntryProblem>>,
}

impl Problems {
    const KEPT: usize = 1000;

    fn note(&self, uuid: &str, dn: &str, reason: &str) {
        let Ok(mut by_uuid) = self.by_uuid.lock() else { return };
        let problem = EntryProblem { dn: dn.to_owned(), uuid: uuid.to_owned(), reason: reason.to_owned() };
        if by_uuid.get(uuid) == Some(&problem) {
            return;
        }
        tracing::warn!("{dn} is left out of the object index: {reason}");
        if by_uuid.len() < Problems::KEPT || by_uuid.contains_key(uuid) {
            by_uuid.insert(uuid.to_owned(), problem);
        }
    }

    fn clear(&self, uuid: &str) {
        if let Ok(mut by_uuid) = self.by_uuid.lock() {
            by_uuid.remove(uuid);
        }
    }

    fn all(&self) -> Vec<EntryProblem> {
        self.by_uuid.lock().map(|p| p.values().cloned().collect()).unwrap_or_default()
    }
}

/// How many change events may wait for the bus before a commit waits for room.
const QUEUED_CHANGES: usize = 1024;

enum Queued {
    Change { event_type: String, fields: serde_json::Map<String, Value> },
    Flushed(tokio::sync::oneshot::Sender<()>),
}

/// Change events on their way to the bus: one task publishes them in the order the
/// changes were made, so a commit answers without waiting for the broker's confirm and
/// subscribers still never see an object's events out of order.
#[derive(Clone)]
pub(super) struct ChangeQueue {
    sender: tokio::sync::mpsc::Sender<Queued>,
}

impl ChangeQueue {
    pub(super) fn start(publisher: EventPublisher) -> ChangeQueue {
        let (sender, mut queued) = tokio::sync::mpsc::channel(QUEUED_CHANGES);
        tokio::spawn(async move {
            while let Some(next) = queued.recv().await {
                match next {
                    Queued::Change { event_type, fields } => {
                        if let Err(e) = publisher.publish_fields(&event_type, &fields).await {
                            let dn = fields.get("DN").and_then(Value::as_str).unwrap_or_default();
                            tracing::warn!("cannot publish {event_type} for {dn}: {e}");
                        }
                    }
                    Queued::Flushed(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        ChangeQueue { sender }
    }

    async fn send(&self, queued: Queued) {
        if self.sender.send(queued).await.is_err() {
            tracing::warn!("a change event was not published: the event queue has stopped");
        }
    }

    pub(super) async fn flush(&self, within: std::time::Duration) {
        let (done, flushed) = tokio::sync::oneshot::channel();
        self.send(Queued::Flushed(done)).await;
        if tokio::time::timeout(within, flushed).await.is_err() {
            tracing::warn!(?within, "change events still waiting for the bus; stopping anyway");
        }
    }
}
