//! XML events: the `<Event>` envelope, the node presence events every agent exchanges,
//! and (in [`schema`]) their validation against the XSD files in `schemas/events/`.
//!
//! An event is `<Event xmlns="http://clacks.org/ns/events">` with exactly one child
//! element named after its type; it travels on the topic exchange `D.event` with the
//! type as routing key.

pub mod fields;
pub mod filter;
pub mod publish;
pub mod schema;

use std::fmt::Write as _;

use quick_xml::Reader;
use quick_xml::events::Event as XmlEvent;

use crate::command::{CallType, CommandSpec, Param, ValueType};

pub use filter::Filter;
pub use publish::EventPublisher;
pub use schema::{EventValidator, Violation};

/// The namespace of the event envelope and of every shipped event type.
pub const EVENT_NAMESPACE: &str = "http://clacks.org/ns/events";

/// The largest event accepted anywhere (publish, receive, validate), in bytes.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// How deeply elements may nest in a document read by [`parse_xml`]. Events and object
/// descriptions need a handful of levels; the tree, its JSON form and their drops are
/// recursive, so a hostile document 20,000 deep must stop here.
pub const MAX_XML_DEPTH: usize = 64;

/// Why an event could not be read, built or published.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    /// Not well-formed XML, or not shaped like the envelope.
    #[error("malformed event: {0}")]
    Malformed(String),
    /// Well-formed but rejected by the schema; one entry per violation.
    #[error("invalid event: {}", violations_text(.0))]
    Invalid(Vec<Violation>),
    /// Larger than [`MAX_EVENT_BYTES`].
    #[error("event of {0} bytes exceeds the limit of {MAX_EVENT_BYTES} bytes")]
    TooLarge(usize),
    /// The schemas could not be loaded.
    #[error("event schemas: {0}")]
    Schema(String),
    /// The validator thread is gone.
    #[error("the event validator has stopped")]
    ValidatorStopped,
    /// Valid, but the bus did not take it.
    #[error("event not published: {0}")]
    Publish(String),
}

impl EventError {
    /// The symbolic code a caller sees.
    pub fn code(&self) -> crate::rpc::ErrorCode {
        use crate::rpc::ErrorCode;
        match self {
            EventError::Malformed(_) => ErrorCode::EVENT_MALFORMED,
            EventError::Invalid(_) => ErrorCode::EVENT_INVALID,
            EventError::TooLarge(_) => ErrorCode::MESSAGE_TOO_LARGE,
            EventError::Publish(_) => ErrorCode::CONNECTION_LOST,
            EventError::Schema(_) | EventError::ValidatorStopped => ErrorCode::INTERNAL_ERROR,
        }
    }

    /// As a JSON-RPC error; violations go into `details.violations`.
    pub fn to_rpc_error(&self) -> crate::rpc::RpcError {
        let error = crate::rpc::RpcError::new(self.code(), self.to_string());
        match self {
            EventError::Invalid(violations) => error.with_details(serde_json::json!({ "violations": violations })),
            _ => error,
        }
    }
}

fn violations_text(v: &[Violation]) -> String {
    v.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// A parsed XML element: local name, attributes, text and child elements.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct XmlNode {
    /// Local name, without prefix.
    pub name: String,
    /// Attributes by local name, in document order.
    pub attributes: Vec<(String, String)>,
    /// Concatenated text content (entities resolved), trimmed.
    pub text: String,
    /// Child elements in document order.
    pub children: Vec<XmlNode>,
    /// 1-based line of the start tag, for diagnostics that point into the document.
    pub line: u32,
}

impl XmlNode {
    /// The first child element with this name.
    pub fn child(&self, name: &str) -> Option<&XmlNode> {
        self.children.iter().find(|c| c.name == name)
    }

    /// All child elements with this name.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a XmlNode> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// An attribute's value.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The text of a required child element.
    pub fn child_text(&self, name: &str) -> Result<&str, EventError> {
        self.child(name)
            .map(|c| c.text.as_str())
            .ok_or_else(|| EventError::Malformed(format!("<{}> lacks <{name}>", self.name)))
    }
}

/// Parses a document into its root element.
pub fn parse_xml(xml: &[u8]) -> Result<XmlNode, EventError> {
    if xml.len() > MAX_EVENT_BYTES {
        return Err(EventError::TooLarge(xml.len()));
    }
    let text = std::str::from_utf8(xml).map_err(|e| EventError::Malformed(format!("not UTF-8: {e}")))?;
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<XmlNode> = Vec::new();
    let malformed = |e: quick_xml::Error| EventError::Malformed(e.to_string());
    // Lines are counted incrementally: each event's start is where the previous one ended.
    let (mut line, mut counted_to) = (1u32, 0usize);
    loop {
        let at = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX).min(text.len());
        line += text.as_bytes()[counted_to.min(at)..at].iter().filter(|b| **b == b'\n').count() as u32;
        counted_to = at;
        match reader.read_event().map_err(malformed)? {
            XmlEvent::Start(start) => {
                if stack.len() >= MAX_XML_DEPTH {
                    return Err(EventError::Malformed(format!(
                        "line {line}: elements nest deeper than {MAX_XML_DEPTH} levels"
                    )));
                }
                let name = start.local_name().as_ref().to_owned();
                stack.push(XmlNode { name, attributes: attributes(&start)?, line, ..XmlNode::default() });
            }
            XmlEvent::Empty(start) => {
                let name = start.local_name().as_ref().to_owned();
                let node = XmlNode { name, attributes: attributes(&start)?, line, ..XmlNode::default() };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => return Ok(node),
                }
            }
            XmlEvent::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.xml10_content());
                }
            }
            XmlEvent::CData(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.xml10_content());
                }
            }
            XmlEvent::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().map_err(malformed)? {
                    Some(c) => c,
                    None => match r.as_ref() {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "apos" => '\'',
                        "quot" => '"',
                        other => {
                            return Err(EventError::Malformed(format!("undeclared entity &{other};")));
                        }
                    },
                };
                if let Some(top) = stack.last_mut() {
                    top.text.push(resolved);
                }
            }
            XmlEvent::DocType(_) => {
                return Err(EventError::Malformed("document type declarations are not allowed".into()));
            }
            XmlEvent::End(_) => {
                let Some(mut node) = stack.pop() else {
                    return Err(EventError::Malformed("unbalanced end tag".into()));
                };
                node.text = node.text.trim().to_owned();
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => return Ok(node),
                }
            }
            XmlEvent::Eof => return Err(EventError::Malformed("document ended before its root element closed".into())),
            _ => {}
        }
    }
}

fn attributes(start: &quick_xml::events::BytesStart<'_>) -> Result<Vec<(String, String)>, EventError> {
    start
        .attributes()
        .map(|attr| {
            let attr = attr.map_err(|e| EventError::Malformed(e.to_string()))?;
            let value = attr
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| EventError::Malformed(e.to_string()))?;
            Ok((attr.key.local_name().as_ref().to_owned(), value.into_owned()))
        })
        .collect()
}

/// Splits an envelope into its type and body element.
pub fn open_envelope(xml: &[u8]) -> Result<XmlNode, EventError> {
    let root = parse_xml(xml)?;
    if root.name != "Event" {
        return Err(EventError::Malformed(format!("root element is <{}>, expected <Event>", root.name)));
    }
    let mut children = root.children.into_iter();
    match (children.next(), children.next()) {
        (Some(body), None) => Ok(body),
        _ => Err(EventError::Malformed("<Event> must have exactly one child element".into())),
    }
}

/// The key under which an event's JSON form carries its type: `@` cannot begin (or
/// appear in) an XML element name, so no field of any event type can take it.
pub const TYPE_KEY: &str = "@type";

/// The shape of every event type a validator in this process has compiled: what
/// [`event_json`] types values by. Validators add theirs at start and on reload.
static SHAPES: std::sync::LazyLock<std::sync::RwLock<std::collections::HashMap<String, fields::ElementShape>>> =
    std::sync::LazyLock::new(Default::default);

/// Remembers the shapes a validator compiled (a type reloaded with another schema takes
/// the new shape).
pub(crate) fn remember_shapes(shapes: &std::collections::HashMap<String, fields::ElementShape>) {
    let mut known = SHAPES.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    known.extend(shapes.iter().map(|(t, s)| (t.clone(), s.clone())));
}

/// An event as one JSON object, `{"@type": T, …fields}` — how the shell, `events tail`
/// and `GET /events` show events: values typed by the type's schema (numbers, booleans,
/// repeated elements always as arrays; text for a type no validator here knows). A body
/// that cannot be read keeps its type and says why under `error`.
pub fn event_json(event_type: &str, body: &[u8]) -> serde_json::Value {
    let known = SHAPES.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    event_json_typed(event_type, body, known.get(event_type))
}

/// [`event_json`] with the shape given.
pub fn event_json_typed(event_type: &str, body: &[u8], shape: Option<&fields::ElementShape>) -> serde_json::Value {
    use serde_json::Value;
    let mut fields = match open_envelope(body) {
        Ok(node) => match fields::typed_json(&node, shape) {
            Value::Object(map) => map,
            Value::String(text) if text.is_empty() => serde_json::Map::new(),
            other => serde_json::Map::from_iter([("value".to_owned(), other)]),
        },
        Err(e) => serde_json::Map::from_iter([("error".to_owned(), Value::String(e.to_string()))]),
    };
    fields.insert(TYPE_KEY.into(), Value::String(event_type.to_owned()));
    Value::Object(fields)
}

/// Writes `<Event xmlns="…"><Type>…</Type></Event>` around a body.
pub fn envelope(event_type: &str, body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Event xmlns=\"{EVENT_NAMESPACE}\"><{event_type}>{body}</{event_type}></Event>"
    )
}

/// Escapes text for element content.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(text)
}

fn element(out: &mut String, name: &str, text: &str) {
    let _ = write!(out, "<{name}>{}</{name}>", escape(text));
}

/// The node presence events agents exchange on `D.event`.
#[derive(Clone, Debug, PartialEq)]
pub enum PresenceEvent {
    /// A node started; everyone answers with capabilities.
    Announce {
        /// Node id.
        id: String,
    },
    /// The commands a node provides.
    Capabilities {
        /// Node id.
        id: String,
        /// Its commands.
        methods: Vec<CommandSpec>,
    },
    /// Heartbeat.
    Status {
        /// Node id.
        id: String,
        /// Load figure used for choosing a provider.
        load: f64,
        /// Calls in flight.
        workers: u64,
    },
    /// A node stops.
    Leave {
        /// Node id.
        id: String,
    },
}

impl PresenceEvent {
    /// Every presence event type, for subscriptions.
    pub const TYPES: [&'static str; 4] = ["NodeAnnounce", "NodeCapabilities", "NodeStatus", "NodeLeave"];

    /// The event type (= routing key).
    pub fn event_type(&self) -> &'static str {
        match self {
            PresenceEvent::Announce { .. } => "NodeAnnounce",
            PresenceEvent::Capabilities { .. } => "NodeCapabilities",
            PresenceEvent::Status { .. } => "NodeStatus",
            PresenceEvent::Leave { .. } => "NodeLeave",
        }
    }

    /// The node the event is about.
    pub fn node(&self) -> &str {
        match self {
            PresenceEvent::Announce { id }
            | PresenceEvent::Capabilities { id, .. }
            | PresenceEvent::Status { id, .. }
            | PresenceEvent::Leave { id } => id,
        }
    }

    /// The XML document.
    pub fn to_xml(&self) -> String {
        let mut body = String::new();
        element(&mut body, "Id", self.node());
        match self {
            PresenceEvent::Announce { .. } | PresenceEvent::Leave { .. } => {}
            PresenceEvent::Status { load, workers, .. } => {
                let load = if load.is_finite() && *load >= 0.0 { *load } else { 0.0 };
                element(&mut body, "Load", &format!("{load:.3}"));
                element(&mut body, "Workers", &workers.to_string());
            }
            PresenceEvent::Capabilities { methods, .. } => {
                for m in methods {
                    body.push_str("<NodeMethod>");
                    element(&mut body, "Name", &m.name);
                    element(&mut body, "Target", &m.target);
                    element(&mut body, "CallType", m.call_type.as_str());
                    element(&mut body, "NeedsUser", bool_text(m.needs_user));
                    element(&mut body, "NeedsQueue", bool_text(m.needs_queue));
                    element(&mut body, "Documentation", &m.help);
                    for p in &m.params {
                        body.push_str("<Param>");
                        element(&mut body, "Name", &p.name);
                        element(&mut body, "Type", p.ty.as_str());
                        element(&mut body, "Optional", bool_text(p.optional));
                        if let Some(description) = &p.description {
                            element(&mut body, "Description", description);
                        }
                        for value in &p.allowed {
                            element(&mut body, "Allowed", value);
                        }
                        body.push_str("</Param>");
                    }
                    if !m.result.is_any() {
                        element(&mut body, "Result", &m.result.to_value().to_string());
                    }
                    if m.idempotent {
                        element(&mut body, "Idempotent", "true");
                    }
                    body.push_str("</NodeMethod>");
                }
            }
        }
        envelope(self.event_type(), &body)
    }

    /// Reads a presence event; other event types yield `Ok(None)`.
    pub fn from_xml(xml: &[u8]) -> Result<Option<PresenceEvent>, EventError> {
        let body = open_envelope(xml)?;
        let id = || body.child_text("Id").map(str::to_owned);
        Ok(Some(match body.name.as_str() {
            "NodeAnnounce" => PresenceEvent::Announce { id: id()? },
            "NodeLeave" => PresenceEvent::Leave { id: id()? },
            "NodeStatus" => PresenceEvent::Status {
                id: id()?,
                load: parse_field(&body, "Load")?,
                workers: parse_field(&body, "Workers")?,
            },
            "NodeCapabilities" => {
                let methods = body.children_named("NodeMethod").map(read_method).collect::<Result<_, _>>()?;
                PresenceEvent::Capabilities { id: id()?, methods }
            }
            _ => return Ok(None),
        }))
    }
}

fn read_method(node: &XmlNode) -> Result<CommandSpec, EventError> {
    let call_type = node.child_text("CallType")?;
    let params = node
        .children_named("Param")
        .map(|p| {
            let ty = p.child_text("Type")?;
            Ok(Param {
                name: p.child_text("Name")?.to_owned(),
                ty: ValueType::parse(ty).ok_or_else(|| EventError::Malformed(format!("unknown type '{ty}'")))?,
                optional: parse_bool(p.child_text("Optional")?),
                description: p.child("Description").map(|d| d.text.clone()),
                allowed: p.children_named("Allowed").map(|a| a.text.clone()).collect(),
            })
        })
        .collect::<Result<_, EventError>>()?;
    Ok(CommandSpec {
        name: node.child_text("Name")?.to_owned(),
        target: node.child_text("Target")?.to_owned(),
        params,
        help: node.child_text("Documentation")?.to_owned(),
        needs_user: parse_bool(node.child_text("NeedsUser")?),
        needs_queue: parse_bool(node.child_text("NeedsQueue")?),
        call_type: CallType::parse(call_type)
            .ok_or_else(|| EventError::Malformed(format!("unknown call type '{call_type}'")))?,
        // A schema that does not parse says nothing: the result is any JSON.
        result: node
            .child("Result")
            .and_then(|r| serde_json::from_str(&r.text).ok())
            .map(|schema| crate::schema::Schema::new(&schema))
            .unwrap_or_default(),
        idempotent: node.child("Idempotent").is_some_and(|i| parse_bool(&i.text)),
    })
}

fn parse_field<T: std::str::FromStr>(node: &XmlNode, name: &str) -> Result<T, EventError> {
    let text = node.child_text(name)?;
    text.parse().map_err(|_| EventError::Malformed(format!("<{name}> holds '{text}'")))
}

fn bool_text(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

fn parse_bool(s: &str) -> bool {
    s == "true" || s == "1"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_round_trip() {
        let spec = CommandSpec {
            name: "echo".into(),
            target: "core".into(),
            params: vec![Param::new("value", ValueType::Any, false)],
            help: "Returns <value> & more".into(),
            needs_user: false,
            needs_queue: true,
            call_type: CallType::Cumulative,
            result: crate::schema::Schema::new(&serde_json::json!({"type": "array", "items": {"type": "string"}})),
            idempotent: false,
        };
        for event in [
            PresenceEvent::Announce { id: "n1".into() },
            PresenceEvent::Leave { id: "n1".into() },
            PresenceEvent::Status { id: "n1".into(), load: 0.25, workers: 3 },
            PresenceEvent::Capabilities { id: "n1".into(), methods: vec![spec] },
        ] {
            let xml = event.to_xml();
            assert_eq!(PresenceEvent::from_xml(xml.as_bytes()), Ok(Some(event)), "{xml}");
        }
    }

    #[test]
    fn malformed_inputs_are_errors() {
        for bad in [
            "",
            "<Event>",
            "<Other/>",
            "<Event><A/><B/></Event>",
            "<!DOCTYPE x [<!ENTITY a 'b'>]><Event><NodeLeave><Id>&a;</Id></NodeLeave></Event>",
            "<Event><NodeStatus><Id>x</Id><Load>high</Load><Workers>1</Workers></NodeStatus></Event>",
        ] {
            assert!(PresenceEvent::from_xml(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn deep_documents_are_refused_without_recursion() {
        let deep = format!("<Event><Call>{}{}</Call></Event>", "<a>".repeat(20_000), "</a>".repeat(20_000));
        let error = open_envelope(deep.as_bytes()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("nest deeper than 64 levels"), "{error}");
        let shown = event_json("Call", deep.as_bytes());
        assert!(shown["error"].as_str().is_some_and(|e| e.contains("deeper")), "{shown}");
    }
}
