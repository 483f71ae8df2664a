//! The object index: every object's DN, types and attribute values in SQL (SQLite by
//! default, PostgreSQL when configured), for search, `find`, uniqueness checks and
//! relation attributes. The same database holds the shared state of open object
//! references and the cluster locks, so any agent can serve the next call on a
//! reference and only one agent runs the initial scan.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::backend::BackendError;
use super::backend::sql::{Db, Dialect, sql_error};
use clacks_core::dn::{dn_key, parent_dn};

/// One indexed object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IndexDoc {
    pub uuid: String,
    pub dn: String,
    /// Base type.
    #[serde(rename = "type")]
    pub object_type: String,
    pub extensions: Vec<String>,
    /// Last change (RFC 3339).
    pub modified: String,
    /// Attribute values as text.
    pub values: BTreeMap<String, Vec<String>>,
}

/// How far below the base a search reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchScope {
    /// The base entry only.
    Base,
    /// Entries directly below the base.
    One,
    /// The base and everything below it.
    Sub,
    /// Everything below the base, not the base itself.
    Children,
}

impl std::str::FromStr for SearchScope {
    type Err = String;
    fn from_str(s: &str) -> Result<SearchScope, String> {
        match s.to_ascii_uppercase().as_str() {
            "BASE" => Ok(SearchScope::Base),
            "ONE" => Ok(SearchScope::One),
            "SUB" => Ok(SearchScope::Sub),
            "CHILDREN" => Ok(SearchScope::Children),
            _ => Err(format!("unknown scope '{s}' (use BASE, ONE, SUB or CHILDREN)")),
        }
    }
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS clacks_index (
        uuid TEXT PRIMARY KEY, dn TEXT NOT NULL, dn_key TEXT NOT NULL, parent_key TEXT NOT NULL,
        type TEXT NOT NULL, types TEXT NOT NULL, modified TEXT NOT NULL, doc TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS clacks_index_dn ON clacks_index (dn_key)",
    "CREATE INDEX IF NOT EXISTS clacks_index_parent ON clacks_index (parent_key)",
    "CREATE TABLE IF NOT EXISTS clacks_values (uuid TEXT NOT NULL, attr TEXT NOT NULL, value_lc TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS clacks_values_lookup ON clacks_values (attr, value_lc)",
    "CREATE INDEX IF NOT EXISTS clacks_values_value ON clacks_values (value_lc)",
    "CREATE INDEX IF NOT EXISTS clacks_values_uuid ON clacks_values (uuid)",
    "CREATE TABLE IF NOT EXISTS clacks_refs (ref TEXT PRIMARY KEY, owner TEXT NOT NULL, touched BIGINT NOT NULL, state TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS clacks_locks (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS clacks_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
];

/// Values longer than this are indexed by their prefix only; search is by word and
/// prefix, and a megabyte photo is not a search term.
const MAX_INDEXED_VALUE: usize = 256;

/// How many index writes pass between two refreshes of the tables' statistics; the
/// first comes sooner, as a young database's tables have none at all.
const ANALYZE_EVERY: usize = 500;
const FIRST_ANALYZE: usize = 100;

/// The statement that writes an object's row in `clacks_index` ($1–$8, bound by
/// [`bind_entry`]); a macro so both dialects' statements are built from it at compile time.
macro_rules! upsert_entry {
    () => {
        "INSERT INTO clacks_index (uuid, dn, dn_key, parent_key, type, types, modified, doc) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (uuid) DO UPDATE SET dn = excluded.dn, dn_key = excluded.dn_key, \
         parent_key = excluded.parent_key, type = excluded.type, types = excluded.types, \
         modified = excluded.modified, doc = excluded.doc"
    };
}

/// What an object's index entry is written as: its type list, its document, and its
/// values for lookups (attribute, lower-cased value).
struct EntryRow<'a> {
    types: String,
    body: String,
    values: &'a [(&'a String, String)],
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

fn bind_entry<'q>(query: AnyQuery<'q>, doc: &IndexDoc, types: String, body: String) -> AnyQuery<'q> {
    query
        .bind(doc.uuid.clone())
        .bind(doc.dn.clone())
        .bind(dn_key(&doc.dn))
        .bind(dn_key(parent_dn(&doc.dn)))
        .bind(doc.object_type.clone())
        .bind(types)
        .bind(doc.modified.clone())
        .bind(body)
}

#[derive(Clone, Debug)]
pub struct Index {
    db: Db,
    /// Writes through this handle, shared by its clones.
    written: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Index {
    pub async fn open(db: Db) -> Result<Index, BackendError> {
        for statement in SCHEMA {
            db.execute((*statement).to_owned(), &[]).await?;
        }
        if db.dialect == Dialect::Postgres {
            // Open references are a session's scratch space, rewritten on every call:
            // PostgreSQL keeps them out of its write-ahead log (no flush to disk per
            // call). A database crash forgets them, as an idle timeout would; the
            // objects themselves are never stored there.
            db.execute("ALTER TABLE clacks_refs SET UNLOGGED".to_owned(), &[]).await?;
        }
        Ok(Index { db, written: Default::default() })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Inserts or replaces an object's entry, atomically.
    pub async fn put(&self, doc: &IndexDoc) -> Result<(), BackendError> {
        let types = format!(",{},{},", doc.object_type, doc.extensions.join(","));
        let body = serde_json::to_string(doc).map_err(|e| BackendError::Invalid(e.to_string()))?;
        let values: Vec<(&String, String)> = doc
            .values
            .iter()
            .flat_map(|(attr, values)| {
                values.iter().map(move |v| (attr, v.to_lowercase().chars().take(MAX_INDEXED_VALUE).collect()))
            })
            .collect();
        match self.db.dialect {
            Dialect::Postgres => self.put_in_one_statement(doc, EntryRow { types, body, values: &values }).await?,
            Dialect::Sqlite => self.put_in_a_transaction(doc, EntryRow { types, body, values: &values }).await?,
        }
        let written = self.written.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if written == FIRST_ANALYZE || written.is_multiple_of(ANALYZE_EVERY) {
            self.refresh_statistics();
        }
        Ok(())
    }

    /// PostgreSQL: one statement whose parts (data-modifying `WITH` clauses) see the same
    /// snapshot, so the old values go and the new ones come in one round trip, atomically.
    async fn put_in_one_statement(&self, doc: &IndexDoc, row: EntryRow<'_>) -> Result<(), BackendError> {
        let EntryRow { types, body, values } = row;
        let pairs = serde_json::to_string(values).map_err(|e| BackendError::Invalid(e.to_string()))?;
        let query = sqlx::query(concat!(
            "WITH gone AS (DELETE FROM clacks_values WHERE uuid = $1), entry AS (",
            upsert_entry!(),
            ") INSERT INTO clacks_values (uuid, attr, value_lc) \
             SELECT $1, pair->>0, pair->>1 FROM jsonb_array_elements(CAST($9 AS jsonb)) AS pair",
        ));
        bind_entry(query, doc, types, body).bind(pairs).execute(&self.db.pool).await.map_err(sql_error)?;
        Ok(())
    }

    async fn put_in_a_transaction(&self, doc: &IndexDoc, row: EntryRow<'_>) -> Result<(), BackendError> {
        let EntryRow { types, body, values } = row;
        let mut tx = self.db.pool.begin().await.map_err(sql_error)?;
        sqlx::query("DELETE FROM clacks_values WHERE uuid = $1")
            .bind(doc.uuid.clone())
            .execute(&mut *tx)
            .await
            .map_err(sql_error)?;
        bind_entry(sqlx::query(upsert_entry!()), doc, types, body).execute(&mut *tx).await.map_err(sql_error)?;
        // All values in one statement (in chunks well below the limit on bound
        // parameters): each statement is a round trip to the database.
        for chunk in values.chunks(200) {
            let placeholders: Vec<String> =
                (0..chunk.len()).map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3)).collect();
            // Only placeholders are formatted into the text; every value is bound.
            let sql = format!("INSERT INTO clacks_values (uuid, attr, value_lc) VALUES {}", placeholders.join(", "));
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (attr, value) in chunk {
                query = query.bind(doc.uuid.clone()).bind((*attr).clone()).bind(value.clone());
            }
            query.execute(&mut *tx).await.map_err(sql_error)?;
        }
        tx.commit().await.map_err(sql_error)
    }

    /// Has the database measure the index tables again, in the background. Right after
    /// a bulk import they have no statistics, and PostgreSQL's generic plan for a value
    /// lookup then scanned `clacks_index` once per matching value (74 ms instead of
    /// 1.6 ms for 1,000 hits); autovacuum gets there only after its own delay.
    fn refresh_statistics(&self) {
        let db = self.db.clone();
        tokio::spawn(async move {
            for table in ["clacks_index", "clacks_values"] {
                if let Err(e) = db.execute(format!("ANALYZE {table}"), &[]).await {
                    tracing::debug!("cannot refresh the statistics of {table}: {e}");
                }
            }
        });
    }

    pub async fn remove(&self, uuid: &str) -> Result<(), BackendError> {
        self.db.execute("DELETE FROM clacks_values WHERE uuid = $1".into(), &[Some(uuid)]).await?;
        self.db.execute("DELETE FROM clacks_index WHERE uuid = $1".into(), &[Some(uuid)]).await?;
        Ok(())
    }

    fn docs(rows: &[sqlx::any::AnyRow]) -> Vec<IndexDoc> {
        rows.iter()
            .filter_map(|r| r.try_get::<String, _>(0).ok())
            .filter_map(|body| serde_json::from_str(&body).ok())
            .collect()
    }

    pub async fn by_uuid(&self, uuid: &str) -> Result<Option<IndexDoc>, BackendError> {
        let rows = self.db.fetch("SELECT doc FROM clacks_index WHERE uuid = $1".into(), &[Some(uuid)]).await?;
        Ok(Index::docs(&rows).into_iter().next())
    }

    pub async fn by_dn(&self, dn: &str) -> Result<Option<IndexDoc>, BackendError> {
        let key = dn_key(dn);
        let rows = self.db.fetch("SELECT doc FROM clacks_index WHERE dn_key = $1".into(), &[Some(&key)]).await?;
        Ok(Index::docs(&rows).into_iter().next())
    }

    /// Every indexed object (uuid → modified), for the scan's comparison.
    pub async fn all_modified(&self) -> Result<BTreeMap<String, (String, String)>, BackendError> {
        let rows = self.db.fetch("SELECT uuid, modified, dn FROM clacks_index".into(), &[]).await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some((
                    r.try_get::<String, _>(0).ok()?,
                    (r.try_get::<String, _>(1).ok()?, r.try_get::<String, _>(2).ok()?),
                ))
            })
            .collect())
    }

    /// Objects having `of_type` (as base type or extension; `""` for any type) with
    /// `attr` equal to `value` (case-insensitive).
    pub async fn with_value(&self, of_type: &str, attr: &str, value: &str) -> Result<Vec<IndexDoc>, BackendError> {
        let lc: String = value.to_lowercase().chars().take(MAX_INDEXED_VALUE).collect();
        let types = if of_type.is_empty() { "%".to_owned() } else { format!("%,{of_type},%") };
        let rows = self
            .db
            .fetch(
                "SELECT i.doc FROM clacks_values v JOIN clacks_index i ON i.uuid = v.uuid \
                 WHERE v.attr = $1 AND v.value_lc = $2 AND i.types LIKE $3"
                    .into(),
                &[Some(attr), Some(&lc), Some(&types)],
            )
            .await?;
        Ok(Index::docs(&rows))
    }

    /// Objects that have `of_type` as base type or extension.
    pub async fn of_type(&self, of_type: &str) -> Result<Vec<IndexDoc>, BackendError> {
        let types = format!("%,{of_type},%");
        let rows = self.db.fetch("SELECT doc FROM clacks_index WHERE types LIKE $1".into(), &[Some(&types)]).await?;
        Ok(Index::docs(&rows))
    }

    /// Objects of any type holding `value` in any attribute (references to a DN).
    pub async fn holding(&self, value: &str) -> Result<Vec<(IndexDoc, String)>, BackendError> {
        let lc: String = value.to_lowercase().chars().take(MAX_INDEXED_VALUE).collect();
        let rows = self
            .db
            .fetch(
                "SELECT i.doc, v.attr FROM clacks_values v JOIN clacks_index i ON i.uuid = v.uuid WHERE v.value_lc = $1".into(),
                &[Some(&lc)],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let doc: IndexDoc = serde_json::from_str(&r.try_get::<String, _>(0).ok()?).ok()?;
                Some((doc, r.try_get::<String, _>(1).ok()?))
            })
            .collect())
    }

    /// Rewrites DNs below (and of) `old` after a rename or move.
    pub async fn rename_subtree(&self, old: &str, new: &str) -> Result<Vec<IndexDoc>, BackendError> {
        let old_key = dn_key(old);
        let like = format!("%,{old_key}");
        let rows = self
            .db
            .fetch(
                "SELECT doc FROM clacks_index WHERE dn_key = $1 OR dn_key LIKE $2".into(),
                &[Some(&old_key), Some(&like)],
            )
            .await?;
        let mut moved = Vec::new();
        for mut doc in Index::docs(&rows) {
            // LIKE treats `_` as a wildcard; only true descendants move.
            let Some(moved_dn) = clacks_core::dn::rebase_dn(&doc.dn, old, new) else { continue };
            doc.dn = moved_dn;
            self.put(&doc).await?;
            moved.push(doc);
        }
        Ok(moved)
    }

    /// Objects below `base` by scope; `types` limits to those types (empty: all).
    pub async fn under(&self, base: &str, scope: SearchScope) -> Result<Vec<IndexDoc>, BackendError> {
        let key = dn_key(base);
        let like = format!("%,{key}");
        let (sql, binds): (&str, Vec<Option<&str>>) = match scope {
            SearchScope::Base => ("SELECT doc FROM clacks_index WHERE dn_key = $1", vec![Some(&key)]),
            SearchScope::One => ("SELECT doc FROM clacks_index WHERE parent_key = $1", vec![Some(&key)]),
            SearchScope::Sub => {
                ("SELECT doc FROM clacks_index WHERE dn_key = $1 OR dn_key LIKE $2", vec![Some(&key), Some(&like)])
            }
            SearchScope::Children => ("SELECT doc FROM clacks_index WHERE dn_key LIKE $1", vec![Some(&like)]),
        };
        let rows = self.db.fetch(sql.to_owned(), &binds).await?;
        Ok(Index::docs(&rows))
    }

    /// Objects with a value of one of `attrs` equal to, or starting with, `word`
    /// (lowercase). Returns `(doc, attribute, exact)`.
    pub async fn matching(
        &self,
        word: &str,
        prefix: bool,
        substring: bool,
    ) -> Result<Vec<(IndexDoc, String, bool)>, BackendError> {
        let lc: String = word.to_lowercase().chars().take(MAX_INDEXED_VALUE).collect();
        // A range on the sorted index finds prefixes without a scan; only the explicit
        // fallback looks inside values.
        let upper = format!("{lc}\u{10FFFF}");
        let contains = format!("%{}%", lc.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        let (sql, binds): (&str, Vec<Option<&str>>) = if substring {
            (
                "SELECT i.doc, v.attr, v.value_lc FROM clacks_values v JOIN clacks_index i ON i.uuid = v.uuid \
                 WHERE v.value_lc LIKE $1 ESCAPE '\\' LIMIT 5000",
                vec![Some(&contains)],
            )
        } else if prefix {
            (
                "SELECT i.doc, v.attr, v.value_lc FROM clacks_values v JOIN clacks_index i ON i.uuid = v.uuid \
                 WHERE v.value_lc >= $1 AND v.value_lc < $2 LIMIT 5000",
                vec![Some(&lc), Some(&upper)],
            )
        } else {
            (
                "SELECT i.doc, v.attr, v.value_lc FROM clacks_values v JOIN clacks_index i ON i.uuid = v.uuid \
                 WHERE v.value_lc = $1 LIMIT 5000",
                vec![Some(&lc)],
            )
        };
        let rows = self.db.fetch(sql.to_owned(), &binds).await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let doc: IndexDoc = serde_json::from_str(&r.try_get::<String, _>(0).ok()?).ok()?;
                let value: String = r.try_get(2).ok()?;
                Some((doc, r.try_get::<String, _>(1).ok()?, value == lc))
            })
            .collect())
    }

    /// Number of indexed objects.
    pub async fn count(&self) -> Result<i64, BackendError> {
        let rows = self.db.fetch("SELECT CAST(COUNT(*) AS TEXT) FROM clacks_index".into(), &[]).await?;
        Ok(rows.first().and_then(|r| r.try_get::<String, _>(0).ok()).and_then(|t| t.parse().ok()).unwrap_or(0))
    }

    // ----- open references -----

    pub async fn save_ref(&self, reference: &str, owner: &str, state: &str) -> Result<(), BackendError> {
        let touched = now_secs().to_string();
        self.db
            .execute(
                "INSERT INTO clacks_refs (ref, owner, touched, state) VALUES ($1, $2, CAST($3 AS BIGINT), $4) \
                 ON CONFLICT (ref) DO UPDATE SET touched = excluded.touched, state = excluded.state"
                    .into(),
                &[Some(reference), Some(owner), Some(&touched), Some(state)],
            )
            .await?;
        Ok(())
    }

    /// `(owner, state)` of a reference idle for less than `idle_secs`. Using it counts as
    /// activity: a reference last touched more than a tenth of the idle time ago is
    /// touched again (reads within that tenth write nothing).
    pub async fn load_ref(&self, reference: &str, idle_secs: i64) -> Result<Option<(String, String)>, BackendError> {
        let now = now_secs();
        let oldest = (now - idle_secs).to_string();
        let rows = self
            .db
            .fetch(
                "SELECT owner, state, CAST(touched AS TEXT) FROM clacks_refs \
                 WHERE ref = $1 AND touched >= CAST($2 AS BIGINT)"
                    .into(),
                &[Some(reference), Some(&oldest)],
            )
            .await?;
        let Some(row) = rows.first() else { return Ok(None) };
        let (Ok(owner), Ok(state)) = (row.try_get::<String, _>(0), row.try_get::<String, _>(1)) else {
            return Ok(None);
        };
        let touched = row.try_get::<String, _>(2).ok().and_then(|t| t.parse::<i64>().ok()).unwrap_or(0);
        if now - touched > idle_secs / 10 {
            self.db
                .execute(
                    "UPDATE clacks_refs SET touched = CAST($2 AS BIGINT) WHERE ref = $1".into(),
                    &[Some(reference), Some(&now.to_string())],
                )
                .await?;
        }
        Ok(Some((owner, state)))
    }

    /// Forgets `owner`'s reference unless it has expired; whether there was one.
    pub async fn drop_ref(&self, reference: &str, owner: &str, idle_secs: i64) -> Result<bool, BackendError> {
        let oldest = (now_secs() - idle_secs).to_string();
        let dropped = self
            .db
            .execute(
                "DELETE FROM clacks_refs WHERE ref = $1 AND owner = $2 AND touched >= CAST($3 AS BIGINT)".into(),
                &[Some(reference), Some(owner), Some(&oldest)],
            )
            .await?;
        Ok(dropped > 0)
    }

    /// Forgets references idle for `idle_secs` or longer; returns how many.
    pub async fn expire_refs(&self, idle_secs: i64) -> Result<u64, BackendError> {
        let oldest = (now_secs() - idle_secs).to_string();
        self.db.execute("DELETE FROM clacks_refs WHERE touched < CAST($1 AS BIGINT)".into(), &[Some(&oldest)]).await
    }

    // ----- cluster locks and shared markers -----

    /// Takes the named lock for `ttl_secs` unless someone else holds it.
    pub async fn try_lock(&self, name: &str, holder: &str, ttl_secs: i64) -> Result<bool, BackendError> {
        let now = now_secs().to_string();
        self.db
            .execute(
                "DELETE FROM clacks_locks WHERE name = $1 AND expires < CAST($2 AS BIGINT)".into(),
                &[Some(name), Some(&now)],
            )
            .await?;
        let expires = (now_secs() + ttl_secs).to_string();
        let taken = self
            .db
            .execute(
                "INSERT INTO clacks_locks (name, holder, expires) VALUES ($1, $2, CAST($3 AS BIGINT)) ON CONFLICT (name) DO NOTHING"
                    .into(),
                &[Some(name), Some(holder), Some(&expires)],
            )
            .await?;
        if taken == 1 {
            return Ok(true);
        }
        // Taking it again as the same holder extends it.
        let renewed = self
            .db
            .execute(
                "UPDATE clacks_locks SET expires = CAST($1 AS BIGINT) WHERE name = $2 AND holder = $3".into(),
                &[Some(&expires), Some(name), Some(holder)],
            )
            .await?;
        Ok(renewed == 1)
    }

    pub async fn unlock(&self, name: &str, holder: &str) -> Result<(), BackendError> {
        self.db
            .execute("DELETE FROM clacks_locks WHERE name = $1 AND holder = $2".into(), &[Some(name), Some(holder)])
            .await?;
        Ok(())
    }

    pub async fn meta(&self, key: &str) -> Result<Option<String>, BackendError> {
        let rows = self.db.fetch("SELECT value FROM clacks_meta WHERE key = $1".into(), &[Some(key)]).await?;
        Ok(rows.first().and_then(|r| r.try_get::<String, _>(0).ok()))
    }

    pub async fn set_meta(&self, key: &str, value: &str) -> Result<(), BackendError> {
        self.db
            .execute(
                "INSERT INTO clacks_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value".into(),
                &[Some(key), Some(value)],
            )
            .await?;
        Ok(())
    }
}
