//! Events as plain fields, both ways, following each type's XSD: building the XML of an
//! event from a JSON map (what `sendEvent` and the shell's `send_event(type, #{…})`
//! send), with child elements in the order the schema's sequence demands — a map has no
//! order of its own —, and reading an event into JSON typed by the schema (numbers and
//! booleans as such, repeated elements always as arrays).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::{XmlNode, envelope, escape, parse_xml};

/// An element as its schema declares it: its children in sequence order, how often it
/// occurs, and the XSD type of its text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ElementShape {
    /// Child element names in sequence order, each with its own shape.
    pub children: Vec<(String, ElementShape)>,
    /// `minOccurs="0"`.
    pub optional: bool,
    /// `maxOccurs` above 1 or `unbounded`: always a list in JSON.
    pub repeated: bool,
    /// The XSD type of its text without prefix (`string`, `double`, `boolean`, …; the
    /// base of an inline restriction); `None` for an element with children.
    pub kind: Option<String>,
}

/// Reads the shape of every event type from its XSD text. Types whose schema cannot be
/// read get no entry (their fields are then written in map order, read as text).
pub fn shapes_from_sources(sources: &BTreeMap<String, String>) -> HashMap<String, ElementShape> {
    sources
        .iter()
        .filter_map(|(event_type, text)| {
            let schema = parse_xml(text.as_bytes()).ok()?;
            let element =
                schema.children.iter().find(|c| c.name == "element" && c.attribute("name") == Some(event_type))?;
            Some((event_type.clone(), shape_of(element)))
        })
        .collect()
}

fn local(name: &str) -> &str {
    name.rsplit(':').next().unwrap_or(name)
}

fn shape_of(element: &XmlNode) -> ElementShape {
    let max = element.attribute("maxOccurs").unwrap_or("1");
    let mut shape = ElementShape {
        optional: element.attribute("minOccurs") == Some("0"),
        repeated: max == "unbounded" || max.parse::<u64>().is_ok_and(|n| n > 1),
        ..ElementShape::default()
    };
    let Some(complex) = element.child("complexType") else {
        let restriction = element.child("simpleType").and_then(|t| t.child("restriction"));
        let kind = element.attribute("type").or_else(|| restriction.and_then(|r| r.attribute("base")));
        shape.kind = Some(local(kind.unwrap_or("string")).to_owned());
        return shape;
    };
    for group in complex.children.iter().filter(|c| matches!(c.name.as_str(), "sequence" | "choice" | "all")) {
        for child in group.children.iter().filter(|c| c.name == "element") {
            if let Some(name) = child.attribute("name") {
                shape.children.push((name.to_owned(), shape_of(child)));
            }
        }
    }
    shape
}

/// The children of a shape as docs/protocol.md lists an event type's fields: `Name`,
/// then `?` (optional), `*` (any number) or `+` (one or more), then `: type` unless it
/// is text, then `{…}` with its own children.
pub fn describe(shape: &ElementShape) -> String {
    let parts: Vec<String> = shape
        .children
        .iter()
        .map(|(name, child)| {
            let marker = match (child.optional, child.repeated) {
                (true, true) => "*",
                (false, true) => "+",
                (true, false) => "?",
                (false, false) => "",
            };
            let kind = match child.kind.as_deref() {
                None | Some("string") => String::new(),
                Some(kind) => format!(": {kind}"),
            };
            let inner = if child.children.is_empty() { String::new() } else { format!(" {{{}}}", describe(child)) };
            format!("{name}{marker}{kind}{inner}")
        })
        .collect();
    parts.join(", ")
}

/// The text of a leaf element as JSON, typed by its XSD type: numbers as numbers,
/// booleans as booleans; anything that does not parse stays text.
fn typed_text(text: &str, kind: Option<&str>) -> Value {
    let number = |v: Option<serde_json::Number>| v.map_or_else(|| Value::String(text.to_owned()), Value::Number);
    match kind.unwrap_or("string") {
        "integer" | "int" | "long" | "short" | "byte" | "nonNegativeInteger" | "positiveInteger"
        | "negativeInteger" | "nonPositiveInteger" | "unsignedLong" | "unsignedInt" | "unsignedShort"
        | "unsignedByte" => {
            let trimmed = text.trim();
            number(trimmed.parse::<i64>().ok().map(Into::into).or_else(|| trimmed.parse::<u64>().ok().map(Into::into)))
        }
        "double" | "float" | "decimal" => {
            number(text.trim().parse::<f64>().ok().and_then(serde_json::Number::from_f64))
        }
        "boolean" => match text.trim() {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => Value::String(text.to_owned()),
        },
        _ => Value::String(text.to_owned()),
    }
}

/// An element's content as JSON following `shape`: children by name (repeated ones as
/// arrays even when one occurs), leaf text typed. Elements the shape does not know are
/// read as text and collected like repeated ones when they repeat.
pub fn typed_json(node: &XmlNode, shape: Option<&ElementShape>) -> Value {
    if node.children.is_empty() {
        return typed_text(&node.text, shape.and_then(|s| s.kind.as_deref()));
    }
    let mut map = Map::new();
    for child in &node.children {
        let child_shape = shape.and_then(|s| s.children.iter().find(|(n, _)| *n == child.name)).map(|(_, s)| s);
        let value = typed_json(child, child_shape);
        let repeated = child_shape.is_some_and(|s| s.repeated);
        match map.get_mut(&child.name) {
            Some(Value::Array(items)) if repeated || child_shape.is_none() => items.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
            None if repeated => {
                map.insert(child.name.clone(), Value::Array(vec![value]));
            }
            None => {
                map.insert(child.name.clone(), value);
            }
        }
    }
    Value::Object(map)
}

/// The XML document of an event of `event_type` holding `fields`. Arrays become
/// repeated elements, maps nested ones; fields the schema does not know come last (and
/// validation will name them).
pub fn event_xml(event_type: &str, fields: &Map<String, Value>, order: Option<&ElementShape>) -> String {
    let mut body = String::new();
    write_fields(&mut body, fields, order);
    envelope(event_type, &body)
}

fn write_fields(out: &mut String, fields: &Map<String, Value>, order: Option<&ElementShape>) {
    let empty = ElementShape::default();
    let order = order.unwrap_or(&empty);
    let mut names: Vec<(&String, Option<&ElementShape>)> = Vec::new();
    for (name, child) in &order.children {
        if fields.contains_key(name) {
            names.push((name, Some(child)));
        }
    }
    for name in fields.keys() {
        if !order.children.iter().any(|(n, _)| n == name) {
            names.push((name, None));
        }
    }
    for (name, child_order) in names {
        let Some(value) = fields.get(name) else { continue };
        let items: Vec<&Value> = match value {
            Value::Array(items) => items.iter().collect(),
            single => vec![single],
        };
        for item in items {
            write_element(out, name, item, child_order);
        }
    }
}

fn write_element(out: &mut String, name: &str, value: &Value, order: Option<&ElementShape>) {
    match value {
        Value::Null => {
            let _ = write!(out, "<{name}/>");
        }
        Value::Object(map) => {
            let _ = write!(out, "<{name}>");
            write_fields(out, map, order);
            let _ = write!(out, "</{name}>");
        }
        Value::String(s) => {
            let _ = write!(out, "<{name}>{}</{name}>", escape(s));
        }
        other => {
            let _ = write!(out, "<{name}>{other}</{name}>");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_follow_the_schema_order() {
        let sources =
            BTreeMap::from([("Call".to_owned(), include_str!("../../../schemas/events/Call.xsd").to_owned())]);
        let orders = shapes_from_sources(&sources);
        let fields = json!({"Callee": "100", "Caller": "200 & co", "Type": "missed", "Id": "c1", "Started": "2026-11-22T10:00:00Z", "Extra": [1, 2]});
        let xml = event_xml("Call", fields.as_object().unwrap_or(&Map::new()), orders.get("Call"));
        assert!(xml.ends_with("<Call><Type>missed</Type><Id>c1</Id><Caller>200 &amp; co</Caller><Callee>100</Callee><Started>2026-11-22T10:00:00Z</Started><Extra>1</Extra><Extra>2</Extra></Call></Event>"), "{xml}");
    }

    /// Read back typed by the schema: numbers, booleans, a repeated element as a list
    /// even when it occurs once; text that does not parse stays text.
    #[test]
    fn events_read_as_json_typed_by_their_schema() {
        let sources = BTreeMap::from([
            ("NodeStatus".to_owned(), include_str!("../../../schemas/events/NodeStatus.xsd").to_owned()),
            ("Inventory".to_owned(), include_str!("../../../schemas/events/Inventory.xsd").to_owned()),
        ]);
        let shapes = shapes_from_sources(&sources);
        let read = |event_type: &str, body: &str| {
            let xml = envelope(event_type, body);
            super::super::event_json_typed(event_type, xml.as_bytes(), shapes.get(event_type))
        };
        assert_eq!(
            read("NodeStatus", "<Id>n1</Id><Load>0.250</Load><Workers>3</Workers>"),
            json!({"@type": "NodeStatus", "Id": "n1", "Load": 0.25, "Workers": 3})
        );
        let inventory = read(
            "Inventory",
            "<Checksum>c</Checksum><ClientUUID>u</ClientUUID><Hostname>h</Hostname><Memory><TotalBytes>8</TotalBytes></Memory><Disk><Device>sda</Device><SizeBytes>x</SizeBytes></Disk>",
        );
        assert_eq!(inventory["Memory"], json!({"TotalBytes": 8}));
        assert_eq!(inventory["Disk"], json!([{"Device": "sda", "SizeBytes": "x"}]), "one disk is still a list");
        assert_eq!(
            describe(&shapes["NodeStatus"]),
            "Id, Load: double, Workers: nonNegativeInteger",
            "the form docs/protocol.md lists fields in"
        );
        // A type no schema describes: text, and repeated names collected.
        assert_eq!(read("Other", "<A>1</A><A>2</A>"), json!({"@type": "Other", "A": ["1", "2"]}));
    }
}
