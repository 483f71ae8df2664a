//! JSON-RPC 2.0 wire types shared by the AMQP and HTTP transports, and the symbolic
//! error codes that travel in `error.data.code`.
//!
//! Parsing is deliberately two-step (bytes → `serde_json::Value` → [`Request`]) so a
//! malformed request still gets an answer carrying its `id` whenever one can be read.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The only protocol version Clacks speaks.
pub const JSONRPC_VERSION: &str = "2.0";

/// A symbolic error code such as `COMMAND_NOT_DEFINED`. Plugins may define their own;
/// the well-known ones are associated constants.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub Cow<'static, str>);

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $numeric:expr ),* $(,)?) => {
        impl ErrorCode {
            $( $(#[$doc])* pub const $name: ErrorCode = ErrorCode(Cow::Borrowed(stringify!($name))); )*

            /// The JSON-RPC numeric code for this symbolic code; codes a plugin made up
            /// map to the generic application error -32000.
            pub fn numeric(&self) -> i64 {
                match self.0.as_ref() {
                    $( stringify!($name) => $numeric, )*
                    _ => -32000,
                }
            }

            /// Every well-known code with its numeric value, for documentation and tests.
            pub fn catalogue() -> &'static [(&'static str, i64)] {
                &[ $( (stringify!($name), $numeric), )* ]
            }
        }
    };
}

error_codes! {
    /// The body is not valid JSON.
    PARSE_ERROR = -32700,
    /// The JSON is not a valid JSON-RPC 2.0 request.
    INVALID_REQUEST = -32600,
    /// No live node provides the method.
    COMMAND_NOT_DEFINED = -32601,
    /// Wrong number, names or types of parameters.
    INVALID_PARAMS = -32602,
    /// A bug or an unexpected failure inside the agent.
    INTERNAL_ERROR = -32603,
    /// The command itself reported a failure.
    COMMAND_FAILED = -32000,
    /// The request carried no authenticated user (`user_id` missing).
    COMMAND_NO_USERNAME = -32001,
    /// The caller may not execute the command.
    PERMISSION_EXEC = -32002,
    /// The command must be called on its own (private) queue.
    COMMAND_INVALID_QUEUE = -32003,
    /// The deadline passed before a reply arrived.
    TIMEOUT = -32004,
    /// No agent consumes the queue the request was sent to.
    NO_PROVIDER = -32005,
    /// The connection to the broker was lost while the call was in flight.
    CONNECTION_LOST = -32006,
    /// The request body exceeds the configured limit.
    MESSAGE_TOO_LARGE = -32007,
    /// HTTP: the session is missing or expired; call `login` first.
    NOT_AUTHENTICATED = -32008,
    /// Method names starting with `_` are never callable remotely.
    METHOD_FORBIDDEN = -32009,
    /// The agent is stopping and takes no new work.
    AGENT_STOPPING = -32010,
    /// `login` was refused.
    LOGIN_FAILED = -32011,
    /// HTTP: too many requests in progress from this address or in this session (429).
    TOO_MANY_REQUESTS = -32012,
    /// HTTP: too many failed logins from this user or address; `Retry-After` says when (429).
    LOGIN_THROTTLED = -32013,
    /// No object with that DN or UUID (or the parent of a new one is missing).
    OBJECT_NOT_FOUND = -32100,
    /// The entry matches no object type, or more than one.
    OBJECT_TYPE_MISMATCH = -32101,
    /// An object with that DN exists already.
    OBJECT_EXISTS = -32102,
    /// The object has children; remove or move them, or ask for a recursive removal.
    OBJECT_HAS_CHILDREN = -32103,
    /// The parent's type does not allow this type below it (`<Container>`).
    OBJECT_NOT_SUB_FOR = -32104,
    /// Someone else changed the object since it was opened; `details.changed` names what.
    OBJECT_CONFLICT = -32105,
    /// The object type, attribute or method is not in the description.
    ATTRIBUTE_NOT_FOUND = -32110,
    /// The attribute is read-only.
    ATTRIBUTE_READ_ONLY = -32111,
    /// The attribute cannot change while another attribute has a blocking value.
    ATTRIBUTE_BLOCKED = -32112,
    /// Mandatory attributes are empty; `details.attributes` lists them.
    ATTRIBUTE_MANDATORY = -32113,
    /// The value has the wrong type or is not one of the allowed values.
    ATTRIBUTE_INVALID = -32114,
    /// A validator refused the value; `details.errors` says why.
    ATTRIBUTE_CHECK_FAILED = -32115,
    /// The extension cannot be added to or removed from this object now.
    EXTENSION_REFUSED = -32120,
    /// The object reference is unknown, closed, expired or someone else's.
    REFERENCE_NOT_FOUND = -32130,
    /// A backend refused the change; nothing was left half-written.
    BACKEND_FAILED = -32140,
    /// A backend (directory, database) cannot be reached.
    BACKEND_UNAVAILABLE = -32141,
    /// An ACL or role entry is malformed: scope, priority, letters, regex, a role circle.
    ACL_INVALID = -32150,
    /// No ACL or role entry with that id, or no role with that name.
    ACL_NOT_FOUND = -32151,
    /// The role is still used by an ACL or another role.
    ACL_ROLE_IN_USE = -32152,
    /// No joined client with that id.
    CLIENT_UNKNOWN = -32160,
    /// The client is known but not connected now.
    CLIENT_OFFLINE = -32161,
    /// A device with that machine id has joined already; `details.dn` names it.
    DEVICE_EXISTS = -32162,
    /// The broker's management API refused or could not be reached (joining needs it).
    BROKER_ADMIN_FAILED = -32163,
    /// A client's D-Bus service answered with an error; `details.name` is its D-Bus name.
    DBUS_ERROR = -32164,
    /// No group of clients with that name is stored.
    CLIENT_GROUP_UNKNOWN = -32165,
    /// The group of clients is used by another group's filter.
    CLIENT_GROUP_IN_USE = -32166,
    /// The event is not well-formed XML, or declares a document type.
    EVENT_MALFORMED = -32170,
    /// The schema refuses the event; `details.violations` says where and why.
    EVENT_INVALID = -32171,
    /// An event filter (XPath) does not parse.
    EVENT_FILTER_INVALID = -32172,
    /// The broker delivered the request again after its first agent stopped before
    /// answering; the command is not idempotent, may have run, and is not run again.
    REQUEST_REDELIVERED = -32014,
    /// A quorum queue gave the request to agents as often as it may and each stopped
    /// before answering (a poison request): it is dropped, not run again.
    REQUEST_UNDELIVERABLE = -32015,
    /// A file the command was given cannot be read.
    FILE_UNREADABLE = -32180,
}

impl ErrorCode {
    /// A code defined by a plugin at run time.
    pub fn custom(code: impl Into<String>) -> ErrorCode {
        ErrorCode(Cow::Owned(code.into()))
    }

    /// The symbolic name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `error.data` member: the symbolic code plus optional structured details.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorData {
    /// Symbolic code, e.g. `COMMAND_NOT_DEFINED`.
    pub code: ErrorCode,
    /// Anything that helps the caller: the offending parameter, per-node errors, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// A JSON-RPC error object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    /// Numeric JSON-RPC code.
    pub code: i64,
    /// One human-readable line.
    pub message: String,
    /// Symbolic code and details; always present on errors Clacks produces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<ErrorData>,
}

impl RpcError {
    /// An error with a symbolic code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RpcError {
        RpcError { code: code.numeric(), message: message.into(), data: Some(ErrorData { code, details: None }) }
    }

    /// Adds structured details.
    pub fn with_details(mut self, details: Value) -> RpcError {
        if let Some(data) = &mut self.data {
            data.details = Some(details);
        } else {
            self.data = Some(ErrorData { code: ErrorCode::custom("UNKNOWN"), details: Some(details) });
        }
        self
    }

    /// The symbolic code, falling back to one derived from the numeric code for errors
    /// produced by other JSON-RPC implementations.
    pub fn symbolic(&self) -> ErrorCode {
        if let Some(data) = &self.data {
            return data.code.clone();
        }
        ErrorCode::catalogue()
            .iter()
            .find(|(_, n)| *n == self.code)
            .map(|(name, _)| ErrorCode(Cow::Borrowed(name)))
            .unwrap_or_else(|| ErrorCode::custom("UNKNOWN"))
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.symbolic(), self.message)
    }
}

impl std::error::Error for RpcError {}

/// Request parameters: positional, named, or none.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Params {
    /// No `params` member.
    #[default]
    None,
    /// `params` is an array.
    Positional(Vec<Value>),
    /// `params` is an object.
    Named(Map<String, Value>),
}

impl Params {
    fn is_none(&self) -> bool {
        matches!(self, Params::None)
    }
}

/// A JSON-RPC request id: a string, a number or null. A request without an id is a
/// notification and gets no response.
pub type Id = Value;

/// A JSON-RPC 2.0 request.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Request {
    /// Always `"2.0"`.
    pub jsonrpc: Cow<'static, str>,
    /// The command name.
    pub method: String,
    /// Its parameters.
    #[serde(skip_serializing_if = "Params::is_none")]
    pub params: Params,
    /// `None` for a notification.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
}

impl Request {
    /// A request with an id.
    pub fn new(method: impl Into<String>, params: Params, id: impl Into<Id>) -> Request {
        Request { jsonrpc: Cow::Borrowed(JSONRPC_VERSION), method: method.into(), params, id: Some(id.into()) }
    }

    /// Serializes to bytes; a request made of JSON values cannot fail to serialize.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A JSON-RPC 2.0 response: exactly one of `result` and `error`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Always `"2.0"`.
    pub jsonrpc: Cow<'static, str>,
    /// The outcome.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The id of the request, or null when it could not be read.
    pub id: Id,
}

/// The `result` or `error` member of a response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// Success.
    #[serde(rename = "result")]
    Result(Value),
    /// Failure.
    #[serde(rename = "error")]
    Error(RpcError),
}

impl Response {
    /// A successful response.
    pub fn result(id: Id, value: Value) -> Response {
        Response { jsonrpc: Cow::Borrowed(JSONRPC_VERSION), outcome: Outcome::Result(value), id }
    }

    /// A failed response.
    pub fn error(id: Id, error: RpcError) -> Response {
        Response { jsonrpc: Cow::Borrowed(JSONRPC_VERSION), outcome: Outcome::Error(error), id }
    }

    /// The outcome as a `Result`.
    pub fn into_result(self) -> Result<Value, RpcError> {
        match self.outcome {
            Outcome::Result(v) => Ok(v),
            Outcome::Error(e) => Err(e),
        }
    }

    /// Serializes to bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// What a request body decodes to.
#[derive(Debug)]
pub enum Incoming {
    /// One request (or one invalid entry, already turned into its error response).
    Single(Result<Request, Response>),
    /// A batch; each entry decoded on its own.
    Batch(Vec<Result<Request, Response>>),
}

/// Decodes a request body. Every failure becomes the error response the caller must
/// receive; nothing here panics on any input.
pub fn decode_request_body(body: &[u8]) -> Incoming {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            let err = RpcError::new(ErrorCode::PARSE_ERROR, format!("request is not valid JSON: {e}"));
            return Incoming::Single(Err(Response::error(Value::Null, err)));
        }
    };
    match value {
        Value::Array(entries) if entries.is_empty() => Incoming::Single(Err(Response::error(
            Value::Null,
            RpcError::new(ErrorCode::INVALID_REQUEST, "empty batch"),
        ))),
        Value::Array(entries) => Incoming::Batch(entries.into_iter().map(decode_request_value).collect()),
        other => Incoming::Single(decode_request_value(other)),
    }
}

/// Decodes one request object.
// The error is the complete response to send back, built once here; boxing it would
// only move the allocation.
#[allow(clippy::result_large_err)]
pub fn decode_request_value(value: Value) -> Result<Request, Response> {
    let Value::Object(mut obj) = value else {
        return Err(invalid(Value::Null, "a request must be a JSON object"));
    };
    // Read the id first so every later error can echo it.
    let id = match obj.remove("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(id),
        Some(_) => return Err(invalid(Value::Null, "'id' must be a string, a number or null")),
    };
    let reply_id = id.clone().unwrap_or(Value::Null);
    match obj.remove("jsonrpc") {
        Some(Value::String(v)) if v == JSONRPC_VERSION => {}
        Some(_) => return Err(invalid(reply_id, "'jsonrpc' must be \"2.0\"")),
        None => return Err(invalid(reply_id, "missing 'jsonrpc': \"2.0\"")),
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) if !m.is_empty() => m,
        Some(_) => return Err(invalid(reply_id, "'method' must be a non-empty string")),
        None => return Err(invalid(reply_id, "missing 'method'")),
    };
    let params = match obj.remove("params") {
        None => Params::None,
        Some(Value::Array(a)) => Params::Positional(a),
        Some(Value::Object(o)) => Params::Named(o),
        Some(_) => return Err(invalid(reply_id, "'params' must be an array or an object")),
    };
    if let Some(extra) = obj.keys().next() {
        return Err(invalid(reply_id, &format!("unknown member '{extra}'")));
    }
    Ok(Request { jsonrpc: Cow::Borrowed(JSONRPC_VERSION), method, params, id })
}

fn invalid(id: Id, message: &str) -> Response {
    Response::error(id, RpcError::new(ErrorCode::INVALID_REQUEST, message))
}

/// Decodes a response body as a caller does.
pub fn decode_response(body: &[u8]) -> Result<Response, RpcError> {
    serde_json::from_slice(body)
        .map_err(|e| RpcError::new(ErrorCode::INTERNAL_ERROR, format!("malformed response from the agent: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    #[track_caller]
    fn check(body: &str, expect: Expect) {
        let shown = match decode_request_body(body.as_bytes()) {
            Incoming::Single(Ok(r)) => serde_json::to_string(&r).unwrap_or_default(),
            Incoming::Single(Err(e)) => String::from_utf8(e.to_bytes()).unwrap_or_default(),
            Incoming::Batch(b) => format!("batch of {}", b.len()),
        };
        expect.assert_eq(&shown);
    }

    #[test]
    fn request_decoding() {
        check(
            r#"{"jsonrpc":"2.0","method":"echo","params":["x"],"id":1}"#,
            expect![[r#"{"jsonrpc":"2.0","method":"echo","params":["x"],"id":1}"#]],
        );
        check(r#"{"jsonrpc":"2.0","method":"ping"}"#, expect![[r#"{"jsonrpc":"2.0","method":"ping"}"#]]);
        check(
            "{not json",
            expect![[
                r#"{"jsonrpc":"2.0","error":{"code":-32700,"message":"request is not valid JSON: key must be a string at line 1 column 2","data":{"code":"PARSE_ERROR"}},"id":null}"#
            ]],
        );
        check(
            r#"{"jsonrpc":"2.0","params":[],"id":"a"}"#,
            expect![[
                r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"missing 'method'","data":{"code":"INVALID_REQUEST"}},"id":"a"}"#
            ]],
        );
        check(
            r#"{"jsonrpc":"2.0","method":"echo","params":3,"id":2}"#,
            expect![[
                r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"'params' must be an array or an object","data":{"code":"INVALID_REQUEST"}},"id":2}"#
            ]],
        );
        check(
            r#"{"method":"echo","id":2}"#,
            expect![[
                r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"missing 'jsonrpc': \"2.0\"","data":{"code":"INVALID_REQUEST"}},"id":2}"#
            ]],
        );
        check(
            "[]",
            expect![[
                r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"empty batch","data":{"code":"INVALID_REQUEST"}},"id":null}"#
            ]],
        );
        check(r#"[{"jsonrpc":"2.0","method":"a","id":1}, 5]"#, expect!["batch of 2"]);
        check(
            "42",
            expect![[
                r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"a request must be a JSON object","data":{"code":"INVALID_REQUEST"}},"id":null}"#
            ]],
        );
    }

    #[test]
    fn responses_round_trip() {
        let ok = Response::result(Value::from(7), Value::from("pong"));
        let bytes = ok.to_bytes();
        assert_eq!(String::from_utf8_lossy(&bytes), r#"{"jsonrpc":"2.0","result":"pong","id":7}"#);
        assert_eq!(decode_response(&bytes), Ok(ok));
        let err = RpcError::new(ErrorCode::custom("MY_PLUGIN_FAILED"), "boom");
        assert_eq!(err.code, -32000);
        assert_eq!(err.to_string(), "MY_PLUGIN_FAILED: boom");
    }
}
