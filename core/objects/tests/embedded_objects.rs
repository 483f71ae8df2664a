//! The object store on its embedded default: no directory, everything in a SQLite file.
//! Hermetic (a temporary folder), so it runs with the unit tests.

use clacks_core::events::EventValidator;
use clacks_core::rpc::ErrorCode;
use clacks_objects::index::SearchScope;
use clacks_objects::store::SearchOptions;
use clacks_objects::{ObjectState, ObjectStore, StoreConfig};
use serde_json::json;

async fn store(dir: &tempfile::TempDir) -> std::sync::Arc<ObjectStore> {
    let validator = EventValidator::start(&[]).expect("validator");
    let url = format!("sqlite://{}", dir.path().join("objects.db").display());
    ObjectStore::open(&StoreConfig::default(), &url, validator).await.expect("store")
}

/// A new object of `kind` below `parent` with `values`, committed.
async fn create(store: &ObjectStore, parent: &str, kind: &str, values: &[(&str, serde_json::Value)]) -> ObjectState {
    let mut state = store.new_object(parent, kind).await.unwrap_or_else(|e| panic!("new {kind}: {e}"));
    for (name, value) in values {
        store.set(&mut state, name, value).await.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    store.commit(&mut state, Some("admin")).await.unwrap_or_else(|e| panic!("commit {kind}: {e}"));
    state
}

#[tokio::test]
async fn a_first_session_creates_extends_searches_and_removes_users() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir).await;
    let base = store.base().to_owned();

    let people_dn = create(&store, &base, "PeopleContainer", &[]).await.dn.expect("dn");
    assert_eq!(people_dn, format!("ou=people,{base}"));

    let mut ada = store.new_object(&people_dn, "User").await.expect("new user");
    for (name, value) in [("uid", json!("ada")), ("givenName", json!("Ada")), ("sn", json!("Lovelace"))] {
        store.set(&mut ada, name, &value).await.expect(name);
    }
    store.extend(&mut ada, "PosixUser").expect("extend");
    store.commit(&mut ada, Some("admin")).await.expect("commit ada");
    let dn = ada.dn.clone().expect("dn");
    assert_eq!(dn, format!("uid=ada,{people_dn}"));

    let loaded = store.load(&dn).await.expect("load");
    assert_eq!(loaded.values["cn"], vec![json!("Ada Lovelace")]);
    assert_eq!(loaded.values["uidNumber"], vec![json!(10000)]);
    assert_eq!(loaded.values["homeDirectory"], vec![json!("/home/ada")]);
    assert_eq!(loaded.values["gecos"], vec![json!("Ada Lovelace")]);
    assert!(loaded.active.contains("PosixUser"));

    // Validation names the attribute and the reason.
    let mut other = store.new_object(&people_dn, "User").await.expect("new");
    let err = store.set(&mut other, "uid", &json!("ada")).await.expect_err("taken");
    assert_eq!(err.code, ErrorCode::ATTRIBUTE_CHECK_FAILED);
    assert!(err.message.contains("'uid'") && err.message.contains("already used"), "{err}");
    let err = store.set(&mut other, "cn", &json!("x")).await.expect_err("read-only");
    assert_eq!(err.code, ErrorCode::ATTRIBUTE_READ_ONLY);
    store.set(&mut other, "uid", &json!("bob")).await.expect("uid");
    let err = store.commit(&mut other, None).await.expect_err("mandatory");
    assert_eq!(err.code, ErrorCode::ATTRIBUTE_MANDATORY);
    assert_eq!(err.details, Some(json!({"attributes": ["givenName", "sn", "cn"]})));

    let page = store.search(&base, SearchScope::Sub, "lovelace", &SearchOptions::default()).await.expect("search");
    assert_eq!((page.hits.len(), page.truncated), (1, false), "{page:?}");
    assert_eq!(page.hits[0]["title"], json!("Ada Lovelace"));
    let none = SearchOptions { limit: Some(0), ..SearchOptions::default() };
    let page = store.search(&base, SearchScope::Sub, "lovelace", &none).await.expect("search");
    assert!(page.hits.is_empty() && page.truncated, "{page:?}");
    let found = store.find(json!({"_type": "PosixUser", "uid": "a*"}).as_object().expect("map")).await.expect("find");
    assert_eq!(found.len(), 1);

    let err = store.remove(&people_dn, false, None).await.expect_err("children");
    assert_eq!(err.code, ErrorCode::OBJECT_HAS_CHILDREN);
    let removed = store.remove(&people_dn, true, None).await.expect("recursive");
    assert_eq!(removed, vec![dn.clone(), people_dn.clone()]);
    assert_eq!(store.load(&dn).await.expect_err("gone").code, ErrorCode::OBJECT_NOT_FOUND);
    assert!(
        store
            .search(&base, SearchScope::Sub, "lovelace", &SearchOptions::default())
            .await
            .expect("search")
            .hits
            .is_empty()
    );
}

/// A commit the database refuses half-way (after the rename) puts every step back: the
/// old name, the old types, the old values.
#[tokio::test]
async fn a_refused_row_undoes_the_rename_and_the_new_extension() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir).await;
    let base = store.base().to_owned();
    let people_dn = create(&store, &base, "PeopleContainer", &[]).await.dn.expect("dn");
    let bob =
        [("uid", json!("bob")), ("givenName", json!("Bob")), ("sn", json!("Builder")), ("title", json!("Analyst"))];
    let dn = create(&store, &people_dn, "User", &bob).await.dn.expect("dn");

    // The site's database refuses one title, as a CHECK constraint or trigger would.
    let url = format!("sqlite://{}", dir.path().join("objects.db").display());
    let db = sqlx::SqlitePool::connect(&url).await.expect("sqlite");
    for when in ["INSERT", "UPDATE"] {
        let trigger = format!(
            "CREATE TRIGGER refuse_{when} BEFORE {when} ON clacks_obj_user WHEN NEW.title = 'Saboteur' \
             BEGIN SELECT RAISE(ABORT, 'that title is refused'); END"
        );
        sqlx::query(sqlx::AssertSqlSafe(trigger)).execute(&db).await.expect("trigger");
    }

    let mut state = store.load(&dn).await.expect("load");
    store.set(&mut state, "uid", &json!("robert")).await.expect("uid");
    store.set(&mut state, "title", &json!("Saboteur")).await.expect("title");
    store.extend(&mut state, "PosixUser").expect("extend");
    let err = store.commit(&mut state, Some("admin")).await.expect_err("refused");
    assert_eq!(err.code, ErrorCode::BACKEND_FAILED);
    assert!(err.message.contains("that title is refused") && err.message.contains("old name was put back"), "{err}");
    assert_eq!(state.dn.as_deref(), Some(dn.as_str()), "the open object is as before the commit");

    let after = store.load(&dn).await.expect("still under its old name");
    assert_eq!(
        (after.values["uid"].clone(), after.values["title"].clone()),
        (vec![json!("bob")], vec![json!("Analyst")])
    );
    assert!(!after.active.contains("PosixUser"), "the extension was not added");
    let renamed = format!("uid=robert,{people_dn}");
    assert_eq!(store.load(&renamed).await.expect_err("no new name").code, ErrorCode::OBJECT_NOT_FOUND);

    // The same editor corrects the value and commits again.
    store.set(&mut state, "title", &json!("Architect")).await.expect("title");
    store.commit(&mut state, Some("admin")).await.expect("commit after the fix");
    assert_eq!(state.dn.as_deref(), Some(renamed.as_str()));
    assert!(store.load(&renamed).await.expect("renamed").active.contains("PosixUser"));
}

/// The database keys DNs by one spelling: a name that needs escaping is found however
/// its DN is written.
#[tokio::test]
async fn names_that_need_escaping_are_found_under_every_spelling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir).await;
    let base = store.base().to_owned();
    let mut unit = create(&store, &base, "OrganizationalUnit", &[("ou", json!("Sales, Europe + Asia"))]).await;
    for spelling in [format!("ou=Sales\\, Europe \\+ Asia,{base}"), format!("OU=sales\\2C europe \\2b asia, {base}")] {
        let loaded = store.load(&spelling).await.unwrap_or_else(|e| panic!("{spelling}: {e}"));
        assert_eq!(loaded.values["ou"], vec![json!("Sales, Europe + Asia")], "{spelling}");
    }
    store.set(&mut unit, "description", &json!("Both")).await.expect("description");
    let before = unit.dn.clone();
    store.commit(&mut unit, Some("admin")).await.expect("commit");
    assert_eq!(unit.dn, before, "no rename");
}

/// The lowest account id is a setting: a site whose accounts start at 500 may use them.
#[tokio::test]
async fn the_lowest_account_id_is_configurable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let validator = EventValidator::start(&[]).expect("validator");
    let url = format!("sqlite://{}", dir.path().join("objects.db").display());
    let config = StoreConfig { min_unix_id: Some(500), ..StoreConfig::default() };
    let store = ObjectStore::open(&config, &url, validator).await.expect("store");
    let people = create(&store, store.base(), "PeopleContainer", &[]).await.dn.expect("dn");
    let mut user = store.new_object(&people, "User").await.expect("new");
    store.extend(&mut user, "PosixUser").expect("extend");
    store.set(&mut user, "uidNumber", &json!(600)).await.expect("600 is allowed here");
    let err = store.set(&mut user, "uidNumber", &json!(499)).await.expect_err("499 is not");
    assert_eq!(err.code, ErrorCode::ATTRIBUTE_CHECK_FAILED);
    assert!(err.message.contains("500"), "{err}");
}

/// An error quotes enough of a bad value to recognise it, never all of it.
#[tokio::test]
async fn errors_quote_at_most_a_line_of_the_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir).await;
    let devices = create(&store, store.base(), "DeviceContainer", &[]).await.dn.expect("dn");
    let mut device = store.new_object(&devices, "Device").await.expect("new");
    let huge = "x_".repeat(10_000);
    let err = store.set(&mut device, "cn", &json!(huge)).await.expect_err("not a host name");
    assert_eq!(err.code, ErrorCode::ATTRIBUTE_CHECK_FAILED);
    assert!(err.message.len() < 300 && err.message.contains("x_x_x_") && err.message.contains('…'), "{err}");
    let err = store.load(&format!("cn={huge},{devices}")).await.expect_err("no such object");
    assert!(err.message.len() < 300, "{}", err.message.len());
}
