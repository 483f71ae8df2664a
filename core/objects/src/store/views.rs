//! What clients see: an open object's view and diff, the type listing and each type's
//! schema.

use serde_json::{Value, json};

use super::{ObjectState, ObjectStore, Result};
use crate::description::AttributeDef;

impl ObjectStore {
    /// What a client sees of an open object.
    pub fn view(&self, reference: &str, state: &ObjectState) -> Value {
        let catalogue = self.catalogue();
        let types = state.effective_types();
        let mut attributes = serde_json::Map::new();
        for (owner, attr) in catalogue.attributes_of(&state.base_type) {
            if types.contains(&owner.name) {
                let values = state.values.get(&attr.name).cloned().unwrap_or_default();
                attributes.insert(attr.name.clone(), present(attr, &values));
            }
        }
        let extensions: serde_json::Map<String, Value> = catalogue
            .extensions_of(&state.base_type)
            .iter()
            .map(|e| (e.name.clone(), Value::Bool(types.contains(&e.name))))
            .collect();
        let mut methods = vec!["commit", "extend", "retract", "move", "remove", "reload", "diff", "close"]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        methods.extend(
            types.iter().filter_map(|t| catalogue.get(t)).flat_map(|t| t.methods.iter().map(|m| m.name.clone())),
        );
        json!({
            "ref": reference,
            "dn": state.dn,
            "parent": state.parent,
            "uuid": state.uuid,
            "type": state.base_type,
            "extensions": extensions,
            "attributes": attributes,
            "methods": methods,
            "changed": state.changed,
        })
    }

    /// Changes since open: attributes added, removed, changed; extensions added, removed.
    pub fn diff(&self, state: &ObjectState) -> Value {
        let (mut added, mut removed, mut changed) = (serde_json::Map::new(), Vec::new(), serde_json::Map::new());
        for name in &state.changed {
            let before = state.loaded.get(name).cloned().unwrap_or_default();
            let after = state.values.get(name).cloned().unwrap_or_default();
            match (before.is_empty(), after.is_empty()) {
                (true, false) => {
                    added.insert(name.clone(), Value::Array(after));
                }
                (false, true) => removed.push(name.clone()),
                (false, false) if before != after => {
                    changed.insert(name.clone(), json!({"old": before, "new": after}));
                }
                _ => {}
            }
        }
        json!({
            "attributes": {"added": added, "removed": removed, "changed": changed},
            "extensions": {"added": state.extend, "removed": state.retract},
        })
    }

    /// Type listing for `getObjectTypes`.
    pub fn types_info(&self) -> Value {
        let catalogue = self.catalogue();
        let mut out = serde_json::Map::new();
        for t in catalogue.types() {
            out.insert(
                t.name.clone(),
                json!({
                    "displayName": t.display_name,
                    "description": t.description,
                    "base": t.base_object,
                    "backend": t.backend,
                    "extends": t.extends,
                    "requires": t.requires,
                    "extendedBy": catalogue.extensions_of(&t.name).iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
                    "container": t.container,
                    "fixedRdn": t.fixed_rdn,
                    "methods": t.methods.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
                }),
            );
        }
        Value::Object(out)
    }

    /// The attributes of a type (and its extensions) in detail, for `getObjectSchema`.
    pub fn schema_of(&self, type_name: &str) -> Result<Value> {
        let catalogue = self.catalogue();
        let t = ObjectStore::type_of(&catalogue, type_name)?;
        let attributes: Vec<Value> = catalogue
            .attributes_of(&t.name)
            .into_iter()
            .map(|(owner, a)| {
                json!({
                    "name": a.name, "owner": owner.name, "description": a.description,
                    "type": a.value_type.to_string(), "backend": a.backend.clone().unwrap_or_else(|| owner.backend.clone()),
                    "multiValue": a.multi_value, "mandatory": a.mandatory, "readOnly": a.read_only,
                    "unique": a.unique, "caseSensitive": a.case_sensitive, "default": a.default,
                    "values": a.values.fixed.iter().map(|(k, l)| json!({"key": k, "label": l})).collect::<Vec<_>>(),
                    "dependsOn": a.depends_on, "blockedBy": a.blocked_by.iter().map(|(n, v)| json!({"attribute": n, "value": v})).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(json!({"type": t.name, "description": t.description, "attributes": attributes,
                  "methods": t.methods, "extensions": catalogue.extensions_of(&t.name).iter().map(|e| e.name.clone()).collect::<Vec<_>>()}))
    }
}

/// A single value as a scalar (or null), a multi-value as a list.
fn present(attr: &AttributeDef, values: &[Value]) -> Value {
    if attr.multi_value { Value::Array(values.to_vec()) } else { values.first().cloned().unwrap_or(Value::Null) }
}
