//! Remote commands as Rhai functions.
//!
//! Every command the domain describes becomes a global function of the same name: called
//! with positional arguments (`add(1, 2)`) or with one map of named arguments
//! (`add(#{a: 1, b: 2})`), unless a shell function already has the name. Results come back as Rhai values; failures as catchable
//! errors carrying `#{code, message, details}`. `rpc(name, args)` reaches any command,
//! including one whose name a Rhai built-in already takes.

use std::any::TypeId;
use std::sync::Arc;

use clacks_core::command::CommandSpec;
use clacks_core::rpc::Params;
use rhai::{Dynamic, Engine, EvalAltResult, Map, NativeCallContext, Position};
use serde_json::Value;

use crate::{from_json, to_json};

/// A failed remote call, as scripts see it.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteError {
    /// Symbolic code (`COMMAND_NOT_DEFINED`, `TIMEOUT`, …).
    pub code: String,
    /// One line.
    pub message: String,
    /// Optional structured details.
    pub details: Option<Value>,
}

/// Makes calls on behalf of scripts; the shell implements it over its client (with
/// deadlines, Ctrl-C and a spinner).
pub trait RemoteCaller: Send + Sync + 'static {
    /// Calls `method` and waits for the result.
    fn call(&self, method: &str, params: Params) -> Result<Value, RemoteError>;
}

/// Whether a command name can be a plain function: not a Rhai keyword or keyword
/// function (`print`, `call`, `package`); such commands stay reachable through
/// `rpc(name, args)`.
pub fn is_bindable(name: &str) -> bool {
    rhai::is_valid_function_name(name)
}

/// Registers every bindable command of `commands` as a global function, except those
/// named like a function the engine already has (`taken`): the engine's own functions
/// win, and the commands they shadow are returned so help can say how to reach them
/// (`rpc(name, args)`).
pub fn register_commands(
    engine: &mut Engine,
    commands: &[CommandSpec],
    caller: Arc<dyn RemoteCaller>,
    taken: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    let mut shadowed = Vec::new();
    for spec in commands.iter().filter(|s| is_bindable(&s.name)) {
        if taken(&spec.name) {
            shadowed.push(spec.name.clone());
            continue;
        }
        let spec = Arc::new(spec.clone());
        // Every arity up to the parameter count: the agent checks what is missing, so a
        // forgotten argument gets the domain's own INVALID_PARAMS message.
        for arity in 0..=spec.params.len().max(1) {
            let spec = spec.clone();
            let caller = caller.clone();
            let types = vec![TypeId::of::<Dynamic>(); arity];
            engine.register_raw_fn(
                spec.name.clone(),
                types,
                move |_ctx: NativeCallContext, args: &mut [&mut Dynamic]| {
                    let params = params_for(&spec, args)?;
                    invoke(caller.as_ref(), &spec.name, params)
                },
            );
        }
    }
    shadowed
}

/// `rpc(name[, args])`: any command by name, also one whose name Rhai or the shell
/// already uses.
pub fn register_rpc(engine: &mut Engine, caller: Arc<dyn RemoteCaller>) {
    let rpc_caller = caller.clone();
    crate::function("rpc", "name: string -> any", "Call the domain's command `name` with no arguments.")
        .register_into_engine(engine, move |method: &str| invoke(rpc_caller.as_ref(), method, Params::None));
    crate::function(
        "rpc",
        "name: string, args: any -> any",
        "Call the domain's command `name`, also one a shell function shadows: args is an array (in order) or a map (by name).",
    )
    .register_into_engine(engine, move |method: &str, args: Dynamic| {
        let params = match args.clone().try_cast::<rhai::Array>() {
            Some(array) => Params::Positional(array.iter().map(json_arg).collect::<Result<_, _>>()?),
            None => match args.try_cast::<Map>() {
                Some(map) => Params::Named(
                    map.iter()
                        .map(|(k, v)| Ok((k.to_string(), json_arg(v)?)))
                        .collect::<Result<_, Box<EvalAltResult>>>()?,
                ),
                None => return Err("rpc(name, args): args must be an array or a map".into()),
            },
        };
        invoke(caller.as_ref(), method, params)
    });
}

fn json_arg(value: &Dynamic) -> Result<Value, Box<EvalAltResult>> {
    to_json(value).map_err(|e| e.to_string().into())
}

/// Positional arguments, or named ones when the single argument is a map whose keys are
/// all parameter names — as `clacks call --named` takes them, also for a command with
/// one parameter (`total(#{values: [1, 2.5]})`). A map that merely looks like that is
/// passed whole with `rpc(name, [map])`.
fn params_for(spec: &CommandSpec, args: &mut [&mut Dynamic]) -> Result<Params, Box<EvalAltResult>> {
    if let [only] = args
        && let Some(map) = only.read_lock::<Map>()
    {
        let all_named = !map.is_empty() && map.keys().all(|k| spec.params.iter().any(|p| p.name == k.as_str()));
        if all_named {
            let named = map
                .iter()
                .map(|(k, v)| Ok((k.to_string(), json_arg(v)?)))
                .collect::<Result<_, Box<EvalAltResult>>>()?;
            return Ok(Params::Named(named));
        }
    }
    if args.is_empty() {
        return Ok(Params::None);
    }
    Ok(Params::Positional(args.iter().map(|a| json_arg(a)).collect::<Result<_, _>>()?))
}

fn invoke(caller: &dyn RemoteCaller, method: &str, params: Params) -> Result<Dynamic, Box<EvalAltResult>> {
    match caller.call(method, params) {
        Ok(value) => Ok(from_json(&value)),
        Err(e) => Err(remote_error(e)),
    }
}

/// A catchable Rhai error carrying `#{code, message, details}`.
pub fn remote_error(e: RemoteError) -> Box<EvalAltResult> {
    let mut map = Map::new();
    map.insert("code".into(), e.code.into());
    map.insert("message".into(), e.message.into());
    map.insert("details".into(), e.details.as_ref().map(from_json).unwrap_or(Dynamic::UNIT));
    Box::new(EvalAltResult::ErrorRuntime(map.into(), Position::NONE))
}

/// Reads back a remote error from a Rhai error, if that is what it is.
pub fn as_remote_error(error: &EvalAltResult) -> Option<RemoteError> {
    let EvalAltResult::ErrorRuntime(value, _) = error.unwrap_inner() else { return None };
    let map = value.read_lock::<Map>()?;
    let code = map.get("code")?.clone().into_string().ok()?;
    let message = map.get("message")?.clone().into_string().ok()?;
    let details = map.get("details").filter(|d| !d.is_unit()).and_then(|d| to_json(d).ok());
    Some(RemoteError { code, message, details })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clacks_core::command::{CallType, Param, ValueType};
    use serde_json::json;
    use std::sync::Mutex;

    struct Recorder(Mutex<Vec<String>>);

    impl RemoteCaller for Recorder {
        fn call(&self, method: &str, params: Params) -> Result<Value, RemoteError> {
            let shown = format!("{method} {}", serde_json::to_string(&params).unwrap_or_default());
            self.0.lock().map(|mut v| v.push(shown)).ok();
            match method {
                "fail" => Err(RemoteError {
                    code: "PROBE_FAILED".into(),
                    message: "no".into(),
                    details: Some(json!({"x": 1})),
                }),
                _ => Ok(json!({"ok": true, "n": [1, 2]})),
            }
        }
    }

    fn spec(name: &str, params: &[(&str, ValueType)]) -> CommandSpec {
        CommandSpec {
            name: name.into(),
            target: "t".into(),
            params: params.iter().map(|(n, ty)| Param::new(*n, *ty, true)).collect(),
            help: "h".into(),
            needs_user: false,
            needs_queue: false,
            call_type: CallType::Normal,
            result: Default::default(),
            idempotent: false,
        }
    }

    #[test]
    fn commands_become_functions() {
        let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
        let mut engine = Engine::new();
        let commands = vec![
            spec("add", &[("a", ValueType::Integer), ("b", ValueType::Integer)]),
            spec("echo", &[("value", ValueType::Any)]),
            spec("fail", &[]),
            spec("call", &[]),
        ];
        register_rpc(&mut engine, recorder.clone());
        let shadowed = register_commands(&mut engine, &commands, recorder.clone(), &|name| name == "fail_twice");
        assert!(shadowed.is_empty());
        let n: i64 = engine.eval("let r = add(1, 2); add(#{a: 1, b: 2}); echo(#{value: 3}); r.n[1]").unwrap_or(-1);
        assert_eq!(n, 2);
        let caught: String = engine
            .eval(r#"let r = ""; try { fail() } catch (e) { r = `${e.code}: ${e.message} ${e.details.x}` } r"#)
            .unwrap_or_else(|e| format!("{e}"));
        assert_eq!(caught, "PROBE_FAILED: no 1");
        // A command named like a Rhai built-in is reached through rpc().
        let _: Dynamic = engine.eval(r#"rpc("call", [])"#).unwrap_or_default();
        let calls = recorder.0.lock().map(|v| v.clone()).unwrap_or_default();
        assert_eq!(calls, [r#"add [1,2]"#, r#"add {"a":1,"b":2}"#, r#"echo {"value":3}"#, "fail null", "call []"]);
        let err = engine.eval::<Dynamic>("fail()").err().and_then(|e| as_remote_error(&e));
        assert_eq!(err.map(|e| e.code), Some("PROBE_FAILED".to_owned()));
    }
}
