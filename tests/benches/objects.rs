//! Object benchmark, in one run against a private slapd (and SQLite for the index, the
//! default), with the floors measured beside it:
//!
//! (a) open + modify + commit of a User through the object store, against the raw
//!     ldap3 operations the same change needs (read the entry, modify it): ratio;
//! (b) bulk creation of users (objects/s), against raw ldap3 adds;
//! (c) keyword search latency over an index of 100,000 objects, against a bare
//!     indexed SELECT on the same SQLite file.
//!
//! Run: `cargo bench -p clacks-tests --bench objects` (`CLACKS_BENCH_USERS`,
//! `CLACKS_BENCH_INDEXED` and `CLACKS_BENCH_ROUNDS` scale it).

use std::time::{Duration, Instant};

use clacks_core::events::EventValidator;
use clacks_objects::index::{IndexDoc, SearchScope};
use clacks_objects::store::SearchOptions;
use clacks_objects::{ObjectStore, StoreConfig};
use clacks_tests::directory::{BASE, Slapd};
use ldap3::controls::{Assertion, PostRead};
use ldap3::{Mod, Scope, SearchEntry};
use serde_json::json;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1e3
}

fn summary(label: &str, mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    println!("{label:<52} p50 {p50:7.3} ms   p99 {p99:7.3} ms   (n={})", samples.len());
    p50
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rounds = env_number("CLACKS_BENCH_ROUNDS", 500);
    let users = env_number("CLACKS_BENCH_USERS", 10_000);
    let indexed = env_number("CLACKS_BENCH_INDEXED", 100_000);

    let slapd = Slapd::start().await;
    let data = tempfile::tempdir().expect("tempdir");
    let sqlite = format!("sqlite://{}", data.path().join("objects.db").display());
    let config = StoreConfig { ldap: Some(slapd.settings()), ..StoreConfig::default() };
    let store =
        ObjectStore::open(&config, &sqlite, EventValidator::start(&[]).expect("validator")).await.expect("store");

    let mut people = store.new_object(BASE, "PeopleContainer").await.expect("people");
    store.commit(&mut people, None).await.expect("people");
    let people_dn = people.dn.clone().expect("dn");
    let mut ada = store.new_object(&people_dn, "User").await.expect("ada");
    for (k, v) in [("uid", "ada"), ("givenName", "Ada"), ("sn", "Lovelace")] {
        store.set(&mut ada, k, &json!(v)).await.expect("set");
    }
    store.commit(&mut ada, None).await.expect("ada");
    let dn = ada.dn.clone().expect("dn");

    // (a) The floor: what an admin's own tool does for the same change.
    let mut ldap = slapd.admin().await;
    let mut raw = Vec::with_capacity(rounds);
    for i in 0..rounds + rounds / 10 {
        let t = Instant::now();
        let (entries, _) = ldap
            .search(&dn, Scope::Base, "(objectClass=*)", vec!["*", "entryCSN"])
            .await
            .expect("search")
            .success()
            .expect("ok");
        let _ = entries.into_iter().map(SearchEntry::construct).count();
        let title = format!("raw {i}");
        ldap.modify(&dn, vec![Mod::Replace("title", [title.as_str()].into())])
            .await
            .expect("modify")
            .success()
            .expect("ok");
        if i >= rounds / 10 {
            raw.push(t.elapsed());
        }
    }
    // The same with the controls a lost-update-safe change needs: assert the version read,
    // read the new one back.
    let mut guarded = Vec::with_capacity(rounds);
    for i in 0..rounds + rounds / 10 {
        let t = Instant::now();
        let (entries, _) = ldap
            .search(&dn, Scope::Base, "(objectClass=*)", vec!["*", "entryCSN"])
            .await
            .expect("search")
            .success()
            .expect("ok");
        let entry = entries.into_iter().map(SearchEntry::construct).next().expect("entry");
        let csn = entry.attrs.get("entryCSN").and_then(|v| v.first()).cloned().unwrap_or_default();
        let mut assertion = Assertion::new(format!("(entryCSN={csn})"));
        assertion.crit = true;
        let title = format!("guarded {i}");
        ldap.with_controls(vec![assertion, PostRead::new(vec!["entryCSN"])])
            .modify(&dn, vec![Mod::Replace("title", [title.as_str()].into())])
            .await
            .expect("modify")
            .success()
            .expect("ok");
        if i >= rounds / 10 {
            guarded.push(t.elapsed());
        }
    }
    let mut ours = Vec::with_capacity(rounds);
    for i in 0..rounds + rounds / 10 {
        let t = Instant::now();
        let mut state = store.load(&dn).await.expect("load");
        store.set(&mut state, "title", &json!(format!("clacks {i}"))).await.expect("set");
        store.commit(&mut state, None).await.expect("commit");
        if i >= rounds / 10 {
            ours.push(t.elapsed());
        }
    }
    // Where the time goes: the index write alone.
    let doc = store.index().by_uuid(ada.uuid.as_deref().unwrap_or_default()).await.expect("doc").expect("indexed");
    let mut index_writes = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        store.index().put(&doc).await.expect("put");
        index_writes.push(t.elapsed());
    }
    let mut loads = Vec::new();
    let mut searches = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        std::hint::black_box(store.load(&dn).await.expect("load"));
        loads.push(t.elapsed());
        let t = Instant::now();
        let (entries, _) = ldap
            .search(&dn, Scope::Base, "(objectClass=*)", vec!["*", "entryCSN"])
            .await
            .expect("search")
            .success()
            .expect("ok");
        std::hint::black_box(entries.into_iter().map(SearchEntry::construct).count());
        searches.push(t.elapsed());
    }
    println!("\n(a) open + modify + commit of a User");
    summary("  the index update alone", index_writes);
    summary("  load alone", loads);
    summary("  raw search alone", searches);
    let floor = summary("raw ldap3: search + modify", raw);
    let guarded_floor = summary("raw ldap3: search + modify asserting the version", guarded);
    let full = summary("object store: load + set + commit (+ index)", ours);
    println!("{:<52} {:.2}x   (goal <= 1.5x)", "ratio to the plain floor", full / floor);
    println!("{:<52} {:.2}x", "ratio to the version-asserting floor", full / guarded_floor);

    // (b) Bulk creation.
    let floor_count = users.min(2_000);
    let started = Instant::now();
    for i in 0..floor_count {
        let dn = format!("uid=raw{i},{people_dn}");
        let uid = format!("raw{i}");
        let attrs = vec![
            ("objectClass", ["inetOrgPerson"].into()),
            ("uid", [uid.as_str()].into()),
            ("cn", ["Raw User"].into()),
            ("sn", ["User"].into()),
            ("givenName", ["Raw"].into()),
        ];
        ldap.add(&dn, attrs).await.expect("add").success().expect("ok");
    }
    let raw_rate = floor_count as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for i in 0..users {
        let mut user = store.new_object(&people_dn, "User").await.expect("new");
        for (k, v) in
            [("uid", format!("u{i}")), ("givenName", format!("Given{i}")), ("sn", format!("Family{}", i % 97))]
        {
            store.set(&mut user, k, &json!(v)).await.expect("set");
        }
        store.commit(&mut user, None).await.expect("commit");
    }
    let rate = users as f64 / started.elapsed().as_secs_f64();
    println!("\n(b) bulk creation");
    println!("{:<52} {raw_rate:9.0} entries/s (n={floor_count})", "raw ldap3 adds");
    println!("{:<52} {rate:9.0} objects/s (n={users})", "object store: new + 3 sets + commit (+ index)");
    println!("{:<52} {:.2}x", "ratio (raw / ours)", raw_rate / rate);

    // (c) Search over a large index (documents written straight into the index: the
    // figure is about searching, not about creating).
    let index = store.index();
    let started = Instant::now();
    let already = index.count().await.expect("count") as usize;
    for i in already..indexed {
        let doc = IndexDoc {
            uuid: format!("bench-{i}"),
            dn: format!("uid=s{i},{people_dn}"),
            object_type: "User".into(),
            extensions: vec![],
            modified: "2026-01-01T00:00:00Z".into(),
            values: [
                ("uid".to_owned(), vec![format!("s{i}")]),
                ("givenName".to_owned(), vec![format!("Name{}", i % 5000)]),
                ("sn".to_owned(), vec![format!("Surname{}", i % 20000)]),
                ("cn".to_owned(), vec![format!("Name{} Surname{}", i % 5000, i % 20000)]),
                ("mail".to_owned(), vec![format!("s{i}@example.org")]),
            ]
            .into(),
        };
        index.put(&doc).await.expect("put");
    }
    println!(
        "\n(c) search over {} indexed objects (filled in {:.1} s)",
        index.count().await.expect("count"),
        started.elapsed().as_secs_f64()
    );
    let queries = ["surname1234", "name42", "s99999", "nomatch", "user name17"];
    let mut ours = Vec::new();
    for round in 0..200 {
        let q = queries[round % queries.len()];
        let t = Instant::now();
        let hits = store.search(BASE, SearchScope::Sub, q, &SearchOptions::default()).await.expect("search");
        ours.push(t.elapsed());
        std::hint::black_box(hits);
    }
    let mut floor = Vec::new();
    for round in 0..200 {
        let q = queries[round % queries.len()].split(' ').next_back().unwrap_or_default().to_owned();
        let upper = format!("{q}\u{10FFFF}");
        let t = Instant::now();
        let rows = index
            .db()
            .fetch(
                "SELECT i.doc FROM clacks_values v JOIN clacks_index i ON i.uuid = v.uuid WHERE v.value_lc >= $1 AND v.value_lc < $2 LIMIT 5000".into(),
                &[Some(&q), Some(&upper)],
            )
            .await
            .expect("select");
        floor.push(t.elapsed());
        std::hint::black_box(rows);
    }
    let floor = summary("bare indexed SELECT (one word, same index)", floor);
    let full = summary("search(base, SUB, query) with relevance", ours);
    println!("{:<52} {:.2}x   (goal: p50 < 10 ms)", "ratio", full / floor);
}
