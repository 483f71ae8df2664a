//! Finding objects in the index: keyword search with relevance (and related objects
//! through `<Resolve>`), and `find` by attribute conditions.

use std::collections::{BTreeSet, HashMap};

use serde::Deserialize;
use serde_json::{Value, json};

use super::{ObjectStore, Result};
use crate::description::Catalogue;
use crate::filters::{self, Props};
use crate::index::{IndexDoc, SearchScope};
use clacks_core::dn::{dn_key, parent_dn, split_rdn};

/// How many of the best direct search hits have their `<Resolve>` relations followed.
const RESOLVED_HITS: usize = 20;

/// Hits a search returns when the caller names no limit.
pub const DEFAULT_SEARCH_LIMIT: usize = 200;

/// The most hits one search returns, whatever limit is asked for: a reply stays well
/// below the broker's frame sizes and the caller's memory.
pub const MAX_SEARCH_LIMIT: usize = 10_000;

/// Options of `search`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SearchOptions {
    /// Only this type (or extension).
    #[serde(default)]
    pub category: Option<String>,
    /// Also match inside values (slower).
    #[serde(default)]
    pub fallback: bool,
    /// Add related objects (`<Resolve>`, e.g. a user's groups) ranked below the hits;
    /// default on.
    #[serde(default)]
    pub secondary: Option<bool>,
    /// How many hits to return (default [`DEFAULT_SEARCH_LIMIT`], at most
    /// [`MAX_SEARCH_LIMIT`]).
    #[serde(default)]
    pub limit: Option<usize>,
}

impl SearchOptions {
    /// The number of hits to return.
    pub fn effective_limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_SEARCH_LIMIT).min(MAX_SEARCH_LIMIT)
    }
}

/// One search hit, ranked; [`ObjectStore::search_result`] turns it into what callers see.
#[derive(Clone, Debug)]
pub struct SearchHit {
    pub relevance: f64,
    pub doc: IndexDoc,
}

/// The hits of one search, and whether more matched than the limit let through.
#[derive(Clone, Debug, PartialEq, serde::Serialize, clacks_core::ResultSchema)]
pub struct SearchPage {
    /// Best first: `{dn, uuid, type, title, description, relevance, lastChanged}`.
    pub hits: Vec<Value>,
    /// More matched than the limit let through.
    pub truncated: bool,
}

impl ObjectStore {
    /// Keyword search below `base`: the first `limit` hits, best first, each
    /// `{dn, uuid, type, title, description, relevance, lastChanged}`, and whether more
    /// matched. For a caller who may see every object; the agent filters
    /// [`ObjectStore::ranked_search`] by its ACLs instead.
    pub async fn search(
        &self,
        base: &str,
        scope: SearchScope,
        query: &str,
        options: &SearchOptions,
    ) -> Result<SearchPage> {
        let ranked = self.ranked_search(base, scope, query, options).await?;
        let limit = options.effective_limit();
        let truncated = ranked.len() > limit;
        Ok(SearchPage { hits: ranked.iter().take(limit).map(|hit| self.search_result(hit)).collect(), truncated })
    }

    /// What a caller sees of one hit.
    pub fn search_result(&self, hit: &SearchHit) -> Value {
        result_entry(&self.catalogue(), hit.relevance, &hit.doc)
    }

    /// Every hit of a keyword search below `base`, best first (the limit is left to the
    /// caller, who may drop hits it must not show before counting).
    pub async fn ranked_search(
        &self,
        base: &str,
        scope: SearchScope,
        query: &str,
        options: &SearchOptions,
    ) -> Result<Vec<SearchHit>> {
        let catalogue = self.catalogue();
        let mut words: Vec<String> = shlex_words(query);
        let whole = query.trim().to_lowercase();
        if words.len() > 1 && !whole.is_empty() {
            words.push(whole);
        }
        // A word naming a type's keyword narrows to that type (`user ada`).
        let mut categories: BTreeSet<String> = BTreeSet::new();
        words.retain(|w| {
            let hits: Vec<String> = catalogue
                .types()
                .filter(|t| t.find.iter().any(|a| a.keywords.iter().any(|k| k.eq_ignore_ascii_case(w))))
                .map(|t| t.name.clone())
                .collect();
            let keep = hits.is_empty();
            categories.extend(hits);
            keep
        });
        if let Some(category) = &options.category {
            categories.insert(category.clone());
        }
        let base_key = dn_key(base);
        let in_scope = |dn: &str| {
            let key = dn_key(dn);
            match scope {
                SearchScope::Base => key == base_key,
                SearchScope::One => dn_key(parent_dn(dn)) == base_key,
                SearchScope::Sub => key == base_key || key.ends_with(&format!(",{base_key}")),
                SearchScope::Children => key.ends_with(&format!(",{base_key}")),
            }
        };
        let mut scored: HashMap<String, (f64, IndexDoc)> = HashMap::new();
        if words.is_empty() {
            for doc in self.index.under(base, scope).await? {
                scored.insert(doc.uuid.clone(), (1.0, doc));
            }
        }
        for word in &words {
            for (doc, attr, exact) in self.index.matching(word, true, options.fallback).await? {
                if !in_scope(&doc.dn) {
                    continue;
                }
                let searchable = catalogue
                    .get(&doc.object_type)
                    .is_some_and(|t| t.find.iter().any(|a| a.search.contains(&attr)) || options.fallback);
                if !searchable {
                    continue;
                }
                let score = if exact { 1.0 } else { 0.5 };
                let slot = scored.entry(doc.uuid.clone()).or_insert((0.0, doc));
                slot.0 += score;
            }
        }
        // Secondary hits (`<Resolve>`): objects related to a hit, e.g. a user's groups,
        // ranked well below direct hits.
        if options.secondary.unwrap_or(true) {
            // Only the best direct hits are followed: a broad query must not turn into
            // thousands of lookups.
            let mut best: Vec<(&f64, &IndexDoc)> = scored.values().map(|(s, d)| (s, d)).collect();
            best.sort_by(|a, b| b.0.total_cmp(a.0).then_with(|| a.1.dn.cmp(&b.1.dn)));
            best.truncate(RESOLVED_HITS);
            let mut secondary: Vec<(f64, IndexDoc)> = Vec::new();
            for (score, doc) in best {
                let resolves = catalogue
                    .get(&doc.object_type)
                    .map(|t| t.find.iter().flat_map(|a| a.resolve.clone()).collect::<Vec<_>>());
                for (own_attr, their_attr, their_type) in resolves.unwrap_or_default() {
                    for value in doc.values.get(&own_attr).into_iter().flatten().take(20) {
                        for related in self.index.with_value(&their_type, &their_attr, value).await? {
                            if in_scope(&related.dn) && !scored.contains_key(&related.uuid) {
                                secondary.push((score / 10.0, related));
                            }
                        }
                    }
                }
            }
            for (score, doc) in secondary {
                let slot = scored.entry(doc.uuid.clone()).or_insert((0.0, doc));
                slot.0 = slot.0.max(score);
            }
        }
        let mut results: Vec<(f64, IndexDoc)> = scored
            .into_values()
            .filter(|(_, doc)| {
                categories.is_empty()
                    || categories.contains(&doc.object_type)
                    || doc.extensions.iter().any(|e| categories.contains(e))
            })
            .collect();
        results.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.dn.cmp(&b.1.dn)));
        Ok(results.into_iter().map(|(relevance, doc)| SearchHit { relevance, doc }).collect())
    }

    /// Objects matching every condition (`attribute: value`, `*` as wildcard;
    /// `_type` for the type, `_base` for a subtree).
    pub async fn find(&self, conditions: &serde_json::Map<String, Value>) -> Result<Vec<IndexDoc>> {
        let base = conditions.get("_base").map(filters::text).unwrap_or_else(|| self.base.clone());
        // Start from the narrowest set the index can give: one exact attribute value, or
        // one type; only without either is the whole subtree read.
        let exact = conditions.iter().find_map(|(key, wanted)| match wanted {
            Value::String(v) if !key.starts_with('_') && key != "dn" && !v.contains('*') => Some((key, v)),
            _ => None,
        });
        let one_type = conditions.get("_type").and_then(Value::as_str);
        let mut candidates = match (exact, one_type) {
            (Some((attr, value)), _) => self.index.with_value(one_type.unwrap_or(""), attr, value).await?,
            (None, Some(t)) => self.index.of_type(t).await?,
            (None, None) => self.index.under(&base, SearchScope::Sub).await?,
        };
        let base_key = dn_key(&base);
        candidates.retain(|doc| {
            let key = dn_key(&doc.dn);
            key == base_key || key.ends_with(&format!(",{base_key}"))
        });
        for (key, wanted) in conditions {
            let wanted_values: Vec<String> = match wanted {
                Value::Array(items) => items.iter().map(filters::text).collect(),
                other => vec![filters::text(other)],
            };
            candidates.retain(|doc| match key.as_str() {
                "_base" => true,
                "_type" => wanted_values.iter().any(|w| *w == doc.object_type || doc.extensions.contains(w)),
                "dn" => wanted_values.iter().any(|w| glob_match(w, &doc.dn)),
                attr => doc
                    .values
                    .get(attr)
                    .is_some_and(|have| wanted_values.iter().any(|w| have.iter().any(|h| glob_match(w, h)))),
            });
        }
        Ok(candidates)
    }
}

fn result_entry(catalogue: &Catalogue, score: f64, doc: &IndexDoc) -> Value {
    let props: Props =
        doc.values.iter().map(|(k, v)| (k.clone(), v.iter().map(|s| Value::String(s.clone())).collect())).collect();
    let aspect = catalogue.get(&doc.object_type).and_then(|t| t.find.first());
    let mapped = |dest: &str| {
        aspect
            .and_then(|a| a.result.iter().find(|(_, d)| d == dest))
            .map(|(source, _)| filters::expand(source, &props).trim().to_owned())
    };
    json!({
        "dn": doc.dn,
        "uuid": doc.uuid,
        "type": doc.object_type,
        "extensions": doc.extensions,
        "title": mapped("title").unwrap_or_else(|| split_rdn(&doc.dn).0.to_owned()),
        "description": mapped("description").unwrap_or_default(),
        "relevance": score,
        "lastChanged": doc.modified,
    })
}

fn shlex_words(query: &str) -> Vec<String> {
    query.split_whitespace().map(|w| w.trim_matches('"').to_lowercase()).filter(|w| !w.is_empty()).collect()
}

/// `*` matches any run of characters; comparison ignores case.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.to_lowercase(), text.to_lowercase());
    let parts: Vec<&str> = p.split('*').collect();
    if parts.len() == 1 {
        return p == t;
    }
    let mut rest = t.as_str();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else { return false };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(
            glob_match("ada*", "Ada Lovelace") && glob_match("*love*", "Ada Lovelace") && !glob_match("bob*", "ada")
        );
        assert!(glob_match("x", "X") && !glob_match("x", "xy"));
    }
}
