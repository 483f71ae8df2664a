//! Editing an open object: every check a value can pass on its own (type, allowed
//! values, read-only, blocked-by, validators), extensions added and retracted, and
//! description methods and hooks run through the agent.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::load::apply_defaults;
use super::{ObjectError, ObjectState, ObjectStore, Result, StoreEnv, to_backend};
use crate::description::{AttributeDef, Catalogue, FilterStep, HookType, ObjectType};
use crate::filters::{self, Props, Scope, clip};
use crate::values::ValueType;
use clacks_core::rpc::ErrorCode;

impl ObjectStore {
    /// Sets an attribute after every check that can be made on its own.
    pub async fn set(&self, state: &mut ObjectState, name: &str, value: &Value) -> Result<()> {
        let catalogue = self.catalogue();
        let (owner, attr) = attribute_of(&catalogue, state, name)?;
        if !state.effective_types().contains(&owner.name) {
            return Err(ObjectError::new(
                ErrorCode::ATTRIBUTE_NOT_FOUND,
                format!(
                    "'{name}' belongs to the extension {}, which is not active; extend the object first",
                    owner.name
                ),
            ));
        }
        if attr.read_only {
            return Err(ObjectError::new(ErrorCode::ATTRIBUTE_READ_ONLY, format!("'{name}' is read-only")));
        }
        if let Some((other, blocking)) = blocked(attr, &state.values) {
            return Err(ObjectError::new(
                ErrorCode::ATTRIBUTE_BLOCKED,
                format!("'{name}' cannot be changed while '{other}' is {blocking}"),
            ));
        }
        let mut list: Vec<Value> = match value {
            Value::Null => Vec::new(),
            Value::Array(items) if attr.multi_value => items.clone(),
            Value::Array(items) if items.len() <= 1 => items.clone(),
            Value::Array(_) => {
                return Err(ObjectError::new(
                    ErrorCode::ATTRIBUTE_INVALID,
                    format!("'{name}' takes a single value, not a list"),
                ));
            }
            single => vec![single.clone()],
        };
        // An empty text clears, as an empty list does: no backend stores "".
        list.retain(|v| v.as_str() != Some(""));
        if list.is_empty() && attr.mandatory {
            return Err(ObjectError::new(
                ErrorCode::ATTRIBUTE_MANDATORY,
                format!("'{name}' is mandatory and cannot be emptied"),
            ));
        }
        let mut accepted = Vec::with_capacity(list.len());
        for v in &list {
            let v = attr.value_type.accept(v).map_err(|e| {
                ObjectError::new(ErrorCode::ATTRIBUTE_INVALID, format!("'{name}': {e}"))
                    .with_details(json!({"attribute": name}))
            })?;
            if !attr.values.fixed.is_empty() && !attr.values.fixed.iter().any(|(key, _)| *key == filters::text(&v)) {
                let allowed: Vec<&str> = attr.values.fixed.iter().map(|(k, _)| k.as_str()).collect();
                return Err(ObjectError::new(
                    ErrorCode::ATTRIBUTE_INVALID,
                    format!("'{name}': '{}' is not one of {}", clip(&filters::text(&v)), allowed.join(", ")),
                )
                .with_details(json!({"attribute": name, "allowed": allowed})));
            }
            accepted.push(v);
        }
        if let Some(command) = &attr.values.populate {
            let allowed = self.populated_values(command).await?;
            if let Some(v) = accepted.iter().find(|v| !allowed.contains(&filters::text(v))) {
                return Err(ObjectError::new(
                    ErrorCode::ATTRIBUTE_INVALID,
                    format!(
                        "'{name}': '{}' is not one of {} (from {command})",
                        clip(&filters::text(v)),
                        allowed.join(", ")
                    ),
                )
                .with_details(json!({"attribute": name, "allowed": allowed})));
            }
        }
        check_text(attr, &accepted)?;
        self.check_entry_syntax(owner, attr, &to_backend(attr, &accepted)?)?;
        self.validate(owner, attr, &accepted, &state.values, state.uuid.as_deref()).await?;
        state.values.insert(name.to_owned(), accepted);
        state.changed.insert(name.to_owned());
        Ok(())
    }

    /// Sets an attribute the system maintains (read-only to users, like the day of the
    /// last password change); its type is still checked.
    pub fn set_generated(&self, state: &mut ObjectState, name: &str, value: &Value) -> Result<()> {
        let catalogue = self.catalogue();
        let (_, attr) = attribute_of(&catalogue, state, name)?;
        let accepted = attr
            .value_type
            .accept(value)
            .map_err(|e| ObjectError::new(ErrorCode::ATTRIBUTE_INVALID, format!("'{name}': {e}")))?;
        check_text(attr, std::slice::from_ref(&accepted))?;
        state.values.insert(name.to_owned(), vec![accepted]);
        state.changed.insert(name.to_owned());
        Ok(())
    }

    /// The scheme new passwords are hashed with: the `HashPassword` filter's of the
    /// User description's `userPassword` (Argon2 as shipped).
    pub fn password_scheme(&self) -> String {
        let catalogue = self.catalogue();
        let steps = catalogue.find_attribute("User", "userPassword").map(|(_, a)| a.out_filter.concat());
        steps
            .unwrap_or_default()
            .iter()
            .find_map(|step| match step {
                FilterStep::Filter(call) if call.name == "HashPassword" => call.params.first().cloned(),
                _ => None,
            })
            .filter(|scheme| !scheme.is_empty())
            .unwrap_or_else(|| "argon2".to_owned())
    }

    /// The allowed values a `<Values populate="command">` command lists: an array of
    /// values, or a map whose keys are the values.
    async fn populated_values(&self, command: &str) -> Result<Vec<String>> {
        let runner = self.runner().ok_or_else(|| {
            ObjectError::new(ErrorCode::COMMAND_NOT_DEFINED, "allowed values need an agent to list them")
        })?;
        Ok(match runner.run(None, command, Vec::new()).await? {
            Value::Array(items) => items.iter().map(filters::text).collect(),
            Value::Object(map) => map.keys().cloned().collect(),
            other => vec![filters::text(&other)],
        })
    }

    pub(super) async fn validate(
        &self,
        owner: &ObjectType,
        attr: &AttributeDef,
        values: &[Value],
        props: &Props,
        uuid: Option<&str>,
    ) -> Result<()> {
        let Some(condition) = &attr.validators else { return Ok(()) };
        let env = StoreEnv { store: self };
        let scope = Scope { env: &env, owner: &owner.name, attr: &attr.name, uuid };
        filters::check(condition, values, props, &scope).await.map_err(|errors| {
            ObjectError::new(ErrorCode::ATTRIBUTE_CHECK_FAILED, format!("'{}': {}", attr.name, errors.join("; ")))
                .with_details(json!({"attribute": attr.name, "errors": errors}))
        })
    }

    /// Marks an extension to be added at commit (with its defaults).
    pub fn extend(&self, state: &mut ObjectState, ext: &str) -> Result<()> {
        let catalogue = self.catalogue();
        let t = ObjectStore::type_of(&catalogue, ext)?;
        let refuse = |m: String| Err(ObjectError::new(ErrorCode::EXTENSION_REFUSED, m));
        if t.base_object || !t.extends.contains(&state.base_type) {
            return refuse(format!("{ext} cannot extend a {}", state.base_type));
        }
        if state.retract.remove(ext) {
            return Ok(()); // undoing a pending retraction
        }
        if state.effective_types().contains(&ext.to_owned()) {
            return refuse(format!("{ext} is already active"));
        }
        let types = state.effective_types();
        let missing: Vec<&String> = t.requires.iter().filter(|r| !types.contains(r)).collect();
        if !missing.is_empty() {
            return refuse(format!(
                "{ext} needs {} first",
                missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        state.extend.insert(ext.to_owned());
        apply_defaults(state, t);
        Ok(())
    }

    /// Marks an extension to be removed at commit.
    pub fn retract(&self, state: &mut ObjectState, ext: &str) -> Result<()> {
        let catalogue = self.catalogue();
        ObjectStore::type_of(&catalogue, ext)?;
        let refuse = |m: String| Err(ObjectError::new(ErrorCode::EXTENSION_REFUSED, m));
        if state.extend.remove(ext) {
            return Ok(());
        }
        if !state.active.contains(ext) || state.retract.contains(ext) {
            return refuse(format!("{ext} is not active"));
        }
        let types = state.effective_types();
        let needing: Vec<&str> = types
            .iter()
            .filter_map(|t| catalogue.get(t))
            .filter(|t| t.requires.iter().any(|r| r == ext))
            .map(|t| t.name.as_str())
            .collect();
        if !needing.is_empty() {
            return refuse(format!("{ext} is needed by {}; retract that first", needing.join(", ")));
        }
        state.retract.insert(ext.to_owned());
        Ok(())
    }

    /// Hooks run as internal calls, like the original's: they act for the object layer,
    /// not for whoever triggered them.
    pub(super) async fn run_hooks(&self, catalogue: &Catalogue, state: &ObjectState, hook: HookType) -> Result<()> {
        let hooks: Vec<_> = state
            .effective_types()
            .iter()
            .filter_map(|t| catalogue.get(t))
            .flat_map(|t| t.hooks.iter().filter(|h| h.hook_type == hook).cloned().collect::<Vec<_>>())
            .collect();
        if hooks.is_empty() {
            return Ok(());
        }
        let runner = self
            .runner()
            .ok_or_else(|| ObjectError::new(ErrorCode::COMMAND_NOT_DEFINED, "hooks need an agent to run them"))?;
        for h in hooks {
            let args = h.command_parameters.iter().map(|p| parameter_value(p, state, &BTreeMap::new())).collect();
            runner.run(None, &h.command, args).await?;
        }
        Ok(())
    }

    /// Runs a description method of the object.
    pub async fn call_method(
        &self,
        state: &ObjectState,
        name: &str,
        args: &[Value],
        user: Option<&str>,
    ) -> Result<Value> {
        let catalogue = self.catalogue();
        let method = state
            .effective_types()
            .iter()
            .filter_map(|t| catalogue.get(t))
            .find_map(|t| t.methods.iter().find(|m| m.name == name).cloned())
            .ok_or_else(|| {
                ObjectError::new(
                    ErrorCode::ATTRIBUTE_NOT_FOUND,
                    format!("{} has no method '{}'", state.base_type, clip(name)),
                )
            })?;
        let mut params = BTreeMap::new();
        for (i, p) in method.parameters.iter().enumerate() {
            let given = args.get(i).filter(|v| !v.is_null()).cloned();
            let value = match (given, &p.default) {
                (Some(v), _) => p
                    .value_type
                    .accept(&v)
                    .map_err(|e| ObjectError::new(ErrorCode::INVALID_PARAMS, format!("{}: {e}", p.name)))?,
                (None, Some(d)) => {
                    p.value_type.parse_text(d).map_err(|e| ObjectError::new(ErrorCode::INVALID_PARAMS, e))?
                }
                (None, None) if p.required => {
                    return Err(ObjectError::new(
                        ErrorCode::INVALID_PARAMS,
                        format!("{name} needs the parameter '{}'", p.name),
                    ));
                }
                (None, None) => Value::Null,
            };
            params.insert(p.name.clone(), value);
        }
        if args.len() > method.parameters.len() {
            return Err(ObjectError::new(
                ErrorCode::INVALID_PARAMS,
                format!("{name} takes {} parameter(s)", method.parameters.len()),
            ));
        }
        let runner = self
            .runner()
            .ok_or_else(|| ObjectError::new(ErrorCode::COMMAND_NOT_DEFINED, "methods need an agent to run them"))?;
        let command_args = method.command_parameters.iter().map(|p| parameter_value(p, state, &params)).collect();
        runner.run(user, &method.command, command_args).await
    }
}

/// The attribute `name` of the object's type or one of its extensions, with its owner.
fn attribute_of<'c>(
    catalogue: &'c Catalogue,
    state: &ObjectState,
    name: &str,
) -> Result<(&'c std::sync::Arc<ObjectType>, &'c AttributeDef)> {
    catalogue.find_attribute(&state.base_type, name).ok_or_else(|| {
        ObjectError::new(
            ErrorCode::ATTRIBUTE_NOT_FOUND,
            format!("{} has no attribute '{}'", state.base_type, clip(name)),
        )
    })
}

/// A method or hook argument: an attribute's value, a method parameter, `dn` or `uuid`.
fn parameter_value(name: &str, state: &ObjectState, params: &BTreeMap<String, Value>) -> Value {
    match name {
        "dn" => json!(state.dn),
        "uuid" => json!(state.uuid),
        "__self__" => json!({"dn": state.dn, "uuid": state.uuid, "type": state.base_type, "attributes": state.values}),
        other => params.get(other).cloned().unwrap_or_else(|| match state.values.get(other) {
            Some(v) if v.len() == 1 => v[0].clone(),
            Some(v) => Value::Array(v.clone()),
            None => Value::String(other.to_owned()),
        }),
    }
}

/// The first `(other, value)` that blocks `attr` now.
pub(super) fn blocked(attr: &AttributeDef, values: &Props) -> Option<(String, String)> {
    attr.blocked_by
        .iter()
        .find(|(other, blocking)| {
            values.get(other).and_then(|v| v.first()).is_some_and(|v| filters::text(v).eq_ignore_ascii_case(blocking))
        })
        .cloned()
}

/// Refuses text with control characters: none at all in a `String`, and elsewhere only
/// line breaks and tabs (a description may span lines). PostgreSQL refuses NUL and the
/// directory's syntaxes most controls; found here, the value is refused before any
/// backend sees it.
pub(super) fn check_text(attr: &AttributeDef, values: &[Value]) -> Result<()> {
    let allowed = |c: char| attr.value_type != ValueType::String && matches!(c, '\n' | '\r' | '\t');
    let mut pending: Vec<&Value> = values.iter().collect();
    while let Some(value) = pending.pop() {
        match value {
            Value::String(text) => {
                if let Some((position, c)) = text.chars().enumerate().find(|(_, c)| c.is_control() && !allowed(*c)) {
                    return Err(ObjectError::new(
                        ErrorCode::ATTRIBUTE_CHECK_FAILED,
                        format!(
                            "'{}': control character U+{:04X} at position {} is not allowed",
                            attr.name,
                            c as u32,
                            position + 1
                        ),
                    )
                    .with_details(json!({"attribute": attr.name})));
                }
            }
            Value::Array(items) => pending.extend(items),
            Value::Object(map) => pending.extend(map.values()),
            _ => {}
        }
    }
    Ok(())
}
