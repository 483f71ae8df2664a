//! Which clients a fan-out or a group of clients reaches: a filter map whose keys all
//! have to hold — ids, globs on the name given at join and the announced host name,
//! online state, an offered command, inventory conditions, custom facts, a stored
//! group — combined with `all`, `any` and `not` over nested filter maps.
//!
//! This module says what a filter is and decides the conditions that need nothing but
//! the client's presence entry; the clients plugin answers the ones that need stored
//! data (inventory, facts, groups). A filter is bounded before anything runs: nesting
//! and size are checked, so a caller cannot make an agent recurse or query without end.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::inventory::compare_versions;

/// Nesting of `all`/`any`/`not` (and groups naming groups).
pub(crate) const MAX_DEPTH: usize = 16;
/// Filter maps in one filter, nested ones and fact conditions included.
const MAX_NODES: usize = 256;

/// A filter map; every key given must hold. Unknown keys are refused.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ClientFilter {
    /// Exactly these client ids; ids no machine has are reported as `unknown`.
    pub clients: Option<Vec<String>>,
    /// A glob on the client id.
    pub id: Option<String>,
    /// A glob on the name the client is targeted by (given at join).
    pub name: Option<String>,
    /// A glob on the host name the client announces.
    pub hostname: Option<String>,
    /// Clients offering this command.
    pub capability: Option<String>,
    /// Clients whose stored inventory matches (as `findClients`).
    pub inventory: Option<crate::inventory::Query>,
    /// Custom facts: fact name → condition, each of which must hold.
    pub facts: Option<BTreeMap<String, FactCondition>>,
    /// Members of the stored group of clients with this name.
    pub group: Option<String>,
    /// Online (true) or offline (false) clients.
    pub online: Option<bool>,
    /// Every one of these filters holds.
    pub all: Option<Vec<ClientFilter>>,
    /// At least one of these filters holds (none given: nothing matches).
    pub any: Option<Vec<ClientFilter>>,
    /// This filter does not hold.
    pub not: Option<Box<ClientFilter>>,
}

/// What a custom fact must be: a glob on its text (`"web*"`; `"*"` only asks that the
/// fact exists), a number or a boolean it equals, or `{atLeast, below}` bounds compared
/// like versions (`"4.10"` is above `"4.9"`, `"10"` above `"9"`). A fact with several
/// values matches when one of them does.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "Value")]
pub(crate) enum FactCondition {
    Glob(String),
    Number(f64),
    Flag(bool),
    Range { at_least: Option<String>, below: Option<String> },
}

impl TryFrom<Value> for FactCondition {
    type Error = String;

    fn try_from(value: Value) -> Result<FactCondition, String> {
        let bound = |v: &Value| match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(format!("a fact bound is a number or a string, not {other}")),
        };
        match value {
            Value::String(glob) => Ok(FactCondition::Glob(glob)),
            Value::Bool(flag) => Ok(FactCondition::Flag(flag)),
            Value::Number(n) => n.as_f64().map(FactCondition::Number).ok_or_else(|| format!("{n} is not a number")),
            Value::Object(map) => {
                let mut range = (None, None);
                for (key, v) in &map {
                    match key.as_str() {
                        "atLeast" => range.0 = Some(bound(v)?),
                        "below" => range.1 = Some(bound(v)?),
                        other => return Err(format!("'{other}' is not a fact bound (atLeast, below)")),
                    }
                }
                if range == (None, None) {
                    return Err("a fact range needs atLeast or below".into());
                }
                Ok(FactCondition::Range { at_least: range.0, below: range.1 })
            }
            other => Err(format!("a fact condition is a glob, a number, a boolean or {{atLeast, below}}, not {other}")),
        }
    }
}

impl FactCondition {
    /// Whether one of a fact's values satisfies the condition.
    pub(crate) fn holds(&self, values: &[String]) -> bool {
        values.iter().any(|value| match self {
            FactCondition::Glob(pattern) => clacks_objects::store::glob_match(pattern, value),
            FactCondition::Number(n) => value.trim().parse::<f64>().is_ok_and(|v| v == *n),
            FactCondition::Flag(flag) => value.eq_ignore_ascii_case(if *flag { "true" } else { "false" }),
            FactCondition::Range { at_least, below } => {
                at_least.as_deref().is_none_or(|low| compare_versions(value, low) != Ordering::Less)
                    && below.as_deref().is_none_or(|high| compare_versions(value, high) == Ordering::Less)
            }
        })
    }
}

/// What a client is known by, for the conditions decided without stored data.
pub(crate) struct Candidate<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub hostname: &'a str,
    pub online: bool,
    pub offers: &'a dyn Fn(&str) -> bool,
}

impl ClientFilter {
    /// Reads a filter from a caller's map, refusing one too deep or too big.
    pub(crate) fn parse(value: Value) -> Result<ClientFilter, String> {
        let filter: ClientFilter = serde_json::from_value(value).map_err(|e| e.to_string())?;
        let nodes = filter.check(0)?;
        if nodes > MAX_NODES {
            return Err(format!("a filter may hold at most {MAX_NODES} filter maps, not {nodes}"));
        }
        Ok(filter)
    }

    /// Checks nesting and group names; returns how many filter maps it holds.
    fn check(&self, depth: usize) -> Result<usize, String> {
        if depth > MAX_DEPTH {
            return Err(format!("filters nest at most {MAX_DEPTH} deep"));
        }
        if let Some(group) = &self.group
            && !clacks_acl::is_group_name(group)
        {
            return Err(format!("'{group}' cannot name a group of clients"));
        }
        // Each fact condition is a query: it counts like a filter map.
        let mut nodes = 1 + self.facts.as_ref().map_or(0, BTreeMap::len);
        for child in self.children() {
            nodes += child.check(depth + 1)?;
            // Stop counting early: a huge flat list is refused without walking it all.
            if nodes > MAX_NODES {
                return Ok(nodes);
            }
        }
        Ok(nodes)
    }

    /// The nested filters, of `all`, `any` and `not`.
    pub(crate) fn children(&self) -> impl Iterator<Item = &ClientFilter> {
        let lists = self.all.iter().chain(self.any.iter()).flatten();
        lists.chain(self.not.as_deref())
    }

    /// Whether the conditions that need no stored data hold for `candidate`.
    pub(crate) fn matches_presence(&self, candidate: &Candidate<'_>) -> bool {
        let glob = clacks_objects::store::glob_match;
        self.clients.as_ref().is_none_or(|list| list.iter().any(|c| c == candidate.id))
            && self.id.as_deref().is_none_or(|p| glob(p, candidate.id))
            && self.name.as_deref().is_none_or(|p| glob(p, candidate.name))
            && self.hostname.as_deref().is_none_or(|p| glob(p, candidate.hostname))
            && self.online.is_none_or(|online| online == candidate.online)
            && self.capability.as_deref().is_none_or(|c| (candidate.offers)(c))
    }

    /// The ids this filter names as targets: `clients` lists, also inside `all` and
    /// `any`, but not under `not`, where naming an id excludes it.
    pub(crate) fn named_clients(&self) -> Vec<&str> {
        let own = self.clients.iter().flatten().map(String::as_str);
        let nested = self.all.iter().chain(self.any.iter()).flatten().flat_map(ClientFilter::named_clients);
        own.chain(nested).collect()
    }

    /// The first condition on what a machine says about itself — its announced host
    /// name, facts, inventory, the commands it offers — if the filter has one (under
    /// `not` too: a machine can stop saying something as easily as start). Such a
    /// filter targets well but cannot vouch for anyone in an ACL.
    pub(crate) fn self_reported(&self) -> Option<&'static str> {
        let own = [
            (self.hostname.is_some(), "hostname"),
            (self.facts.is_some(), "facts"),
            (self.inventory.is_some(), "inventory"),
            (self.capability.is_some(), "capability"),
        ];
        own.iter()
            .find(|(used, _)| *used)
            .map(|(_, key)| *key)
            .or_else(|| self.children().find_map(ClientFilter::self_reported))
    }

    /// The groups this filter refers to, nested ones included.
    pub(crate) fn groups(&self) -> Vec<&str> {
        let nested = self.children().flat_map(ClientFilter::groups);
        self.group.as_deref().into_iter().chain(nested).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Parses `filter` and decides it for a client `ws-1` (host `h1`, online, offering
    /// `ping`), or says why it is refused.
    fn check(filter: Value) -> Result<bool, String> {
        let filter = ClientFilter::parse(filter)?;
        let offers = |c: &str| c == "ping";
        let candidate = Candidate { id: "c-1", name: "ws-1", hostname: "h1", online: true, offers: &offers };
        Ok(filter.matches_presence(&candidate))
    }

    #[test]
    fn presence_conditions() {
        let cases = [
            (json!({}), Ok(true)),
            (json!({"name": "ws-*", "hostname": "h?"}), Ok(false)),
            (json!({"name": "ws-*", "hostname": "h*", "online": true, "capability": "ping"}), Ok(true)),
            (json!({"clients": ["c-2"]}), Ok(false)),
            (json!({"id": "c-*", "capability": "reboot"}), Ok(false)),
            (json!({"online": false}), Ok(false)),
        ];
        for (filter, want) in cases {
            assert_eq!(check(filter.clone()), want, "{filter}");
        }
    }

    #[test]
    fn bad_filters_are_refused_with_a_reason() {
        let deep = (0..20).fold(json!({}), |inner, _| json!({"not": inner}));
        let wide = json!({"any": vec![json!({}); 300]});
        let cases = [
            (json!({"colour": "red"}), "unknown field `colour`"),
            (json!({"facts": {"role": [1]}}), "a fact condition is a glob"),
            (json!({"facts": {"cores": {"over": 4}}}), "'over' is not a fact bound"),
            (json!({"facts": {"cores": {}}}), "needs atLeast or below"),
            (json!({"group": "no spaces"}), "cannot name a group"),
            (deep, "nest at most 16 deep"),
            (wide, "at most 256 filter maps"),
            (
                json!({"facts": (0..300).map(|i| (format!("f{i}"), json!("*"))).collect::<serde_json::Map<_, _>>()}),
                "at most 256",
            ),
        ];
        for (filter, expected) in cases {
            let refused = ClientFilter::parse(filter.clone()).err().unwrap_or_default();
            assert!(refused.contains(expected), "{filter}: {refused}");
        }
    }

    #[test]
    fn fact_conditions() {
        let values = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let cases = [
            (json!("web*"), values(&["db", "web-2"]), true),
            (json!("*"), values(&[]), false),
            (json!(4), values(&["4.0"]), true),
            (json!(true), values(&["True"]), true),
            (json!({"atLeast": 4, "below": "4.10"}), values(&["4.9"]), true),
            (json!({"atLeast": "4.10"}), values(&["4.9"]), false),
            (json!({"below": 10}), values(&["9"]), true),
        ];
        for (condition, facts, want) in cases {
            let parsed = FactCondition::try_from(condition.clone()).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed.holds(&facts), want, "{condition} on {facts:?}");
        }
    }

    #[test]
    fn named_ids_and_groups_are_found_where_they_name_targets() {
        let filter = ClientFilter::parse(json!({
            "clients": ["a"], "any": [{"clients": ["b"], "group": "web"}], "not": {"clients": ["c"], "group": "db"}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(filter.named_clients(), ["a", "b"]);
        assert_eq!(filter.groups(), ["web", "db"]);
        assert_eq!(filter.self_reported(), None);
        let told = ClientFilter::parse(json!({"name": "ws-*", "any": [{"not": {"facts": {"role": "web"}}}]}));
        assert_eq!(told.map(|f| f.self_reported()), Ok(Some("facts")));
    }
}
