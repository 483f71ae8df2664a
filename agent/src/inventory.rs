//! Where agents keep the clients' inventories: the object store's index database
//! (SQLite or PostgreSQL), one document per client plus a row per installed package
//! and running service, so "which clients run package X older than Y" is one indexed
//! lookup and a version comparison.
//!
//! Every agent of a domain hears every Inventory event; storing is idempotent (same
//! checksum: nothing to do; rows are upserted and stale ones removed by checksum), so
//! several agents sharing the database do not duplicate anything.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use clacks_objects::backend::BackendError;
use clacks_objects::backend::sql::Db;
use serde_json::{Map, Value, json};
use sqlx::Row;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS clacks_inventory (client TEXT PRIMARY KEY, checksum TEXT NOT NULL, received TEXT NOT NULL, hostname TEXT NOT NULL, os TEXT NOT NULL, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS clacks_inventory_packages (client TEXT NOT NULL, name TEXT NOT NULL, arch TEXT NOT NULL, version TEXT NOT NULL, checksum TEXT NOT NULL, PRIMARY KEY (client, name, arch))",
    "CREATE INDEX IF NOT EXISTS clacks_inventory_packages_name ON clacks_inventory_packages (name)",
    "CREATE TABLE IF NOT EXISTS clacks_inventory_services (client TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL, checksum TEXT NOT NULL, PRIMARY KEY (client, name))",
    "CREATE INDEX IF NOT EXISTS clacks_inventory_services_name ON clacks_inventory_services (name)",
    "CREATE TABLE IF NOT EXISTS clacks_inventory_facts (client TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, checksum TEXT NOT NULL, PRIMARY KEY (client, name, value))",
    "CREATE INDEX IF NOT EXISTS clacks_inventory_facts_name ON clacks_inventory_facts (name)",
];

/// Rows per multi-row insert: well below every database's limit of bound values.
const BATCH: usize = 100;

/// The inventory tables.
#[derive(Clone, Debug)]
pub struct InventoryStore {
    db: Db,
}

/// A list that XML turned into one object when it had one element.
pub fn as_list(value: Option<&Value>) -> Vec<Value> {
    match value {
        Some(Value::Array(items)) => items.clone(),
        Some(Value::Null) | None => Vec::new(),
        Some(Value::String(s)) if s.is_empty() => Vec::new(),
        Some(other) => vec![other.clone()],
    }
}

fn text(value: Option<&Value>) -> String {
    value.and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// Compares two package versions the way dpkg does (epoch, upstream, revision; `~`
/// sorts before everything, letters before other symbols); rpm's `epoch:version-release`
/// compares sensibly the same way.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, rest)) if e.chars().all(|c| c.is_ascii_digit()) && !e.is_empty() => (e.parse().unwrap_or(0), rest),
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((upstream, revision)) => (epoch, upstream, revision),
            None => (epoch, rest, ""),
        }
    }
    fn order(c: Option<u8>) -> i32 {
        match c {
            None => 0,
            Some(c) if c.is_ascii_digit() => 0,
            Some(c) if c.is_ascii_alphabetic() => i32::from(c),
            Some(b'~') => -1,
            Some(c) => i32::from(c) + 256,
        }
    }
    fn part(a: &[u8], b: &[u8]) -> Ordering {
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
                let (ac, bc) = (order(a.get(i).copied()), order(b.get(j).copied()));
                if ac != bc {
                    return ac.cmp(&bc);
                }
                i += 1;
                j += 1;
            }
            while a.get(i) == Some(&b'0') {
                i += 1;
            }
            while b.get(j) == Some(&b'0') {
                j += 1;
            }
            let mut first_diff = Ordering::Equal;
            while i < a.len() && j < b.len() && a[i].is_ascii_digit() && b[j].is_ascii_digit() {
                if first_diff == Ordering::Equal {
                    first_diff = a[i].cmp(&b[j]);
                }
                i += 1;
                j += 1;
            }
            if i < a.len() && a[i].is_ascii_digit() {
                return Ordering::Greater;
            }
            if j < b.len() && b[j].is_ascii_digit() {
                return Ordering::Less;
            }
            if first_diff != Ordering::Equal {
                return first_diff;
            }
        }
        Ordering::Equal
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb).then_with(|| part(ua.as_bytes(), ub.as_bytes())).then_with(|| part(ra.as_bytes(), rb.as_bytes()))
}

/// Facts kept per client, and the longest name and value, as a client sends them.
const MAX_FACTS: usize = 1000;
const MAX_FACT_NAME: usize = 128;
const MAX_FACT_VALUE: usize = 1024;

/// What `findClients` may ask.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Query {
    /// Installed package name.
    pub package: Option<String>,
    /// …with a version lower than this.
    pub package_below: Option<String>,
    /// …with at least this version.
    pub package_at_least: Option<String>,
    /// A running service.
    pub service: Option<String>,
    /// A glob (`*`) on "OS name and version", e.g. `Debian*12*`.
    pub os: Option<String>,
}

impl InventoryStore {
    /// Opens the tables in `db`, creating them if needed.
    pub async fn open(db: Db) -> Result<InventoryStore, BackendError> {
        for statement in SCHEMA {
            db.execute((*statement).to_owned(), &[]).await?;
        }
        Ok(InventoryStore { db })
    }

    /// Forgets everything stored about `client` (it left the domain).
    pub async fn remove(&self, client: &str) -> Result<(), BackendError> {
        for table in
            ["clacks_inventory_packages", "clacks_inventory_services", "clacks_inventory_facts", "clacks_inventory"]
        {
            self.db.execute(format!("DELETE FROM {table} WHERE client = $1"), &[Some(client)]).await?;
        }
        Ok(())
    }

    /// The checksum stored for `client`.
    pub async fn checksum(&self, client: &str) -> Result<Option<String>, BackendError> {
        let rows =
            self.db.fetch("SELECT checksum FROM clacks_inventory WHERE client = $1".into(), &[Some(client)]).await?;
        Ok(rows.first().and_then(|r| r.try_get::<String, _>(0).ok()))
    }

    /// The stored document of `client`.
    pub async fn get(&self, client: &str) -> Result<Option<Value>, BackendError> {
        let rows = self
            .db
            .fetch("SELECT doc, received FROM clacks_inventory WHERE client = $1".into(), &[Some(client)])
            .await?;
        Ok(rows.first().and_then(|r| {
            let mut doc: Value = serde_json::from_str(&r.try_get::<String, _>(0).ok()?).ok()?;
            doc["Received"] = json!(r.try_get::<String, _>(1).ok()?);
            Some(doc)
        }))
    }

    /// Stores an inventory (event fields, lists normalised); `false` when the same
    /// checksum was stored already.
    pub async fn put(&self, client: &str, fields: &Map<String, Value>) -> Result<bool, BackendError> {
        let checksum = text(fields.get("Checksum"));
        if self.checksum(client).await?.as_deref() == Some(checksum.as_str()) {
            return Ok(false);
        }
        let mut doc = fields.clone();
        for list in ["Cpu", "Disk", "NetworkInterface", "Package", "Service", "Fact"] {
            let items = as_list(fields.get(list));
            doc.insert(list.into(), Value::Array(items));
        }
        let os = doc.get("OperatingSystem");
        let os_text = format!("{} {}", text(os.and_then(|o| o.get("Name"))), text(os.and_then(|o| o.get("Version"))));
        let received = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let doc_text = Value::Object(doc.clone()).to_string();
        let hostname = text(doc.get("Hostname"));
        self.db
            .execute(
                "INSERT INTO clacks_inventory (client, checksum, received, hostname, os, doc) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (client) DO UPDATE SET checksum = excluded.checksum, received = excluded.received, \
                 hostname = excluded.hostname, os = excluded.os, doc = excluded.doc"
                    .into(),
                &[Some(client), Some(&checksum), Some(&received), Some(&hostname), Some(os_text.trim()), Some(&doc_text)],
            )
            .await?;
        // One row per (name, architecture), as the table's key wants.
        let packages: Vec<[String; 3]> = as_list(doc.get("Package"))
            .iter()
            .map(|p| ((text(p.get("Name")), text(p.get("Architecture"))), text(p.get("Version"))))
            .filter(|((name, _), _)| !name.is_empty())
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .map(|((name, arch), version)| [name, arch, version])
            .collect();
        let columns = "(client, name, arch, version, checksum)";
        let update = "version = excluded.version, checksum = excluded.checksum";
        self.upsert_rows(
            "clacks_inventory_packages",
            columns,
            "(client, name, arch)",
            update,
            client,
            &checksum,
            &packages,
        )
        .await?;
        let services: Vec<[String; 2]> = as_list(doc.get("Service"))
            .iter()
            .map(|s| (text(s.get("Name")), text(s.get("State"))))
            .filter(|(name, _)| !name.is_empty())
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .map(|(name, state)| [name, state])
            .collect();
        let update = "state = excluded.state, checksum = excluded.checksum";
        let columns = "(client, name, state, checksum)";
        self.upsert_rows("clacks_inventory_services", columns, "(client, name)", update, client, &checksum, &services)
            .await?;
        // Bounded as the client bounds them: a machine cannot flood the table.
        let facts: Vec<[String; 2]> = as_list(doc.get("Fact"))
            .iter()
            .map(|f| [text(f.get("Name")), text(f.get("Value"))])
            .filter(|[name, value]| !name.is_empty() && name.len() <= MAX_FACT_NAME && value.len() <= MAX_FACT_VALUE)
            .take(MAX_FACTS)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let (columns, key) = ("(client, name, value, checksum)", "(client, name, value)");
        self.upsert_rows(
            "clacks_inventory_facts",
            columns,
            key,
            "checksum = excluded.checksum",
            client,
            &checksum,
            &facts,
        )
        .await?;
        Ok(true)
    }

    /// The values of the fact `name`, by client.
    pub async fn fact_values(&self, name: &str) -> Result<BTreeMap<String, Vec<String>>, BackendError> {
        let rows = self
            .db
            .fetch("SELECT client, value FROM clacks_inventory_facts WHERE name = $1".into(), &[Some(name)])
            .await?;
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in &rows {
            if let (Ok(client), Ok(value)) = (row.try_get::<String, _>(0), row.try_get::<String, _>(1)) {
                values.entry(client).or_default().push(value);
            }
        }
        Ok(values)
    }

    /// Upserts `rows` (values after `client`, before `checksum`) in batches, then drops
    /// the client's rows of older inventories.
    #[allow(clippy::too_many_arguments)]
    async fn upsert_rows<const N: usize>(
        &self,
        table: &str,
        columns: &str,
        key: &str,
        update: &str,
        client: &str,
        checksum: &str,
        rows: &[[String; N]],
    ) -> Result<(), BackendError> {
        let width = N + 2;
        for batch in rows.chunks(BATCH) {
            let mut placeholders = Vec::new();
            let mut binds: Vec<Option<&str>> = Vec::new();
            for (i, row) in batch.iter().enumerate() {
                let marks: Vec<String> = (1..=width).map(|k| format!("${}", i * width + k)).collect();
                placeholders.push(format!("({})", marks.join(", ")));
                binds.push(Some(client));
                binds.extend(row.iter().map(|v| Some(v.as_str())));
                binds.push(Some(checksum));
            }
            let sql = format!(
                "INSERT INTO {table} {columns} VALUES {} ON CONFLICT {key} DO UPDATE SET {update}",
                placeholders.join(", ")
            );
            self.db.execute(sql, &binds).await?;
        }
        self.db
            .execute(
                format!("DELETE FROM {table} WHERE client = $1 AND checksum <> $2"),
                &[Some(client), Some(checksum)],
            )
            .await?;
        Ok(())
    }

    /// Clients matching every condition: `[{client, hostname, os, package?}]`.
    pub async fn find(&self, query: &Query) -> Result<Vec<Value>, BackendError> {
        let all = self.db.fetch("SELECT client, hostname, os FROM clacks_inventory".into(), &[]).await?;
        let mut found: BTreeMap<String, Value> = all
            .iter()
            .filter_map(|r| {
                let client: String = r.try_get(0).ok()?;
                let row = json!({"client": client, "hostname": r.try_get::<String, _>(1).ok()?, "os": r.try_get::<String, _>(2).ok()?});
                Some((client, row))
            })
            .collect();
        if let Some(pattern) = &query.os {
            found.retain(|_, row| clacks_objects::store::glob_match(pattern, row["os"].as_str().unwrap_or_default()));
        }
        if let Some(package) = &query.package {
            let rows = self
                .db
                .fetch(
                    "SELECT client, version, arch FROM clacks_inventory_packages WHERE name = $1".into(),
                    &[Some(package)],
                )
                .await?;
            let mut with: BTreeMap<String, Value> = BTreeMap::new();
            for r in &rows {
                let (Ok(client), Ok(version)) = (r.try_get::<String, _>(0), r.try_get::<String, _>(1)) else {
                    continue;
                };
                let below =
                    query.package_below.as_deref().is_none_or(|v| compare_versions(&version, v) == Ordering::Less);
                let at_least =
                    query.package_at_least.as_deref().is_none_or(|v| compare_versions(&version, v) != Ordering::Less);
                if below && at_least {
                    let arch = r.try_get::<String, _>(2).unwrap_or_default();
                    with.insert(client, json!({"name": package, "version": version, "architecture": arch}));
                }
            }
            found.retain(|client, row| match with.get(client) {
                Some(p) => {
                    row["package"] = p.clone();
                    true
                }
                None => false,
            });
        } else if query.package_below.is_some() || query.package_at_least.is_some() {
            return Err(BackendError::Invalid("packageBelow and packageAtLeast need package".into()));
        }
        if let Some(service) = &query.service {
            let rows = self
                .db
                .fetch("SELECT client FROM clacks_inventory_services WHERE name = $1".into(), &[Some(service)])
                .await?;
            let running: BTreeSet<String> = rows.iter().filter_map(|r| r.try_get::<String, _>(0).ok()).collect();
            found.retain(|client, _| running.contains(client));
        }
        Ok(found.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_like_dpkg() {
        let cases = [
            ("1.0", "1.0", Ordering::Equal),
            ("1.0", "1.1", Ordering::Less),
            ("1.10", "1.9", Ordering::Greater),
            ("1.0~rc1", "1.0", Ordering::Less),
            ("1:0.9", "2.0", Ordering::Greater),
            ("2.36-9+deb12u4", "2.36-9+deb12u10", Ordering::Less),
            ("3.0.11-1~deb12u2", "3.0.11-1", Ordering::Less),
            ("1.0a", "1.0", Ordering::Greater),
            ("1.0-1", "1.0-1.1", Ordering::Less),
            ("001", "1", Ordering::Equal),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    /// An inventory store on SQLite in a folder removed with the returned handle.
    async fn store_in_a_temporary_folder() -> (tempfile::TempDir, InventoryStore) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let url = format!("sqlite://{}", dir.path().join("inv.db").display());
        let db = Db::connect(&url, std::time::Duration::from_secs(5)).await.unwrap_or_else(|e| panic!("{e}"));
        (dir, InventoryStore::open(db).await.unwrap_or_else(|e| panic!("{e}")))
    }

    #[tokio::test]
    async fn inventories_are_stored_once_and_queried_by_package_version_service_and_os() {
        let (_dir, store) = store_in_a_temporary_folder().await;
        let inventory = |checksum: &str, openssl: &str, os: &str| {
            json!({
                "Checksum": checksum, "Hostname": "h", "OperatingSystem": {"Name": "Debian GNU/Linux", "Version": os},
                "Package": [{"Name": "openssl", "Version": openssl, "Architecture": "amd64"}, {"Name": "bash", "Version": "5.2"}],
                "Service": {"Name": "ssh", "State": "running"},
            })
            .as_object()
            .cloned()
            .unwrap_or_default()
        };
        assert_eq!(store.put("a", &inventory("1", "3.0.11-1~deb12u2", "12")).await.ok(), Some(true));
        assert_eq!(store.put("a", &inventory("1", "3.0.11-1~deb12u2", "12")).await.ok(), Some(false));
        assert_eq!(store.put("b", &inventory("2", "3.0.15-1~deb12u1", "12")).await.ok(), Some(true));
        assert_eq!(store.put("c", &inventory("3", "1.1.1w-0+deb11u1", "11")).await.ok(), Some(true));
        let clients = |q: Query| {
            let store = store.clone();
            async move {
                let rows = store.find(&q).await.unwrap_or_else(|e| panic!("{e}"));
                rows.iter().filter_map(|r| r["client"].as_str().map(str::to_owned)).collect::<Vec<_>>()
            }
        };
        let old = Query { package: Some("openssl".into()), package_below: Some("3.0.13".into()), ..Query::default() };
        assert_eq!(clients(old).await, ["a", "c"]);
        let recent =
            Query { package: Some("openssl".into()), package_at_least: Some("3.0".into()), ..Query::default() };
        assert_eq!(clients(recent).await, ["a", "b"]);
        assert_eq!(
            clients(Query { service: Some("ssh".into()), os: Some("Debian* 11".into()), ..Query::default() }).await,
            ["c"]
        );
        // An update replaces the old rows.
        assert_eq!(store.put("a", &inventory("4", "3.0.15-1~deb12u1", "12")).await.ok(), Some(true));
        let old = Query { package: Some("openssl".into()), package_below: Some("3.0.13".into()), ..Query::default() };
        assert_eq!(clients(old).await, ["c"]);
        let doc = store.get("a").await.ok().flatten().unwrap_or_default();
        assert_eq!(doc["Service"], json!([{"Name": "ssh", "State": "running"}]), "one service became a list");
        assert!(store.find(&Query { package_below: Some("1".into()), ..Query::default() }).await.is_err());
    }

    #[tokio::test]
    async fn facts_are_kept_per_value_and_replaced_with_the_inventory() {
        let (_dir, store) = store_in_a_temporary_folder().await;
        let with_facts = |checksum: &str, facts: Value| {
            json!({"Checksum": checksum, "Hostname": "h", "Fact": facts}).as_object().cloned().unwrap_or_default()
        };
        let roles = json!([{"Name": "roles", "Value": "web"}, {"Name": "roles", "Value": "db"}]);
        store.put("a", &with_facts("1", roles)).await.unwrap_or_else(|e| panic!("{e}"));
        store
            .put("b", &with_facts("2", json!({"Name": "roles", "Value": "web"})))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let values = store.fact_values("roles").await.unwrap_or_else(|e| panic!("{e}"));
        let mut a = values.get("a").cloned().unwrap_or_default();
        a.sort();
        assert_eq!(
            (a, values.get("b").cloned()),
            (vec!["db".to_owned(), "web".to_owned()], Some(vec!["web".to_owned()]))
        );
        // A new inventory without the fact drops it; leaving drops the rest.
        store.put("a", &with_facts("3", json!([]))).await.unwrap_or_else(|e| panic!("{e}"));
        store.remove("b").await.unwrap_or_else(|e| panic!("{e}"));
        assert!(store.fact_values("roles").await.unwrap_or_else(|e| panic!("{e}")).is_empty());
        // A machine sending more than a client would is cut to the same bounds.
        let flood: Vec<Value> = (0..5000).map(|i| json!({"Name": "n", "Value": format!("v{i}")})).collect();
        let long = json!({"Name": "n", "Value": "x".repeat(2000)});
        store.put("c", &with_facts("4", json!([flood, vec![long]].concat()))).await.unwrap_or_else(|e| panic!("{e}"));
        let kept = store.fact_values("n").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kept.get("c").map(Vec::len), Some(MAX_FACTS));
    }
}
