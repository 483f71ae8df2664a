//! What a command answers, as JSON Schema, and the whole API as an OpenRPC document
//! (`rpc.discover`), so a program in another language learns every command, its
//! parameters, its result, its errors and the permission it needs from the domain
//! itself.
//!
//! A Rust command's result schema follows from its return type through
//! [`ResultSchema`] — implemented here for the JSON-shaped standard types and derived
//! (`#[derive(clacks_core::ResultSchema)]`) for result rows, reading their serde names
//! and doc comments — so the document cannot drift from what the handler serializes.
//! A command answering a free-form `Value` says so (`{}`: any JSON).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value, json};

use crate::command::{CallType, CommandSpec, Param, ValueType};
use crate::rpc::ErrorCode;

/// A JSON Schema, kept as its JSON text so a command description stays hashable and
/// comparable; on the wire it is the schema itself. Empty: any JSON value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Schema(String);

impl Schema {
    pub fn new(schema: &Value) -> Schema {
        if schema.as_object().is_some_and(Map::is_empty) { Schema::default() } else { Schema(schema.to_string()) }
    }

    /// Whether it allows any value (nothing is known).
    pub fn is_any(&self) -> bool {
        self.0.is_empty()
    }

    /// The schema as JSON (`{}` for any value).
    pub fn to_value(&self) -> Value {
        if self.0.is_empty() { json!({}) } else { serde_json::from_str(&self.0).unwrap_or_else(|_| json!({})) }
    }
}

impl Serialize for Schema {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Schema {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Schema, D::Error> {
        Ok(Schema::new(&Value::deserialize(deserializer)?))
    }
}

/// The JSON Schema of what a Rust type serializes to.
pub trait ResultSchema {
    fn schema() -> Value;
    /// A field of this type may be absent or `null` (an `Option`).
    const OPTIONAL: bool = false;
}

macro_rules! result_schemas {
    ($kind:literal => $($t:ty),*) => { $( impl ResultSchema for $t { fn schema() -> Value { json!({"type": $kind}) } } )* };
}
result_schemas!("string" => String, str);
result_schemas!("integer" => i8, i16, i32, i64, u8, u16, u32, u64, usize, isize);
result_schemas!("number" => f32, f64);
result_schemas!("boolean" => bool);

impl ResultSchema for Value {
    fn schema() -> Value {
        json!({})
    }
}

impl ResultSchema for Map<String, Value> {
    fn schema() -> Value {
        json!({"type": "object"})
    }
}

impl ResultSchema for () {
    fn schema() -> Value {
        json!({"type": "null"})
    }
}

impl<T: ResultSchema + ?Sized> ResultSchema for &T {
    fn schema() -> Value {
        T::schema()
    }
}

impl<T: ResultSchema> ResultSchema for Vec<T> {
    fn schema() -> Value {
        json!({"type": "array", "items": T::schema()})
    }
}

impl<T: ResultSchema> ResultSchema for BTreeMap<String, T> {
    fn schema() -> Value {
        json!({"type": "object", "additionalProperties": T::schema()})
    }
}

impl<T: ResultSchema> ResultSchema for HashMap<String, T> {
    fn schema() -> Value {
        json!({"type": "object", "additionalProperties": T::schema()})
    }
}

impl<T: ResultSchema> ResultSchema for Option<T> {
    fn schema() -> Value {
        let inner = T::schema();
        if inner.as_object().is_some_and(Map::is_empty) { inner } else { json!({"anyOf": [inner, {"type": "null"}]}) }
    }
    const OPTIONAL: bool = true;
}

/// A handler's `Result`: the schema of its success value.
impl<T: ResultSchema, E> ResultSchema for Result<T, E> {
    fn schema() -> Value {
        T::schema()
    }
}

/// Adds `description` to a schema (derived result rows describe their fields).
pub fn described(mut schema: Value, description: &str) -> Value {
    if let (Some(map), false) = (schema.as_object_mut(), description.is_empty()) {
        map.insert("description".into(), json!(description));
    }
    schema
}

// Command descriptions (`getMethods`) derive theirs; their enums are spelled here.
impl ResultSchema for ValueType {
    fn schema() -> Value {
        use ValueType::*;
        let spellings = [String, Integer, Number, Boolean, Array, Object, Any].map(ValueType::as_str);
        json!({ "enum": spellings })
    }
}

impl ResultSchema for CallType {
    fn schema() -> Value {
        let spellings = [CallType::Normal, CallType::FirstResult, CallType::Cumulative].map(CallType::as_str);
        json!({ "enum": spellings })
    }
}

impl ResultSchema for Schema {
    fn schema() -> Value {
        json!({"type": "object"})
    }
}

/// The JSON Schema of one parameter.
fn param_schema(param: &Param) -> Value {
    let mut schema = match param.ty {
        ValueType::Any => json!({}),
        other => json!({"type": other.as_str()}),
    };
    if !param.allowed.is_empty() {
        // Compared ignoring ASCII case; the schema lists the spellings documented.
        schema["enum"] = json!(param.allowed);
    }
    schema
}

/// Errors any command may answer with, whatever it does.
const COMMON_ERRORS: &[&str] =
    &["INVALID_PARAMS", "PERMISSION_EXEC", "NOT_AUTHENTICATED", "TIMEOUT", "COMMAND_NOT_DEFINED", "INTERNAL_ERROR"];

/// The OpenRPC 1.3 document of `commands` in `domain`: every command with its
/// parameters (by name or by position), result, the errors every call may meet, and
/// the ACL permission it needs (`x-clacks-permission`).
pub fn openrpc(domain: &crate::domain::Domain, commands: &[CommandSpec]) -> Value {
    let numeric: BTreeMap<&str, i64> = ErrorCode::catalogue().iter().copied().collect();
    let error = |code: &str| json!({"code": numeric.get(code).copied().unwrap_or(-32000), "message": code, "data": {"code": code}});
    let errors: Map<String, Value> =
        ErrorCode::catalogue().iter().map(|(code, _)| ((*code).to_owned(), error(code))).collect();
    let methods: Vec<Value> = commands
        .iter()
        .map(|spec| {
            let params: Vec<Value> = spec
                .params
                .iter()
                .map(|p| {
                    let mut param = json!({"name": p.name, "required": !p.optional, "schema": param_schema(p)});
                    if let Some(description) = &p.description {
                        param["description"] = json!(description);
                    }
                    param
                })
                .collect();
            let mut common = COMMON_ERRORS.to_vec();
            if !spec.needs_user {
                common.retain(|c| *c != "NOT_AUTHENTICATED");
            }
            json!({
                "name": spec.name,
                "summary": spec.help,
                "paramStructure": "either",
                "params": params,
                "result": {"name": "result", "schema": spec.result.to_value()},
                "errors": common.iter().map(|c| json!({"$ref": format!("#/components/errors/{c}")})).collect::<Vec<_>>(),
                "x-clacks-target": spec.target,
                "x-clacks-callType": spec.call_type,
                "x-clacks-needsUser": spec.needs_user,
                "x-clacks-idempotent": spec.idempotent,
                "x-clacks-permission": format!("x on {}", domain.command_topic(&spec.target, &spec.name)),
            })
        })
        .collect();
    json!({
        "openrpc": "1.3.2",
        "info": {
            "title": format!("Clacks domain {domain}"),
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every command the domain's live nodes provide. Errors carry their symbolic code in error.data.code (docs/protocol.md §3).",
        },
        "methods": methods,
        "components": {"errors": errors},
    })
}
