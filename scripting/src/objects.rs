//! Objects as Rhai values.
//!
//! `open_object(dn)` (or `open_object("User", dn)`, which also checks the type) and
//! `new_object("User", parent)` return an object proxy: reading `u.givenName` gives the
//! cached value, assigning `u.givenName = "Ada"` sets it on the agent (checked there at
//! once), and `u.extend("PosixUser")`, `u.commit()`, `u.move(dn)`, `u.remove()`,
//! `u.reload()`, `u.diff()`, `u.close()` and the description's own methods (`u.lock()`)
//! run remotely. Failures are the same catchable `#{code, message, details}` errors as
//! any remote call.

use std::sync::Arc;

use clacks_core::rpc::Params;
use rhai::{Dynamic, Engine, EvalAltResult};
use serde_json::{Value, json};

use crate::bindings::{RemoteCaller, RemoteError, remote_error};
use crate::{from_json, to_json};

/// An open object on the agent.
#[derive(Clone)]
pub struct ObjectProxy {
    /// The agent's view: `{ref, dn, uuid, type, extensions, attributes, methods}`.
    view: Value,
    caller: Arc<dyn RemoteCaller>,
}

impl std::fmt::Debug for ObjectProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectProxy").field("view", &self.view).finish_non_exhaustive()
    }
}

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

impl ObjectProxy {
    fn reference(&self) -> Value {
        self.view.get("ref").cloned().unwrap_or(Value::Null)
    }

    fn call(&self, method: &str, args: Vec<Value>) -> RhaiResult<Value> {
        self.caller.call(method, Params::Positional(args)).map_err(remote_error)
    }

    /// Runs an object method on the agent; a returned view replaces the cached one.
    fn dispatch(&mut self, method: &str, args: Vec<Value>) -> RhaiResult<Dynamic> {
        let result = self.call("dispatchObjectMethod", vec![self.reference(), json!(method), Value::Array(args)])?;
        if result.get("ref").is_some() && result.get("attributes").is_some() {
            self.view = result;
            return Ok(Dynamic::UNIT);
        }
        Ok(from_json(&result))
    }

    fn get(&self, name: &str) -> RhaiResult<Dynamic> {
        match self.view.get("attributes").and_then(|a| a.get(name)) {
            Some(v) => Ok(from_json(v)),
            None => Err(remote_error(RemoteError {
                code: "ATTRIBUTE_NOT_FOUND".into(),
                message: format!("{} has no active attribute '{name}'", self.summary()),
                details: None,
            })),
        }
    }

    fn set(&mut self, name: &str, value: Dynamic) -> RhaiResult<()> {
        let value = to_json(&value).map_err(|e| e.to_string())?;
        let stored = self.call("setObjectProperty", vec![self.reference(), json!(name), value])?;
        if let Some(Value::Object(attributes)) = self.view.get_mut("attributes") {
            attributes.insert(name.to_owned(), stored);
        }
        if let Some(Value::Array(changed)) = self.view.get_mut("changed")
            && !changed.iter().any(|c| c == name)
        {
            changed.push(json!(name));
        }
        Ok(())
    }

    /// Runs a method the description defines; its command may have changed the
    /// object, so an object without pending changes is read again.
    fn run_method(&mut self, method: &str, args: Vec<Value>) -> RhaiResult<Dynamic> {
        let result = self.dispatch(method, args)?;
        let pending = self.view.get("changed").and_then(Value::as_array).is_some_and(|c| !c.is_empty());
        if !pending {
            self.view = self.call("reloadObject", vec![self.reference()])?;
        }
        Ok(result)
    }

    fn field(&self, name: &str) -> Dynamic {
        self.view.get(name).map(from_json).unwrap_or(Dynamic::UNIT)
    }

    fn summary(&self) -> String {
        let kind = self.view.get("type").and_then(Value::as_str).unwrap_or("object");
        match self.view.get("dn").and_then(Value::as_str) {
            Some(dn) => format!("{kind} {dn}"),
            None => format!("new {kind} below {}", self.view.get("parent").and_then(Value::as_str).unwrap_or("?")),
        }
    }

    /// Every attribute the object's types give it, set or not, with its value.
    pub fn attributes(&self) -> Value {
        self.view.get("attributes").cloned().unwrap_or_else(|| json!({}))
    }

    /// What scripts and the REPL see of the object as data: its set attributes (so
    /// tables show properties, not empty slots or plumbing). A password attribute shows
    /// only that it is set — a hash is never printed or exported whole; `u.userPassword`
    /// still reads it.
    pub fn to_json(&self) -> Value {
        let Some(Value::Object(attributes)) = self.view.get("attributes") else { return json!({}) };
        let set = attributes.iter().filter(|(_, v)| !is_unset(v)).map(|(name, v)| {
            let shown = if name.to_lowercase().contains("password") { json!("(set)") } else { v.clone() };
            (name.clone(), shown)
        });
        Value::Object(set.collect())
    }
}

/// No value: null, an empty string or an empty list.
fn is_unset(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

fn open(caller: &Arc<dyn RemoteCaller>, args: Vec<Value>) -> RhaiResult<ObjectProxy> {
    let view = caller.call("openObject", Params::Positional(args)).map_err(remote_error)?;
    Ok(ObjectProxy { view, caller: caller.clone() })
}

/// Registers `open_object`, `new_object`, the proxy's properties and built-in methods,
/// and `methods`: the method names the descriptions define (`lock`, `changePassword`, …).
pub fn register(engine: &mut Engine, caller: Arc<dyn RemoteCaller>, methods: &[String]) {
    engine.register_type_with_name::<ObjectProxy>("Object");
    let c = caller.clone();
    crate::function(
        "open_object",
        "target: string -> Object",
        "Open the object `target` (a DN or UUID) for reading and editing: `o.attr`, `o.attr = v`, `o.commit()`.",
    )
    .register_into_engine(engine, move |target: &str| open(&c, vec![json!(target)]));
    let c = caller.clone();
    crate::function(
        "open_object",
        "objectType: string, target: string -> Object",
        "Open the object `target` (a DN or UUID), refusing it unless it is an `objectType` (or has that extension).",
    )
    .register_into_engine(engine, move |kind: &str, target: &str| -> RhaiResult<ObjectProxy> {
        let proxy = open(&c, vec![json!(target)])?;
        let actual = proxy.view.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
        let active = proxy.view.get("extensions").and_then(|e| e.get(kind)).and_then(Value::as_bool).unwrap_or(false);
        if actual != kind && !active {
            let _ = proxy.call("closeObject", vec![proxy.reference()]);
            return Err(remote_error(RemoteError {
                code: "OBJECT_TYPE_MISMATCH".into(),
                message: format!("{target} is a {actual}, not a {kind}"),
                details: None,
            }));
        }
        Ok(proxy)
    });
    let c = caller.clone();
    crate::function(
        "new_object",
        "objectType: string, parent: string -> Object",
        "A new object of `objectType` below `parent` (a DN); set its attributes, then `o.commit()` creates it.",
    )
    .register_into_engine(engine, move |kind: &str, parent: &str| open(&c, vec![json!(parent), json!(kind)]));

    engine.register_indexer_get(|p: &mut ObjectProxy, name: &str| p.get(name));
    engine.register_indexer_set(|p: &mut ObjectProxy, name: &str, value: Dynamic| p.set(name, value));
    for field in ["dn", "uuid", "parent", "extensions", "methods", "changed"] {
        engine.register_get(field, move |p: &mut ObjectProxy| p.field(field));
    }
    engine.register_get("object_type", |p: &mut ObjectProxy| p.field("type"));
    engine.register_get("attributes", |p: &mut ObjectProxy| p.field("attributes"));
    engine.register_fn("to_string", |p: &mut ObjectProxy| p.summary());
    engine.register_fn("to_debug", |p: &mut ObjectProxy| p.summary());

    engine.register_fn("commit", |p: &mut ObjectProxy| p.dispatch("commit", vec![]));
    engine.register_fn("extend", |p: &mut ObjectProxy, kind: &str| p.dispatch("extend", vec![json!(kind)]));
    engine.register_fn("retract", |p: &mut ObjectProxy, kind: &str| p.dispatch("retract", vec![json!(kind)]));
    engine.register_fn("move", |p: &mut ObjectProxy, parent: &str| p.dispatch("move", vec![json!(parent)]));
    engine.register_fn("remove", |p: &mut ObjectProxy| p.dispatch("remove", vec![json!(false)]));
    engine.register_fn("remove", |p: &mut ObjectProxy, recursive: bool| p.dispatch("remove", vec![json!(recursive)]));
    engine.register_fn("reload", |p: &mut ObjectProxy| p.dispatch("reload", vec![]));
    engine.register_fn("diff", |p: &mut ObjectProxy| p.dispatch("diff", vec![]));
    engine.register_fn("close", |p: &mut ObjectProxy| p.dispatch("close", vec![]));

    for name in methods.iter().filter(|m| crate::bindings::is_bindable(m)) {
        let name = name.clone();
        let n = name.clone();
        engine.register_fn(name.clone(), move |p: &mut ObjectProxy| p.run_method(&n, vec![]));
        let n = name.clone();
        engine.register_fn(name.clone(), move |p: &mut ObjectProxy, a: Dynamic| {
            let a = to_json(&a).map_err(|e| e.to_string())?;
            p.run_method(&n, vec![a])
        });
        let n = name.clone();
        engine.register_fn(name, move |p: &mut ObjectProxy, a: Dynamic, b: Dynamic| {
            let (a, b) = (to_json(&a).map_err(|e| e.to_string())?, to_json(&b).map_err(|e| e.to_string())?);
            p.run_method(&n, vec![a, b])
        });
    }
}

/// The method names of every object type, from the agent's `getObjectTypes`.
pub fn method_names(caller: &dyn RemoteCaller) -> Vec<String> {
    let Ok(Value::Object(types)) = caller.call("getObjectTypes", Params::None) else { return Vec::new() };
    let mut names: Vec<String> = types
        .values()
        .filter_map(|t| t.get("methods").and_then(Value::as_array))
        .flatten()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// An agent stand-in that keeps one object and records the calls.
    struct FakeAgent {
        calls: Mutex<Vec<String>>,
    }

    impl RemoteCaller for FakeAgent {
        fn call(&self, method: &str, params: Params) -> Result<Value, RemoteError> {
            let args = match &params {
                Params::Positional(a) => a.clone(),
                _ => vec![],
            };
            if let Ok(mut calls) = self.calls.lock() {
                calls.push(format!("{method} {}", Value::Array(args.clone())));
            }
            let view = |given: &str| {
                json!({"ref": "r1", "dn": "uid=ada,dc=x", "type": "User", "extensions": {"PosixUser": false},
                       "attributes": {"uid": "ada", "givenName": given}, "methods": ["commit", "lock"], "changed": []})
            };
            match (method, args.get(1).and_then(Value::as_str), args.get(2)) {
                ("openObject", _, _) => Ok(view("A")),
                ("setObjectProperty", Some("uid"), _) => Err(RemoteError {
                    code: "ATTRIBUTE_CHECK_FAILED".into(),
                    message: "'uid': 'Bad Name' does not match ^[a-z]+$".into(),
                    details: Some(json!({"attribute": "uid"})),
                }),
                ("setObjectProperty", _, Some(v)) => Ok(v.clone()),
                ("dispatchObjectMethod", Some("commit"), _) => Ok(view("Ada")),
                ("dispatchObjectMethod", Some("lock"), _) => Ok(json!(true)),
                ("reloadObject", _, _) => Ok(view("Ada")),
                _ => Ok(Value::Null),
            }
        }
    }

    #[test]
    fn proxies_read_set_and_run_methods_remotely() {
        let agent = Arc::new(FakeAgent { calls: Mutex::new(Vec::new()) });
        let mut engine = Engine::new();
        register(&mut engine, agent.clone(), &["lock".to_owned()]);
        let result: String = engine
            .eval(
                r#"let u = open_object("User", "uid=ada,dc=x");
                   u.givenName = "Ada";
                   let before = u.givenName;
                   u.extend("PosixUser");
                   u.commit();
                   let locked = u.lock();
                   let e = "";
                   try { u.uid = "Bad Name"; } catch (err) { e = err.code + " " + err.message; }
                   `${before} ${u.dn} ${locked} ${e}`"#,
            )
            .unwrap_or_else(|e| e.to_string());
        assert_eq!(result, "Ada uid=ada,dc=x true ATTRIBUTE_CHECK_FAILED 'uid': 'Bad Name' does not match ^[a-z]+$");
        let calls = agent.calls.lock().map(|c| c.clone()).unwrap_or_default();
        assert_eq!(
            calls,
            [
                r#"openObject ["uid=ada,dc=x"]"#,
                r#"setObjectProperty ["r1","givenName","Ada"]"#,
                r#"dispatchObjectMethod ["r1","extend",["PosixUser"]]"#,
                r#"dispatchObjectMethod ["r1","commit",[]]"#,
                r#"dispatchObjectMethod ["r1","lock",[]]"#,
                r#"reloadObject ["r1"]"#,
                r#"setObjectProperty ["r1","uid","Bad Name"]"#,
            ]
        );
        let mismatch = engine.eval::<Dynamic>(r#"open_object("Device", "uid=ada,dc=x")"#).err().map(|e| e.to_string());
        assert!(mismatch.is_some_and(|m| m.contains("OBJECT_TYPE_MISMATCH")));
        let missing =
            engine.eval::<Dynamic>(r#"let u = open_object("uid=ada,dc=x"); u.nothing"#).err().map(|e| e.to_string());
        assert!(missing.is_some_and(|m| m.contains("has no active attribute 'nothing'")));
    }
}
