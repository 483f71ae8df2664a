//! Links between objects: relation attributes (a group's members kept in the users, a
//! user's groups read from the groups) and declared references (`<References>`) that
//! follow a rename or removal of what they point at.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{ObjectError, ObjectState, ObjectStore, Result, Storage, relation_spec};
use crate::description::Catalogue;
use crate::filters::{self, Props};
use crate::relation::RelationSpec;
use clacks_core::rpc::ErrorCode;

/// One value a commit adds to or removes from the relation attribute of other objects.
#[derive(Clone, Debug)]
pub(super) struct ForeignChange {
    /// The other objects: of this type, whose relation value attribute is `name`.
    pub of_type: String,
    pub name: String,
    /// Their attribute that holds our value, and our value.
    pub attr: String,
    pub value: String,
    pub add: bool,
}

impl ObjectStore {
    /// Which other objects a commit must update for its relation attributes. Refuses a
    /// value that names no object.
    pub(super) async fn relation_changes(
        &self,
        catalogue: &Catalogue,
        state: &ObjectState,
        props: &Props,
        changed: &BTreeSet<String>,
        types: &[String],
    ) -> Result<Vec<ForeignChange>> {
        let mut out = Vec::new();
        for (owner, attr) in catalogue.attributes_of(&state.base_type) {
            if !types.contains(&owner.name)
                || !changed.contains(&attr.name)
                || self.storage(owner, attr) != Storage::Relation
            {
                continue;
            }
            let spec = relation_spec(owner, attr)?;
            let Some(local) = props.get(&spec.local_match).and_then(|v| v.first()).map(filters::text) else { continue };
            let old: BTreeSet<String> = state.loaded.get(&attr.name).into_iter().flatten().map(filters::text).collect();
            let new: BTreeSet<String> = props.get(&attr.name).into_iter().flatten().map(filters::text).collect();
            for name in new.difference(&old) {
                if self.index.with_value(&spec.foreign_type, &spec.foreign_value, name).await?.is_empty() {
                    return Err(ObjectError::new(
                        ErrorCode::ATTRIBUTE_CHECK_FAILED,
                        format!(
                            "'{}': there is no {} with {} '{name}'",
                            attr.name, spec.foreign_type, spec.foreign_value
                        ),
                    )
                    .with_details(json!({"attribute": attr.name})));
                }
            }
            let added = new.difference(&old).map(|name| (name, true));
            let removed = old.difference(&new).map(|name| (name, false));
            for (name, add) in added.chain(removed) {
                out.push(ForeignChange {
                    of_type: spec.foreign_type.clone(),
                    name: name.clone(),
                    attr: spec.foreign_match.clone(),
                    value: local.clone(),
                    add,
                });
            }
        }
        Ok(out)
    }

    /// Adds or removes our value in the other objects a [`ForeignChange`] names.
    pub(super) async fn update_foreign(&self, change: &ForeignChange, user: Option<&str>) -> Result<()> {
        let ForeignChange { of_type, name, attr, value, add } = change;
        let (of_type, attr, value, add) = (of_type.as_str(), attr.as_str(), value.as_str(), *add);
        let catalogue = self.catalogue();
        let Some(t) = catalogue.get(of_type) else { return Ok(()) };
        let relation_attr = catalogue
            .types()
            .flat_map(|o| o.backend_params.get("Relation").into_iter().flatten().map(move |(k, v)| (o, k, v)))
            .find_map(|(_, _, spec)| {
                RelationSpec::parse(spec).ok().filter(|s| s.foreign_type == of_type).map(|s| s.foreign_value)
            })
            .unwrap_or_else(|| t.rdn_attributes().first().cloned().unwrap_or_default());
        for doc in self.index.with_value(of_type, &relation_attr, name).await? {
            let mut other = self.load(&doc.uuid).await?;
            let mut values = other.values.get(attr).cloned().unwrap_or_default();
            let present = values.iter().any(|v| filters::text(v) == value);
            match (add, present) {
                (true, false) => values.push(Value::String(value.to_owned())),
                (false, true) => values.retain(|v| filters::text(v) != value),
                _ => continue,
            }
            other.values.insert(attr.to_owned(), values);
            other.changed.insert(attr.to_owned());
            self.commit_boxed(&mut other, user).await?;
        }
        Ok(())
    }

    /// Replaces (or, with `new = None`, removes) `old` wherever an attribute declares a
    /// reference to `target_type.attr` (`dn`: the object's DN).
    pub(super) async fn rewrite_references(
        &self,
        catalogue: &Catalogue,
        attr: &str,
        target_type: &str,
        old: &str,
        new: Option<&str>,
        user: Option<&str>,
    ) -> Result<()> {
        for (of_type, ref_attr, _) in referring(catalogue, attr, target_type) {
            for doc in self.index.with_value(&of_type, &ref_attr, old).await? {
                let mut other = match self.load(&doc.uuid).await {
                    Ok(o) => o,
                    Err(e) if e.code == ErrorCode::OBJECT_NOT_FOUND => continue,
                    Err(e) => return Err(e),
                };
                let Some(values) = other.values.get(&ref_attr).cloned() else { continue };
                let updated: Vec<Value> = values
                    .iter()
                    .filter_map(|v| {
                        if filters::text(v).eq_ignore_ascii_case(old) {
                            new.map(|n| Value::String(n.to_owned()))
                        } else {
                            Some(v.clone())
                        }
                    })
                    .collect();
                if updated == values {
                    continue;
                }
                let mandatory_empty = updated.is_empty()
                    && catalogue.find_attribute(&other.base_type, &ref_attr).is_some_and(|(_, a)| a.mandatory);
                if mandatory_empty {
                    tracing::warn!("{} keeps its reference to {old}: {ref_attr} is mandatory", doc.dn);
                    continue;
                }
                other.values.insert(ref_attr.clone(), updated);
                other.changed.insert(ref_attr.clone());
                self.commit_boxed(&mut other, user).await?;
            }
        }
        Ok(())
    }

    /// Refuses to remove an object that is the last value of a mandatory reference
    /// elsewhere (the only member of a group of names): the error names those objects.
    pub(super) async fn check_removable(&self, catalogue: &Catalogue, state: &ObjectState) -> Result<()> {
        let dn = state.dn().to_owned();
        let mut held_by: Vec<(String, String)> = vec![("dn".to_owned(), dn.clone())];
        held_by.extend(state.loaded.iter().filter_map(|(name, v)| v.first().map(|v| (name.clone(), filters::text(v)))));
        let mut blocking = Vec::new();
        for (attr, value) in &held_by {
            for (of_type, ref_attr, mandatory) in referring(catalogue, attr, &state.base_type) {
                if !mandatory {
                    continue;
                }
                for doc in self.index.with_value(&of_type, &ref_attr, value).await? {
                    let values = doc.values.get(&ref_attr).map(Vec::as_slice).unwrap_or_default();
                    // DNs match in any spelling, other values case-insensitively.
                    let same = |v: &String| match attr.as_str() {
                        "dn" => clacks_core::dn::dn_key(v) == clacks_core::dn::dn_key(value),
                        _ => v.eq_ignore_ascii_case(value),
                    };
                    if values.iter().all(same) {
                        blocking.push(json!({"dn": doc.dn, "attribute": ref_attr}));
                    }
                }
            }
        }
        if blocking.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = blocking
            .iter()
            .map(|b| {
                format!("{} of {}", b["attribute"].as_str().unwrap_or_default(), b["dn"].as_str().unwrap_or_default())
            })
            .collect();
        Err(ObjectError::new(
            ErrorCode::ATTRIBUTE_MANDATORY,
            format!("{dn} is the only {}; give it another value or remove it first", names.join(", the only ")),
        )
        .with_details(json!({"referrers": blocking})))
    }
}

/// The attributes declaring a reference to `target_type.attr` (`dn`: an object's DN):
/// `(type, attribute, mandatory)`.
fn referring(catalogue: &Catalogue, attr: &str, target_type: &str) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    for t in catalogue.types() {
        for a in &t.attributes {
            if a.references.iter().any(|(rt, ra)| ra == attr && (rt == target_type || rt == "*")) {
                out.push((t.name.clone(), a.name.clone(), a.mandatory));
            }
        }
    }
    out
}
