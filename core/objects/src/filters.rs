//! The filter and validator catalogue that descriptions name.
//!
//! Filters transform attribute values on their way in from a backend (`InFilter`) or out
//! to one (`OutFilter`); they may write other attributes too (`Target`, generated GECOS).
//! Conditions (validators) check a value when it is set. Parameters may refer to other
//! attributes as `%(name)s`; `%%` is a literal percent sign. Whatever needs the
//! directory or the index (the next free id, an existing DN, uniqueness) asks the
//! [`FilterEnv`] the object store provides.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

use super::description::{Call, Condition, FilterStep};
use super::values::{ValueType, date_from_days, days_since_epoch, parse_timestamp};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Current values of an object's attributes, each a list.
pub type Props = BTreeMap<String, Vec<Value>>;

/// What filters and conditions may ask of the object store.
pub trait FilterEnv: Send + Sync {
    /// The next free number for `attr` (uidNumber, gidNumber) from the id pool.
    fn next_id<'a>(&'a self, attr: &'a str) -> BoxFuture<'a, Result<i64, String>>;
    /// The lowest uidNumber/gidNumber `IsUnixId` allows.
    fn min_unix_id(&self) -> i64 {
        1000
    }
    /// Whether an object with this DN exists (and has type `of_type`, when given).
    fn dn_exists<'a>(&'a self, dn: &'a str, of_type: Option<&'a str>) -> BoxFuture<'a, Result<bool, String>>;
    /// Whether another object than `except` (a UUID) of `of_type` has `attr == value`.
    fn value_taken<'a>(
        &'a self,
        of_type: &'a str,
        attr: &'a str,
        value: &'a str,
        except: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, String>>;
}

/// Where a filter or condition runs: the object, for parameters and lookups.
pub struct Scope<'a> {
    pub env: &'a dyn FilterEnv,
    /// The type owning the attribute.
    pub owner: &'a str,
    /// The attribute being checked or filtered.
    pub attr: &'a str,
    /// The object's UUID, when it exists already.
    pub uuid: Option<&'a str>,
}

/// `(name, minimum parameters, maximum parameters)`.
const FILTERS: &[(&str, usize, usize)] = &[
    ("ConcatString", 2, 2),
    ("JoinArray", 1, 1),
    ("SplitString", 1, 1),
    ("Replace", 2, 2),
    ("Lowercase", 0, 0),
    ("Uppercase", 0, 0),
    ("StringToDate", 1, 1),
    ("DateToString", 1, 1),
    ("StringToTime", 1, 1),
    ("TimeToString", 1, 1),
    ("IntegerToDatetime", 0, 0),
    ("DatetimeToInteger", 0, 0),
    ("DatetimeToShadowDays", 0, 0),
    ("ShadowDaysToDatetime", 0, 0),
    ("Target", 1, 1),
    ("SetValue", 1, 1),
    ("SetValueIfEmpty", 1, 1),
    ("Clear", 0, 0),
    ("GetNextID", 0, 1),
    ("GenerateGecos", 0, 0),
    ("GenerateDisplayName", 1, 1),
    ("HashPassword", 0, 1),
];

const CONDITIONS: &[(&str, usize, usize)] = &[
    ("RegEx", 1, 1),
    ("stringLength", 2, 2),
    ("Equals", 1, 2),
    ("Greater", 1, 1),
    ("Smaller", 1, 1),
    ("IsValidHostName", 0, 0),
    ("IsExistingDN", 0, 0),
    ("IsExistingDnOfType", 1, 1),
    ("ObjectWithPropertyExists", 2, 2),
    ("IsUnique", 0, 2),
    ("IsUnixId", 0, 0),
];

fn check_call(call: &Call, table: &[(&str, usize, usize)], what: &str) -> Result<(), String> {
    let Some((_, min, max)) = table.iter().find(|(name, _, _)| *name == call.name) else {
        let known: Vec<&str> = table.iter().map(|(n, _, _)| *n).collect();
        return Err(format!("unknown {what} '{}' (known: {})", call.name, known.join(", ")));
    };
    let n = call.params.len();
    if n < *min || n > *max {
        let wanted = if min == max { min.to_string() } else { format!("{min} to {max}") };
        return Err(format!("{what} '{}' takes {wanted} parameter(s), got {n}", call.name));
    }
    if call.name == "Replace" || call.name == "RegEx" {
        regex::Regex::new(&call.params[0]).map_err(|e| format!("{what} '{}': bad regex: {e}", call.name))?;
    }
    Ok(())
}

/// Checks a filter call at load time: known name, parameter count, regex syntax.
pub fn check_filter_call(call: &Call) -> Result<(), String> {
    check_call(call, FILTERS, "filter")
}

/// Checks a condition call at load time.
pub fn check_condition_call(call: &Call) -> Result<(), String> {
    check_call(call, CONDITIONS, "condition")
}

/// Expands `%(attr)s` from the current values (first value; empty when unset).
pub fn expand(param: &str, props: &Props) -> String {
    let mut out = String::with_capacity(param.len());
    let mut rest = param;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('%') {
            out.push('%');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(")s")
        {
            let name = &inner[..end];
            if let Some(v) = props.get(name).and_then(|v| v.first()) {
                out.push_str(&text(v));
            }
            rest = &inner[end + 2..];
        } else {
            out.push('%');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A value as plain text (strings without quotes).
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Runs filter chains for `attr`, in order.
pub fn run_chains<'a>(
    chains: &'a [Vec<FilterStep>],
    attr: &'a str,
    props: &'a mut Props,
    scope: &'a Scope<'a>,
) -> BoxFuture<'a, Result<(), String>> {
    Box::pin(async move {
        for chain in chains {
            run_chain(chain, attr, props, scope).await?;
        }
        Ok(())
    })
}

fn run_chain<'a>(
    chain: &'a [FilterStep],
    attr: &'a str,
    props: &'a mut Props,
    scope: &'a Scope<'a>,
) -> BoxFuture<'a, Result<(), String>> {
    Box::pin(async move {
        // `Target` renames the attribute for the rest of the chain.
        let mut attr = attr.to_owned();
        for step in chain {
            match step {
                FilterStep::Filter(call) => {
                    let params: Vec<String> = call.params.iter().map(|p| expand(p, props)).collect();
                    if let Some(renamed) = apply_filter(&call.name, &params, &attr, props, scope).await? {
                        attr = renamed;
                    }
                }
                FilterStep::Choice { when, otherwise } => {
                    let values = props.get(&attr).cloned().unwrap_or_default();
                    let mut chosen = otherwise;
                    for (condition, branch) in when {
                        if check(condition, &values, props, scope).await.is_ok() {
                            chosen = branch;
                            break;
                        }
                    }
                    run_chain(chosen, &attr, props, scope).await?;
                }
            }
        }
        Ok(())
    })
}

fn map_values(props: &mut Props, attr: &str, f: impl Fn(&Value) -> Result<Value, String>) -> Result<(), String> {
    if let Some(values) = props.get_mut(attr) {
        *values = values.iter().map(f).collect::<Result<_, _>>()?;
    }
    Ok(())
}

/// One GECOS field: ASCII (the nis schema's gecos is IA5), by transliteration — "José
/// Müller" becomes "Jose Muller", "漢字" "Han Zi" — without the `,` that separates
/// fields or the `:` that separates passwd columns, spaces collapsed.
fn gecos_field(text: &str) -> String {
    let ascii = deunicode::deunicode_with_tofu(text, "?");
    let cleaned: String =
        ascii.chars().map(|c| if c == ',' || c == ':' || c.is_ascii_control() { ' ' } else { c }).collect();
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// At most 80 characters of someone's input, for a message: enough to recognise it,
/// never a page of it.
pub fn clip(text: &str) -> String {
    const SHOWN: usize = 80;
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

fn as_str(v: &Value) -> String {
    text(v)
}

/// Applies one filter; returns the new attribute name when it was `Target`.
async fn apply_filter(
    name: &str,
    params: &[String],
    attr: &str,
    props: &mut Props,
    scope: &Scope<'_>,
) -> Result<Option<String>, String> {
    let p = |i: usize| params.get(i).map(String::as_str).unwrap_or_default();
    match name {
        "ConcatString" => {
            let (piece, side) = (p(0).to_owned(), p(1).to_owned());
            map_values(props, attr, |v| {
                Ok(Value::String(if side == "left" {
                    format!("{piece}{}", as_str(v))
                } else {
                    format!("{}{piece}", as_str(v))
                }))
            })?;
        }
        "JoinArray" => {
            if let Some(values) = props.get_mut(attr) {
                let joined = values.iter().map(as_str).collect::<Vec<_>>().join(p(0));
                *values = vec![Value::String(joined)];
            }
        }
        "SplitString" => {
            if let Some(values) = props.get_mut(attr) {
                *values = values
                    .iter()
                    .flat_map(|v| {
                        as_str(v)
                            .split(p(0))
                            .filter(|s| !s.is_empty())
                            .map(|s| Value::String(s.to_owned()))
                            .collect::<Vec<_>>()
                    })
                    .collect();
            }
        }
        "Replace" => {
            let re = regex::Regex::new(p(0)).map_err(|e| e.to_string())?;
            let with = p(1).to_owned();
            map_values(props, attr, |v| Ok(Value::String(re.replace_all(&as_str(v), with.as_str()).into_owned())))?;
        }
        "Lowercase" => map_values(props, attr, |v| Ok(Value::String(as_str(v).to_lowercase())))?,
        "Uppercase" => map_values(props, attr, |v| Ok(Value::String(as_str(v).to_uppercase())))?,
        "StringToDate" => {
            let fmt = p(0).to_owned();
            map_values(props, attr, |v| {
                chrono::NaiveDate::parse_from_str(&as_str(v), &fmt)
                    .map(|d| Value::String(d.format("%Y-%m-%d").to_string()))
                    .map_err(|e| format!("'{}' does not match {fmt}: {e}", clip(&as_str(v))))
            })?;
        }
        "DateToString" => {
            let fmt = p(0).to_owned();
            map_values(props, attr, |v| {
                chrono::NaiveDate::parse_from_str(&as_str(v), "%Y-%m-%d")
                    .map(|d| Value::String(d.format(&fmt).to_string()))
                    .map_err(|e| format!("'{}' is not a date: {e}", clip(&as_str(v))))
            })?;
        }
        "StringToTime" => {
            let fmt = p(0).to_owned();
            map_values(props, attr, |v| {
                chrono::NaiveDateTime::parse_from_str(&as_str(v), &fmt)
                    .map(|t| Value::String(t.and_utc().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
                    .map_err(|e| format!("'{}' does not match {fmt}: {e}", clip(&as_str(v))))
            })?;
        }
        "TimeToString" => {
            let fmt = p(0).to_owned();
            map_values(props, attr, |v| {
                parse_timestamp(&as_str(v))
                    .map(|t| Value::String(t.format(&fmt).to_string()))
                    .ok_or_else(|| format!("'{}' is not a timestamp", clip(&as_str(v))))
            })?;
        }
        "IntegerToDatetime" => map_values(props, attr, |v| ValueType::Integer.convert(&int(v)?, ValueType::Timestamp))?,
        "DatetimeToInteger" => map_values(props, attr, |v| ValueType::Timestamp.convert(v, ValueType::Integer))?,
        "DatetimeToShadowDays" => map_values(props, attr, |v| {
            chrono::NaiveDate::parse_from_str(&as_str(v), "%Y-%m-%d")
                .map(|d| Value::from(days_since_epoch(d)))
                .map_err(|_| format!("'{}' is not a date", clip(&as_str(v))))
        })?,
        "ShadowDaysToDatetime" => map_values(props, attr, |v| {
            int(v)?
                .as_i64()
                .and_then(date_from_days)
                .map(|d| Value::String(d.format("%Y-%m-%d").to_string()))
                .ok_or_else(|| format!("{v} is not a day number"))
        })?,
        "Target" => {
            let values = props.remove(attr).unwrap_or_default();
            props.insert(p(0).to_owned(), values);
            return Ok(Some(p(0).to_owned()));
        }
        "SetValue" => {
            props.insert(attr.to_owned(), vec![Value::String(p(0).to_owned())]);
        }
        "SetValueIfEmpty" => {
            if props.get(attr).is_none_or(Vec::is_empty) {
                props.insert(attr.to_owned(), vec![Value::String(p(0).to_owned())]);
            }
        }
        "Clear" => {
            props.insert(attr.to_owned(), Vec::new());
        }
        "GetNextID" => {
            if props.get(attr).is_none_or(Vec::is_empty) {
                let pool_attr = if p(0).is_empty() { attr } else { p(0) };
                let id = scope.env.next_id(pool_attr).await?;
                props.insert(attr.to_owned(), vec![Value::from(id)]);
            }
        }
        "GenerateGecos" => {
            let auto = props.get("autoGECOS").and_then(|v| v.first()).is_none_or(|v| v != &Value::Bool(false));
            if auto {
                let field =
                    |n: &str| gecos_field(&props.get(n).and_then(|v| v.first()).map(as_str).unwrap_or_default());
                let full = format!("{} {}", field("givenName"), field("sn")).trim().to_owned();
                let gecos =
                    format!("{full},{},{},{}", field("roomNumber"), field("telephoneNumber"), field("homePhone"));
                props.insert(attr.to_owned(), vec![Value::String(gecos.trim_end_matches(',').to_owned())]);
            }
        }
        "GenerateDisplayName" => {
            let auto = props.get("autoDisplayName").and_then(|v| v.first()).is_none_or(|v| v != &Value::Bool(false));
            if auto || props.get(attr).is_none_or(Vec::is_empty) {
                let name = p(0).split_whitespace().collect::<Vec<_>>().join(" ");
                props.insert(attr.to_owned(), if name.is_empty() { vec![] } else { vec![Value::String(name)] });
            }
        }
        "HashPassword" => {
            let scheme = if p(0).is_empty() { "argon2" } else { p(0) }.to_owned();
            map_values(props, attr, |v| {
                let clear = as_str(v);
                if clear.starts_with('{') {
                    Ok(Value::String(clear))
                } else {
                    super::password::hash(&clear, &scheme).map(Value::String)
                }
            })?;
        }
        other => return Err(format!("unknown filter '{other}'")),
    }
    Ok(None)
}

fn int(v: &Value) -> Result<Value, String> {
    ValueType::Integer.accept(v)
}

/// Checks a condition tree against the values of one attribute. Errors explain why.
pub fn check<'a>(
    condition: &'a Condition,
    values: &'a [Value],
    props: &'a Props,
    scope: &'a Scope<'a>,
) -> BoxFuture<'a, Result<(), Vec<String>>> {
    Box::pin(async move {
        match condition {
            Condition::Check(call) => {
                let params: Vec<String> = call.params.iter().map(|p| expand(p, props)).collect();
                check_one(&call.name, &params, values, scope).await
            }
            Condition::And(l, r) => {
                check(l, values, props, scope).await?;
                check(r, values, props, scope).await
            }
            Condition::Or(l, r) => match check(l, values, props, scope).await {
                Ok(()) => Ok(()),
                Err(mut left) => match check(r, values, props, scope).await {
                    Ok(()) => Ok(()),
                    Err(right) => {
                        left.extend(right);
                        Err(vec![format!("neither holds: {}", left.join("; "))])
                    }
                },
            },
            Condition::Not(inner) => match check(inner, values, props, scope).await {
                Ok(()) => Err(vec![format!("must not satisfy {}", describe(inner))]),
                Err(_) => Ok(()),
            },
        }
    })
}

fn describe(condition: &Condition) -> String {
    match condition {
        Condition::Check(call) => format!("{}({})", call.name, call.params.join(", ")),
        Condition::And(l, r) => format!("({} and {})", describe(l), describe(r)),
        Condition::Or(l, r) => format!("({} or {})", describe(l), describe(r)),
        Condition::Not(inner) => format!("not {}", describe(inner)),
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

async fn check_one(name: &str, params: &[String], values: &[Value], scope: &Scope<'_>) -> Result<(), Vec<String>> {
    let p = |i: usize| params.get(i).map(String::as_str).unwrap_or_default();
    let mut errors = Vec::new();
    for v in values {
        let s = as_str(v);
        let shown = clip(&s);
        let problem = match name {
            "RegEx" => {
                let re = regex::Regex::new(p(0)).map_err(|e| vec![e.to_string()])?;
                (!re.is_match(&s)).then(|| format!("'{shown}' does not match {}", p(0)))
            }
            "stringLength" => {
                let (min, max) = (p(0).parse().unwrap_or(0usize), p(1).parse().unwrap_or(usize::MAX));
                let n = s.chars().count();
                (n < min || n > max).then(|| format!("'{shown}' must be {min} to {max} characters long, is {n}"))
            }
            "Equals" => {
                let equal =
                    if p(1) == "ignorecase" || p(1) == "true" { s.eq_ignore_ascii_case(p(0)) } else { s == p(0) };
                (!equal).then(|| format!("'{shown}' must equal '{}'", p(0)))
            }
            "Greater" | "Smaller" => match (number(v), p(0).parse::<f64>()) {
                (Some(x), Ok(limit)) if name == "Greater" && x > limit => None,
                (Some(x), Ok(limit)) if name == "Smaller" && x < limit => None,
                (Some(_), Ok(_)) => Some(format!(
                    "{shown} must be {} than {}",
                    if name == "Greater" { "greater" } else { "smaller" },
                    p(0)
                )),
                _ => Some(format!("'{shown}' is not a number")),
            },
            "IsValidHostName" => (!valid_host_name(&s)).then(|| format!("'{shown}' is not a valid host name")),
            "IsUnixId" => {
                // The largest id Linux hands out; 4294967295 is (uid_t)-1, "no id".
                const MAX_UNIX_ID: i64 = 4_294_967_294;
                let min = scope.env.min_unix_id();
                match s.parse::<i64>() {
                    Ok(id) if (min..=MAX_UNIX_ID).contains(&id) => None,
                    Ok(id) if id < min => Some(format!(
                        "{id} is below {min}, the lowest id for accounts and groups (lower ones belong to the system; \
                         [objects] min_unix_id)"
                    )),
                    _ => Some(format!("'{shown}' is not an id from {min} to {MAX_UNIX_ID}")),
                }
            }
            "IsExistingDN" | "IsExistingDnOfType" => {
                let of_type = (name == "IsExistingDnOfType").then(|| p(0));
                match scope.env.dn_exists(&s, of_type).await {
                    Ok(true) => None,
                    Ok(false) => Some(match of_type {
                        Some(t) => format!("no {t} object with DN '{shown}'"),
                        None => format!("no object with DN '{shown}'"),
                    }),
                    Err(e) => Some(e),
                }
            }
            "ObjectWithPropertyExists" => match scope.env.value_taken(p(0), p(1), &s, None).await {
                Ok(true) => None,
                Ok(false) => Some(format!("no {} object has {} '{shown}'", p(0), p(1))),
                Err(e) => Some(e),
            },
            "IsUnique" => {
                let of_type = if p(0).is_empty() { scope.owner } else { p(0) };
                let attr = if p(1).is_empty() { scope.attr } else { p(1) };
                match scope.env.value_taken(of_type, attr, &s, scope.uuid).await {
                    Ok(false) => None,
                    Ok(true) => Some(format!("'{shown}' is already used by another {of_type}")),
                    Err(e) => Some(e),
                }
            }
            other => Some(format!("unknown condition '{other}'")),
        };
        errors.extend(problem);
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

fn valid_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct NoEnv;
    impl FilterEnv for NoEnv {
        fn next_id<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<i64, String>> {
            Box::pin(async { Ok(1001) })
        }
        fn dn_exists<'a>(&'a self, dn: &'a str, _: Option<&'a str>) -> BoxFuture<'a, Result<bool, String>> {
            Box::pin(async move { Ok(dn == "cn=there") })
        }
        fn value_taken<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            v: &'a str,
            _: Option<&'a str>,
        ) -> BoxFuture<'a, Result<bool, String>> {
            Box::pin(async move { Ok(v == "taken") })
        }
    }

    fn call(name: &str, params: &[&str]) -> Call {
        Call { name: name.into(), params: params.iter().map(|s| (*s).to_owned()).collect(), line: 1 }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    /// Runs one filter over `attr = input` with `others` set, returns the attribute's values.
    fn filter(name: &str, params: &[&str], input: Value, others: &[(&str, Value)]) -> Result<Props, String> {
        let mut props: Props = others.iter().map(|(k, v)| ((*k).to_owned(), vec![v.clone()])).collect();
        props.insert("a".into(), if input.is_null() { vec![] } else { vec![input] });
        let chain = vec![vec![FilterStep::Filter(call(name, params))]];
        let scope = Scope { env: &NoEnv, owner: "User", attr: "a", uuid: None };
        block_on(run_chains(&chain, "a", &mut props, &scope))?;
        Ok(props)
    }

    #[test]
    fn filters_transform_values() {
        let a = |r: Result<Props, String>| r.expect("filter")["a"].clone();
        assert_eq!(a(filter("ConcatString", &["x-", "left"], json!("1"), &[])), vec![json!("x-1")]);
        assert_eq!(a(filter("Replace", &["[aeiou]", "_"], json!("banana"), &[])), vec![json!("b_n_n_")]);
        assert_eq!(
            a(filter(
                "SetValue",
                &["%(givenName)s %(sn)s"],
                json!(""),
                &[("givenName", json!("Ada")), ("sn", json!("Lovelace"))]
            )),
            vec![json!("Ada Lovelace")]
        );
        assert_eq!(a(filter("GetNextID", &[], Value::Null, &[])), vec![json!(1001)]);
        assert_eq!(a(filter("GetNextID", &[], json!(5), &[])), vec![json!(5)]);
        assert_eq!(a(filter("DatetimeToShadowDays", &[], json!("1970-01-31"), &[])), vec![json!(30)]);
        assert_eq!(a(filter("StringToDate", &["%d.%m.%Y"], json!("03.02.2026"), &[])), vec![json!("2026-02-03")]);
        assert_eq!(
            a(filter("GenerateGecos", &[], Value::Null, &[("givenName", json!("Ada")), ("sn", json!("Lovelace"))])),
            vec![json!("Ada Lovelace")]
        );
        let gecos = |given: &str, sn: &str| {
            a(filter("GenerateGecos", &[], Value::Null, &[("givenName", json!(given)), ("sn", json!(sn))]))
        };
        assert_eq!(gecos("José", "Müller"), vec![json!("Jose Muller")]);
        assert_eq!(gecos("Zoë", "Smith, Jr.:x"), vec![json!("Zoe Smith Jr. x")]);
        assert!(gecos("漢", "字")[0].as_str().is_some_and(|g| g.is_ascii() && !g.is_empty()));
        let hashed = a(filter("HashPassword", &[], json!("secret"), &[]));
        assert!(hashed[0].as_str().is_some_and(|h| h.starts_with("{ARGON2}$argon2id$")));
        let moved = filter("Target", &["b"], json!("v"), &[]).expect("target");
        assert_eq!((moved.get("a"), &moved["b"]), (None, &vec![json!("v")]));
        assert!(
            filter("StringToDate", &["%d.%m.%Y"], json!("nope"), &[])
                .err()
                .unwrap_or_default()
                .contains("does not match")
        );
    }

    #[test]
    fn a_choice_runs_the_first_branch_whose_condition_holds() {
        // Host names get a domain appended; anything with a dot already stays as it is.
        let choice = FilterStep::Choice {
            when: vec![(Condition::Check(call("RegEx", &["\\."])), vec![FilterStep::Filter(call("Lowercase", &[]))])],
            otherwise: vec![FilterStep::Filter(call("ConcatString", &[".example.org", "right"]))],
        };
        let scope = Scope { env: &NoEnv, owner: "Device", attr: "a", uuid: None };
        let run = |value: &str| {
            let mut props: Props = [("a".to_owned(), vec![json!(value)])].into();
            block_on(run_chains(&[vec![choice.clone()]], "a", &mut props, &scope)).expect("chain");
            props["a"][0].clone()
        };
        assert_eq!(run("WEB.example.org"), json!("web.example.org"));
        assert_eq!(run("db1"), json!("db1.example.org"));
    }

    #[test]
    fn conditions_explain_failures() {
        let scope = Scope { env: &NoEnv, owner: "User", attr: "a", uuid: None };
        let run = |c: Condition, v: Value| block_on(check(&c, &[v], &Props::new(), &scope));
        let c = |name: &str, params: &[&str]| Condition::Check(call(name, params));
        assert!(run(c("RegEx", &["^[0-9]+$"]), json!("123")).is_ok());
        assert_eq!(run(c("RegEx", &["^[0-9]+$"]), json!("12a")), Err(vec!["'12a' does not match ^[0-9]+$".into()]));
        assert!(run(c("stringLength", &["2", "4"]), json!("abcde")).is_err());
        assert!(run(c("Greater", &["10"]), json!(11)).is_ok());
        assert!(run(c("Smaller", &["65500"]), json!(70000)).is_err());
        assert!(run(c("IsValidHostName", &[]), json!("web-1.example.org")).is_ok());
        assert!(run(c("IsValidHostName", &[]), json!("-bad")).is_err());
        assert!(run(c("IsExistingDN", &[]), json!("cn=there")).is_ok());
        assert!(run(c("IsUnique", &["User", "uid"]), json!("taken")).is_err());
        let either = Condition::Or(Box::new(c("Equals", &["a"])), Box::new(c("Equals", &["b"])));
        assert!(run(either.clone(), json!("b")).is_ok());
        assert!(run(either, json!("c")).err().unwrap_or_default()[0].starts_with("neither holds"));
        assert!(run(Condition::Not(Box::new(c("Equals", &["root"]))), json!("root")).is_err());
    }

    #[test]
    fn load_time_checks_name_arity_and_regex() {
        assert!(check_filter_call(&call("Nope", &[])).err().unwrap_or_default().contains("unknown filter 'Nope'"));
        assert!(
            check_filter_call(&call("Replace", &["x"]))
                .err()
                .unwrap_or_default()
                .contains("takes 2 parameter(s), got 1")
        );
        assert!(check_condition_call(&call("RegEx", &["("])).err().unwrap_or_default().contains("bad regex"));
        assert_eq!(expand("%(a)s-%%-%(missing)s", &Props::from([("a".into(), vec![json!(1)])])), "1-%-");
    }
}
