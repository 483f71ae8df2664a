//! The one description of a command.
//!
//! A [`CommandSpec`] is written once — by the `#[plugin]`/`#[command]` macros for Rust
//! plugins, or from a doc-commented function for `.rhai` plugins — and then drives
//! argument checking in the dispatcher, the `getMethods` table, the `NodeCapabilities`
//! event, help output and shell completion.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::rpc::{ErrorCode, Params, RpcError};

/// How a command is executed when several nodes provide it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallType {
    /// One provider runs it: the receiving node if it has it, else the least loaded.
    #[default]
    Normal,
    /// Providers are tried in turn (local first, then by load); the first success wins.
    FirstResult,
    /// Every live provider runs it; the result maps node ids to results and errors.
    Cumulative,
}

impl CallType {
    /// The wire spelling (`NORMAL`, `FIRST_RESULT`, `CUMULATIVE`).
    pub fn as_str(self) -> &'static str {
        match self {
            CallType::Normal => "NORMAL",
            CallType::FirstResult => "FIRST_RESULT",
            CallType::Cumulative => "CUMULATIVE",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<CallType> {
        match s {
            "NORMAL" => Some(CallType::Normal),
            "FIRST_RESULT" => Some(CallType::FirstResult),
            "CUMULATIVE" => Some(CallType::Cumulative),
            _ => None,
        }
    }
}

/// The JSON type a parameter accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// A JSON string.
    String,
    /// A JSON number without a fraction.
    Integer,
    /// Any JSON number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A JSON array.
    Array,
    /// A JSON object.
    Object,
    /// Anything.
    Any,
}

impl ValueType {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::String => "string",
            ValueType::Integer => "integer",
            ValueType::Number => "number",
            ValueType::Boolean => "boolean",
            ValueType::Array => "array",
            ValueType::Object => "object",
            ValueType::Any => "any",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<ValueType> {
        Some(match s {
            "string" => ValueType::String,
            "integer" => ValueType::Integer,
            "number" => ValueType::Number,
            "boolean" => ValueType::Boolean,
            "array" => ValueType::Array,
            "object" => ValueType::Object,
            "any" => ValueType::Any,
            _ => return None,
        })
    }

    /// Whether a JSON value is of this type.
    pub fn accepts(self, value: &Value) -> bool {
        match self {
            ValueType::String => value.is_string(),
            ValueType::Integer => value.is_i64() || value.is_u64(),
            ValueType::Number => value.is_number(),
            ValueType::Boolean => value.is_boolean(),
            ValueType::Array => value.is_array(),
            ValueType::Object => value.is_object(),
            ValueType::Any => true,
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One parameter of a command.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, crate::ResultSchema)]
pub struct Param {
    /// Its name, used for named arguments.
    pub name: String,
    /// The accepted JSON type.
    #[serde(rename = "type")]
    pub ty: ValueType,
    /// Whether it may be left out (then the command sees `null`).
    pub optional: bool,
    /// What it is, for help (from a `- name: text` line of the command's doc comment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The only values a string parameter takes (`- scope (one|sub): …`), compared
    /// ignoring ASCII case; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
}

impl Param {
    /// A parameter without a description or a list of allowed values.
    pub fn new(name: impl Into<String>, ty: ValueType, optional: bool) -> Param {
        Param { name: name.into(), ty, optional, description: None, allowed: Vec::new() }
    }

    /// Its type for a signature: the allowed values when there are some.
    fn shown_type(&self) -> String {
        if self.allowed.is_empty() { self.ty.as_str().to_owned() } else { self.allowed.join("|") }
    }
}

/// A parameter described in a doc comment: a line `- name: what it is`, or, where the
/// language has no types (`.rhai` plugins), `- name (integer): …` or
/// `- name (string, optional): …`; `- scope (one|sub|psub): …` lists the only values a
/// string parameter takes. The name may be in backticks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamDoc {
    pub name: String,
    pub ty: Option<ValueType>,
    pub optional: bool,
    pub allowed: Vec<String>,
    pub description: String,
}

/// Reads one doc-comment line (without its `///`) as a [`ParamDoc`].
pub fn param_doc(line: &str) -> Option<ParamDoc> {
    let rest = line.trim().strip_prefix("- ").or_else(|| line.trim().strip_prefix("* "))?;
    let (head, description) = rest.split_once(':')?;
    let (name, kind) = match head.split_once('(') {
        Some((name, kind)) => (name, Some(kind.trim().strip_suffix(')')?)),
        None => (head, None),
    };
    let name = name.trim().trim_matches('`');
    let identifier = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !identifier {
        return None;
    }
    let (mut ty, mut optional, mut allowed) = (None, false, Vec::new());
    for word in kind.into_iter().flat_map(|k| k.split(',')).map(str::trim) {
        match (word, ValueType::parse(word)) {
            ("optional", _) => optional = true,
            (_, Some(parsed)) => ty = Some(parsed),
            (values, None) if values.contains('|') => {
                allowed = values.split('|').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect();
            }
            _ => return None,
        }
    }
    Some(ParamDoc { name: name.to_owned(), ty, optional, allowed, description: description.trim().to_owned() })
}

/// Everything a caller, the dispatcher and the shell need to know about a command.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, crate::ResultSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandSpec {
    /// The domain-wide command name, e.g. `getMethods`.
    pub name: String,
    /// The plugin's target queue, e.g. `core`.
    pub target: String,
    /// Parameters in positional order.
    pub params: Vec<Param>,
    /// One-line help text (mandatory).
    pub help: String,
    /// The command receives the caller's identity and refuses anonymous calls.
    pub needs_user: bool,
    /// The command must arrive on its own target queue (shared or private) and learns
    /// which one it was.
    pub needs_queue: bool,
    /// How several providers are used.
    pub call_type: CallType,
    /// JSON Schema of the result; empty: any JSON value.
    #[serde(default, skip_serializing_if = "crate::schema::Schema::is_any")]
    pub result: crate::schema::Schema,
    /// Running it twice does what running it once does (a read, a set to a value): a
    /// request the broker delivers again — its first agent stopped before answering —
    /// runs again only then; otherwise it is refused with `REQUEST_REDELIVERED`.
    #[serde(default)]
    pub idempotent: bool,
}

impl CommandSpec {
    /// `name(a: string, b?: integer)` for help and hints.
    pub fn signature(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|p| format!("{}{}: {}", p.name, if p.optional { "?" } else { "" }, p.shown_type()))
            .collect();
        format!("{}({})", self.name, params.join(", "))
    }

    /// Matches positional or named arguments against the parameters and checks their
    /// JSON types. The result has one value per parameter, `null` where an optional one
    /// was left out.
    pub fn bind_arguments(&self, params: Params) -> Result<Vec<Value>, RpcError> {
        let mut bound = match params {
            Params::None => Vec::new(),
            Params::Positional(values) => {
                if values.len() > self.params.len() {
                    return Err(invalid_params(
                        format!(
                            "{} takes at most {} argument(s), {} given",
                            self.name,
                            self.params.len(),
                            values.len()
                        ),
                        None,
                    ));
                }
                values
            }
            Params::Named(mut named) => {
                let bound = self.params.iter().map(|p| named.remove(&p.name).unwrap_or(Value::Null)).collect();
                if let Some(unknown) = named.keys().next() {
                    return Err(invalid_params(
                        format!("{} has no parameter '{unknown}'", self.name),
                        Some(unknown.clone()),
                    ));
                }
                bound
            }
        };
        bound.resize(self.params.len(), Value::Null);
        for (param, value) in self.params.iter().zip(&bound) {
            if value.is_null() {
                if !param.optional {
                    return Err(invalid_params(
                        format!("{}: missing argument '{}' ({})", self.name, param.name, param.ty),
                        Some(param.name.clone()),
                    ));
                }
            } else if !param.allowed.is_empty()
                && !value.as_str().is_some_and(|v| param.allowed.iter().any(|a| a.eq_ignore_ascii_case(v)))
            {
                return Err(invalid_params(
                    format!(
                        "{}: argument '{}' must be one of {}, got {value}",
                        self.name,
                        param.name,
                        param.allowed.join(", ")
                    ),
                    Some(param.name.clone()),
                ));
            } else if !param.ty.accepts(value) {
                return Err(invalid_params(
                    format!(
                        "{}: argument '{}' must be {}, got {}",
                        self.name,
                        param.name,
                        param.ty,
                        json_type_name(value)
                    ),
                    Some(param.name.clone()),
                ));
            }
        }
        Ok(bound)
    }
}

fn invalid_params(message: String, param: Option<String>) -> RpcError {
    let err = RpcError::new(ErrorCode::INVALID_PARAMS, message);
    match param {
        Some(p) => err.with_details(serde_json::json!({ "param": p })),
        None => err,
    }
}

/// The JSON type name of a value, for error messages.
pub fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// What a command learns about the call it serves.
#[derive(Clone, Debug)]
pub struct CallContext {
    /// The authenticated caller; `None` only for internal calls.
    pub user: Option<String>,
    /// The queue the request arrived on (for HTTP: this node's private core queue).
    pub queue: String,
    /// The id of the node executing the command.
    pub node: String,
    /// When the caller stops waiting.
    pub deadline: Instant,
}

/// A failure reported by a command.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CommandError {
    /// Symbolic code; plugins may define their own.
    pub code: ErrorCode,
    /// One line for the caller.
    pub message: String,
    /// Optional structured details.
    pub details: Option<Value>,
}

impl CommandError {
    /// A failure with a plugin-defined symbolic code.
    pub fn new(code: impl Into<ErrorCode>, message: impl Into<String>) -> CommandError {
        CommandError { code: code.into(), message: message.into(), details: None }
    }

    /// The generic `COMMAND_FAILED`.
    pub fn failed(message: impl Into<String>) -> CommandError {
        CommandError::new(ErrorCode::COMMAND_FAILED, message)
    }

    /// Adds structured details.
    pub fn with_details(mut self, details: Value) -> CommandError {
        self.details = Some(details);
        self
    }
}

impl From<&'static str> for ErrorCode {
    fn from(code: &'static str) -> ErrorCode {
        ErrorCode(std::borrow::Cow::Borrowed(code))
    }
}

impl From<CommandError> for RpcError {
    fn from(e: CommandError) -> RpcError {
        let err = RpcError::new(e.code, e.message);
        match e.details {
            Some(d) => err.with_details(d),
            None => err,
        }
    }
}

impl From<RpcError> for CommandError {
    fn from(e: RpcError) -> CommandError {
        let code = e.symbolic();
        let details = e.data.and_then(|d| d.details);
        CommandError { code, message: e.message, details }
    }
}

/// The result type of command handlers.
pub type CommandResult<T = Value> = Result<T, CommandError>;

/// A boxed future, as command handlers return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The executable half of a command: receives bound arguments in parameter order.
pub type Handler = Arc<dyn Fn(CallContext, Vec<Value>) -> BoxFuture<CommandResult> + Send + Sync>;

/// A command: its description and its handler.
#[derive(Clone)]
pub struct Command {
    /// The description.
    pub spec: CommandSpec,
    /// The code.
    pub handler: Handler,
}

/// The error of a call whose deadline passed, wherever it ran.
pub fn deadline_passed(name: &str) -> RpcError {
    RpcError::new(ErrorCode::TIMEOUT, format!("'{name}' did not finish within the deadline"))
}

/// Runs `handler` for command `name` here, within `context.deadline`: the one way an
/// agent or a joined machine executes a command once its arguments are bound. A command
/// that panics becomes `INTERNAL_ERROR` for its caller alone (caught in place, which
/// costs less than a task per call); one that overruns is dropped, which cancels it,
/// and becomes `TIMEOUT` — so does one that fails once the deadline has passed.
pub async fn run_local(
    name: &str,
    handler: &Handler,
    context: CallContext,
    args: Vec<Value>,
) -> Result<Value, RpcError> {
    use futures_util::FutureExt;
    let deadline = context.deadline;
    let run = std::panic::AssertUnwindSafe(handler(context, args)).catch_unwind();
    let late = || deadline_passed(name);
    match tokio::time::timeout_at(deadline, run).await {
        // A handler that stops itself at the deadline (a script terminated, a remote
        // call given up) failed because of it: the caller sees one code for every
        // passed deadline.
        Ok(Ok(Err(_))) if Instant::now() >= deadline => Err(late()),
        Ok(Ok(result)) => result.map_err(RpcError::from),
        Ok(Err(panic)) => {
            let reason = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::warn!(command = %name, %reason, "command panicked");
            Err(RpcError::new(ErrorCode::INTERNAL_ERROR, format!("'{name}' failed unexpectedly")))
        }
        Err(_) => Err(late()),
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Command").field("spec", &self.spec).finish_non_exhaustive()
    }
}

/// A plugin: a set of commands sharing one target queue. Implemented by the
/// `#[plugin]` attribute macro on an `impl` block.
pub trait Plugin: Send + Sync + 'static {
    /// The commands this plugin exports.
    fn commands(self: Arc<Self>) -> Vec<Command>;
}

/// Maps a Rust parameter type onto the JSON type announced for it. The macros use it
/// so the announced signature always matches what the handler decodes.
pub trait WireType {
    /// The announced JSON type.
    const TYPE: ValueType;
    /// Whether the parameter may be left out.
    const OPTIONAL: bool = false;
}

macro_rules! wire_types {
    ($ty:expr => $($t:ty),*) => { $( impl WireType for $t { const TYPE: ValueType = $ty; } )* };
}
wire_types!(ValueType::String => String);
wire_types!(ValueType::Integer => i8, i16, i32, i64, u8, u16, u32, u64, usize, isize);
wire_types!(ValueType::Number => f32, f64);
wire_types!(ValueType::Boolean => bool);
wire_types!(ValueType::Any => Value);
wire_types!(ValueType::Object => Map<String, Value>);

impl<T> WireType for Vec<T> {
    const TYPE: ValueType = ValueType::Array;
}
impl<T> WireType for HashMap<String, T> {
    const TYPE: ValueType = ValueType::Object;
}
impl<T> WireType for BTreeMap<String, T> {
    const TYPE: ValueType = ValueType::Object;
}
impl<T: WireType> WireType for Option<T> {
    const TYPE: ValueType = T::TYPE;
    const OPTIONAL: bool = true;
}

/// Decodes one bound argument into the handler's Rust type (used by the macros).
pub fn decode_argument<T: DeserializeOwned>(command: &str, name: &str, value: Value) -> CommandResult<T> {
    serde_json::from_value(value).map_err(|e| {
        CommandError::new(ErrorCode::INVALID_PARAMS, format!("{command}: argument '{name}': {e}"))
            .with_details(serde_json::json!({ "param": name }))
    })
}

/// Turns what a handler returned into the JSON result (used by the macros).
pub trait IntoCommandResult {
    /// Converts, serializing the success value.
    fn into_command_result(self) -> CommandResult;
}

impl<T: Serialize, E: Into<CommandError>> IntoCommandResult for Result<T, E> {
    fn into_command_result(self) -> CommandResult {
        let value = self.map_err(Into::into)?;
        serde_json::to_value(value)
            .map_err(|e| CommandError::new(ErrorCode::INTERNAL_ERROR, format!("result cannot be encoded: {e}")))
    }
}

/// `snake_case` → `lowerCamelCase`, the naming used on the wire.
pub fn wire_name(rust_name: &str) -> String {
    let mut out = String::with_capacity(rust_name.len());
    let mut upper = false;
    for c in rust_name.trim_start_matches('_').chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};
    use serde_json::json;

    #[test]
    fn parameters_documented_in_doc_comments() {
        let check = |line: &str, expected: Expect| {
            let shown = match param_doc(line) {
                Some(d) => {
                    let ty = d.ty.map(ValueType::as_str);
                    format!("{} {ty:?} optional={} allowed={:?} {:?}", d.name, d.optional, d.allowed, d.description)
                }
                None => "none".into(),
            };
            expected.assert_eq(&shown);
        };
        check("- ms: how long", expect![[r#"ms None optional=false allowed=[] "how long""#]]);
        check("- `ms` (integer): how long", expect![[r#"ms Some("integer") optional=false allowed=[] "how long""#]]);
        check(
            "* who (string, optional): whom to greet",
            expect![[r#"who Some("string") optional=true allowed=[] "whom to greet""#]],
        );
        check(
            "- scope (one|sub|psub): how deep",
            expect![[r#"scope None optional=false allowed=["one", "sub", "psub"] "how deep""#]],
        );
        check("- ms (int): how long", expect!["none"]);
        check("- two words: no", expect!["none"]);
        check("Add two numbers: a and b.", expect!["none"]);
    }

    fn spec() -> CommandSpec {
        CommandSpec {
            name: "setLimit".into(),
            target: "core".into(),
            params: vec![Param::new("name", ValueType::String, false), Param::new("limit", ValueType::Integer, true)],
            help: "Set a limit".into(),
            needs_user: false,
            needs_queue: false,
            call_type: CallType::Normal,
            result: Default::default(),
            idempotent: false,
        }
    }

    #[track_caller]
    fn check(params: Value, expect: Expect) {
        let params: Params = serde_json::from_value(params).unwrap_or_default();
        let shown = match spec().bind_arguments(params) {
            Ok(v) => serde_json::to_string(&v).unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        expect.assert_eq(&shown);
    }

    #[test]
    fn binding() {
        check(json!(["a", 3]), expect![[r#"["a",3]"#]]);
        check(json!(["a"]), expect![[r#"["a",null]"#]]);
        check(json!({"limit": 2, "name": "b"}), expect![[r#"["b",2]"#]]);
        check(json!([]), expect!["INVALID_PARAMS: setLimit: missing argument 'name' (string)"]);
        check(json!(["a", "3"]), expect!["INVALID_PARAMS: setLimit: argument 'limit' must be integer, got string"]);
        check(json!(["a", 1.5]), expect!["INVALID_PARAMS: setLimit: argument 'limit' must be integer, got number"]);
        check(json!(["a", 1, 2]), expect!["INVALID_PARAMS: setLimit takes at most 2 argument(s), 3 given"]);
        check(json!({"name": "a", "bogus": 1}), expect!["INVALID_PARAMS: setLimit has no parameter 'bogus'"]);
    }

    #[test]
    fn names_and_signatures() {
        assert_eq!(wire_name("get_methods"), "getMethods");
        assert_eq!(wire_name("ping"), "ping");
        assert_eq!(spec().signature(), "setLimit(name: string, limit?: integer)");
        assert_eq!(<Option<Vec<String>> as WireType>::TYPE, ValueType::Array);
        const { assert!(<Option<u8> as WireType>::OPTIONAL) };
    }
}
