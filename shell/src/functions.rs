//! The shell's own functions — helpers, object, ACL and event functions — as the Rhai
//! engine describes them. Completion, highlighting, help and "did you mean" all read
//! this one list, taken from the engine after the functions are registered, so a
//! function added to the engine is completed and documented without another list to
//! keep.

use std::collections::BTreeMap;

use rhai::Engine;
use serde::Deserialize;

/// One shell function: every overload's signature and the doc comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShellFunction {
    pub name: String,
    /// One per overload, fewest parameters first: `open_object(target: string)`.
    pub signatures: Vec<String>,
    /// The doc comment, without its `///` leaders.
    pub doc: String,
    /// Parameter descriptions from the doc comment (`- name: text` lines).
    pub params: Vec<(String, String)>,
}

/// Every shell function by name.
#[derive(Clone, Debug, Default)]
pub struct ShellFunctions {
    by_name: BTreeMap<String, ShellFunction>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    #[serde(default)]
    functions: Vec<FunctionMetadata>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FunctionMetadata {
    name: String,
    #[serde(default)]
    params: Vec<ParamMetadata>,
    #[serde(default)]
    doc_comments: Vec<String>,
}

#[derive(Deserialize)]
struct ParamMetadata {
    name: Option<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
}

impl ShellFunctions {
    /// The functions `engine` has registered (not Rhai's standard library): those a
    /// script calls by name, not operators, property accessors or methods of a value
    /// (whose first parameter is `&mut`).
    pub fn from_engine(engine: &Engine) -> ShellFunctions {
        let metadata: Metadata = engine
            .gen_fn_metadata_to_json(false)
            .ok()
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or(Metadata { functions: Vec::new() });
        let mut overloads: BTreeMap<String, Vec<FunctionMetadata>> = BTreeMap::new();
        for function in metadata.functions {
            let is_method =
                function.params.first().and_then(|p| p.ty.as_deref()).is_some_and(|t| t.starts_with("&mut"));
            if is_method || !rhai::is_valid_function_name(&function.name) {
                continue;
            }
            overloads.entry(function.name.clone()).or_default().push(function);
        }
        let by_name = overloads
            .into_iter()
            .map(|(name, mut versions)| {
                versions.sort_by_key(|v| v.params.len());
                let signatures = versions.iter().map(|v| signature(&name, &v.params)).collect();
                // The fullest overload's doc says the most.
                let comments =
                    versions.iter().rev().find(|v| !v.doc_comments.is_empty()).map(|v| v.doc_comments.as_slice());
                let (doc, params) = split_doc(comments.unwrap_or_default());
                (name.clone(), ShellFunction { name, signatures, doc, params })
            })
            .collect();
        ShellFunctions { by_name }
    }

    pub fn get(&self, name: &str) -> Option<&ShellFunction> {
        self.by_name.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Names starting with `prefix`, sorted.
    pub fn names_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.by_name
            .range(prefix.to_owned()..)
            .take_while(move |(name, _)| name.starts_with(prefix))
            .map(|(name, _)| name.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = &ShellFunction> {
        self.by_name.values()
    }
}

/// `name(a: string, b: integer)`, in the words the domain's command signatures use.
fn signature(name: &str, params: &[ParamMetadata]) -> String {
    let params: Vec<String> = params
        .iter()
        .map(|p| {
            let ty = p.ty.as_deref().map(clacks_type).unwrap_or("any");
            match p.name.as_deref() {
                Some(n) if n != "_" => format!("{n}: {ty}"),
                _ => ty.to_owned(),
            }
        })
        .collect();
    format!("{name}({})", params.join(", "))
}

/// Rhai's type names (Rust's, or those its errors use) as the domain's type words.
pub(crate) fn clacks_type(rust: &str) -> &str {
    match rust.trim_start_matches('&').trim() {
        "str" | "String" | "ImmutableString" | "string" | "char" => "string",
        "i64" | "INT" | "int" | "integer" => "integer",
        "f64" | "FLOAT" | "float" | "number" => "number",
        "bool" | "boolean" => "boolean",
        "Array" | "array" => "array",
        "Map" | "map" => "map",
        "FnPtr" | "Fn" => "function",
        "Dynamic" | "?" | "any" => "any",
        other => other,
    }
}

/// The doc comment's text, and its `- name: description` lines apart.
fn split_doc(comments: &[String]) -> (String, Vec<(String, String)>) {
    let mut text = Vec::new();
    let mut params = Vec::new();
    for line in comments.iter().flat_map(|c| c.lines()) {
        let line = line.trim_start().trim_start_matches("///").trim_start_matches("/**").trim_end_matches("*/").trim();
        match param_line(line) {
            Some((name, description)) => params.push((name.to_owned(), description.to_owned())),
            None => text.push(line),
        }
    }
    (text.join(" ").trim().to_owned(), params)
}

/// `- name: description` (or ``- `name`: description``) → (name, description).
pub(crate) fn param_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("- ")?;
    let (name, description) = rest.split_once(':')?;
    let name = name.trim().trim_matches('`');
    rhai::is_valid_identifier(name).then_some((name, description.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_come_from_the_engine() {
        let mut engine = Engine::new_raw();
        rhai::FuncRegistration::new("greet")
            .with_params_info(["name: &str", "String"])
            .with_comments(["/// Say hello.\n/// - name: who to greet"])
            .register_into_engine(&mut engine, |name: &str| format!("hello {name}"));
        engine.register_fn("greet", || "hello".to_owned());
        engine.register_fn("inc", |x: &mut i64| *x += 1);
        engine.register_fn("+", |a: i64, b: bool| a + i64::from(b));
        let functions = ShellFunctions::from_engine(&engine);
        let greet = functions.get("greet").cloned();
        assert_eq!(
            greet,
            Some(ShellFunction {
                name: "greet".into(),
                signatures: vec!["greet()".into(), "greet(name: string)".into()],
                doc: "Say hello.".into(),
                params: vec![("name".into(), "who to greet".into())],
            })
        );
        assert!(!functions.contains("inc"), "a method of a value");
        assert!(!functions.contains("+"), "an operator");
        assert_eq!(functions.names_with_prefix("gr").collect::<Vec<_>>(), ["greet"]);
    }
}
