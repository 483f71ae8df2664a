//! The exported surface, made explicit: every command of an agent with all shipped
//! plugins, its signature and the permission it needs, compared with the checked-in
//! `api.txt` (update with `UPDATE_EXPECT=1` — a change there is a change to the API);
//! and every one of them refused to a caller without a session or without rights.

use std::time::Duration;

use clacks_agent::auth::Authenticator;
use clacks_agent::daemon::AclOptions;
use clacks_agent::http::{HttpState, router};
use clacks_agent::{Agent, AgentOptions};
use clacks_core::bus::Bus;
use clacks_core::bus::local::LocalBus;
use clacks_core::client::Client;
use clacks_core::domain::Domain;
use clacks_core::rpc::{ErrorCode, Params};
use clacks_objects::StoreConfig;
use expect_test::expect_file;
use serde_json::json;

/// An agent with every shipped plugin, checking ACLs, on the in-process bus.
async fn full_agent(data: &tempfile::TempDir) -> (Agent, LocalBus) {
    let mut options = AgentOptions::new(Domain::new("org.clacks").unwrap_or_default(), "api");
    options.enable = vec!["telephony".into(), "statistics".into()];
    options.acl = Some(AclOptions { admins: vec!["root".into()] });
    options.objects = Some(clacks_tests::quiet_objects(StoreConfig::default(), clacks_tests::sqlite_in(data.path())));
    let bus = LocalBus::new("clacks-agent");
    let agent = Agent::start(options, Bus::Local(bus.clone()), vec![]).await.unwrap_or_else(|e| panic!("{e}"));
    (agent, bus)
}

#[tokio::test]
async fn the_exported_api_matches_its_snapshot_and_refuses_strangers() {
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (agent, bus) = full_agent(&data).await;
    let table = agent.registry().method_table(None);
    let mut lines = vec!["# command | signature | needs a user | call type | idempotent | permission".to_owned()];
    for (name, info) in &table {
        lines.push(format!(
            "{} | {} | {} | {:?} | {} | x on org.clacks.command.{}.{name}",
            name, info.signature, info.spec.needs_user, info.spec.call_type, info.spec.idempotent, info.spec.target
        ));
    }
    expect_file!["api.txt"].assert_eq(&(lines.join("\n") + "\n"));

    // As a user nobody granted anything: every command refused, before it runs.
    let mallory =
        Client::over_bus(Bus::Local(bus.view("mallory")), agent.options().domain.clone(), Duration::from_secs(5));
    for name in table.keys() {
        let refused = mallory.call(name, Params::None).await.map_err(|e| e.code()).err();
        assert_eq!(refused, Some(ErrorCode::PERMISSION_EXEC), "{name} must be refused to mallory");
    }

    // Over HTTP without a session: every command refused with 401.
    let state =
        HttpState::new(agent.dispatcher().clone(), Authenticator::Users(Default::default()), Duration::from_secs(60));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let http = reqwest::Client::new();
    for name in table.keys() {
        let response = http
            .post(format!("http://{address}/rpc"))
            .header("content-type", "application/json")
            .body(json!({"jsonrpc": "2.0", "method": name, "id": 1}).to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert!(status == 401 && body.contains("NOT_AUTHENTICATED"), "{name}: {status} {body}");
    }
    agent.stop().await;
}

/// Whether `value` conforms to `schema`, for the JSON Schema keywords result schemas
/// use; the path of the first mismatch otherwise.
fn conforms(value: &serde_json::Value, schema: &serde_json::Value, path: &str) -> Result<(), String> {
    use serde_json::Value;
    let fail = |why: &str| Err(format!("{path}: {why} ({value})"));
    if let Some(all) = schema["allOf"].as_array() {
        // Each part opens its properties; together they must name every key.
        let named: Vec<&String> =
            all.iter().filter_map(|s| s["properties"].as_object()).flat_map(|p| p.keys()).collect();
        if let Some(key) = value.as_object().and_then(|m| m.keys().find(|k| !named.contains(k))) {
            return fail(&format!("has {key}, which the schema does not name"));
        }
        return all.iter().try_for_each(|part| {
            let mut open = part.clone();
            open["additionalProperties"] = json!({});
            conforms(value, &open, path)
        });
    }
    if let Some(any) = schema["anyOf"].as_array() {
        return if any.iter().any(|s| conforms(value, s, path).is_ok()) { Ok(()) } else { fail("matches no anyOf") };
    }
    let type_ok = match schema["type"].as_str() {
        None => true,
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some("null") => value.is_null(),
        Some("array") => value.is_array(),
        Some("object") => value.is_object(),
        Some(other) => return fail(&format!("unknown type {other}")),
    };
    if !type_ok {
        return fail(&format!("is not {}", schema["type"]));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return fail("is not one of the enum");
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            conforms(item, item_schema, &format!("{path}[{i}]"))?;
        }
    }
    if let Value::Object(map) = value {
        let properties = schema["properties"].as_object();
        for required in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if !map.contains_key(required) {
                return fail(&format!("lacks {required}"));
            }
        }
        for (key, field) in map {
            match (properties.and_then(|p| p.get(key)), schema.get("additionalProperties")) {
                (Some(field_schema), _) => conforms(field, field_schema, &format!("{path}.{key}"))?,
                (None, Some(extra)) => conforms(field, extra, &format!("{path}.{key}"))?,
                // An object schema that names its properties closes them here, so a
                // result cannot drift from its description unnoticed.
                (None, None) if properties.is_some() => {
                    return fail(&format!("has {key}, which the schema does not name"));
                }
                (None, None) => {}
            }
        }
    }
    Ok(())
}

/// `rpc.discover` answers the OpenRPC document of every command (checked in as
/// `openrpc.json`: a change there is a change to the contract), and what the built-in
/// commands answer conforms to the result schemas it states.
#[tokio::test]
async fn rpc_discover_describes_every_command_and_the_results_conform() {
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (agent, bus) = full_agent(&data).await;
    let root = Client::over_bus(Bus::Local(bus.view("root")), agent.options().domain.clone(), Duration::from_secs(5));
    let document = root.call("rpc.discover", Params::None).await.unwrap_or_else(|e| panic!("{e}"));
    expect_file!["openrpc.json"].assert_eq(&(serde_json::to_string_pretty(&document).unwrap_or_default() + "\n"));
    let methods = document["methods"].as_array().cloned().unwrap_or_default();
    let table = agent.registry().method_table(None);
    assert_eq!(methods.len(), table.len(), "every command is described");
    let schema_of = |name: &str| {
        methods.iter().find(|m| m["name"] == json!(name)).map(|m| m["result"]["schema"].clone()).unwrap_or_default()
    };
    let calls = [
        ("getNodes", json!([])),
        ("getMethods", json!([])),
        ("getBase", json!([])),
        ("getSessionUser", json!([])),
        ("ping", json!([])),
        ("getEventTypes", json!([])),
        ("search", json!(["nobody"])),
        ("getACLs", json!([])),
    ];
    for (name, args) in calls {
        let params = Params::Positional(args.as_array().cloned().unwrap_or_default());
        let result = root.call(name, params).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let schema = schema_of(name);
        assert_ne!(schema, json!({}), "{name} states its result");
        conforms(&result, &schema, name).unwrap_or_else(|e| panic!("{e}\nschema: {schema}"));
    }
    // A node that is not there has no commands to list.
    let missing = root.call("getMethods", Params::Positional(vec![json!("org.clacks.command.core.nosuchnode")])).await;
    assert_eq!(missing.map_err(|e| e.code()).err(), Some(ErrorCode::INVALID_PARAMS));
    agent.stop().await;
}
