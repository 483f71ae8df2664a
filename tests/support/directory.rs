//! Private directory and database instances for object tests.
//!
//! [`Slapd`] is Debian's slapd on a free loopback port with a temporary mdb database and
//! the core, cosine, inetorgperson and nis schemas; it is killed when dropped.
//! [`PgSchema`] is a schema of its own in the shared PostgreSQL (`CLACKS_TEST_POSTGRES_URL`,
//! default `postgres://postgres@127.0.0.1:5432/test`), dropped with everything in it
//! when the guard goes. Both fail loudly when the service is missing.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ldap3::LdapConnAsync;

use crate::broker::free_port;

pub const BASE: &str = "dc=example,dc=org";
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=org";
pub const ADMIN_PASSWORD: &str = "test-secret";

/// A running slapd.
pub struct Slapd {
    pub url: String,
    pub port: u16,
    /// With [`Slapd::start_tls`]: `ldaps://127.0.0.1:PORT` and the CA's PEM file.
    pub ldaps_url: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Slapd {
    /// Starts slapd with the base entry `dc=example,dc=org` (a `domain`).
    pub async fn start() -> Slapd {
        Slapd::launch(false, false).await
    }

    /// Like [`Slapd::start`], with the `accesslog` overlay recording every successful
    /// write in a log database `cn=accesslog`, as an administrator sets it up for Clacks
    /// to see deletions at once (objects/README.md).
    pub async fn start_with_accesslog() -> Slapd {
        Slapd::launch(false, true).await
    }

    /// Like [`Slapd::start`], also offering LDAPS and StartTLS with a certificate for
    /// 127.0.0.1 signed by a CA made for this test.
    pub async fn start_tls() -> Slapd {
        Slapd::launch(true, false).await
    }

    async fn launch(tls: bool, accesslog: bool) -> Slapd {
        let binary = std::env::var("CLACKS_TEST_SLAPD").unwrap_or_else(|_| "/usr/sbin/slapd".into());
        assert!(
            std::path::Path::new(&binary).exists(),
            "slapd not found at {binary}: run .ci/install-deps (Debian package slapd) or set CLACKS_TEST_SLAPD"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let mut tls_config = String::new();
        let mut ca_file = None;
        if tls {
            let (ca, cert, key) = test_certificates();
            let path = |name: &str| dir.path().join(name);
            std::fs::write(path("ca.pem"), ca).expect("ca.pem");
            std::fs::write(path("server.pem"), cert).expect("server.pem");
            std::fs::write(path("server.key"), key).expect("server.key");
            tls_config = format!(
                "TLSCACertificateFile {}\nTLSCertificateFile {}\nTLSCertificateKeyFile {}\n",
                path("ca.pem").display(),
                path("server.pem").display(),
                path("server.key").display()
            );
            ca_file = Some(path("ca.pem"));
        }
        // The log database comes first: the overlay on the main database names it.
        let (log_database, log_overlay) = if accesslog {
            let log = dir.path().join("accesslog");
            std::fs::create_dir(&log).expect("accesslog dir");
            (
                format!(
                    "moduleload accesslog\n\
                     database mdb\n\
                     maxsize 104857600\n\
                     suffix \"cn=accesslog\"\n\
                     rootdn \"{ADMIN_DN}\"\n\
                     directory {}\n\
                     index reqStart eq\n",
                    log.display()
                ),
                "overlay accesslog\nlogdb \"cn=accesslog\"\nlogops writes\nlogsuccess TRUE\nlogpurge 07+00:00 01+00:00\n"
                    .to_owned(),
            )
        } else {
            (String::new(), String::new())
        };
        let config = format!(
            "{tls_config}include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             include /etc/ldap/schema/nis.schema\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             moduleload argon2\n\
             pidfile {dir}/slapd.pid\n\
             {log_database}\
             database mdb\n\
             maxsize 104857600\n\
             suffix \"{BASE}\"\n\
             rootdn \"{ADMIN_DN}\"\n\
             rootpw {ADMIN_PASSWORD}\n\
             directory {data}\n\
             index objectClass eq\n\
             index entryUUID eq\n\
             index modifyTimestamp eq\n\
             {log_overlay}",
            dir = dir.path().display(),
            data = data.display()
        );
        let conf = dir.path().join("slapd.conf");
        std::fs::write(&conf, config).expect("slapd.conf");
        let port = free_port();
        let url = format!("ldap://127.0.0.1:{port}");
        let ldaps_url = tls.then(|| format!("ldaps://127.0.0.1:{}", free_port()));
        let listeners = match &ldaps_url {
            Some(ldaps) => format!("{url}/ {ldaps}/"),
            None => format!("{url}/"),
        };
        // `-d 0` keeps slapd in the foreground, so it is this test's child and dies with it.
        let child = Command::new(&binary)
            .args(["-f", &conf.to_string_lossy(), "-h", &listeners, "-d", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let slapd = Slapd { url, port, ldaps_url, ca_file, child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((conn, mut ldap)) = LdapConnAsync::new(&slapd.url).await {
                tokio::spawn(conn.drive());
                if ldap.simple_bind(ADMIN_DN, ADMIN_PASSWORD).await.is_ok_and(|r| r.rc == 0) {
                    let base = vec![("objectClass", ["domain"].into()), ("dc", ["example"].into())];
                    ldap.add(BASE, base).await.expect("add base").success().expect("base entry");
                    break;
                }
            }
            assert!(Instant::now() < deadline, "slapd did not answer on {} within 20 s", slapd.url);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        slapd
    }

    /// A bound connection as the directory's administrator, as an admin's own tools use.
    pub async fn admin(&self) -> ldap3::Ldap {
        let (conn, mut ldap) = LdapConnAsync::new(&self.url).await.expect("connect");
        tokio::spawn(conn.drive());
        ldap.simple_bind(ADMIN_DN, ADMIN_PASSWORD).await.expect("bind").success().expect("bind ok");
        ldap
    }

    /// Replaces one attribute with `ldapmodify` (Debian's ldap-utils), outside Clacks.
    pub async fn replace(&self, dn: &str, attr: &str, values: &[&str]) {
        use std::io::Write;
        let mut ldif = format!("dn: {dn}\nchangetype: modify\nreplace: {attr}\n");
        for value in values {
            ldif.push_str(&format!("{attr}: {value}\n"));
        }
        let mut child = Command::new("ldapmodify")
            .args(["-x", "-H", &self.url, "-D", ADMIN_DN, "-w", ADMIN_PASSWORD])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run ldapmodify ({e}): run .ci/install-deps (Debian package ldap-utils)")
            });
        child.stdin.take().expect("stdin").write_all(ldif.as_bytes()).expect("write LDIF");
        // A short wait on a process of our own; nothing in this runtime needs to run meanwhile.
        let status = child.wait().expect("ldapmodify");
        assert!(status.success(), "ldapmodify failed: {status}");
    }

    /// Deletes an entry the way `ldapdelete` would, outside Clacks.
    pub async fn delete(&self, dn: &str) {
        let mut ldap = self.admin().await;
        ldap.delete(dn).await.expect("delete").success().expect("delete ok");
    }

    /// The store settings for this directory.
    pub fn settings(&self) -> clacks_objects::backend::ldap::LdapSettings {
        clacks_objects::backend::ldap::LdapSettings {
            url: self.url.clone(),
            base: BASE.into(),
            bind_dn: Some(ADMIN_DN.into()),
            bind_password: Some(ADMIN_PASSWORD.into()),
            starttls: false,
            ca_file: None,
            pool_size: 4,
            timeout_secs: 10,
            id_start: 10000,
            accesslog: "cn=accesslog".into(),
        }
    }
}

/// A certificate authority made for one test, issuing server and client certificates.
pub struct TestPki {
    /// The CA certificate (PEM), for whoever must trust what it signs.
    pub ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestPki {
    pub fn new() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Clacks test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        TestPki { ca_pem: ca.pem(), issuer: rcgen::Issuer::new(ca_params, ca_key) }
    }

    /// `(certificate, key)` as PEM, for `names` (host names, IP addresses) and with
    /// `common_name` as the subject's CN.
    pub fn issue(&self, names: &[&str], common_name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }
}

impl Default for TestPki {
    fn default() -> TestPki {
        TestPki::new()
    }
}

/// `(CA certificate, server certificate, server key)` as PEM, the server's valid for
/// 127.0.0.1 and localhost.
pub fn test_certificates() -> (String, String, String) {
    let pki = TestPki::new();
    let (cert, key) = pki.issue(&["127.0.0.1", "localhost"], "127.0.0.1");
    (pki.ca_pem, cert, key)
}

/// A PostgreSQL schema of the test's own.
pub struct PgSchema {
    pub url: String,
    pub name: String,
    admin_url: String,
}

pub fn postgres_url() -> String {
    std::env::var("CLACKS_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

impl PgSchema {
    pub async fn create() -> PgSchema {
        use sqlx::Connection;
        let admin_url = postgres_url();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!("PostgreSQL at {admin_url} is not reachable ({e}); start it or set CLACKS_TEST_POSTGRES_URL")
        });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await
            .expect("create schema");
        let separator = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{separator}options=-c%20search_path%3D{name}");
        PgSchema { url, name, admin_url }
    }

    /// Runs one statement in the schema (for a test to add a constraint, say).
    pub async fn execute(&self, statement: &str) {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url).await.expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(statement.to_owned())).execute(&mut conn).await.expect(statement);
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime; the cleanup gets a small runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {name} CASCADE")))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}
