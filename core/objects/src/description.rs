//! Object descriptions: the XML in `objects/` (and site folders) read into typed form.
//!
//! Loading never fails as a whole: each file is validated against `schemas/object.xsd`,
//! then read, then the merged set is checked for what a schema cannot see (unknown
//! base types, filters, attributes, extension cycles). A file or type with a problem is
//! left out and reported as a [`Diagnostic`] with its file, line and reason; the rest
//! loads, so one broken edit does not take the agent down.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use clacks_core::events::{EventError, EventValidator, XmlNode, parse_xml};

use super::filters;
use super::values::ValueType;

/// The description grammar, compiled into the binary.
pub const OBJECT_SCHEMA: &str = include_str!("../../../schemas/object.xsd");

/// The descriptions shipped with Clacks, compiled in so a bare binary has them.
const BUILTIN_DESCRIPTIONS: &[(&str, &str)] = &[
    ("acl.xml", include_str!("../../../objects/acl.xml")),
    ("containers.xml", include_str!("../../../objects/containers.xml")),
    ("device.xml", include_str!("../../../objects/device.xml")),
    ("group.xml", include_str!("../../../objects/group.xml")),
    ("organization.xml", include_str!("../../../objects/organization.xml")),
    ("user.xml", include_str!("../../../objects/user.xml")),
    ("user-posix.xml", include_str!("../../../objects/user-posix.xml")),
    ("user-shadow.xml", include_str!("../../../objects/user-shadow.xml")),
];

/// Backend kinds a description may name. `LDAP` falls back to the SQL store when no
/// directory is configured (the embedded default).
pub const BACKEND_KINDS: &[&str] = &["LDAP", "SQL", "NULL", "Relation"];

/// A problem found while loading descriptions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file (`builtin:user.xml` for compiled-in ones).
    pub file: String,
    pub line: Option<u32>,
    pub reason: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file, self.reason),
            None => write!(f, "{}: {}", self.file, self.reason),
        }
    }
}

/// A filter or condition call as written: name and positional parameters.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Call {
    pub name: String,
    pub params: Vec<String>,
    #[serde(skip)]
    pub line: u32,
}

/// One step of a filter chain.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum FilterStep {
    Filter(Call),
    /// The first `when` whose condition holds runs its chain; else `otherwise`.
    Choice {
        when: Vec<(Condition, Vec<FilterStep>)>,
        otherwise: Vec<FilterStep>,
    },
}

/// A validator tree.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Condition {
    Check(Call),
    And(Box<Condition>, Box<Condition>),
    Or(Box<Condition>, Box<Condition>),
    Not(Box<Condition>),
}

/// Allowed values of an attribute.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AllowedValues {
    /// `(key, label)`; the key is what is stored.
    pub fixed: Vec<(String, String)>,
    /// A command whose result lists the allowed values.
    pub populate: Option<String>,
}

/// One attribute, as its owning type describes it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttributeDef {
    pub name: String,
    pub description: String,
    pub value_type: ValueType,
    /// The type the backend stores, when it differs.
    pub backend_type: ValueType,
    /// The backend holding it; `None` = the owning type's primary backend.
    pub backend: Option<String>,
    /// Its name in the backend (LDAP attribute, SQL column); defaults to `name`.
    pub backend_name: String,
    pub multi_value: bool,
    pub mandatory: bool,
    pub read_only: bool,
    pub unique: bool,
    pub case_sensitive: bool,
    pub default: Option<String>,
    pub values: AllowedValues,
    pub depends_on: Vec<String>,
    /// `(other attribute, value)`: not writable, and not mandatory, while `other == value`.
    pub blocked_by: Vec<(String, String)>,
    pub validators: Option<Condition>,
    pub in_filter: Vec<Vec<FilterStep>>,
    pub out_filter: Vec<Vec<FilterStep>>,
    /// `(type, attribute)` this attribute holds values of; `dn` = the object's DN.
    pub references: Vec<(String, String)>,
    #[serde(skip)]
    pub line: u32,
}

impl AttributeDef {
    /// Whether no two objects may share a value: flagged `<Unique>` or validated by
    /// `IsUnique`.
    pub fn must_be_unique(&self) -> bool {
        fn checks_unique(condition: &Condition) -> bool {
            match condition {
                Condition::Check(call) => call.name == "IsUnique",
                Condition::And(a, b) | Condition::Or(a, b) => checks_unique(a) || checks_unique(b),
                Condition::Not(_) => false,
            }
        }
        self.unique || self.validators.as_ref().is_some_and(checks_unique)
    }
}

/// An object method mapped to a command.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MethodDef {
    pub name: String,
    pub description: String,
    pub parameters: Vec<MethodParameter>,
    pub command: String,
    /// Attribute names, parameter names, `dn`, `uuid` or `__self__`.
    pub command_parameters: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MethodParameter {
    pub name: String,
    pub value_type: ValueType,
    pub required: bool,
    pub default: Option<String>,
}

/// When a hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum HookType {
    PreCreate,
    PostCreate,
    PreUpdate,
    PostUpdate,
    PreRemove,
    PostRemove,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HookDef {
    pub hook_type: HookType,
    pub command: String,
    pub command_parameters: Vec<String>,
}

/// A search aspect (`<Find><Aspect>`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Aspect {
    pub tag: String,
    pub keywords: Vec<String>,
    pub search: Vec<String>,
    /// `(attribute of this hit, attribute of target, target type)`.
    pub resolve: Vec<(String, String, String)>,
    /// `(source template, destination)`: title, description, …
    pub result: Vec<(String, String)>,
}

/// One object type (a base object or an extension).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ObjectType {
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub base_object: bool,
    pub extends: Vec<String>,
    pub requires: Vec<String>,
    pub backend: String,
    /// Per backend, its parameters (the XML attributes of `<BackendParameters><Backend>`).
    pub backend_params: BTreeMap<String, BTreeMap<String, String>>,
    pub fixed_rdn: Option<String>,
    pub structural_invisible: bool,
    pub container: Vec<String>,
    pub attributes: Vec<AttributeDef>,
    /// Attributes owned by the base object or a sibling extension, reused here.
    pub foreign: Vec<String>,
    pub methods: Vec<MethodDef>,
    pub hooks: Vec<HookDef>,
    pub find: Vec<Aspect>,
    /// Where it was defined, for diagnostics.
    pub file: String,
    #[serde(skip)]
    pub line: u32,
}

impl ObjectType {
    /// A parameter of a backend, e.g. `("LDAP", "objectClasses")`.
    pub fn param(&self, backend: &str, key: &str) -> Option<&str> {
        self.backend_params.get(backend).and_then(|p| p.get(key)).map(String::as_str)
    }

    /// A comma-separated parameter as a list.
    pub fn param_list(&self, backend: &str, key: &str) -> Vec<String> {
        self.param(backend, key)
            .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Its own attribute by name.
    pub fn attribute(&self, name: &str) -> Option<&AttributeDef> {
        self.attributes.iter().find(|a| a.name == name)
    }

    /// The RDN attributes, in order of preference.
    pub fn rdn_attributes(&self) -> Vec<String> {
        let rdn = self.param_list(&self.backend, "RDN");
        if rdn.is_empty() { self.param_list("LDAP", "RDN") } else { rdn }
    }
}

/// The loaded, checked set of descriptions.
#[derive(Clone, Debug, Default)]
pub struct Catalogue {
    types: BTreeMap<String, Arc<ObjectType>>,
    /// Backend names (lowercase) of every attribute stored as `Binary`, for reading
    /// entries before their type is known.
    binary: std::collections::HashSet<String>,
    /// What was left out, and why.
    pub diagnostics: Vec<Diagnostic>,
}

impl Catalogue {
    /// Loads the shipped descriptions plus `*.xml` from `dirs` (in order). A type defined
    /// again in a later file replaces the earlier one, so a site folder overrides the
    /// shipped User by holding its own `user.xml`.
    pub fn load(validator: &EventValidator, dirs: &[PathBuf]) -> Catalogue {
        let mut sources: Vec<(String, String)> =
            BUILTIN_DESCRIPTIONS.iter().map(|(name, text)| (format!("builtin:{name}"), (*text).to_owned())).collect();
        let mut diagnostics = Vec::new();
        for dir in dirs {
            match read_dir_sorted(dir) {
                Ok(files) => {
                    for file in files {
                        match std::fs::read_to_string(&file) {
                            Ok(text) => sources.push((file.display().to_string(), text)),
                            Err(e) => diagnostics.push(Diagnostic {
                                file: file.display().to_string(),
                                line: None,
                                reason: format!("cannot read: {e}"),
                            }),
                        }
                    }
                }
                Err(e) => diagnostics.push(Diagnostic {
                    file: dir.display().to_string(),
                    line: None,
                    reason: format!("cannot read the folder: {e}"),
                }),
            }
        }
        Catalogue::from_sources(validator, &sources, diagnostics)
    }

    /// Reads descriptions from `(file name, text)` pairs.
    pub fn from_sources(
        validator: &EventValidator,
        sources: &[(String, String)],
        mut diagnostics: Vec<Diagnostic>,
    ) -> Catalogue {
        let schema: Arc<str> = Arc::from(OBJECT_SCHEMA);
        let mut types: BTreeMap<String, ObjectType> = BTreeMap::new();
        for (file, text) in sources {
            match validator.validate_document_blocking(&schema, text.as_bytes()) {
                Ok(()) => {}
                Err(EventError::Invalid(violations)) => {
                    diagnostics.extend(violations.into_iter().map(|v| Diagnostic {
                        file: file.clone(),
                        line: v.line.and_then(|l| u32::try_from(l).ok()),
                        reason: v.message,
                    }));
                    continue;
                }
                Err(e) => {
                    diagnostics.push(Diagnostic { file: file.clone(), line: None, reason: e.to_string() });
                    continue;
                }
            }
            match parse_xml(text.as_bytes()).map_err(|e| e.to_string()).and_then(|root| read_objects(file, &root)) {
                Ok(found) => {
                    for object in found {
                        types.insert(object.name.clone(), object);
                    }
                }
                Err(reason) => diagnostics.push(Diagnostic { file: file.clone(), line: None, reason }),
            }
        }
        let types = check_set(types, &mut diagnostics);
        let binary = types
            .values()
            .flat_map(|t| &t.attributes)
            .filter(|a| a.backend_type == ValueType::Binary)
            .map(|a| a.backend_name.to_lowercase())
            .collect();
        Catalogue { types: types.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(), binary, diagnostics }
    }

    /// Backend names (lowercase) of the attributes stored as `Binary`, in any type.
    pub fn binary_attributes(&self) -> &std::collections::HashSet<String> {
        &self.binary
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ObjectType>> {
        self.types.get(name)
    }

    pub fn types(&self) -> impl Iterator<Item = &Arc<ObjectType>> {
        self.types.values()
    }

    /// Extensions that may be attached to `base`.
    pub fn extensions_of(&self, base: &str) -> Vec<&Arc<ObjectType>> {
        self.types.values().filter(|t| !t.base_object && t.extends.iter().any(|e| e == base)).collect()
    }

    /// Every attribute visible on an object of `base` (its own, then its extensions'),
    /// with the type that owns it.
    pub fn attributes_of(&self, base: &str) -> Vec<(&Arc<ObjectType>, &AttributeDef)> {
        let mut out = Vec::new();
        if let Some(t) = self.types.get(base) {
            out.extend(t.attributes.iter().map(|a| (t, a)));
        }
        for ext in self.extensions_of(base) {
            out.extend(ext.attributes.iter().map(|a| (ext, a)));
        }
        out
    }

    /// An attribute visible on `base` by name, with its owner.
    pub fn find_attribute(&self, base: &str, name: &str) -> Option<(&Arc<ObjectType>, &AttributeDef)> {
        self.attributes_of(base).into_iter().find(|(_, a)| a.name == name)
    }
}

fn read_dir_sorted(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    files.sort();
    Ok(files)
}

// ----- reading one file (already schema-valid, so shapes are known) -----

fn text_of(node: &XmlNode, name: &str) -> String {
    node.child(name).map(|c| c.text.clone()).unwrap_or_default()
}

fn flag(node: &XmlNode, name: &str) -> bool {
    node.child(name).is_some_and(|c| matches!(c.text.as_str(), "true" | "1"))
}

fn names(node: &XmlNode, list: &str, item: &str) -> Vec<String> {
    node.child(list).map(|l| l.children_named(item).map(|c| c.text.clone()).collect()).unwrap_or_default()
}

fn read_objects(file: &str, root: &XmlNode) -> Result<Vec<ObjectType>, String> {
    root.children_named("Object").map(|object| read_object(file, object)).collect()
}

fn read_type(node: &XmlNode, name: &str) -> Result<Option<ValueType>, String> {
    node.child(name).map(|c| c.text.parse::<ValueType>().map_err(|e| format!("line {}: {e}", c.line))).transpose()
}

fn read_object(file: &str, node: &XmlNode) -> Result<ObjectType, String> {
    let name = text_of(node, "Name");
    let mut backend_params = BTreeMap::new();
    if let Some(params) = node.child("BackendParameters") {
        for backend in params.children_named("Backend") {
            let entry: &mut BTreeMap<String, String> = backend_params.entry(backend.text.clone()).or_default();
            entry.extend(backend.attributes.iter().cloned());
        }
    }
    let mut attributes = Vec::new();
    let mut foreign = Vec::new();
    if let Some(list) = node.child("Attributes") {
        for child in &list.children {
            match child.name.as_str() {
                "Attribute" => attributes.push(read_attribute(child)?),
                _ => foreign.push(text_of(child, "Name")),
            }
        }
    }
    let methods = node
        .child("Methods")
        .map(|m| m.children_named("Method").map(read_method).collect::<Result<Vec<_>, _>>())
        .transpose()?
        .unwrap_or_default();
    let hooks = node
        .child("Hooks")
        .map(|h| {
            h.children_named("Hook")
                .map(|hook| {
                    let hook_type = match text_of(hook, "Type").as_str() {
                        "PreCreate" => HookType::PreCreate,
                        "PostCreate" => HookType::PostCreate,
                        "PreUpdate" => HookType::PreUpdate,
                        "PostUpdate" => HookType::PostUpdate,
                        "PreRemove" => HookType::PreRemove,
                        _ => HookType::PostRemove,
                    };
                    HookDef {
                        hook_type,
                        command: text_of(hook, "Command"),
                        command_parameters: names(hook, "CommandParameters", "Value"),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let find = node
        .child("Find")
        .map(|f| {
            f.children_named("Aspect")
                .map(|a| Aspect {
                    tag: text_of(a, "Tag"),
                    keywords: a.children_named("Keyword").map(|k| k.text.clone()).collect(),
                    search: a.children_named("Search").map(|k| k.text.clone()).collect(),
                    resolve: a
                        .children_named("Resolve")
                        .map(|r| {
                            (
                                r.text.clone(),
                                r.attribute("filter").unwrap_or_default().to_owned(),
                                r.attribute("type").unwrap_or_default().to_owned(),
                            )
                        })
                        .collect(),
                    result: a
                        .child("Result")
                        .map(|r| {
                            r.children_named("Map").map(|m| (text_of(m, "Source"), text_of(m, "Destination"))).collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ObjectType {
        display_name: node.child("DisplayName").map(|d| d.text.clone()).unwrap_or_else(|| name.clone()),
        name,
        description: text_of(node, "Description"),
        base_object: flag(node, "BaseObject"),
        extends: names(node, "Extends", "Value"),
        requires: names(node, "RequiresExtension", "Extension"),
        backend: text_of(node, "Backend"),
        backend_params,
        fixed_rdn: node.child("FixedRDN").map(|f| f.text.clone()),
        structural_invisible: flag(node, "StructuralInvisible"),
        container: names(node, "Container", "Type"),
        attributes,
        foreign,
        methods,
        hooks,
        find,
        file: file.to_owned(),
        line: node.line,
    })
}

fn read_attribute(node: &XmlNode) -> Result<AttributeDef, String> {
    let name = text_of(node, "Name");
    let value_type = read_type(node, "Type")?.unwrap_or(ValueType::String);
    let values = node
        .child("Values")
        .map(|v| AllowedValues {
            fixed: v
                .children_named("Value")
                .map(|value| (value.attribute("key").unwrap_or(&value.text).to_owned(), value.text.clone()))
                .collect(),
            populate: v.attribute("populate").map(str::to_owned),
        })
        .unwrap_or_default();
    Ok(AttributeDef {
        description: text_of(node, "Description"),
        value_type,
        backend_type: read_type(node, "BackendType")?.unwrap_or(value_type),
        backend: node.child("Backend").map(|b| b.text.clone()),
        backend_name: node.child("BackendName").map(|b| b.text.clone()).unwrap_or_else(|| name.clone()),
        multi_value: flag(node, "MultiValue"),
        mandatory: flag(node, "Mandatory"),
        read_only: flag(node, "ReadOnly"),
        unique: flag(node, "Unique"),
        case_sensitive: flag(node, "CaseSensitive"),
        default: node.child("Default").map(|d| d.text.clone()),
        values,
        depends_on: names(node, "DependsOn", "Attribute"),
        blocked_by: node
            .child("BlockedBy")
            .map(|b| {
                b.children_named("Attribute")
                    .map(|a| (a.text.clone(), a.attribute("value").unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default(),
        validators: node.child("Validators").map(read_condition).transpose()?,
        in_filter: read_filters(node.child("InFilter"))?,
        out_filter: read_filters(node.child("OutFilter"))?,
        references: node
            .child("References")
            .map(|r| r.children_named("Reference").map(|r| (text_of(r, "Object"), text_of(r, "Attribute"))).collect())
            .unwrap_or_default(),
        line: node.line,
        name,
    })
}

fn read_call(node: &XmlNode) -> Call {
    Call {
        name: text_of(node, "Name"),
        params: node.children_named("Param").map(|p| p.text.clone()).collect(),
        line: node.line,
    }
}

/// `node` is a ConditionChain-typed element: one Condition or one ConditionOperator.
fn read_condition(node: &XmlNode) -> Result<Condition, String> {
    if let Some(check) = node.child("Condition") {
        return Ok(Condition::Check(read_call(check)));
    }
    let op = node.child("ConditionOperator").ok_or_else(|| format!("line {}: empty condition", node.line))?;
    let left = op.child("LeftConditionChain").map(read_condition).transpose()?;
    let right = op.child("RightConditionChain").map(read_condition).transpose()?;
    let missing = || format!("line {}: the operator needs two conditions", op.line);
    match (text_of(op, "Operator").as_str(), left, right) {
        ("not", Some(inner), None) => Ok(Condition::Not(Box::new(inner))),
        ("not", _, Some(_)) => Err(format!("line {}: 'not' takes only a left condition", op.line)),
        ("and", Some(l), Some(r)) => Ok(Condition::And(Box::new(l), Box::new(r))),
        ("or", Some(l), Some(r)) => Ok(Condition::Or(Box::new(l), Box::new(r))),
        _ => Err(missing()),
    }
}

fn read_filters(node: Option<&XmlNode>) -> Result<Vec<Vec<FilterStep>>, String> {
    node.map(|n| n.children_named("FilterChain").map(read_chain).collect()).transpose().map(Option::unwrap_or_default)
}

fn read_chain(node: &XmlNode) -> Result<Vec<FilterStep>, String> {
    node.children
        .iter()
        .map(|step| match step.name.as_str() {
            "Filter" => Ok(FilterStep::Filter(read_call(step))),
            _ => {
                let when = step
                    .children_named("When")
                    .map(|w| {
                        let condition =
                            read_condition(w.child("ConditionChain").ok_or("a When lacks its ConditionChain")?)?;
                        let chain = read_chain(w.child("FilterChain").ok_or("a When lacks its FilterChain")?)?;
                        Ok((condition, chain))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                let otherwise = step
                    .child("Else")
                    .and_then(|e| e.child("FilterChain"))
                    .map(read_chain)
                    .transpose()?
                    .unwrap_or_default();
                Ok(FilterStep::Choice { when, otherwise })
            }
        })
        .collect()
}

fn read_method(node: &XmlNode) -> Result<MethodDef, String> {
    let parameters = node
        .child("MethodParameters")
        .map(|p| {
            p.children_named("MethodParameter")
                .map(|param| {
                    Ok(MethodParameter {
                        name: text_of(param, "Name"),
                        value_type: read_type(param, "Type")?.unwrap_or(ValueType::String),
                        required: flag(param, "Required"),
                        default: param.child("Default").map(|d| d.text.clone()),
                    })
                })
                .collect::<Result<Vec<_>, String>>()
        })
        .transpose()?
        .unwrap_or_default();
    Ok(MethodDef {
        name: text_of(node, "Name"),
        description: text_of(node, "Description"),
        parameters,
        command: text_of(node, "Command"),
        command_parameters: names(node, "CommandParameters", "Value"),
    })
}

// ----- checks across the whole set -----

/// Drops every type with a problem (and, repeatedly, whatever depended on it).
fn check_set(
    mut types: BTreeMap<String, ObjectType>,
    diagnostics: &mut Vec<Diagnostic>,
) -> BTreeMap<String, ObjectType> {
    loop {
        let mut broken: Vec<(String, Diagnostic)> = Vec::new();
        for t in types.values() {
            if let Some(problem) = check_type(t, &types) {
                broken.push((t.name.clone(), problem));
            }
        }
        if broken.is_empty() {
            return types;
        }
        for (name, problem) in broken {
            types.remove(&name);
            diagnostics.push(problem);
        }
    }
}

fn check_type(t: &ObjectType, all: &BTreeMap<String, ObjectType>) -> Option<Diagnostic> {
    let fail = |line: u32, reason: String| {
        Some(Diagnostic { file: t.file.clone(), line: Some(line), reason: format!("{}: {reason}", t.name) })
    };
    if !BACKEND_KINDS.contains(&t.backend.as_str()) {
        return fail(t.line, format!("unknown backend '{}' (known: {})", t.backend, BACKEND_KINDS.join(", ")));
    }
    if t.base_object && !t.extends.is_empty() {
        return fail(t.line, "a base object cannot extend another type".into());
    }
    if !t.base_object && t.extends.is_empty() {
        return fail(t.line, "an extension must name the types it extends (<Extends>)".into());
    }
    for base in &t.extends {
        match all.get(base) {
            Some(b) if b.base_object => {}
            Some(_) => return fail(t.line, format!("extends '{base}', which is not a base object")),
            None => return fail(t.line, format!("extends unknown type '{base}'")),
        }
    }
    for required in &t.requires {
        match all.get(required) {
            Some(r) if !r.base_object => {}
            _ => return fail(t.line, format!("requires '{required}', which is not a known extension")),
        }
    }
    if let Some(cycle) = requirement_cycle(t, all) {
        return fail(t.line, format!("extension requirements form a cycle: {cycle}"));
    }
    for child in &t.container {
        if !all.contains_key(child) {
            return fail(t.line, format!("container lists unknown type '{child}'"));
        }
    }
    let mut seen = BTreeSet::new();
    for a in &t.attributes {
        if !seen.insert(a.name.as_str()) {
            return fail(a.line, format!("attribute '{}' is defined twice", a.name));
        }
        if let Some(problem) = check_attribute(t, a, all) {
            return fail(a.line, format!("attribute '{}': {problem}", a.name));
        }
    }
    // Attribute names are shared across a base object and its extensions: one owner each.
    for base in &t.extends {
        for other in all.values().filter(|o| o.name == *base || (o.name != t.name && o.extends.contains(base))) {
            if let Some(a) = t.attributes.iter().find(|a| other.attribute(&a.name).is_some()) {
                return fail(a.line, format!("attribute '{}' is already owned by '{}'", a.name, other.name));
            }
        }
    }
    for name in &t.foreign {
        let owned_nearby = t.extends.iter().any(|base| {
            all.values().any(|o| (o.name == *base || o.extends.contains(base)) && o.attribute(name).is_some())
        });
        if !owned_nearby {
            return fail(t.line, format!("foreign attribute '{name}' is not owned by a base object or sibling"));
        }
    }
    if t.fixed_rdn.as_deref().is_some_and(|rdn| !rdn.contains('=')) {
        return fail(t.line, "FixedRDN must look like 'ou=people'".into());
    }
    for (key, value) in t.backend_params.get("Relation").into_iter().flatten() {
        if t.attribute(key).is_none() {
            return fail(t.line, format!("relation parameter for unknown attribute '{key}'"));
        }
        if let Err(e) = super::relation::RelationSpec::parse(value) {
            return fail(t.line, format!("relation '{key}': {e}"));
        }
    }
    None
}

fn check_attribute(t: &ObjectType, a: &AttributeDef, all: &BTreeMap<String, ObjectType>) -> Option<String> {
    if let Some(backend) = &a.backend {
        if !BACKEND_KINDS.contains(&backend.as_str()) {
            return Some(format!("unknown backend '{backend}'"));
        }
        if backend == "Relation" && t.param("Relation", &a.name).is_none() {
            return Some(
                "a Relation attribute needs a <Backend …>Relation</Backend> parameter naming its relation".into(),
            );
        }
    }
    for chain in a.in_filter.iter().chain(&a.out_filter) {
        if let Some(problem) = check_chain(chain) {
            return Some(problem);
        }
    }
    if let Some(condition) = &a.validators
        && let Some(problem) = check_condition(condition)
    {
        return Some(problem);
    }
    let visible = |name: &str| {
        t.attribute(name).is_some()
            || t.foreign.iter().any(|f| f == name)
            || t.extends.iter().any(|b| all.get(b).is_some_and(|b| b.attribute(name).is_some()))
    };
    for dep in a.depends_on.iter().chain(a.blocked_by.iter().map(|(n, _)| n)) {
        if !visible(dep) {
            return Some(format!("refers to unknown attribute '{dep}'"));
        }
    }
    for (target, _) in &a.references {
        if target != "*" && !all.contains_key(target) {
            return Some(format!("references unknown type '{target}'"));
        }
    }
    if let Some(default) = &a.default
        && let Err(e) = a.value_type.parse_text(default)
    {
        return Some(format!("default '{default}': {e}"));
    }
    None
}

fn check_chain(chain: &[FilterStep]) -> Option<String> {
    for step in chain {
        match step {
            FilterStep::Filter(call) => {
                if let Err(e) = filters::check_filter_call(call) {
                    return Some(format!("line {}: {e}", call.line));
                }
            }
            FilterStep::Choice { when, otherwise } => {
                for (condition, chain) in when {
                    if let Some(p) = check_condition(condition).or_else(|| check_chain(chain)) {
                        return Some(p);
                    }
                }
                if let Some(p) = check_chain(otherwise) {
                    return Some(p);
                }
            }
        }
    }
    None
}

fn check_condition(condition: &Condition) -> Option<String> {
    match condition {
        Condition::Check(call) => filters::check_condition_call(call).err().map(|e| format!("line {}: {e}", call.line)),
        Condition::And(l, r) | Condition::Or(l, r) => check_condition(l).or_else(|| check_condition(r)),
        Condition::Not(inner) => check_condition(inner),
    }
}

fn requirement_cycle(t: &ObjectType, all: &BTreeMap<String, ObjectType>) -> Option<String> {
    fn walk<'a>(name: &'a str, all: &'a BTreeMap<String, ObjectType>, path: &mut Vec<&'a str>) -> Option<String> {
        if path.contains(&name) {
            path.push(name);
            return Some(path.join(" → "));
        }
        path.push(name);
        for next in all.get(name).map(|t| t.requires.as_slice()).unwrap_or_default() {
            if let Some(cycle) = walk(next, all, path) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    walk(&t.name, all, &mut Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(extra: &[(&str, &str)]) -> Catalogue {
        let validator = EventValidator::start(&[]).expect("validator");
        let mut sources: Vec<(String, String)> =
            BUILTIN_DESCRIPTIONS.iter().map(|(n, t)| ((*n).to_owned(), (*t).to_owned())).collect();
        sources.extend(extra.iter().map(|(n, t)| ((*n).to_owned(), (*t).to_owned())));
        Catalogue::from_sources(&validator, &sources, Vec::new())
    }

    #[test]
    fn shipped_descriptions_load_cleanly() {
        let catalogue = load(&[]);
        assert_eq!(catalogue.diagnostics, vec![]);
        let names: Vec<&str> = catalogue.types().map(|t| t.name.as_str()).collect();
        for wanted in [
            "User",
            "PosixUser",
            "ShadowUser",
            "PosixGroup",
            "GroupOfNames",
            "OrganizationalRole",
            "OrganizationalUnit",
            "Organization",
            "DomainComponent",
            "PeopleContainer",
            "GroupContainer",
            "DeviceContainer",
            "RoleContainer",
            "Device",
            "IpHost",
            "Ieee802Device",
            "RegisteredDevice",
            "Acl",
            "AclRole",
        ] {
            assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
        }
        let exts: Vec<&str> = catalogue.extensions_of("User").iter().map(|t| t.name.as_str()).collect();
        assert_eq!(exts, ["Acl", "PosixUser", "ShadowUser"]);
        let (owner, uid) = catalogue.find_attribute("User", "uidNumber").expect("uidNumber");
        assert_eq!((owner.name.as_str(), uid.mandatory), ("PosixUser", true));
    }

    const BROKEN_XML: &str = "<Objects xmlns=\"http://clacks.org/ns/objects\">\n<Object>\n<Name>X</Name>\n<Colour>red</Colour>\n</Object>\n</Objects>";

    #[test]
    fn problems_name_file_line_and_reason_and_the_rest_loads() {
        let unknown_filter = r#"<Objects xmlns="http://clacks.org/ns/objects">
  <Object>
    <Name>Badge</Name><Description>d</Description><BaseObject>false</BaseObject>
    <Extends><Value>User</Value></Extends><Backend>LDAP</Backend>
    <Attributes>
      <Attribute><Name>badge</Name><Type>String</Type>
        <OutFilter><FilterChain><Filter><Name>Frobnicate</Name></Filter></FilterChain></OutFilter></Attribute>
    </Attributes>
  </Object>
</Objects>"#;
        let unknown_base = r#"<Objects xmlns="http://clacks.org/ns/objects">
  <Object><Name>Pet</Name><Description>d</Description><Extends><Value>Animal</Value></Extends><Backend>SQL</Backend></Object>
</Objects>"#;
        let catalogue = load(&[("broken.xml", BROKEN_XML), ("badge.xml", unknown_filter), ("pet.xml", unknown_base)]);
        let text: Vec<String> = catalogue.diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        assert!(text[0].starts_with("broken.xml:4: Element '{http://clacks.org/ns/objects}Colour'"), "{}", text[0]);
        assert!(
            text[1].contains("badge.xml:6: Badge: attribute 'badge': line 7: unknown filter 'Frobnicate'"),
            "{}",
            text[1]
        );
        assert!(text[2].contains("pet.xml:2: Pet: extends unknown type 'Animal'"), "{}", text[2]);
        assert!(catalogue.get("User").is_some() && catalogue.get("Badge").is_none());
    }

    #[test]
    fn a_site_file_replaces_a_shipped_type() {
        let site = BUILTIN_DESCRIPTIONS
            .iter()
            .find(|(n, _)| *n == "user.xml")
            .map(|(_, t)| t.replace("<Attribute><Name>roomNumber</Name>", "<Attribute><Name>badgeNumber</Name><Type>String</Type><Backend>SQL</Backend></Attribute>\n      <Attribute><Name>roomNumber</Name>"))
            .expect("user.xml");
        let catalogue = load(&[("site/user.xml", &site)]);
        assert_eq!(catalogue.diagnostics, vec![]);
        let badge = catalogue.get("User").and_then(|u| u.attribute("badgeNumber")).expect("badgeNumber");
        assert_eq!(badge.backend.as_deref(), Some("SQL"));
    }
}
