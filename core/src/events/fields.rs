//! Events from plain fields: builds the XML of an event from a JSON map (what the shell's
//! `send_event(type, #{…})` sends), putting child elements in the order the type's XSD
//! sequence demands — a map has no order of its own.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::{XmlNode, envelope, escape, parse_xml};

/// The order of an element's children, from its schema.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ElementOrder {
    /// Child element names in sequence order, each with its own children's order.
    pub children: Vec<(String, ElementOrder)>,
}

/// Reads the child order of every event type from its XSD text. Types whose schema
/// cannot be read get no entry (their fields are then written in map order).
pub fn orders_from_sources(sources: &BTreeMap<String, String>) -> HashMap<String, ElementOrder> {
    sources
        .iter()
        .filter_map(|(event_type, text)| {
            let schema = parse_xml(text.as_bytes()).ok()?;
            let element =
                schema.children.iter().find(|c| c.name == "element" && c.attribute("name") == Some(event_type))?;
            Some((event_type.clone(), order_of(element)))
        })
        .collect()
}

fn order_of(element: &XmlNode) -> ElementOrder {
    let mut order = ElementOrder::default();
    let Some(complex) = element.child("complexType") else { return order };
    for group in complex.children.iter().filter(|c| matches!(c.name.as_str(), "sequence" | "choice" | "all")) {
        for child in group.children.iter().filter(|c| c.name == "element") {
            if let Some(name) = child.attribute("name") {
                order.children.push((name.to_owned(), order_of(child)));
            }
        }
    }
    order
}

/// The XML document of an event of `event_type` holding `fields`. Arrays become
/// repeated elements, maps nested ones; fields the schema does not know come last (and
/// validation will name them).
pub fn event_xml(event_type: &str, fields: &Map<String, Value>, order: Option<&ElementOrder>) -> String {
    let mut body = String::new();
    write_fields(&mut body, fields, order);
    envelope(event_type, &body)
}

fn write_fields(out: &mut String, fields: &Map<String, Value>, order: Option<&ElementOrder>) {
    let empty = ElementOrder::default();
    let order = order.unwrap_or(&empty);
    let mut names: Vec<(&String, Option<&ElementOrder>)> = Vec::new();
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

fn write_element(out: &mut String, name: &str, value: &Value, order: Option<&ElementOrder>) {
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
        let orders = orders_from_sources(&sources);
        let fields = json!({"Callee": "100", "Caller": "200 & co", "Type": "missed", "Id": "c1", "Started": "2026-11-22T10:00:00Z", "Extra": [1, 2]});
        let xml = event_xml("Call", fields.as_object().unwrap_or(&Map::new()), orders.get("Call"));
        assert!(xml.ends_with("<Call><Type>missed</Type><Id>c1</Id><Caller>200 &amp; co</Caller><Callee>100</Callee><Started>2026-11-22T10:00:00Z</Started><Extra>1</Extra><Extra>2</Extra></Call></Event>"), "{xml}");
    }
}
