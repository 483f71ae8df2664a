//! Object API benchmark through the path an administrator's shell takes: a caller on
//! RabbitMQ → an agent with the object store on a private slapd (PostgreSQL for SQL
//! rows and the index) → reply. Floors are measured in the same run on the same slapd
//! with bare ldap3 over one bound connection:
//!
//! (a) bulk import: `createObjects` with 200 users a call, against ldap3 adds of the
//!     same entries (users/s and the ratio);
//! (b) `find` of 1,000 hits, against an ldap3 subtree search returning the same entries;
//! (c) open + set + commit of one user, as four calls (`openObject`,
//!     `setObjectProperty`, `dispatchObjectMethod commit`, `closeObject`) and as one
//!     (`updateObject`), against an ldap3 search + modify; with one round trip of `ping`
//!     and the same calls run in the agent's process, to say where the time goes.
//!
//! Run: `cargo bench -p clacks-tests --bench object_api` (`CLACKS_BENCH_USERS`,
//! `CLACKS_BENCH_ROUNDS` scale it; `CLACKS_TEST_AMQP_URL`, `CLACKS_TEST_PG_URL` pick
//! the services).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use clacks_core::client::Client;
use clacks_core::dispatch::Origin;
use clacks_core::rpc::Params;
use clacks_objects::StoreConfig;
use clacks_tests::directory::{BASE, PgSchema, Slapd};
use clacks_tests::{amqp_url, client, fast_options, quiet_objects, start_agent, unique_domain};
use ldap3::{Mod, Scope};
use serde_json::{Value, json};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn p50_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

async fn call(caller: &Client, method: &str, args: Value) -> Value {
    let Value::Array(args) = args else { panic!("positional arguments") };
    caller.call(method, Params::Positional(args)).await.unwrap_or_else(|e| panic!("{method}: {e}"))
}

fn row(prefix: &str, i: usize) -> Value {
    json!({"uid": format!("{prefix}{i}"), "givenName": "Bench", "sn": format!("{prefix}sn"), "title": "Tester"})
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let users = env_number("CLACKS_BENCH_USERS", 1000);
    let rounds = env_number("CLACKS_BENCH_ROUNDS", 200);

    let (slapd, pg) = (Slapd::start().await, PgSchema::create().await);
    let (url, domain) = (amqp_url(), unique_domain());
    let mut options = fast_options(&domain, "bench");
    let store = StoreConfig { ldap: Some(slapd.settings()), ..StoreConfig::default() };
    options.objects = Some(quiet_objects(store, pg.url.clone()));
    let agent = start_agent(&url, options, vec![]).await;
    let caller = client(&url, &domain, Duration::from_secs(120)).await;
    let people = call(&caller, "openObject", json!([BASE, "PeopleContainer"])).await["ref"].clone();
    let people_dn = call(&caller, "dispatchObjectMethod", json!([people, "commit"])).await["dn"].clone();
    let people_dn = people_dn.as_str().unwrap_or_default().to_owned();
    let mut ldap = slapd.admin().await;

    // (a) bulk import.
    let floor_started = Instant::now();
    for i in 0..users {
        let (uid, cn) = (format!("floor{i}"), format!("Bench floor{i}"));
        let attrs: Vec<(&str, HashSet<&str>)> = vec![
            ("objectClass", ["inetOrgPerson"].into()),
            ("uid", [uid.as_str()].into()),
            ("cn", [cn.as_str()].into()),
            ("sn", ["floorsn"].into()),
            ("givenName", ["Bench"].into()),
            ("title", ["Tester"].into()),
        ];
        ldap.add(&format!("uid={uid},{people_dn}"), attrs).await.expect("add").success().expect("added");
    }
    let floor_rate = users as f64 / floor_started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut created = 0;
    for batch in (0..users).collect::<Vec<_>>().chunks(200) {
        let rows: Vec<Value> = batch.iter().map(|i| row("user", *i)).collect();
        let results = call(&caller, "createObjects", json!([people_dn, "User", rows])).await;
        created += results.as_array().into_iter().flatten().filter(|r| r.get("dn").is_some()).count();
    }
    let rate = users as f64 / started.elapsed().as_secs_f64();
    assert_eq!(created, users, "every row created");
    println!("(a) bulk import, {users} users");
    println!("    floor: ldap3 adds over one connection   {floor_rate:9.0} users/s");
    println!("    createObjects, 200 a call               {rate:9.0} users/s   ratio {:.2}×", rate / floor_rate);

    // (b) find of every imported user.
    let conditions = json!({"_type": "User", "sn": "usersn"});
    let filter = "(&(objectClass=inetOrgPerson)(sn=usersn))";
    let (mut floor, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let t = Instant::now();
        let (entries, _) =
            ldap.search(&people_dn, Scope::Subtree, filter, vec!["*"]).await.expect("search").success().expect("ok");
        assert_eq!(entries.len(), users);
        floor.push(t.elapsed());
        let t = Instant::now();
        let found = call(&caller, "find", json!([conditions])).await;
        assert_eq!(found.as_array().map(Vec::len), Some(users));
        ours.push(t.elapsed());
    }
    // Where the time goes: the store's own find, in the agent's process.
    let store = agent.objects().expect("the agent's object store");
    let mut in_process = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let found = store.find(conditions.as_object().expect("map")).await.expect("find");
        assert_eq!(found.len(), users);
        in_process.push(t.elapsed());
    }
    let mut lookup = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let docs = store.index().with_value("User", "sn", "usersn").await.expect("index");
        assert_eq!(docs.len(), users);
        lookup.push(t.elapsed());
    }
    let (floor_ms, ours_ms, store_ms) = (p50_ms(floor), p50_ms(ours), p50_ms(in_process));
    println!("(b) find of {users} hits, p50 of 10");
    println!("    floor: ldap3 subtree search              {floor_ms:9.2} ms");
    println!("    find through RabbitMQ and the agent      {ours_ms:9.2} ms   ratio {:.2}×", ours_ms / floor_ms);
    println!("    of which the store's find in-process     {store_ms:9.2} ms");
    println!("    of which the index lookup                {:9.2} ms", p50_ms(lookup));

    // (c) open + set + commit of one user.
    let dn = format!("uid=user0,{people_dn}");
    let floor_dn = format!("uid=floor0,{people_dn}");
    let (mut floor, mut ours) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let title = format!("Title {i}");
        let t = Instant::now();
        let (entries, _) = ldap
            .search(&floor_dn, Scope::Base, "(objectClass=*)", vec!["*"])
            .await
            .expect("read")
            .success()
            .expect("ok");
        assert_eq!(entries.len(), 1);
        ldap.modify(&floor_dn, vec![Mod::Replace("title", [title.as_str()].into())])
            .await
            .expect("modify")
            .success()
            .expect("modified");
        floor.push(t.elapsed());
        let t = Instant::now();
        let reference = call(&caller, "openObject", json!([dn])).await["ref"].clone();
        call(&caller, "setObjectProperty", json!([reference, "title", title])).await;
        call(&caller, "dispatchObjectMethod", json!([reference, "commit"])).await;
        call(&caller, "closeObject", json!([reference])).await;
        ours.push(t.elapsed());
    }
    // Where the time goes: one round trip of a command that does nothing, and the same
    // four calls run by the agent's dispatcher in its own process.
    let mut transport = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        call(&caller, "ping", json!([])).await;
        transport.push(t.elapsed());
    }
    let origin = |user: &str| Origin {
        user: Some(user.to_owned()),
        queue: String::new(),
        deadline: tokio::time::Instant::now() + Duration::from_secs(60),
        pinned: false,
        redelivered: false,
    };
    let local = origin("bench");
    let dispatcher = agent.dispatcher();
    let in_agent = async |method: &str, args: Value| {
        let Value::Array(args) = args else { panic!("positional arguments") };
        dispatcher.call(method, Params::Positional(args), &local).await.unwrap_or_else(|e| panic!("{method}: {e}"))
    };
    let (mut in_process, mut each): (Vec<Duration>, [Vec<Duration>; 4]) = (Vec::new(), Default::default());
    for i in 0..rounds {
        let title = format!("Local title {i}");
        let t = Instant::now();
        let reference = in_agent("openObject", json!([dn])).await["ref"].clone();
        each[0].push(t.elapsed());
        let step = Instant::now();
        in_agent("setObjectProperty", json!([reference, "title", title])).await;
        each[1].push(step.elapsed());
        let step = Instant::now();
        in_agent("dispatchObjectMethod", json!([reference, "commit"])).await;
        each[2].push(step.elapsed());
        let step = Instant::now();
        in_agent("closeObject", json!([reference])).await;
        each[3].push(step.elapsed());
        in_process.push(t.elapsed());
    }
    // The same change in one call.
    let (mut one_call, mut one_call_in_agent) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let t = Instant::now();
        call(&caller, "updateObject", json!([dn, {"title": format!("One call {i}")}])).await;
        one_call.push(t.elapsed());
        let t = Instant::now();
        in_agent("updateObject", json!([dn, {"title": format!("One local call {i}")}])).await;
        one_call_in_agent.push(t.elapsed());
    }
    let (floor_ms, ours_ms) = (p50_ms(floor), p50_ms(ours));
    println!("(c) open + set + commit, p50 of {rounds}");
    println!("    floor: ldap3 search + modify             {floor_ms:9.2} ms");
    println!("    four calls through RabbitMQ              {ours_ms:9.2} ms   ratio {:.2}×", ours_ms / floor_ms);
    println!("    of which one round trip (ping)           {:9.2} ms", p50_ms(transport));
    println!("    the four calls in the agent's process    {:9.2} ms", p50_ms(in_process));
    let [open, set, commit, close] = each.map(p50_ms);
    println!("      open {open:.2}, set {set:.2}, commit {commit:.2}, close {close:.2} ms");
    let one_ms = p50_ms(one_call);
    println!("    updateObject through RabbitMQ            {one_ms:9.2} ms   ratio {:.2}×", one_ms / floor_ms);
    println!("    of which in the agent's process          {:9.2} ms", p50_ms(one_call_in_agent));
    agent.stop().await;
}
