//! Subscriptions: every event is validated where it is received ([`subscribe`]), then
//! narrowed by a filter, an XPath 3.1 predicate over the event document (xee-xpath),
//! evaluated by the subscriber because RabbitMQ has no XQuery exchange.
//!
//! Accepted forms:
//! - a plain expression, where unprefixed names are in the event namespace:
//!   `/Event/Call[Callee = '100']`;
//! - the original Clacks form with a namespace prolog:
//!   `declare namespace f='http://clacks.org/ns/events'; let $e := ./f:Event return $e/f:NodeAnnounce`.
//!
//! The prefixes `e` and `f` are always bound to the event namespace. The expression's
//! effective boolean value decides. A filter is checked when it is parsed, so a bad one
//! is refused at subscribe time with the parser's message. Compiled queries are not
//! `Send` (xee uses `Rc`), so each subscription evaluates on a thread of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;

use tokio::sync::mpsc;
use xee_xpath::context::StaticContextBuilder;
use xee_xpath::{Documents, Item, Queries, Query};

use super::{EVENT_NAMESPACE, EventValidator};
use crate::bus::EventMessage;

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event filter: {0}")]
pub struct FilterError(pub String);

/// A checked filter expression; cheap to clone and to send between threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    source: String,
    expression: String,
    namespaces: Vec<(String, String)>,
}

type Convert = fn(&mut Documents, &Item) -> xee_xpath::error::Result<bool>;

/// A filter compiled for one thread.
pub struct CompiledFilter {
    query: xee_xpath::query::OneQuery<bool, Convert>,
}

impl std::fmt::Debug for CompiledFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompiledFilter")
    }
}

fn to_bool(_: &mut Documents, item: &Item) -> xee_xpath::error::Result<bool> {
    Ok(item.try_into_value::<bool>()?)
}

impl Filter {
    /// Parses and compiles `text` once to check it.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let mut rest = text.trim();
        let mut namespaces =
            vec![("e".to_owned(), EVENT_NAMESPACE.to_owned()), ("f".to_owned(), EVENT_NAMESPACE.to_owned())];
        // `declare namespace p = 'uri';` is XQuery prolog, not XPath: lift it into the
        // static context.
        while let Some(after) = rest.strip_prefix("declare namespace") {
            let Some((decl, tail)) = after.split_once(';') else {
                return Err(FilterError("'declare namespace' without a closing ';'".into()));
            };
            let Some((prefix, uri)) = decl.split_once('=') else {
                return Err(FilterError(format!("cannot read the namespace declaration '{}'", decl.trim())));
            };
            let uri = uri.trim().trim_matches(|c| c == '\'' || c == '"');
            let prefix = prefix.trim();
            namespaces.retain(|(p, _)| p != prefix);
            namespaces.push((prefix.to_owned(), uri.to_owned()));
            rest = tail.trim();
        }
        if rest.is_empty() {
            return Err(FilterError("the expression is empty".into()));
        }
        let filter = Filter { source: text.to_owned(), expression: format!("boolean(({rest}))"), namespaces };
        filter.compile()?;
        Ok(filter)
    }

    /// Compiles the filter for use on the current thread.
    pub fn compile(&self) -> Result<CompiledFilter, FilterError> {
        let mut builder = StaticContextBuilder::default();
        builder.default_element_namespace(EVENT_NAMESPACE);
        for (prefix, uri) in &self.namespaces {
            builder.add_namespace(prefix, uri);
        }
        let queries = Queries::default();
        let query = queries
            .one_with_context(&self.expression, to_bool as Convert, builder.build())
            .map_err(|e| FilterError(self.describe(&e)))?;
        Ok(CompiledFilter { query })
    }
}

impl Filter {
    /// xee reports a code and a span in the wrapped expression; say it in the terms of
    /// what the user wrote.
    fn describe(&self, e: &xee_xpath::error::Error) -> String {
        let what = e.error.message().trim().trim_end_matches('.');
        let code = e.error.code();
        let (_, body) = self.expression.split_at("boolean((".len().min(self.expression.len()));
        let body = body.strip_suffix("))").unwrap_or(body);
        match e.span.map(|s| s.range()) {
            Some(range) => {
                let at = range.start.saturating_sub("boolean((".len()).min(body.len());
                format!("{code} {what} at character {} of '{body}'", at + 1)
            }
            None => format!("{code} {what} in '{body}'"),
        }
    }
}

impl CompiledFilter {
    /// Whether the event document matches. A document the filter cannot evaluate
    /// (not XML, a type error at run time) does not match.
    pub fn matches(&self, xml: &[u8]) -> Result<bool, FilterError> {
        let text = std::str::from_utf8(xml).map_err(|e| FilterError(format!("event is not UTF-8: {e}")))?;
        let mut documents = Documents::new();
        let handle = documents.add_string_without_uri(text).map_err(|e| FilterError(e.to_string()))?;
        self.query.execute(&mut documents, handle).map_err(|e| FilterError(e.to_string()))
    }
}

/// How a subscriber wants its events.
#[derive(Clone, Debug, Default)]
pub struct SubscribeOptions {
    /// Only events this XPath filter matches.
    pub filter: Option<Filter>,
    /// Also pass events of types the validator has no schema for, unvalidated.
    pub unknown_types: bool,
    /// Counts the events dropped because they failed validation (or, without
    /// `unknown_types`, had no schema).
    pub dropped: Arc<AtomicU64>,
}

impl SubscribeOptions {
    /// Options with `filter`, validated events only.
    pub fn filtered(filter: Option<Filter>) -> SubscribeOptions {
        SubscribeOptions { filter, ..SubscribeOptions::default() }
    }
}

/// Subscribes to `types` on `bus`: the one way every subscriber (agent plugins, SSE,
/// the shell) gets its events. Each event is validated against `validator`'s schemas
/// first and must be of the type its routing key says; what fails is dropped and
/// counted, so nothing downstream (XPath, XML→JSON, scripts) sees a document that no
/// schema vouches for. Then the filter, if any, narrows.
pub async fn subscribe(
    bus: &crate::bus::Bus,
    validator: &EventValidator,
    types: &[String],
    options: SubscribeOptions,
) -> Result<mpsc::Receiver<EventMessage>, crate::bus::BusError> {
    let events = validated(bus.subscribe(types).await?, validator.clone(), options.unknown_types, options.dropped);
    Ok(match options.filter {
        Some(filter) => filtered(events, filter),
        None => events,
    })
}

/// Passes on only the events that pass `validator` (see [`subscribe`]).
fn validated(
    mut events: mpsc::Receiver<EventMessage>,
    validator: EventValidator,
    unknown_types: bool,
    dropped: Arc<AtomicU64>,
) -> mpsc::Receiver<EventMessage> {
    let (out, rx) = mpsc::channel(1024);
    let invalid_senders = crate::refusals::Refusals::default();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let verdict = if validator.knows(&event.event_type) {
                match validator.validate(&event.body).await {
                    Ok(found) if found == event.event_type => Ok(()),
                    Ok(found) => Err(format!("routing key says {} but the document is a {found}", event.event_type)),
                    Err(e) => Err(e.to_string()),
                }
            } else if unknown_types {
                Ok(())
            } else {
                Err(format!("no schema for event type {}", event.event_type))
            };
            match verdict {
                Ok(()) => {
                    if out.send(event).await.is_err() {
                        return;
                    }
                }
                Err(why) => {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    invalid_senders.log(event.user.as_deref(), &event.event_type, &format!("dropped an event: {why}"));
                }
            }
        }
    });
    rx
}

/// Passes on only the events `filter` matches, evaluating on a thread of its own. The
/// thread ends when either side goes away.
pub fn filtered(mut events: mpsc::Receiver<EventMessage>, filter: Filter) -> mpsc::Receiver<EventMessage> {
    let (out, rx) = mpsc::channel(1024);
    let (to_thread, from_async) = std_mpsc::sync_channel::<EventMessage>(1024);
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if to_thread.send(event).is_err() {
                break;
            }
        }
    });
    let spawned = std::thread::Builder::new().name("clacks-filter".into()).spawn(move || {
        let compiled = match filter.compile() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "event filter failed to compile");
                return;
            }
        };
        while let Ok(event) = from_async.recv() {
            match compiled.matches(&event.body) {
                Ok(true) => {
                    if out.blocking_send(event).is_err() {
                        return;
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "event not evaluated by the filter"),
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start an event filter thread");
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::envelope;

    fn call(callee: &str) -> String {
        envelope(
            "Call",
            &format!(
                "<Type>missed</Type><Id>c1</Id><Caller>200</Caller><Callee>{callee}</Callee><Started>2026-11-22T10:00:00Z</Started>"
            ),
        )
    }

    #[test]
    fn filters_match_events() {
        let by_callee = Filter::parse("/Event/Call[Callee = '100']").unwrap_or_else(|e| panic!("{e}"));
        let compiled = by_callee.compile().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(compiled.matches(call("100").as_bytes()), Ok(true));
        assert_eq!(compiled.matches(call("101").as_bytes()), Ok(false));

        let original = Filter::parse(
            "declare namespace f='http://clacks.org/ns/events'; let $e := ./f:Event return $e/f:NodeAnnounce or $e/f:NodeLeave",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let compiled = original.compile().unwrap_or_else(|e| panic!("{e}"));
        let announce = crate::events::PresenceEvent::Announce { id: "n1".into() }.to_xml();
        assert_eq!(compiled.matches(announce.as_bytes()), Ok(true));
        assert_eq!(compiled.matches(call("100").as_bytes()), Ok(false));

        let typed = Filter::parse("number(//e:Duration) > 60 or //Type = 'missed'").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(typed.compile().map(|c| c.matches(call("1").as_bytes())), Ok(Ok(true)));
    }

    #[test]
    fn bad_filters_are_refused_with_the_parser_message() {
        for bad in ["/Event/Call[", "", "declare namespace x 'u';", "declare namespace x='u' /Event", "foo:bar"] {
            let err = Filter::parse(bad).err();
            assert!(err.is_some(), "{bad} was accepted");
        }
        let message = Filter::parse("/Event/Call[").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.starts_with("invalid event filter: XPST0003"), "{message}");
        assert!(message.ends_with("at character 13 of '/Event/Call['"), "{message}");
    }
}
