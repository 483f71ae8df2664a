//! The SQL backend (sqlx, PostgreSQL or SQLite), and the database handle the index
//! shares.
//!
//! Each object type has a table `clacks_obj_<type>` keyed by the object's UUID with one
//! text column per attribute stored here; a multi-valued attribute holds a JSON array.
//! Tables are created on first use and gain a column when a description gains an
//! attribute, so extending an object is an edit of its description. When SQL is an
//! object's primary backend (the embedded default), `clacks_entries` holds its DN,
//! parent and types.
//!
//! Identifiers in SQL text come only from descriptions, whose schema restricts names to
//! `[A-Za-z_][A-Za-z0-9_-]*`; they are checked again here and quoted. Values are always
//! bound.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};
use tokio::sync::Mutex;

use super::{BackendError, Entry};
use clacks_core::dn::{dn_key, parent_dn};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// A pool on one database, with its dialect.
#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub dialect: Dialect,
}

/// How long a pooled connection may have been idle before it is checked on its way out.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(5);

pub(crate) fn sql_error(e: sqlx::Error) -> BackendError {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            BackendError::Exists(format!("database: {}", db.message()))
        }
        sqlx::Error::Database(db) => BackendError::Refused { code: 0, message: format!("database: {}", db.message()) },
        sqlx::Error::PoolTimedOut => BackendError::Unavailable("the database did not answer in time".into()),
        other => BackendError::Unavailable(format!("database: {other}")),
    }
}

impl Db {
    /// Opens a pool. `sqlite:` URLs create the file if needed.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Db, BackendError> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("postgres") {
            Dialect::Postgres
        } else if url.starts_with("sqlite") {
            Dialect::Sqlite
        } else {
            return Err(BackendError::Invalid(format!(
                "unsupported database URL '{url}' (use postgres:// or sqlite:)"
            )));
        };
        let url = if dialect == Dialect::Sqlite && !url.contains("mode=") && !url.contains(":memory:") {
            format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
        } else {
            url.to_owned()
        };
        let max = if url.contains(":memory:") { 1 } else { 8 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(timeout)
            // A ping before every statement doubled the round trips of every call on an
            // open object. A connection idle for a while (the database may have restarted
            // meanwhile) is still checked; one in steady use proves itself by its answers.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > IDLE_BEFORE_PING {
                        use sqlx::Connection;
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // WAL with NORMAL sync: a commit does not wait for the disk, a
                        // crash loses at most the last transactions, never consistency.
                        // Other agents and shells wait for a lock instead of failing.
                        use sqlx::Executor;
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(sql_error)?;
        Ok(Db { pool, dialect })
    }

    /// Runs a statement built from checked identifiers, with bound text values.
    pub async fn execute(&self, sql: String, binds: &[Option<&str>]) -> Result<u64, BackendError> {
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for b in binds {
            query = query.bind(b.map(str::to_owned));
        }
        query.execute(&self.pool).await.map(|r| r.rows_affected()).map_err(sql_error)
    }

    /// Fetches rows for a statement built from checked identifiers.
    pub async fn fetch(&self, sql: String, binds: &[Option<&str>]) -> Result<Vec<AnyRow>, BackendError> {
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for b in binds {
            query = query.bind(b.map(str::to_owned));
        }
        query.fetch_all(&self.pool).await.map_err(sql_error)
    }

    /// The columns a table has now (empty if it does not exist).
    pub async fn columns(&self, table: &str) -> Result<HashSet<String>, BackendError> {
        let sql = match self.dialect {
            Dialect::Postgres => {
                "SELECT CAST(column_name AS TEXT) FROM information_schema.columns \
                 WHERE table_name = $1 AND table_schema = current_schema()"
            }
            Dialect::Sqlite => "SELECT name FROM pragma_table_info($1)",
        };
        let rows = sqlx::query(sql).bind(table.to_owned()).fetch_all(&self.pool).await.map_err(sql_error)?;
        Ok(rows.iter().filter_map(|r| r.try_get::<String, _>(0).ok()).collect())
    }
}

/// Checks a name from a description before it goes into SQL text, and quotes it.
pub fn quote(name: &str) -> Result<String, BackendError> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name.len() <= 60;
    if valid {
        Ok(format!("\"{name}\""))
    } else {
        Err(BackendError::Invalid(format!("'{name}' is not a valid SQL name")))
    }
}

/// The table of an object type.
pub fn table_of(object_type: &str) -> String {
    format!("clacks_obj_{}", object_type.to_lowercase().replace('-', "_"))
}

fn text(row: &AnyRow, i: usize) -> Option<String> {
    row.try_get::<Option<String>, _>(i).ok().flatten()
}

pub struct SqlBackend {
    db: Db,
    /// Columns known to exist per table, so migration runs once per change.
    known: Mutex<HashMap<String, HashSet<String>>>,
}

impl std::fmt::Debug for SqlBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlBackend").field("dialect", &self.db.dialect).finish()
    }
}

const ENTRIES_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS clacks_entries (
    uuid TEXT PRIMARY KEY,
    dn TEXT NOT NULL,
    dn_key TEXT NOT NULL UNIQUE,
    parent_key TEXT NOT NULL,
    types TEXT NOT NULL,
    created TEXT NOT NULL,
    modified TEXT NOT NULL)";

impl SqlBackend {
    pub async fn open(db: Db) -> Result<SqlBackend, BackendError> {
        db.execute(ENTRIES_SCHEMA.to_owned(), &[]).await?;
        db.execute("CREATE INDEX IF NOT EXISTS clacks_entries_parent ON clacks_entries (parent_key)".to_owned(), &[])
            .await?;
        db.execute(
            "CREATE TABLE IF NOT EXISTS clacks_idpool (attr TEXT PRIMARY KEY, next BIGINT NOT NULL)".to_owned(),
            &[],
        )
        .await?;
        Ok(SqlBackend { db, known: Mutex::new(HashMap::new()) })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Creates the type's table or adds the columns it lacks.
    pub async fn ensure_table(&self, object_type: &str, columns: &[String]) -> Result<(), BackendError> {
        let table = table_of(object_type);
        let mut known = self.known.lock().await;
        if let Some(have) = known.get(&table)
            && columns.iter().all(|c| have.contains(c))
        {
            return Ok(());
        }
        let quoted_table = quote(&table)?;
        self.db.execute(format!("CREATE TABLE IF NOT EXISTS {quoted_table} (uuid TEXT PRIMARY KEY)"), &[]).await?;
        let mut have = self.db.columns(&table).await?;
        for column in columns {
            if !have.contains(column) {
                let quoted = quote(column)?;
                match self.db.execute(format!("ALTER TABLE {quoted_table} ADD COLUMN {quoted} TEXT"), &[]).await {
                    Ok(_) => tracing::info!("added column {column} to {table}"),
                    // Another agent migrated at the same moment.
                    Err(_) if self.db.columns(&table).await?.contains(column) => {}
                    Err(e) => return Err(e),
                }
                have.insert(column.clone());
            }
        }
        known.insert(table, have);
        Ok(())
    }

    /// The stored text of `columns` for one object, or `None` when it has no row.
    pub async fn load(
        &self,
        object_type: &str,
        uuid: &str,
        columns: &[String],
    ) -> Result<Option<HashMap<String, String>>, BackendError> {
        self.ensure_table(object_type, columns).await?;
        let select = if columns.is_empty() {
            "uuid".to_owned()
        } else {
            columns.iter().map(|c| quote(c)).collect::<Result<Vec<_>, _>>()?.join(", ")
        };
        let sql = format!("SELECT {select} FROM {} WHERE uuid = $1", quote(&table_of(object_type))?);
        let rows = self.db.fetch(sql, &[Some(uuid)]).await?;
        Ok(rows
            .first()
            .map(|row| columns.iter().enumerate().filter_map(|(i, c)| text(row, i).map(|v| (c.clone(), v))).collect()))
    }

    /// Inserts or updates one object's row; `None` clears a column.
    pub async fn write(
        &self,
        object_type: &str,
        uuid: &str,
        values: &[(String, Option<String>)],
    ) -> Result<(), BackendError> {
        let columns: Vec<String> = values.iter().map(|(c, _)| c.clone()).collect();
        self.ensure_table(object_type, &columns).await?;
        let table = quote(&table_of(object_type))?;
        let quoted: Vec<String> = columns.iter().map(|c| quote(c)).collect::<Result<_, _>>()?;
        let placeholders: Vec<String> = (2..=values.len() + 1).map(|i| format!("${i}")).collect();
        let update = if quoted.is_empty() {
            "NOTHING".to_owned()
        } else {
            format!(
                "UPDATE SET {}",
                quoted.iter().map(|c| format!("{c} = excluded.{c}")).collect::<Vec<_>>().join(", ")
            )
        };
        let sql = format!(
            "INSERT INTO {table} (uuid{}{}) VALUES ($1{}{}) ON CONFLICT (uuid) DO {update}",
            if quoted.is_empty() { "" } else { ", " },
            quoted.join(", "),
            if placeholders.is_empty() { "" } else { ", " },
            placeholders.join(", "),
        );
        let mut binds: Vec<Option<&str>> = vec![Some(uuid)];
        binds.extend(values.iter().map(|(_, v)| v.as_deref()));
        self.db.execute(sql, &binds).await?;
        Ok(())
    }

    /// Whether the type has a row for the object (an SQL-stored extension is active).
    pub async fn has_row(&self, object_type: &str, uuid: &str) -> Result<bool, BackendError> {
        Ok(self.load(object_type, uuid, &[]).await?.is_some())
    }

    pub async fn delete(&self, object_type: &str, uuid: &str) -> Result<(), BackendError> {
        self.ensure_table(object_type, &[]).await?;
        let sql = format!("DELETE FROM {} WHERE uuid = $1", quote(&table_of(object_type))?);
        self.db.execute(sql, &[Some(uuid)]).await?;
        Ok(())
    }

    // ----- the primary role -----

    fn entry(row: &AnyRow) -> Entry {
        Entry {
            uuid: text(row, 0).unwrap_or_default(),
            dn: text(row, 1).unwrap_or_default(),
            markers: text(row, 2).unwrap_or_default().split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
            modified: text(row, 3),
            version: text(row, 3),
        }
    }

    pub async fn entry_by_dn(&self, dn: &str) -> Result<Option<Entry>, BackendError> {
        let key = dn_key(dn);
        let rows = self
            .db
            .fetch("SELECT uuid, dn, types, modified FROM clacks_entries WHERE dn_key = $1".into(), &[Some(&key)])
            .await?;
        Ok(rows.first().map(SqlBackend::entry))
    }

    pub async fn entry_by_uuid(&self, uuid: &str) -> Result<Option<Entry>, BackendError> {
        let rows = self
            .db
            .fetch("SELECT uuid, dn, types, modified FROM clacks_entries WHERE uuid = $1".into(), &[Some(uuid)])
            .await?;
        Ok(rows.first().map(SqlBackend::entry))
    }

    /// Adds an entry with a fresh UUID; refuses a DN that exists.
    pub async fn create_entry(&self, dn: &str, types: &[String]) -> Result<String, BackendError> {
        let uuid = uuid::Uuid::new_v4().to_string();
        let now = now();
        let (key, parent) = (dn_key(dn), dn_key(parent_dn(dn)));
        let joined = types.join(",");
        let sql = "INSERT INTO clacks_entries (uuid, dn, dn_key, parent_key, types, created, modified) \
                   VALUES ($1, $2, $3, $4, $5, $6, $6)";
        match self
            .db
            .execute(sql.into(), &[Some(&uuid), Some(dn), Some(&key), Some(&parent), Some(&joined), Some(&now)])
            .await
        {
            Ok(_) => Ok(uuid),
            Err(BackendError::Exists(_)) => Err(BackendError::Exists(format!("{dn} already exists"))),
            Err(e) => Err(e),
        }
    }

    /// Sets the entry's types and marks it modified.
    pub async fn set_types(&self, uuid: &str, types: &[String]) -> Result<(), BackendError> {
        let joined = types.join(",");
        self.db
            .execute(
                "UPDATE clacks_entries SET types = $1, modified = $2 WHERE uuid = $3".into(),
                &[Some(&joined), Some(&now()), Some(uuid)],
            )
            .await?;
        Ok(())
    }

    /// Renames or moves an entry and everything below it.
    pub async fn rename_subtree(&self, old_dn: &str, new_dn: &str) -> Result<(), BackendError> {
        let (old_key, new_key) = (dn_key(old_dn), dn_key(new_dn));
        if self.entry_by_dn(new_dn).await?.is_some() && old_key != new_key {
            return Err(BackendError::Exists(format!("{new_dn} already exists")));
        }
        let suffix = format!("%,{old_key}");
        let rows = self
            .db
            .fetch(
                "SELECT uuid, dn FROM clacks_entries WHERE dn_key = $1 OR dn_key LIKE $2".into(),
                &[Some(&old_key), Some(&suffix)],
            )
            .await?;
        let now = now();
        for row in rows {
            let (uuid, dn) = (text(&row, 0).unwrap_or_default(), text(&row, 1).unwrap_or_default());
            // LIKE treats `_` as a wildcard; only true descendants move.
            let Some(moved_dn) = clacks_core::dn::rebase_dn(&dn, old_dn, new_dn) else { continue };
            let moved_key = dn_key(&moved_dn);
            let parent = dn_key(parent_dn(&moved_dn));
            self.db
                .execute(
                    "UPDATE clacks_entries SET dn = $1, dn_key = $2, parent_key = $3, modified = $4 WHERE uuid = $5"
                        .into(),
                    &[Some(&moved_dn), Some(&moved_key), Some(&parent), Some(&now), Some(&uuid)],
                )
                .await?;
        }
        Ok(())
    }

    pub async fn delete_entry(&self, uuid: &str) -> Result<(), BackendError> {
        self.db.execute("DELETE FROM clacks_entries WHERE uuid = $1".into(), &[Some(uuid)]).await?;
        Ok(())
    }

    /// DNs directly below `dn`.
    pub async fn children(&self, dn: &str) -> Result<Vec<String>, BackendError> {
        let key = dn_key(dn);
        let rows = self.db.fetch("SELECT dn FROM clacks_entries WHERE parent_key = $1".into(), &[Some(&key)]).await?;
        Ok(rows.iter().filter_map(|r| text(r, 0)).collect())
    }

    /// All entries, for the index scan.
    pub async fn all_entries(&self) -> Result<Vec<Entry>, BackendError> {
        let rows = self.db.fetch("SELECT uuid, dn, types, modified FROM clacks_entries".into(), &[]).await?;
        Ok(rows.iter().map(SqlBackend::entry).collect())
    }

    /// The next number for `attr`, starting at `start`; atomic in both dialects.
    pub async fn next_id(&self, attr: &str, start: i64) -> Result<i64, BackendError> {
        let start_text = start.to_string();
        self.db
            .execute(
                "INSERT INTO clacks_idpool (attr, next) VALUES ($1, CAST($2 AS BIGINT)) ON CONFLICT (attr) DO NOTHING"
                    .into(),
                &[Some(attr), Some(&start_text)],
            )
            .await?;
        let rows = self
            .db
            .fetch(
                "UPDATE clacks_idpool SET next = next + 1 WHERE attr = $1 RETURNING CAST(next - 1 AS TEXT)".into(),
                &[Some(attr)],
            )
            .await?;
        rows.first()
            .and_then(|r| text(r, 0))
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| BackendError::Unavailable(format!("the id pool has no number for {attr}")))
    }
}

/// Now, as RFC 3339 UTC with seconds.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
    }

    #[test]
    fn tables_migrate_and_entries_move_as_a_subtree() {
        block_on(async {
            let db = Db::connect("sqlite::memory:", Duration::from_secs(5)).await.expect("sqlite");
            let sql = SqlBackend::open(db).await.expect("open");
            sql.write("User", "u1", &[("uid".into(), Some("ada".into()))]).await.expect("write");
            // A description gained an attribute: the column appears, old rows keep theirs.
            sql.write("User", "u1", &[("room".into(), Some("42".into()))]).await.expect("migrate");
            let row = sql.load("User", "u1", &["uid".into(), "room".into()]).await.expect("load").expect("row");
            assert_eq!((row["uid"].as_str(), row["room"].as_str()), ("ada", "42"));
            assert!(sql.load("User", "u2", &["uid".into()]).await.expect("load").is_none());
            assert!(quote("x\"; DROP").is_err());

            let ou = sql.create_entry("ou=people,dc=x", &["PeopleContainer".into()]).await.expect("ou");
            sql.create_entry("uid=ada,ou=people,dc=x", &["User".into()]).await.expect("user");
            assert!(matches!(sql.create_entry("UID=ada, ou=people,dc=x", &[]).await, Err(BackendError::Exists(_))));
            sql.rename_subtree("ou=people,dc=x", "ou=staff,dc=x").await.expect("move");
            assert_eq!(
                sql.children("ou=staff,dc=x").await.expect("children"),
                vec!["uid=ada,ou=staff,dc=x".to_owned()]
            );
            assert_eq!(sql.entry_by_uuid(&ou).await.expect("ou").map(|e| e.dn), Some("ou=staff,dc=x".into()));
            assert_eq!(sql.next_id("uidNumber", 10000).await.expect("id"), 10000);
            assert_eq!(sql.next_id("uidNumber", 10000).await.expect("id"), 10001);
        });
    }
}
