//! The LDAP backend (ldap3): a small pool of bound connections to one directory.
//!
//! Entries are identified by `entryUUID`; object types by their object classes. Values
//! are text except for attributes whose backend type is `Binary`, which travel base64
//! encoded above this layer. Every operation has the configured deadline; a connection
//! that fails is dropped and reopened on next use.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use ldap3::controls::{Assertion, Control, ControlType, PostRead, RawControl, ReadEntryResp};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, LdapResult, Mod, Scope, SearchEntry};
use tokio::sync::Mutex;

use super::ldap_schema::{self, Syntax};
use super::{BackendError, Entry};

/// How to reach and bind to the directory.
#[derive(Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LdapSettings {
    /// `ldap://host:port` or `ldaps://host:port`.
    pub url: String,
    /// The naming context objects live under, e.g. `dc=example,dc=org`.
    pub base: String,
    #[serde(default)]
    pub bind_dn: Option<String>,
    #[serde(default)]
    pub bind_password: Option<String>,
    /// Upgrade `ldap://` with StartTLS.
    #[serde(default)]
    pub starttls: bool,
    /// PEM file with the CA that signed the directory's certificate (default: system roots).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    #[serde(default = "default_pool")]
    pub pool_size: usize,
    /// Seconds each operation may take.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// First number the id pool hands out for uidNumber/gidNumber.
    #[serde(default = "default_id_start")]
    pub id_start: i64,
    /// The suffix of slapd's `accesslog` database, read for deletions made outside
    /// Clacks at every poll (without it they are seen only by the periodic scan); an
    /// empty string does not look. Absent or unreadable, polling goes on without it.
    #[serde(default = "default_accesslog")]
    pub accesslog: String,
}

// The bind password stays out of logs and `show-config`.
impl std::fmt::Debug for LdapSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapSettings")
            .field("url", &self.url)
            .field("base", &self.base)
            .field("bind_dn", &self.bind_dn)
            .field("bind_password", &self.bind_password.as_ref().map(|_| "<redacted>"))
            .field("starttls", &self.starttls)
            .field("ca_file", &self.ca_file)
            .field("pool_size", &self.pool_size)
            .field("timeout_secs", &self.timeout_secs)
            .field("id_start", &self.id_start)
            .field("accesslog", &self.accesslog)
            .finish()
    }
}

fn default_pool() -> usize {
    4
}
fn default_timeout() -> u64 {
    10
}
fn default_id_start() -> i64 {
    10000
}
fn default_accesslog() -> String {
    "cn=accesslog".into()
}

/// Operational attributes every read asks for.
const META: [&str; 5] = ["objectClass", "entryUUID", "entryCSN", "modifyTimestamp", "createTimestamp"];

/// An entry with all its user attributes, keys lowercased, values as text (binary
/// values base64 encoded).
#[derive(Clone, Debug)]
pub struct LoadedEntry {
    pub entry: Entry,
    pub attrs: HashMap<String, Vec<String>>,
}

pub struct LdapBackend {
    settings: LdapSettings,
    timeout: Duration,
    slots: Vec<Mutex<Option<Ldap>>>,
    next: AtomicUsize,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Attribute syntaxes from the directory's schema (lowercased names).
    syntaxes: HashMap<String, Syntax>,
    /// The accesslog could not be read once: said once, not at every poll.
    accesslog_refused: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for LdapBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapBackend").field("url", &self.settings.url).field("base", &self.settings.base).finish()
    }
}

/// LDAP result codes the store needs to tell apart (RFC 4511 §4.1.9, RFC 4528 §3).
const ENTRY_ALREADY_EXISTS: u32 = 68;
const ASSERTION_FAILED: u32 = 122;
const NO_SUCH_ATTRIBUTE: u32 = 16;

fn ldap_error(e: LdapError) -> BackendError {
    match e {
        LdapError::LdapResult { result } => {
            let text = if result.text.is_empty() { String::new() } else { format!(": {}", result.text) };
            let message = format!("LDAP result {}{text}", result.rc);
            match result.rc {
                ENTRY_ALREADY_EXISTS => BackendError::Exists(message),
                ASSERTION_FAILED => BackendError::Conflict(message),
                code => BackendError::Refused { code, message },
            }
        }
        LdapError::Timeout { .. } => BackendError::Unavailable("the directory did not answer in time".into()),
        other => BackendError::Unavailable(format!("directory: {other}")),
    }
}

impl LdapBackend {
    /// Checks the settings and opens one connection, so a wrong URL or password is
    /// reported at start rather than at first use.
    pub async fn connect(settings: LdapSettings) -> Result<LdapBackend, BackendError> {
        let tls = match &settings.ca_file {
            Some(path) => Some(Arc::new(client_config(path)?)),
            None => None,
        };
        let backend = LdapBackend {
            timeout: Duration::from_secs(settings.timeout_secs.max(1)),
            slots: (0..settings.pool_size.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            tls,
            settings,
            syntaxes: HashMap::new(),
            accesslog_refused: Default::default(),
        };
        backend.handle().await?;
        let syntaxes = backend.read_syntaxes().await;
        Ok(LdapBackend { syntaxes, ..backend })
    }

    /// The attribute syntaxes the directory publishes in its subschema entry. A server
    /// that hides it gets its values checked by itself alone.
    async fn read_syntaxes(&self) -> HashMap<String, Syntax> {
        let root = self.search("", Scope::Base, "(objectClass=*)", vec!["subschemaSubentry".to_owned()]).await;
        let subschema = root.ok().and_then(|found| {
            found.into_iter().next().and_then(|e| e.attrs.get("subschemaSubentry").and_then(|v| v.first()).cloned())
        });
        let Some(subschema) = subschema else {
            tracing::debug!("the directory publishes no subschema entry; values are checked by the server alone");
            return HashMap::new();
        };
        match self.search(&subschema, Scope::Base, "(objectClass=subschema)", vec!["attributeTypes".to_owned()]).await {
            Ok(found) => {
                let definitions =
                    found.into_iter().flat_map(|e| e.attrs.get("attributeTypes").cloned().unwrap_or_default());
                ldap_schema::syntaxes(definitions.collect::<Vec<_>>().iter().map(String::as_str))
            }
            Err(e) => {
                tracing::debug!("cannot read the directory's schema ({e}); values are checked by the server alone");
                HashMap::new()
            }
        }
    }

    /// Why the directory would refuse `value` for `attribute` (by its syntax), if it would.
    pub fn refuses(&self, attribute: &str, value: &str) -> Option<String> {
        self.syntaxes.get(&attribute.to_lowercase()).and_then(|syntax| syntax.refuses(value))
    }

    pub fn base(&self) -> &str {
        &self.settings.base
    }

    async fn open(&self) -> Result<Ldap, BackendError> {
        let mut conn = LdapConnSettings::new().set_conn_timeout(self.timeout).set_starttls(self.settings.starttls);
        if let Some(config) = &self.tls {
            conn = conn.set_config(config.clone());
        }
        let (driver, mut ldap) = LdapConnAsync::with_settings(conn, &self.settings.url).await.map_err(ldap_error)?;
        tokio::spawn(async move {
            if let Err(e) = driver.drive().await {
                tracing::debug!("directory connection ended: {e}");
            }
        });
        if let Some(dn) = &self.settings.bind_dn {
            ldap.with_timeout(self.timeout)
                .simple_bind(dn, self.settings.bind_password.as_deref().unwrap_or_default())
                .await
                .map_err(ldap_error)?
                .success()
                .map_err(|e| BackendError::Unavailable(format!("cannot bind to the directory as {dn}: {e}")))?;
        }
        Ok(ldap)
    }

    /// Whether `password` is right for the entry with `uid` below the base: the entry is
    /// found with the service bind, then a connection of its own binds as it (so the
    /// directory applies its own password policy and locks). An empty password is
    /// refused outright — LDAP would take it as an anonymous bind and say yes.
    pub async fn bind_as(&self, uid: &str, password: &str) -> Result<bool, BackendError> {
        if uid.is_empty() || password.is_empty() {
            return Ok(false);
        }
        let filter = format!("(uid={})", ldap3::ldap_escape(uid));
        let found = self.search(&self.settings.base, Scope::Subtree, &filter, vec!["1.1".into()]).await?;
        let [entry] = found.as_slice() else { return Ok(false) };
        let mut conn = LdapConnSettings::new().set_conn_timeout(self.timeout).set_starttls(self.settings.starttls);
        if let Some(config) = &self.tls {
            conn = conn.set_config(config.clone());
        }
        let (driver, mut ldap) = LdapConnAsync::with_settings(conn, &self.settings.url).await.map_err(ldap_error)?;
        tokio::spawn(async move {
            let _ = driver.drive().await;
        });
        let result = ldap.with_timeout(self.timeout).simple_bind(&entry.dn, password).await.map_err(ldap_error)?;
        let _ = ldap.unbind().await;
        match result.rc {
            0 => Ok(true),
            49 => Ok(false), // invalidCredentials
            rc => {
                Err(BackendError::Refused { code: rc, message: format!("binding as {} failed: {}", entry.dn, result) })
            }
        }
    }

    /// A handle from the pool, opening the connection if needed.
    async fn handle(&self) -> Result<Ldap, BackendError> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let mut guard = slot.lock().await;
        if let Some(ldap) = guard.as_mut()
            && !ldap.is_closed()
        {
            return Ok(ldap.clone());
        }
        let ldap = self.open().await?;
        *guard = Some(ldap.clone());
        Ok(ldap)
    }

    async fn run<T, F, Fut>(&self, op: F) -> Result<T, BackendError>
    where
        F: Fn(Ldap) -> Fut,
        Fut: std::future::Future<Output = Result<T, LdapError>>,
    {
        let mut ldap = self.handle().await?;
        ldap.with_timeout(self.timeout);
        op(ldap).await.map_err(ldap_error)
    }

    async fn search(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: Vec<String>,
    ) -> Result<Vec<SearchEntry>, BackendError> {
        let result = self
            .run(|mut ldap| {
                let attrs = attrs.clone();
                async move { ldap.search(base, scope, filter, attrs).await }
            })
            .await?;
        match result.success() {
            Ok((entries, _)) => Ok(entries.into_iter().map(SearchEntry::construct).collect()),
            Err(LdapError::LdapResult { result }) if result.rc == 32 => Ok(Vec::new()), // noSuchObject
            Err(e) => Err(ldap_error(e)),
        }
    }

    fn entry(found: &SearchEntry) -> Entry {
        let first = |name: &str| found.attrs.get(name).and_then(|v| v.first()).cloned();
        Entry {
            uuid: first("entryUUID").unwrap_or_default(),
            dn: found.dn.clone(),
            markers: found.attrs.get("objectClass").cloned().unwrap_or_default(),
            modified: first("modifyTimestamp").or_else(|| first("createTimestamp")),
            version: first("entryCSN"),
        }
    }

    /// Reads the entry at `dn` (or, with `by_uuid`, the one with that entryUUID) with
    /// all its user attributes in one search.
    pub async fn read(
        &self,
        target: &str,
        by_uuid: bool,
        binary: &HashSet<String>,
    ) -> Result<Option<LoadedEntry>, BackendError> {
        let mut attrs: Vec<String> = META.map(str::to_owned).to_vec();
        attrs.push("*".to_owned());
        let found = if by_uuid {
            let filter = format!("(entryUUID={})", ldap3::ldap_escape(target));
            self.search(&self.settings.base, Scope::Subtree, &filter, attrs).await?
        } else {
            self.search(target, Scope::Base, "(objectClass=*)", attrs).await?
        };
        let Some(found) = found.into_iter().next() else { return Ok(None) };
        let entry = LdapBackend::entry(&found);
        let mut values: HashMap<String, Vec<String>> = HashMap::new();
        for (name, list) in &found.attrs {
            let key = name.to_lowercase();
            let list = if binary.contains(&key) {
                list.iter().map(|v| base64::engine::general_purpose::STANDARD.encode(v)).collect()
            } else {
                list.clone()
            };
            values.insert(key, list);
        }
        for (name, list) in &found.bin_attrs {
            values.insert(
                name.to_lowercase(),
                list.iter().map(|v| base64::engine::general_purpose::STANDARD.encode(v)).collect(),
            );
        }
        Ok(Some(LoadedEntry { entry, attrs: values }))
    }

    /// The entry's change marker (entryCSN) now, to detect concurrent changes.
    pub async fn version(&self, dn: &str) -> Result<Option<String>, BackendError> {
        Ok(self.entry_by_dn(dn).await?.and_then(|e| e.version))
    }

    /// The entry at `dn`, if any.
    pub async fn entry_by_dn(&self, dn: &str) -> Result<Option<Entry>, BackendError> {
        let found = self.search(dn, Scope::Base, "(objectClass=*)", META.map(str::to_owned).to_vec()).await?;
        Ok(found.first().map(LdapBackend::entry))
    }

    /// Reads `attrs` of `dn`; binary ones (`binary` holds their names) come base64 encoded.
    pub async fn load(
        &self,
        dn: &str,
        attrs: &[String],
        binary: &HashSet<String>,
    ) -> Result<HashMap<String, Vec<String>>, BackendError> {
        let found = self.search(dn, Scope::Base, "(objectClass=*)", attrs.to_vec()).await?;
        let Some(entry) = found.into_iter().next() else {
            return Err(BackendError::NotFound(dn.to_owned()));
        };
        let mut out = HashMap::new();
        for name in attrs {
            // The server spells attribute names its own way; match case-insensitively.
            let text = entry.attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
            let bin = entry.bin_attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
            let values = match (text, bin) {
                (Some(values), _) if binary.contains(name) => {
                    values.iter().map(|v| base64::engine::general_purpose::STANDARD.encode(v)).collect()
                }
                (Some(values), _) => values,
                (None, Some(values)) => {
                    values.iter().map(|v| base64::engine::general_purpose::STANDARD.encode(v)).collect()
                }
                (None, None) => continue,
            };
            out.insert(name.clone(), values);
        }
        Ok(out)
    }

    fn bytes(name: &str, value: &str, binary: &HashSet<String>) -> Result<Vec<u8>, BackendError> {
        if binary.contains(name) {
            base64::engine::general_purpose::STANDARD
                .decode(value)
                .map_err(|e| BackendError::Invalid(format!("{name}: not base64: {e}")))
        } else {
            Ok(value.as_bytes().to_vec())
        }
    }

    /// Adds an entry; returns its entryUUID and version (read back with the add).
    pub async fn create(
        &self,
        dn: &str,
        object_classes: &[String],
        attrs: &[(String, Vec<String>)],
        binary: &HashSet<String>,
    ) -> Result<(String, Option<String>), BackendError> {
        let mut add: Vec<(Vec<u8>, HashSet<Vec<u8>>)> =
            vec![(b"objectClass".to_vec(), object_classes.iter().map(|c| c.as_bytes().to_vec()).collect())];
        for (name, values) in attrs.iter().filter(|(_, v)| !v.is_empty()) {
            let set = values.iter().map(|v| LdapBackend::bytes(name, v, binary)).collect::<Result<_, _>>()?;
            add.push((name.as_bytes().to_vec(), set));
        }
        let result = self
            .run(|mut ldap| {
                let add = add.clone();
                async move { ldap.with_controls(PostRead::new(vec!["entryUUID", "entryCSN"])).add(dn, add).await?.success() }
            })
            .await?;
        let read = post_read(&result);
        let first = |name: &str| read.get(name).and_then(|v| v.first()).cloned();
        match first("entryUUID") {
            Some(uuid) => Ok((uuid, first("entryCSN"))),
            // A server without the post-read control: ask.
            None => self
                .entry_by_dn(dn)
                .await?
                .map(|e| (e.uuid, e.version))
                .ok_or_else(|| BackendError::Unavailable(format!("{dn} vanished right after it was added"))),
        }
    }

    /// Replaces attributes (an empty list deletes), adds and removes object classes.
    pub async fn modify(
        &self,
        dn: &str,
        changes: &[(String, Vec<String>)],
        add_classes: &[String],
        remove_classes: &[String],
        binary: &HashSet<String>,
    ) -> Result<(), BackendError> {
        self.modify_checked(dn, changes, add_classes, remove_classes, binary, None).await.map(|_| ())
    }

    /// Like [`LdapBackend::modify`], but only if the entry is still at version `expect`
    /// (an assertion the server checks atomically; [`BackendError::Conflict`] otherwise).
    /// Returns the new version, or `None` when there was nothing to change.
    pub async fn modify_checked(
        &self,
        dn: &str,
        changes: &[(String, Vec<String>)],
        add_classes: &[String],
        remove_classes: &[String],
        binary: &HashSet<String>,
        expect: Option<&str>,
    ) -> Result<Option<String>, BackendError> {
        let mut mods: Vec<Mod<Vec<u8>>> = Vec::new();
        if !add_classes.is_empty() {
            mods.push(Mod::Add(b"objectClass".to_vec(), add_classes.iter().map(|c| c.as_bytes().to_vec()).collect()));
        }
        for (name, values) in changes {
            let set = values.iter().map(|v| LdapBackend::bytes(name, v, binary)).collect::<Result<_, _>>()?;
            mods.push(Mod::Replace(name.as_bytes().to_vec(), set));
        }
        if !remove_classes.is_empty() {
            mods.push(Mod::Delete(
                b"objectClass".to_vec(),
                remove_classes.iter().map(|c| c.as_bytes().to_vec()).collect(),
            ));
        }
        if mods.is_empty() {
            return Ok(None);
        }
        let controls = checked_controls(expect);
        let result = self
            .run(|mut ldap| {
                let (mods, controls) = (mods.clone(), controls.clone());
                async move { ldap.with_controls(controls).modify(dn, mods).await?.success() }
            })
            .await?;
        Ok(post_read(&result).get("entryCSN").and_then(|v| v.first()).cloned())
    }

    /// Renames (new RDN) and/or moves (new parent) the entry if it is still at version
    /// `expect`; returns the new DN and version.
    pub async fn rename_checked(
        &self,
        dn: &str,
        new_rdn: &str,
        new_parent: Option<&str>,
        expect: Option<&str>,
    ) -> Result<(String, Option<String>), BackendError> {
        let controls = checked_controls(expect);
        let result = self
            .run(|mut ldap| {
                let controls = controls.clone();
                async move { ldap.with_controls(controls).modifydn(dn, new_rdn, true, new_parent).await?.success() }
            })
            .await?;
        let parent = new_parent.unwrap_or_else(|| clacks_core::dn::parent_dn(dn));
        let new_dn = if parent.is_empty() { new_rdn.to_owned() } else { format!("{new_rdn},{parent}") };
        Ok((new_dn, post_read(&result).get("entryCSN").and_then(|v| v.first()).cloned()))
    }

    pub async fn delete(&self, dn: &str) -> Result<(), BackendError> {
        self.run(|mut ldap| async move { ldap.delete(dn).await?.success() }).await?;
        Ok(())
    }

    /// DNs one level below `dn`.
    pub async fn children(&self, dn: &str) -> Result<Vec<String>, BackendError> {
        Ok(self
            .search(dn, Scope::OneLevel, "(objectClass=*)", vec!["1.1".to_owned()])
            .await?
            .into_iter()
            .map(|e| e.dn)
            .collect())
    }

    /// Every entry below `base` (inclusive) with its object classes, for the index scan.
    pub async fn subtree(&self, base: &str) -> Result<Vec<Entry>, BackendError> {
        Ok(self
            .search(base, Scope::Subtree, "(objectClass=*)", META.map(str::to_owned).to_vec())
            .await?
            .iter()
            .map(LdapBackend::entry)
            .collect())
    }

    /// Entries below the base changed after `since` (generalized time), for polling.
    pub async fn changed_since(&self, since: &str) -> Result<Vec<Entry>, BackendError> {
        let filter = format!("(modifyTimestamp>={})", ldap3::ldap_escape(since));
        Ok(self
            .search(&self.settings.base, Scope::Subtree, &filter, META.map(str::to_owned).to_vec())
            .await?
            .iter()
            .map(LdapBackend::entry)
            .collect())
    }

    /// DNs deleted below the base since `since` (generalized time), oldest first, as
    /// slapd's accesslog recorded them. Empty when there is no accesslog; one that cannot
    /// be read is said once in the log and then treated as absent.
    pub async fn deleted_since(&self, since: &str) -> Vec<String> {
        let log = self.settings.accesslog.trim();
        if log.is_empty() {
            return Vec::new();
        }
        let filter = format!("(&(objectClass=auditDelete)(reqResult=0)(reqStart>={}))", ldap3::ldap_escape(since));
        let attrs = vec!["reqDN".to_owned(), "reqStart".to_owned()];
        match self.search(log, Scope::OneLevel, &filter, attrs).await {
            Ok(found) => {
                let first = |e: &SearchEntry, name: &str| e.attrs.get(name).and_then(|v| v.first()).cloned();
                let mut deleted: Vec<(String, String)> = found
                    .iter()
                    .filter_map(|e| Some((first(e, "reqStart").unwrap_or_default(), first(e, "reqDN")?)))
                    .filter(|(_, dn)| clacks_core::dn::is_at_or_below(dn, &self.settings.base))
                    .collect();
                deleted.sort();
                deleted.into_iter().map(|(_, dn)| dn).collect()
            }
            Err(e) => {
                if !self.accesslog_refused.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "cannot read the accesslog at {log} ({e}); deletions made outside Clacks are seen only by \
                         the periodic scan"
                    );
                }
                Vec::new()
            }
        }
    }

    /// Hands out the next number for `attr` from the pool entry `cn=clacks-idpool,<base>`.
    /// The increment deletes the old value and adds the new one in one modify, which the
    /// server refuses when someone else got there first; then it tries again.
    pub async fn next_id(&self, attr: &str) -> Result<i64, BackendError> {
        let pool = format!("cn=clacks-idpool,{}", self.settings.base);
        for _ in 0..20 {
            let current = self.load(&pool, &[attr.to_owned()], &HashSet::new()).await;
            let current = match current {
                Ok(values) => values.get(attr).and_then(|v| v.first()).and_then(|v| v.parse::<i64>().ok()),
                Err(BackendError::NotFound(_)) => {
                    let start = self.settings.id_start.to_string();
                    let attrs =
                        vec![("cn".to_owned(), vec!["clacks-idpool".to_owned()]), (attr.to_owned(), vec![start])];
                    let classes = ["device".to_owned(), "extensibleObject".to_owned()];
                    match self.create(&pool, &classes, &attrs, &HashSet::new()).await {
                        Ok(_) | Err(BackendError::Exists(_)) => continue, // someone else created it
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            let Some(current) = current else {
                let start = self.settings.id_start.to_string();
                self.modify(&pool, &[(attr.to_owned(), vec![start])], &[], &[], &HashSet::new()).await?;
                continue;
            };
            let mods = vec![
                Mod::Delete(attr.as_bytes().to_vec(), HashSet::from([current.to_string().into_bytes()])),
                Mod::Add(attr.as_bytes().to_vec(), HashSet::from([(current + 1).to_string().into_bytes()])),
            ];
            let outcome = self
                .run(|mut ldap| {
                    let mods = mods.clone();
                    let pool = pool.clone();
                    async move { ldap.modify(&pool, mods).await?.success() }
                })
                .await;
            match outcome {
                Ok(_) => return Ok(current),
                Err(BackendError::Refused { code: NO_SUCH_ATTRIBUTE, .. }) => continue, // lost the race
                Err(e) => return Err(e),
            }
        }
        Err(BackendError::Unavailable(format!("could not take a number for {attr} from the id pool")))
    }
}

/// Post-read of the new version, plus (with `expect`) a critical assertion that the
/// entry is still at that version.
fn checked_controls(expect: Option<&str>) -> Vec<RawControl> {
    let mut controls = vec![PostRead::new(vec!["entryCSN"])];
    if let Some(version) = expect {
        let mut assertion = Assertion::new(format!("(entryCSN={})", ldap3::ldap_escape(version)));
        assertion.crit = true;
        controls.push(assertion);
    }
    controls
}

/// The attributes a post-read control brought back (empty when the server sent none).
fn post_read(result: &LdapResult) -> HashMap<String, Vec<String>> {
    result
        .ctrls
        .iter()
        .find_map(|Control(kind, raw)| {
            (matches!(kind, Some(ControlType::PostReadResp)) && raw.val.is_some())
                .then(|| raw.parse::<ReadEntryResp>().attrs)
        })
        .unwrap_or_default()
}

fn client_config(ca_file: &std::path::Path) -> Result<rustls::ClientConfig, BackendError> {
    let pem = std::fs::read(ca_file)
        .map_err(|e| BackendError::Invalid(format!("cannot read the directory CA {}: {e}", ca_file.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let cert: rustls::pki_types::CertificateDer<'static> =
            cert.map_err(|e| BackendError::Invalid(format!("{}: {e}", ca_file.display())))?;
        roots.add(cert).map_err(|e| BackendError::Invalid(format!("{}: {e}", ca_file.display())))?;
    }
    Ok(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}
