//! The shell's own functions — helpers, object, ACL and event functions — as the Rhai
//! engine describes them. Completion, highlighting, help and "did you mean" all read
//! this one list, taken from the engine after the functions are registered, so a
//! function added to the engine is completed and documented without another list to
//! keep.

use std::collections::BTreeMap;

use rhai::Engine;
use serde::Deserialize;

/// One parameter of an overload: its name (empty when the engine knows none) and its
/// type in the domain's words.
pub type FunctionParam = (String, String);

/// One shell function: every overload's parameters and the doc comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShellFunction {
    pub name: String,
    /// One per overload, fewest parameters first.
    pub overloads: Vec<Vec<FunctionParam>>,
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
                let overloads = versions.iter().map(|v| v.params.iter().map(function_param).collect()).collect();
                // The fullest overload's doc says the most.
                let comments =
                    versions.iter().rev().find(|v| !v.doc_comments.is_empty()).map(|v| v.doc_comments.as_slice());
                let (doc, params) = split_doc(comments.unwrap_or_default());
                (name.clone(), ShellFunction { name, overloads, doc, params })
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

fn function_param(param: &ParamMetadata) -> FunctionParam {
    let name = param.name.as_deref().filter(|n| *n != "_").unwrap_or_default();
    (name.to_owned(), param.ty.as_deref().map(clacks_type).unwrap_or("any").to_owned())
}

impl ShellFunction {
    /// Each overload as `name(a: string, b: integer)`, in the words the domain's command
    /// signatures use.
    pub fn signatures(&self) -> Vec<String> {
        self.overloads.iter().map(|params| self.signature_of(params, None)).collect()
    }

    /// `name(…)` of these parameters, those from `optional_from` on marked optional.
    pub(crate) fn signature_of(&self, params: &[FunctionParam], optional_from: Option<usize>) -> String {
        let shown: Vec<String> = params
            .iter()
            .enumerate()
            .map(|(i, (name, ty))| {
                let mark = if optional_from.is_some_and(|from| i >= from) { "?" } else { "" };
                if name.is_empty() { format!("{ty}{mark}") } else { format!("{name}{mark}: {ty}") }
            })
            .collect();
        format!("{}({})", self.name, shown.join(", "))
    }
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

/// The doc comment's text, and its `- name: description` lines apart (the rule of
/// `clacks_core::command::param_doc`).
fn split_doc(comments: &[String]) -> (String, Vec<(String, String)>) {
    let (mut text, mut params) = (Vec::new(), Vec::new());
    for line in clacks_scripting::doc_lines(comments) {
        match clacks_core::command::param_doc(&line) {
            Some(doc) => params.push((doc.name, doc.description)),
            None => text.push(line),
        }
    }
    (text.join(" ").trim().to_owned(), params)
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
                overloads: vec![vec![], vec![("name".into(), "string".into())]],
                doc: "Say hello.".into(),
                params: vec![("name".into(), "who to greet".into())],
            })
        );
        assert!(!functions.contains("inc"), "a method of a value");
        assert!(!functions.contains("+"), "an operator");
        assert_eq!(functions.names_with_prefix("gr").collect::<Vec<_>>(), ["greet"]);
    }
}
