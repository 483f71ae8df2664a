//! `fanout(method[, args[, filter[, options]]])`: a command on many clients at once,
//! with a progress bar and one row per targeted client.
//!
//! The agent does the work (`clientFanOut`); this side first asks which clients the
//! filter reaches (`dryRun`), then sends them in slices of `batch`, so the bar moves
//! as slices finish and no single call outlives the shell's deadline; with `pause` the
//! shell waits that long between slices (a rolling change). Every targeted client ends
//! up in the result as `ok`, `error`, `timeout` or `unknown`, and a summary line goes to
//! stderr. With `dryRun` the result is the list of targets, and nothing is called.

use std::sync::Arc;

use clacks_core::rpc::Params;
use rhai::{Dynamic, Engine, EvalAltResult, Map as RhaiMap};
use serde_json::{Map, Value, json};

use crate::bindings::{RemoteCaller, remote_error};
use crate::{from_json, to_json};

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

fn object(value: Option<&RhaiMap>) -> RhaiResult<Map<String, Value>> {
    match value.map(|m| to_json(&Dynamic::from_map(m.clone()))).transpose().map_err(|e| e.to_string())? {
        Some(Value::Object(map)) => Ok(map),
        _ => Ok(Map::new()),
    }
}

fn fan_out(
    caller: &Arc<dyn RemoteCaller>,
    method: &str,
    args: Value,
    filter: Map<String, Value>,
    options: Map<String, Value>,
) -> RhaiResult<Dynamic> {
    let call = |filter: &Map<String, Value>, options: &Map<String, Value>| {
        let named = Map::from_iter([
            ("method".to_owned(), json!(method)),
            ("args".to_owned(), args.clone()),
            ("filter".to_owned(), Value::Object(filter.clone())),
            ("options".to_owned(), Value::Object(options.clone())),
        ]);
        caller.call("clientFanOut", Params::Named(named)).map_err(remote_error)
    };
    let mut dry = options.clone();
    dry.insert("dryRun".into(), json!(true));
    let listed = call(&filter, &dry)?;
    if options.get("dryRun") == Some(&json!(true)) {
        return Ok(from_json(&listed["targets"]));
    }
    let targets: Vec<String> = listed["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["client"].as_str().map(str::to_owned))
        .collect();
    let batch = options.get("batch").and_then(Value::as_u64).unwrap_or(32).max(1) as usize;
    // The agent pauses between the batches of one call; the slices are separate calls.
    let pause = options.get("pause").and_then(Value::as_f64).filter(|p| p.is_finite() && *p > 0.0);
    let progress = crate::helpers::Progress::new(targets.len() as u64);
    let mut rows = Vec::new();
    for (index, slice) in targets.chunks(batch).enumerate() {
        if let Some(pause) = pause.filter(|_| index > 0) {
            // Ctrl-C and the script's deadline still stop it.
            crate::sleep_ms((pause.min(3600.0) * 1000.0).round() as i64)?;
        }
        let mut only = filter.clone();
        only.insert("clients".into(), json!(slice));
        let answer = call(&only, &options)?;
        let results = answer["results"].as_array().cloned().unwrap_or_default();
        // A client gone between the listing and its slice still gets its row.
        for client in slice {
            let row = results.iter().find(|r| r["client"].as_str() == Some(client)).cloned().unwrap_or_else(|| {
                json!({"client": client, "status": "error", "code": "CLIENT_UNKNOWN", "message": "gone before it was called"})
            });
            rows.push(row);
        }
        progress.advance(slice.len() as u64);
    }
    progress.finish();
    let count = |status: &str| rows.iter().filter(|r| r["status"] == json!(status)).count();
    eprintln!(
        "{method} on {} client(s): {} ok, {} error, {} timeout, {} unknown",
        rows.len(),
        count("ok"),
        count("error"),
        count("timeout"),
        count("unknown")
    );
    Ok(from_json(&Value::Array(rows)))
}

/// Registers `fanout`.
pub fn register(engine: &mut Engine, caller: Arc<dyn RemoteCaller>) {
    let c = caller.clone();
    crate::function(
        "fanout",
        "method: string -> array",
        "Call `method` on every client, a row per client (ok, error or timeout) and a progress bar.",
    )
    .register_into_engine(engine, move |method: &str| fan_out(&c, method, Value::Null, Map::new(), Map::new()));
    let c = caller.clone();
    crate::function("fanout", "method: string, args: any -> array", "Call `method` with `args` on every client.")
        .register_into_engine(engine, move |method: &str, args: Dynamic| {
            fan_out(&c, method, to_json(&args).map_err(|e| e.to_string())?, Map::new(), Map::new())
        });
    let c = caller.clone();
    crate::function(
        "fanout",
        "method: string, args: any, filter: map -> array",
        "Call `method` with `args` on the clients matching `filter`: clients, id, name, hostname, online, capability, inventory, facts, group, and all/any/not over such maps (see help(\"clientFanOut\")).",
    )
    .register_into_engine(engine, move |method: &str, args: Dynamic, filter: RhaiMap| {
        fan_out(&c, method, to_json(&args).map_err(|e| e.to_string())?, object(Some(&filter))?, Map::new())
    });
    let c = caller;
    crate::function("fanout", "method: string, args: any, filter: map, options: map -> array", "Call `method` with `args` on the clients matching `filter`; `options` may give batch (clients at once), timeout (seconds per client), pause (seconds between batches) and dryRun (only list the targets).").register_into_engine(engine, move |method: &str, args: Dynamic, filter: RhaiMap, options: RhaiMap| {
        fan_out(&c, method, to_json(&args).map_err(|e| e.to_string())?, object(Some(&filter))?, object(Some(&options))?)
    });
}
