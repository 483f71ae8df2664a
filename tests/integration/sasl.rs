//! Logins over JSON-RPC: SASL PLAIN and SCRAM-SHA-256 against local users, the shell's
//! client choosing SCRAM when offered, passwords checked by binding to a real slapd (and
//! against the embedded store's hashes), wrong passwords, locked accounts and sessions
//! that expire.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clacks_agent::auth::{Authenticator, hash_password};
use clacks_agent::http::{HttpState, router};
use clacks_agent::{Agent, AgentOptions};
use clacks_core::bus::Bus;
use clacks_core::bus::local::LocalBus;
use clacks_core::client::{Client, ClientError};
use clacks_core::rpc::Params;
use clacks_core::sasl::ScramVerifier;
use clacks_objects::StoreConfig;
use clacks_tests::directory::{BASE, PgSchema, Slapd};
use clacks_tests::unique_domain;
use serde_json::{Value, json};

/// Serves `state` on a loopback port; returns the `/rpc` URL.
async fn serve(state: std::sync::Arc<HttpState>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    format!("http://{address}/rpc")
}

/// One browser-like caller: keeps its session cookie.
struct Caller {
    url: String,
    http: reqwest::Client,
}

impl Caller {
    fn new(url: &str) -> Caller {
        let http = reqwest::Client::builder().cookie_store(true).build().unwrap_or_else(|e| panic!("{e}"));
        Caller { url: url.to_owned(), http }
    }

    /// HTTP status and the result, or the error's symbolic code and message.
    async fn call(&self, method: &str, params: Value) -> (u16, Result<Value, String>) {
        let body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1});
        let response = self.http.post(&self.url).json(&body).send().await.unwrap_or_else(|e| panic!("{e}"));
        let status = response.status().as_u16();
        let reply: Value = response.json().await.unwrap_or_else(|e| panic!("{e}"));
        let outcome = match reply.get("error") {
            Some(e) => {
                Err(format!("{}: {}", e["data"]["code"].as_str().unwrap_or("?"), e["message"].as_str().unwrap_or("?")))
            }
            None => Ok(reply["result"].clone()),
        };
        (status, outcome)
    }

    async fn plain(&self, user: &str, password: &str) -> (u16, Result<Value, String>) {
        let data = B64.encode(format!("\0{user}\0{password}"));
        self.call("saslStart", json!({"mechanism": "PLAIN", "data": data})).await
    }
}

async fn local_agent(options: AgentOptions) -> Agent {
    Agent::start(options, Bus::Local(LocalBus::new("clacks-agent")), vec![]).await.unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_plain_and_scram_against_local_users_and_sessions_that_expire() {
    let agent = local_agent(AgentOptions::new(unique_domain(), "web")).await;
    let users = [
        ("ada".to_owned(), ScramVerifier::new("pencil", 4096).to_string()),
        ("bob".to_owned(), hash_password("s3cret").unwrap_or_else(|e| panic!("{e}"))),
    ];
    let auth = Authenticator::Users(users.into_iter().collect());
    let url = serve(HttpState::new(agent.dispatcher().clone(), auth, Duration::from_millis(600))).await;

    let web = Caller::new(&url);
    assert_eq!(web.call("saslMechanisms", json!([])).await, (200, Ok(json!(["SCRAM-SHA-256", "PLAIN"]))));
    // PLAIN: one step, checked like login.
    assert_eq!(web.plain("bob", "wrong").await, (401, Err("LOGIN_FAILED: login of user 'bob' failed".into())));
    assert_eq!(web.plain("", "s3cret").await.0, 401);
    let (status, done) = web.plain("bob", "s3cret").await;
    assert_eq!((status, done.map(|d| (d["done"].clone(), d["user"].clone()))), (200, Ok((json!(true), json!("bob")))));
    assert_eq!(web.call("getSessionUser", json!([])).await, (200, Ok(json!("bob"))));
    // Bad requests: a mechanism not offered, a conversation that does not exist, bad base64.
    // Each is a failed login: LOGIN_FAILED with HTTP 401, as docs/protocol.md §7 says.
    let (status, sha512) = web.call("saslStart", json!(["SCRAM-SHA-512", ""])).await;
    assert!(
        status == 401 && sha512.is_err_and(|e| e.starts_with("LOGIN_FAILED: mechanism 'SCRAM-SHA-512' is not offered"))
    );
    let (status, unknown) = web.call("saslStep", json!(["feedface", ""])).await;
    assert!(status == 401 && unknown.is_err_and(|e| e.contains("no such SASL conversation")));
    let (status, garbage) = web.call("saslStart", json!(["PLAIN", "***"])).await;
    assert!(status == 401 && garbage.is_err_and(|e| e.starts_with("LOGIN_FAILED: data is not base64")));

    // The idle session expires; the next call is refused and says so.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let (status, expired) = web.call("getSessionUser", json!([])).await;
    assert_eq!(
        (status, expired),
        (401, Err("NOT_AUTHENTICATED: not logged in or session expired; call login(user, password) first".into()))
    );

    // The client the shell uses takes SCRAM when offered …
    let ada = Client::connect_http(&url, "ada", "pencil", Duration::from_secs(5)).await;
    let ada = ada.unwrap_or_else(|e| panic!("SCRAM login: {e}"));
    assert_eq!(ada.call("getSessionUser", Params::None).await.ok(), Some(json!("ada")));
    // … a wrong password fails inside SCRAM (not in login) …
    match Client::connect_http(&url, "ada", "pen", Duration::from_secs(5)).await {
        Err(ClientError::Auth(message)) => assert_eq!(message, "authentication failed"),
        other => panic!("expected a refused SCRAM login, got {other:?}"),
    }
    // … and a user with only an argon2 hash is sent on to a plain login.
    let bob = Client::connect_http(&url, "bob", "s3cret", Duration::from_secs(5)).await;
    assert_eq!(
        bob.unwrap_or_else(|e| panic!("{e}")).call("getSessionUser", Params::None).await.ok(),
        Some(json!("bob"))
    );
    assert!(matches!(
        Client::connect_http(&url, "bob", "wrong", Duration::from_secs(5)).await,
        Err(ClientError::Auth(m)) if m == "login of user 'bob' failed"
    ));
    agent.stop().await;
}

/// Creates ou=people (if needed) and a user with a password, through the commands.
async fn user_with_password(caller: &Client, base: &str, uid: &str, password: &str) -> String {
    let call = |method: &'static str, args: Value| async move {
        let args = args.as_array().cloned().unwrap_or_default();
        caller.call(method, Params::Positional(args)).await.unwrap_or_else(|e| panic!("{method}: {e}"))
    };
    let people = format!("ou=people,{base}");
    if caller.call("openObject", Params::Positional(vec![json!(people)])).await.is_err() {
        let r = call("openObject", json!([base, "PeopleContainer"])).await["ref"].clone();
        call("dispatchObjectMethod", json!([r, "commit"])).await;
    }
    let r = call("openObject", json!([people, "User"])).await["ref"].clone();
    for (name, value) in [("uid", uid), ("givenName", "Test"), ("sn", uid)] {
        call("setObjectProperty", json!([r, name, value])).await;
    }
    let dn = call("dispatchObjectMethod", json!([r, "commit"])).await["dn"].as_str().unwrap_or_default().to_owned();
    call("setUserPassword", json!([dn, password])).await;
    dn
}

/// Logins checked against the directory: by binding to slapd as the user, and, in the
/// embedded store without a directory, against the stored hash. Locking the account
/// ends its logins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_checked_by_binding_to_the_directory() {
    let (slapd, pg) = (Slapd::start().await, PgSchema::create().await);
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let stores = [
        (StoreConfig { ldap: Some(slapd.settings()), ..StoreConfig::default() }, pg.url.clone()),
        (StoreConfig::default(), format!("sqlite://{}", data.path().join("objects.db").display())),
    ];
    for (store, default_sql) in stores {
        let mut options = AgentOptions::new(unique_domain(), "web");
        let directory = store.ldap.is_some();
        options.objects = Some(clacks_tests::quiet_objects(store, default_sql));
        let bus = LocalBus::new("clacks-agent");
        let agent = Agent::start(options, Bus::Local(bus.clone()), vec![]).await.unwrap_or_else(|e| panic!("{e}"));
        let admin = Client::over_bus(
            Bus::Local(bus.view("clacks-agent")),
            agent.options().domain.clone(),
            Duration::from_secs(10),
        );
        let base = if directory { BASE.to_owned() } else { agent.options().base.clone() };
        let dn = user_with_password(&admin, &base, "dora", "Expl0rer").await;

        let store = agent.objects().cloned().unwrap_or_else(|| panic!("the agent serves objects"));
        let auth = Authenticator::Directory(store);
        let url = serve(HttpState::new(agent.dispatcher().clone(), auth, Duration::from_secs(60))).await;
        let web = Caller::new(&url);
        let what = if directory { "slapd" } else { "the embedded store" };
        assert_eq!(web.call("saslMechanisms", json!([])).await, (200, Ok(json!(["PLAIN"]))), "{what}");
        assert_eq!(web.call("login", json!(["dora", "wrong"])).await.0, 401, "{what}");
        assert_eq!(web.call("login", json!(["nobody", "Expl0rer"])).await.0, 401, "{what}");
        assert_eq!(
            web.call("login", json!(["dora", ""])).await.0,
            401,
            "an empty password is no anonymous bind ({what})"
        );
        assert_eq!(web.call("login", json!(["dora", "Expl0rer"])).await, (200, Ok(json!(true))), "{what}");
        let (status, done) = web.plain("dora", "Expl0rer").await;
        assert!(status == 200 && done.is_ok_and(|d| d["user"] == json!("dora")), "{what}");
        admin.call("lockAccount", Params::Positional(vec![json!(dn)])).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(web.call("login", json!(["dora", "Expl0rer"])).await.0, 401, "a locked account ({what})");
        agent.stop().await;
    }
}
