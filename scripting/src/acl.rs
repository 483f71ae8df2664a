//! `acl_*`: the ACL commands in a form an admin reads and types at a prompt.
//!
//! `acl_list()` and `acl_roles()` flatten ACLs and role entries into one row each, with
//! the grant spelled out (`rx on net\.example\.command\..*`, `role editor`), so the
//! REPL shows them as tables; `acl_grant(base, members, topic, letters)` and friends
//! fill in the defaults (scope `sub`, priority 0) the raw commands ask for. They call
//! the same remote commands (`getACLs`, `addACL`, …) with the same checks and errors.

use std::sync::Arc;

use clacks_core::rpc::Params;
use rhai::{Dynamic, Engine, EvalAltResult, Map as RhaiMap};
use serde_json::{Map, Value, json};

use crate::bindings::{RemoteCaller, remote_error};
use crate::{from_json, to_json};

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

fn call(caller: &Arc<dyn RemoteCaller>, method: &str, named: Map<String, Value>) -> RhaiResult<Value> {
    caller.call(method, Params::Named(named)).map_err(remote_error)
}

fn json_of(value: &Dynamic) -> RhaiResult<Value> {
    to_json(value).map_err(|e| e.to_string().into())
}

/// A member list from a string (one pattern) or an array of them.
fn members_of(members: &Dynamic) -> RhaiResult<Value> {
    match json_of(members)? {
        Value::String(one) => Ok(json!([one])),
        list @ Value::Array(_) => Ok(list),
        other => Err(format!("members must be a string or a list of strings, not {other}").into()),
    }
}

/// `scope`, `priority` and `options` from an optional settings map, with the defaults.
fn settings(named: &mut Map<String, Value>, extra: Option<&RhaiMap>) -> RhaiResult<Option<Value>> {
    let get = |key: &str| extra.and_then(|m| m.get(key)).map(json_of).transpose();
    named.insert("scope".into(), get("scope")?.unwrap_or_else(|| json!("sub")));
    named.insert("priority".into(), get("priority")?.unwrap_or_else(|| json!(0)));
    get("options")
}

fn action(topic: &str, letters: &str, options: Option<Value>) -> Value {
    let mut action = json!({"topic": topic, "acls": letters});
    if let Some(options) = options {
        action["options"] = options;
    }
    json!([action])
}

/// What a row grants, in words.
fn grant_text(row: &Value) -> String {
    if let Some(role) = row.get("role").filter(|_| row.get("members").is_some()).or_else(|| row.get("uses")) {
        return format!("role {}", role.as_str().unwrap_or_default());
    }
    let actions = row.get("actions").and_then(Value::as_array).cloned().unwrap_or_default();
    let parts: Vec<String> = actions
        .iter()
        .map(|a| {
            let mut text = format!(
                "{} on {}",
                a.get("acls").and_then(Value::as_str).unwrap_or_default(),
                a.get("topic").and_then(Value::as_str).unwrap_or_default()
            );
            if let Some(options) = a.get("options").and_then(Value::as_object).filter(|o| !o.is_empty()) {
                let pairs: Vec<String> = options.iter().map(|(k, v)| format!("{k}={v}")).collect();
                text.push_str(&format!(" where {}", pairs.join(", ")));
            }
            text
        })
        .collect();
    parts.join("; ")
}

fn acl_rows(list: &Value) -> Dynamic {
    let rows: Vec<Value> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|acl| {
            let members: Vec<&str> =
                acl["members"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            json!({
                "id": acl["id"], "base": acl["base"], "scope": acl["scope"], "priority": acl["priority"],
                "members": members.join(", "), "grants": grant_text(acl),
            })
        })
        .collect();
    from_json(&Value::Array(rows))
}

fn role_rows(list: &Value) -> Dynamic {
    let mut rows = Vec::new();
    for role in list.as_array().into_iter().flatten() {
        let entries = role["entries"].as_array().cloned().unwrap_or_default();
        if entries.is_empty() {
            rows.push(
                json!({"role": role["name"], "id": null, "scope": null, "priority": null, "grants": "(nothing yet)"}),
            );
        }
        for entry in entries {
            rows.push(json!({
                "role": role["name"], "id": entry["id"], "scope": entry["scope"], "priority": entry["priority"],
                "grants": grant_text(&entry),
            }));
        }
    }
    from_json(&Value::Array(rows))
}

/// Registers the `acl_*` functions.
pub fn register(engine: &mut Engine, caller: Arc<dyn RemoteCaller>) {
    let c = caller.clone();
    crate::function("acl_list", "-> array", "The domain's ACLs, one row per ACL with its grants in words.")
        .register_into_engine(engine, move || -> RhaiResult<Dynamic> {
            Ok(acl_rows(&call(&c, "getACLs", Map::new())?))
        });
    let c = caller.clone();
    crate::function(
        "acl_list",
        "base: string -> array",
        "The ACLs at and below `base`, one row per ACL with its grants in words.",
    )
    .register_into_engine(engine, move |base: &str| -> RhaiResult<Dynamic> {
        Ok(acl_rows(&call(&c, "getACLs", Map::from_iter([("base".into(), json!(base))]))?))
    });
    let c = caller.clone();
    crate::function("acl_roles", "-> array", "The ACL roles, one row per role entry with its grants in words.")
        .register_into_engine(engine, move || -> RhaiResult<Dynamic> {
            Ok(role_rows(&call(&c, "getACLRoles", Map::new())?))
        });

    // acl_grant(base, members, topic, letters[, #{scope, priority, options}]) -> id
    let grant = {
        let c = caller.clone();
        move |base: &str,
              members: Dynamic,
              topic: &str,
              letters: &str,
              extra: Option<&RhaiMap>|
              -> RhaiResult<Dynamic> {
            let mut named = Map::from_iter([("base".into(), json!(base)), ("members".into(), members_of(&members)?)]);
            let options = settings(&mut named, extra)?;
            named.insert("actions".into(), action(topic, letters, options));
            Ok(from_json(&call(&c, "addACL", named)?))
        }
    };
    let g = grant.clone();
    crate::function("acl_grant", "base: string, members: any, topic: string, letters: string -> integer", "Grant `letters` (r read, w write, c create, d delete, x execute, e events, …) on `topic`, a regex, to `members` (a regex or an array of them) at `base`; the result is the ACL's id.").register_into_engine(engine, move |base: &str, members: Dynamic, topic: &str, letters: &str| {
        g(base, members, topic, letters, None)
    });
    crate::function("acl_grant", "base: string, members: any, topic: string, letters: string, settings: map -> integer", "Grant `letters` (r read, w write, c create, d delete, x execute, e events, …) on `topic`, a regex, to `members` (a regex or an array of them) at `base`; the result is the ACL's id. `settings` may give scope (one, sub, psub, reset), priority and options.").register_into_engine(engine, move |base: &str, members: Dynamic, topic: &str, letters: &str, extra: RhaiMap| {
        grant(base, members, topic, letters, Some(&extra))
    });

    // acl_grant_role(base, members, role[, #{scope, priority}]) -> id
    let grant_role = {
        let c = caller.clone();
        move |base: &str, members: Dynamic, role: &str, extra: Option<&RhaiMap>| -> RhaiResult<Dynamic> {
            let mut named = Map::from_iter([("base".into(), json!(base)), ("members".into(), members_of(&members)?)]);
            settings(&mut named, extra)?;
            named.insert("role".into(), json!(role));
            Ok(from_json(&call(&c, "addACL", named)?))
        }
    };
    let g = grant_role.clone();
    crate::function(
        "acl_grant_role",
        "base: string, members: any, role: string -> integer",
        "Grant what the ACL role `role` grants to `members` at `base`; the result is the ACL's id.",
    )
    .register_into_engine(engine, move |base: &str, members: Dynamic, role: &str| g(base, members, role, None));
    crate::function(
        "acl_grant_role",
        "base: string, members: any, role: string, settings: map -> integer",
        "Grant what the ACL role `role` grants to `members` at `base`, with scope and priority from `settings`.",
    )
    .register_into_engine(engine, move |base: &str, members: Dynamic, role: &str, extra: RhaiMap| {
        grant_role(base, members, role, Some(&extra))
    });

    // acl_update(id, #{scope, priority, members, actions, role})
    let c = caller.clone();
    crate::function(
        "acl_update",
        "id: integer, changes: map",
        "Change the ACL `id`: any of scope, priority, members, actions, role.",
    )
    .register_into_engine(engine, move |id: i64, changes: RhaiMap| -> RhaiResult<Dynamic> {
        let mut named = match json_of(&Dynamic::from_map(changes))? {
            Value::Object(named) => named,
            _ => Map::new(),
        };
        if let Some(members) = named.get("members").cloned() {
            named.insert("members".into(), members_of(&from_json(&members))?);
        }
        named.insert("id".into(), json!(id));
        Ok(from_json(&call(&c, "updateACL", named)?))
    });
    let c = caller.clone();
    crate::function("acl_remove", "id: integer", "Remove the ACL `id`.").register_into_engine(
        engine,
        move |id: i64| -> RhaiResult<Dynamic> {
            Ok(from_json(&call(&c, "removeACL", Map::from_iter([("id".into(), json!(id))]))?))
        },
    );
    let c = caller.clone();
    crate::function("acl_revoke", "user: string -> integer", "Remove every ACL that names `user` as its only member.")
        .register_into_engine(engine, move |user: &str| -> RhaiResult<Dynamic> {
            Ok(from_json(&call(&c, "removeACLsForUser", Map::from_iter([("user".into(), json!(user))]))?))
        });
    let check = {
        let c = caller.clone();
        move |user: &str, topic: &str, letters: &str, target: Option<&str>| -> RhaiResult<Dynamic> {
            let mut named = Map::from_iter([
                ("user".into(), json!(user)),
                ("topic".into(), json!(topic)),
                ("letters".into(), json!(letters)),
            ]);
            if let Some(target) = target {
                named.insert("target".into(), json!(target));
            }
            Ok(from_json(&call(&c, "checkACL", named)?))
        }
    };
    let k = check.clone();
    crate::function(
        "acl_check",
        "user: string, topic: string, letters: string -> boolean",
        "Whether `user` holds `letters` on `topic`.",
    )
    .register_into_engine(engine, move |user: &str, topic: &str, letters: &str| k(user, topic, letters, None));
    crate::function(
        "acl_check",
        "user: string, topic: string, letters: string, target: string -> boolean",
        "Whether `user` holds `letters` on `topic` for the object `target` (a DN).",
    )
    .register_into_engine(engine, move |user: &str, topic: &str, letters: &str, target: &str| {
        check(user, topic, letters, Some(target))
    });

    let c = caller.clone();
    crate::function("acl_role_add", "name: string", "Create the ACL role `name`.").register_into_engine(
        engine,
        move |name: &str| -> RhaiResult<Dynamic> {
            Ok(from_json(&call(&c, "addACLRole", Map::from_iter([("name".into(), json!(name))]))?))
        },
    );
    let c = caller.clone();
    crate::function("acl_role_remove", "name: string", "Remove the ACL role `name`.").register_into_engine(
        engine,
        move |name: &str| -> RhaiResult<Dynamic> {
            Ok(from_json(&call(&c, "removeACLRole", Map::from_iter([("name".into(), json!(name))]))?))
        },
    );
    let c = caller.clone();
    crate::function("acl_role_remove_entry", "id: integer", "Remove one entry of an ACL role.").register_into_engine(
        engine,
        move |id: i64| -> RhaiResult<Dynamic> {
            Ok(from_json(&call(&c, "removeACLRoleEntry", Map::from_iter([("id".into(), json!(id))]))?))
        },
    );
    // acl_role_grant(role, topic, letters[, #{scope, priority, options}]) -> entry id
    let role_grant = {
        let c = caller.clone();
        move |role: &str, topic: &str, letters: &str, extra: Option<&RhaiMap>| -> RhaiResult<Dynamic> {
            let mut named = Map::from_iter([("role".into(), json!(role))]);
            let options = settings(&mut named, extra)?;
            named.insert("actions".into(), action(topic, letters, options));
            Ok(from_json(&call(&c, "addACLToRole", named)?))
        }
    };
    let r = role_grant.clone();
    crate::function(
        "acl_role_grant",
        "role: string, topic: string, letters: string -> integer",
        "Let the ACL role `role` grant `letters` on `topic` (a regex; write it in backticks).",
    )
    .register_into_engine(engine, move |role: &str, topic: &str, letters: &str| r(role, topic, letters, None));
    crate::function(
        "acl_role_grant",
        "role: string, topic: string, letters: string, settings: map -> integer",
        "Let the ACL role `role` grant `letters` on `topic`, with scope, priority and options from `settings`.",
    )
    .register_into_engine(engine, move |role: &str, topic: &str, letters: &str, extra: RhaiMap| {
        role_grant(role, topic, letters, Some(&extra))
    });
    // acl_role_use(role, other): role grants whatever other grants.
    let c = caller;
    crate::function(
        "acl_role_use",
        "role: string, other: string -> integer",
        "Let the ACL role `role` grant whatever the role `other` grants.",
    )
    .register_into_engine(engine, move |role: &str, other: &str| -> RhaiResult<Dynamic> {
        let mut named = Map::from_iter([("role".into(), json!(role)), ("uses".into(), json!(other))]);
        settings(&mut named, None)?;
        Ok(from_json(&call(&c, "addACLToRole", named)?))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_read_as_words() {
        let acl = json!({"members": ["ada"], "actions": [
            {"topic": "net\\.x", "acls": "rx", "options": {}},
            {"topic": "net\\.y", "acls": "x", "options": {"force": false}},
        ]});
        assert_eq!(grant_text(&acl), "rx on net\\.x; x on net\\.y where force=false");
        assert_eq!(grant_text(&json!({"members": ["ada"], "role": "editor"})), "role editor");
        assert_eq!(grant_text(&json!({"role": "editor", "uses": "viewer"})), "role viewer");
        assert_eq!(grant_text(&json!({"role": "editor", "actions": [{"topic": "t", "acls": "r"}]})), "r on t");
    }
}
