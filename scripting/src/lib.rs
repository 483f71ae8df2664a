//! The Rhai side of Clacks: a sandboxed engine, the conversion between Rhai values and
//! the JSON values commands exchange, remote commands as Rhai functions ([`bindings`])
//! and the helpers an admin's script needs ([`helpers`]: files, CSV, JSON, progress;
//! [`objects`]: objects as values; [`acl`]: the ACL commands made readable; [`clients`]:
//! fan-out to clients with progress).
//!
//! Agents use it to run `.rhai` plugins; the shell builds its REPL on the same engine
//! settings, so a script behaves the same wherever it runs. Scripts are synchronous, so
//! callers run them on blocking threads; a per-thread deadline and cancellation flag
//! let a call's deadline or the user's Ctrl-C stop a running script.

pub mod acl;
pub mod bindings;
pub mod clients;
pub mod helpers;
pub mod objects;

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rhai::{Dynamic, Engine};
use serde_json::Value;

/// Resource limits of a script run.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most operations one run may perform.
    pub max_operations: u64,
    /// Deepest function call nesting.
    pub max_call_levels: usize,
    /// Longest string, in bytes.
    pub max_string_size: usize,
    /// Largest array.
    pub max_array_size: usize,
    /// Largest map.
    pub max_map_size: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_operations: 50_000_000,
            max_call_levels: 64,
            max_string_size: 16 * 1024 * 1024,
            max_array_size: 1_000_000,
            max_map_size: 1_000_000,
        }
    }
}

thread_local! {
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    static CANCEL: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// Whether the run on this thread was cancelled (Ctrl-C) or passed its deadline.
pub fn interrupted() -> Option<&'static str> {
    if CANCEL.with(|c| c.borrow().as_ref().is_some_and(|flag| flag.load(Ordering::Relaxed))) {
        return Some("interrupted");
    }
    match DEADLINE.with(Cell::get) {
        Some(deadline) if Instant::now() >= deadline => Some("deadline exceeded"),
        _ => None,
    }
}

/// Runs `f` with a cancellation flag: scripts evaluated inside on this thread stop
/// (with an "interrupted" error) soon after the flag is set.
pub fn with_cancellation<T>(flag: &Arc<AtomicBool>, f: impl FnOnce() -> T) -> T {
    let previous = CANCEL.with(|c| c.replace(Some(flag.clone())));
    let out = f();
    CANCEL.with(|c| *c.borrow_mut() = previous);
    out
}

/// A function described for help and completion: `signature` lists the parameters as
/// `name: type` in the domain's type words (`string`, `integer`, `number`, `boolean`,
/// `array`, `map`, `function`, `any`), then ` -> type` of the result; `doc` is one or more
/// sentences, and may name parameters as `- name: what it is` lines. The shell reads them
/// back from the engine's metadata.
pub fn function(name: &str, signature: &str, doc: &str) -> rhai::FuncRegistration {
    let (params, returns) = signature.split_once("->").unwrap_or((signature, "()"));
    let mut info: Vec<&str> = params.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    info.push(returns.trim());
    let comments = doc.lines().map(|line| format!("/// {line}")).collect::<Vec<_>>().join("\n");
    rhai::FuncRegistration::new(name).with_params_info(info).with_comments([comments])
}

/// An engine with the limits applied and deadline enforcement wired in.
pub fn sandboxed_engine(limits: &Limits) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_levels)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size)
        .set_max_expr_depths(128, 64);
    function("sleep", "ms: integer", "Pause the script for `ms` milliseconds (Ctrl-C and deadlines still stop it).")
        .register_into_engine(&mut engine, sleep_ms);
    function("env", "name: string -> any", "The environment variable `name`, or () when it is not set.")
        .register_into_engine(&mut engine, |name: &str| -> Dynamic {
            std::env::var(name).map(Dynamic::from).unwrap_or(Dynamic::UNIT)
        });
    engine.on_progress(|ops| {
        // Checking the clock every operation would dominate cheap scripts.
        if ops % 1024 != 0 {
            return None;
        }
        interrupted().map(Dynamic::from)
    });
    engine
}

/// `sleep(ms)` for scripts: sleeps in short slices so a passed deadline still ends it.
pub(crate) fn sleep_ms(ms: i64) -> Result<(), Box<rhai::EvalAltResult>> {
    let until = Instant::now() + std::time::Duration::from_millis(ms.max(0) as u64);
    loop {
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        if let Some(why) = interrupted() {
            return Err(format!("{why} during sleep").into());
        }
        std::thread::sleep((until - now).min(std::time::Duration::from_millis(20)));
    }
}

/// Runs `f` with a deadline: any script evaluated inside on this thread is terminated
/// once it passes.
pub fn with_deadline<T>(deadline: Instant, f: impl FnOnce() -> T) -> T {
    let previous = DEADLINE.with(|d| d.replace(Some(deadline)));
    let out = f();
    DEADLINE.with(|d| d.set(previous));
    out
}

/// A value that has no JSON form (a function pointer, a custom type…).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("a {type_name} value cannot be turned into JSON: {reason}")]
pub struct ConversionError {
    /// The Rhai type.
    pub type_name: String,
    /// Why.
    pub reason: String,
}

/// How deeply nested a value may be to cross between Rhai and JSON. The conversions
/// recurse; a limit well below what the stack holds keeps a hostile document or a
/// script building `[[[[…]]]]` from aborting the process.
pub const MAX_VALUE_DEPTH: usize = 128;

/// What completion offers after `value.`: an object's every attribute (set or not), else
/// the value as JSON.
pub fn completion_json(value: &Dynamic) -> Result<Value, ConversionError> {
    if let Some(proxy) = value.read_lock::<objects::ObjectProxy>() {
        return Ok(proxy.attributes());
    }
    to_json(value)
}

/// Rhai → JSON.
pub fn to_json(value: &Dynamic) -> Result<Value, ConversionError> {
    // Object proxies show as their set attributes (for tables and JSON).
    if let Some(proxy) = value.read_lock::<objects::ObjectProxy>() {
        return Ok(proxy.to_json());
    }
    if dynamic_depth(value) > MAX_VALUE_DEPTH {
        return Err(ConversionError {
            type_name: value.type_name().to_owned(),
            reason: format!("it is nested deeper than {MAX_VALUE_DEPTH} levels"),
        });
    }
    rhai::serde::from_dynamic::<Value>(value)
        .map_err(|e| ConversionError { type_name: value.type_name().to_owned(), reason: e.to_string() })
}

/// JSON → Rhai. Integers beyond Rhai's `i64` become floats. A value nested deeper than
/// [`MAX_VALUE_DEPTH`] (no parser of ours produces one) becomes a string saying so.
pub fn from_json(value: &Value) -> Dynamic {
    if json_depth(value) > MAX_VALUE_DEPTH {
        return Dynamic::from(format!("(a value nested deeper than {MAX_VALUE_DEPTH} levels, left out)"));
    }
    rhai::serde::to_dynamic(value).unwrap_or(Dynamic::UNIT)
}

/// How deeply `value` nests, counted without recursion (stopping early past the limit).
fn json_depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 1)];
    while let Some((value, depth)) = pending.pop() {
        deepest = deepest.max(depth);
        if deepest > MAX_VALUE_DEPTH {
            break;
        }
        match value {
            Value::Array(items) => pending.extend(items.iter().map(|v| (v, depth + 1))),
            Value::Object(map) => pending.extend(map.values().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    deepest
}

/// [`json_depth`] for Rhai values.
fn dynamic_depth(value: &Dynamic) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value.clone(), 1)];
    while let Some((value, depth)) = pending.pop() {
        deepest = deepest.max(depth);
        if deepest > MAX_VALUE_DEPTH {
            break;
        }
        if let Some(items) = value.read_lock::<rhai::Array>() {
            pending.extend(items.iter().map(|v| (v.clone(), depth + 1)));
        } else if let Some(map) = value.read_lock::<rhai::Map>() {
            pending.extend(map.values().map(|v| (v.clone(), depth + 1)));
        }
    }
    deepest
}

/// The first paragraph of a Rhai doc comment, without its `///` or `/** */` leaders.
pub fn doc_summary<S: AsRef<str>>(comments: &[S]) -> String {
    doc_lines(comments)
        .into_iter()
        .skip_while(String::is_empty)
        .take_while(|line| !line.is_empty() && clacks_core::command::param_doc(line).is_none())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The lines of doc comments (`///` or `/** … */`) without their comment leaders.
pub fn doc_lines<S: AsRef<str>>(comments: &[S]) -> Vec<String> {
    comments
        .iter()
        .flat_map(|comment| comment.as_ref().lines())
        .map(|line| {
            let line = line.trim().trim_start_matches("///").trim_start_matches("/**").trim_end_matches("*/");
            line.trim_start_matches('*').trim().to_owned()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trip() {
        let value = json!({"a": [1, 2.5, "x", true, null], "b": {"c": "d"}});
        assert_eq!(to_json(&from_json(&value)), Ok(value));
    }

    #[test]
    fn deep_values_are_refused_not_overflowing() {
        // Built and taken apart level by level: `json!` and serde_json's drop recurse.
        let mut deep = json!(1);
        for _ in 0..20_000 {
            deep = Value::Array(vec![deep]);
        }
        let converted = from_json(&deep);
        assert!(converted.is_string(), "{converted:?}");
        while let Value::Array(mut items) = deep {
            deep = items.pop().unwrap_or(Value::Null);
        }

        let engine = sandboxed_engine(&Limits::default());
        let built = engine.eval::<Dynamic>("let a = 1; for i in 0..300 { a = [a]; } a");
        let built = built.unwrap_or_else(|e| panic!("{e}"));
        let error = to_json(&built).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("nested deeper than 128 levels"), "{error}");
        assert_eq!(to_json(&engine.eval::<Dynamic>("[[[1]]]").unwrap_or_default()), Ok(json!([[[1]]])));
    }

    #[test]
    fn deadlines_stop_endless_scripts() {
        let engine = sandboxed_engine(&Limits::default());
        let deadline = Instant::now() + std::time::Duration::from_millis(50);
        let result = with_deadline(deadline, || engine.eval::<i64>("let x = 0; loop { x += 1; }"));
        assert!(result.is_err());
    }

    #[test]
    fn sleep_and_env() {
        let engine = sandboxed_engine(&Limits::default());
        let started = Instant::now();
        assert_eq!(engine.eval::<()>("sleep(30)").ok(), Some(()));
        assert!(started.elapsed() >= std::time::Duration::from_millis(30));
        let deadline = Instant::now() + std::time::Duration::from_millis(20);
        assert!(with_deadline(deadline, || engine.eval::<()>("sleep(5000)")).is_err());
        assert!(engine.eval::<Dynamic>("env(\"CLACKS_SURELY_UNSET_VARIABLE\")").is_ok_and(|v| v.is_unit()));
    }

    #[test]
    fn summaries() {
        assert_eq!(
            doc_summary(&["/// Adds two numbers.\n/// Really.\n///\n/// Details."]),
            "Adds two numbers. Really."
        );
        assert_eq!(doc_summary(&["/** Block\n * doc */"]), "Block doc");
    }
}
