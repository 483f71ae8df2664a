//! XSD validation of events (and of other documents, such as object descriptions) with
//! libxml2.
//!
//! libxml2 is not thread-safe, so one dedicated thread owns the parsed schemas and the
//! validation contexts; everyone else talks to it through [`EventValidator`], a cheap
//! cloneable handle. The schema set is the shipped types (compiled into the binary from
//! `schemas/events/`) plus every `*.xsd` in the configured extra folders; the first file
//! for a type wins. They are assembled into one envelope schema in which `<Event>` is a
//! choice over all known types.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use libxml::parser::{Parser, ParserOptions};
use libxml::schemas::{SchemaParserContext, SchemaValidationContext};
use tokio::sync::oneshot;

use super::fields::{ElementShape, event_xml, shapes_from_sources};
use super::{EVENT_NAMESPACE, EventError, MAX_EVENT_BYTES};

/// The event types shipped with Clacks, compiled in so a bare binary can validate.
const BUILTIN_SCHEMAS: &[(&str, &str)] = &[
    ("BackendChange", include_str!("../../../schemas/events/BackendChange.xsd")),
    ("Call", include_str!("../../../schemas/events/Call.xsd")),
    ("ClientAnnounce", include_str!("../../../schemas/events/ClientAnnounce.xsd")),
    ("ClientLeave", include_str!("../../../schemas/events/ClientLeave.xsd")),
    ("ClientPing", include_str!("../../../schemas/events/ClientPing.xsd")),
    ("ClientPoll", include_str!("../../../schemas/events/ClientPoll.xsd")),
    ("ClientSignature", include_str!("../../../schemas/events/ClientSignature.xsd")),
    ("Inventory", include_str!("../../../schemas/events/Inventory.xsd")),
    ("NodeAnnounce", include_str!("../../../schemas/events/NodeAnnounce.xsd")),
    ("NodeCapabilities", include_str!("../../../schemas/events/NodeCapabilities.xsd")),
    ("NodeLeave", include_str!("../../../schemas/events/NodeLeave.xsd")),
    ("NodeStatus", include_str!("../../../schemas/events/NodeStatus.xsd")),
    ("Notification", include_str!("../../../schemas/events/Notification.xsd")),
    ("ObjectChanged", include_str!("../../../schemas/events/ObjectChanged.xsd")),
    ("SchedulerUpdate", include_str!("../../../schemas/events/SchedulerUpdate.xsd")),
    ("UserSession", include_str!("../../../schemas/events/UserSession.xsd")),
];

/// One schema violation: where and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// Line in the event document, when libxml2 knows it.
    pub line: Option<i32>,
    /// The element concerned, when the message names one.
    pub element: Option<String>,
    /// libxml2's message, e.g. "Element 'Load': 'x' is not a valid value of the atomic type 'xs:double'."
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

enum Job {
    Validate {
        xml: Vec<u8>,
        reply: oneshot::Sender<Result<String, EventError>>,
    },
    /// Validate any document against a given XSD (compiled once per distinct text).
    ValidateDocument {
        schema: std::sync::Arc<str>,
        xml: Vec<u8>,
        reply: oneshot::Sender<Result<(), EventError>>,
    },
    /// Swap in a new schema set; the old one stays if the new one does not compile.
    Reload {
        sources: BTreeMap<String, String>,
        reply: oneshot::Sender<Result<(), EventError>>,
    },
}

/// Handle to the validator thread. Cloning is cheap; the thread ends when the last
/// handle is dropped.
#[derive(Clone)]
pub struct EventValidator {
    jobs: mpsc::Sender<Job>,
    shapes: std::sync::Arc<std::sync::RwLock<HashMap<String, ElementShape>>>,
    types: std::sync::Arc<std::sync::RwLock<Vec<String>>>,
    /// Each type's XSD text, as compiled, for subscribers that validate themselves.
    sources: std::sync::Arc<std::sync::RwLock<BTreeMap<String, String>>>,
    extra_dirs: std::sync::Arc<Vec<PathBuf>>,
}

impl fmt::Debug for EventValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventValidator").field("types", &self.types).finish_non_exhaustive()
    }
}

impl EventValidator {
    /// Loads the shipped schemas plus `*.xsd` from `extra_dirs` and starts the thread.
    pub fn start(extra_dirs: &[PathBuf]) -> Result<EventValidator, EventError> {
        let sources = collect_sources(extra_dirs)?;
        let types: Vec<String> = sources.keys().cloned().collect();
        let shapes = shapes_from_sources(&sources);
        super::remember_shapes(&shapes);
        let texts = std::sync::Arc::new(std::sync::RwLock::new(sources.clone()));
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), EventError>>();
        std::thread::Builder::new()
            .name("clacks-xsd".into())
            .spawn(move || validator_thread(sources, job_rx, ready_tx))
            .map_err(|e| EventError::Schema(format!("cannot start the validator thread: {e}")))?;
        ready_rx.recv().map_err(|_| EventError::ValidatorStopped)??;
        Ok(EventValidator {
            jobs,
            shapes: std::sync::Arc::new(std::sync::RwLock::new(shapes)),
            types: std::sync::Arc::new(std::sync::RwLock::new(types)),
            sources: texts,
            extra_dirs: std::sync::Arc::new(extra_dirs.to_vec()),
        })
    }

    /// The known event types, sorted.
    pub fn types(&self) -> Vec<String> {
        self.types.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// The shape of `event_type` (its fields, their order, counts and types).
    pub fn shape(&self, event_type: &str) -> Option<ElementShape> {
        self.shapes.read().ok().and_then(|s| s.get(event_type).cloned())
    }

    /// The XSD text of `event_type`, as this validator compiled it.
    pub fn schema_text(&self, event_type: &str) -> Option<String> {
        self.sources.read().ok().and_then(|s| s.get(event_type).cloned())
    }

    /// Whether there is a schema for `event_type`.
    pub fn knows(&self, event_type: &str) -> bool {
        self.types.read().is_ok_and(|t| t.binary_search_by(|known| known.as_str().cmp(event_type)).is_ok())
    }

    /// Validates from a thread outside the async runtime (fuzzing, scripts).
    pub fn validate_blocking(&self, xml: &[u8]) -> Result<String, EventError> {
        self.submit(xml)?.blocking_recv().map_err(|_| EventError::ValidatorStopped)?
    }

    /// Reads the schema folders again: types dropped in since the start become valid.
    /// A set that does not compile is refused and the running one stays.
    pub async fn reload(&self) -> Result<Vec<String>, EventError> {
        let sources = collect_sources(&self.extra_dirs)?;
        let types: Vec<String> = sources.keys().cloned().collect();
        let shapes = shapes_from_sources(&sources);
        let texts = sources.clone();
        let (reply, rx) = oneshot::channel();
        self.jobs.send(Job::Reload { sources, reply }).map_err(|_| EventError::ValidatorStopped)?;
        rx.await.map_err(|_| EventError::ValidatorStopped)??;
        if let Ok(mut current) = self.sources.write() {
            *current = texts;
        }
        if let Ok(mut current) = self.types.write() {
            *current = types.clone();
        }
        super::remember_shapes(&shapes);
        if let Ok(mut current) = self.shapes.write() {
            *current = shapes;
        }
        Ok(types)
    }

    /// The XML of an event of `event_type` with `fields`, in the schema's element order
    /// (not yet validated).
    pub fn build(&self, event_type: &str, fields: &serde_json::Map<String, serde_json::Value>) -> String {
        let shapes = self.shapes.read();
        event_xml(event_type, fields, shapes.as_ref().ok().and_then(|o| o.get(event_type)))
    }

    /// Validates an event document; returns its type.
    pub async fn validate(&self, xml: &[u8]) -> Result<String, EventError> {
        self.submit(xml)?.await.map_err(|_| EventError::ValidatorStopped)?
    }

    /// Validates a document that is not an event (an object description, say) against
    /// the XSD text `schema`, on the same libxml2 thread. Violations come back as
    /// [`EventError::Invalid`] with their lines; DOCTYPEs are refused as for events.
    pub fn validate_document_blocking(&self, schema: &std::sync::Arc<str>, xml: &[u8]) -> Result<(), EventError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::ValidateDocument { schema: schema.clone(), xml: xml.to_vec(), reply })
            .map_err(|_| EventError::ValidatorStopped)?;
        rx.blocking_recv().map_err(|_| EventError::ValidatorStopped)?
    }

    fn submit(&self, xml: &[u8]) -> Result<oneshot::Receiver<Result<String, EventError>>, EventError> {
        if xml.len() > MAX_EVENT_BYTES {
            return Err(EventError::TooLarge(xml.len()));
        }
        let (reply, rx) = oneshot::channel();
        self.jobs.send(Job::Validate { xml: xml.to_vec(), reply }).map_err(|_| EventError::ValidatorStopped)?;
        Ok(rx)
    }
}

fn collect_sources(extra_dirs: &[PathBuf]) -> Result<BTreeMap<String, String>, EventError> {
    let mut sources: BTreeMap<String, String> =
        BUILTIN_SCHEMAS.iter().map(|(name, text)| ((*name).to_owned(), (*text).to_owned())).collect();
    for dir in extra_dirs {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| EventError::Schema(format!("cannot read schema folder {}: {e}", dir.display())))?;
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "xsd")) {
            let Some(name) = event_type_name(&path) else {
                return Err(EventError::Schema(format!(
                    "{}: the file name must be the event type (letters, digits, '_')",
                    path.display()
                )));
            };
            if sources.contains_key(&name) {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| EventError::Schema(format!("cannot read {}: {e}", path.display())))?;
            sources.insert(name, text);
        }
    }
    Ok(sources)
}

fn event_type_name(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    let ok = stem.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    ok.then(|| stem.to_owned())
}

fn envelope_schema(types: &[&String]) -> String {
    let includes: String = types.iter().map(|t| format!("  <xs:include schemaLocation=\"{t}.xsd\"/>\n")).collect();
    let choices: String = types.iter().map(|t| format!("        <xs:element ref=\"{t}\"/>\n")).collect();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns="{EVENT_NAMESPACE}"
           targetNamespace="{EVENT_NAMESPACE}" elementFormDefault="qualified">
{includes}  <xs:element name="Event">
    <xs:complexType>
      <xs:choice>
{choices}      </xs:choice>
    </xs:complexType>
  </xs:element>
</xs:schema>
"#
    )
}

/// Held (shared) by every validator thread while it calls into libxml2; taken for good
/// by [`quiesce`]. Exiting the process runs libxml2's library destructors, and a thread
/// still inside libxml2 then crashes the process (seen as SIGSEGV at the end of one-shot
/// runs); with the gate closed no thread is inside, and none enters again.
static LIBXML_IN_USE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Waits until no thread is inside libxml2 and keeps every thread out from then on. Call
/// it last thing before the process exits; validations asked for after it never finish.
pub fn quiesce() {
    let guard = LIBXML_IN_USE.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    std::mem::forget(guard);
}

/// Runs `work` with the libxml2 gate held open (see [`quiesce`]).
fn inside_libxml<T>(work: impl FnOnce() -> T) -> T {
    let _in_use = LIBXML_IN_USE.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    work()
}

/// What the thread keeps of libxml2 between jobs.
struct LibxmlState {
    events: SchemaValidationContext,
    parser: Parser,
    /// Other documents' schemas, by their text; there are few (object descriptions).
    others: HashMap<std::sync::Arc<str>, SchemaValidationContext>,
}

fn validator_thread(
    sources: BTreeMap<String, String>,
    jobs: mpsc::Receiver<Job>,
    ready: mpsc::Sender<Result<(), EventError>>,
) {
    let started = inside_libxml(|| {
        build_context(&sources).map(|events| LibxmlState { events, parser: Parser::default(), others: HashMap::new() })
    });
    let mut state = match started {
        Ok(state) => {
            let _ = ready.send(Ok(()));
            state
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    while let Some(job) = next_job(&jobs) {
        inside_libxml(|| run_job(&mut state, job));
    }
    // Freeing is a libxml2 call too.
    inside_libxml(|| drop(state));
}

fn run_job(state: &mut LibxmlState, job: Job) {
    match job {
        Job::Validate { xml, reply } => {
            let _ = reply.send(validate_one(&state.parser, &mut state.events, &xml));
        }
        Job::ValidateDocument { schema, xml, reply } => {
            let result = match state.others.entry(schema) {
                std::collections::hash_map::Entry::Occupied(entry) => Ok(entry.into_mut()),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    compile_schema_text(entry.key()).map(|compiled| entry.insert(compiled))
                }
            }
            .and_then(|compiled| check_document(&state.parser, compiled, &xml).map(|_| ()));
            let _ = reply.send(result);
        }
        Job::Reload { sources, reply } => {
            let _ = reply.send(build_context(&sources).map(|fresh| state.events = fresh));
        }
    }
}

/// Waits for the next job. Events come in bursts, and waking a parked thread costs more
/// than validating an event, so after each job the thread keeps looking for a short
/// while before it parks.
fn next_job(jobs: &mpsc::Receiver<Job>) -> Option<Job> {
    let spin_until = std::time::Instant::now() + std::time::Duration::from_micros(200);
    loop {
        match jobs.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if std::time::Instant::now() < spin_until => std::thread::yield_now(),
            Err(mpsc::TryRecvError::Empty) => return jobs.recv().ok(),
        }
    }
}

fn build_context(sources: &BTreeMap<String, String>) -> Result<SchemaValidationContext, EventError> {
    // libxml2 resolves xs:include against files, so the set is written to a private
    // folder that lives only while the schema is compiled.
    let dir = tempfile::tempdir().map_err(|e| EventError::Schema(format!("cannot create a temporary folder: {e}")))?;
    for (name, text) in sources {
        std::fs::write(dir.path().join(format!("{name}.xsd")), text)
            .map_err(|e| EventError::Schema(format!("cannot stage {name}.xsd: {e}")))?;
    }
    let names: Vec<&String> = sources.keys().collect();
    let envelope = dir.path().join("Event.envelope.xsd");
    std::fs::write(&envelope, envelope_schema(&names))
        .map_err(|e| EventError::Schema(format!("cannot stage the envelope schema: {e}")))?;
    let mut parser_ctx = SchemaParserContext::from_file(&envelope.to_string_lossy());
    SchemaValidationContext::from_parser(&mut parser_ctx).map_err(|errors| {
        let text: Vec<String> = errors
            .iter()
            .map(|e| {
                let file =
                    e.filename.as_deref().map(|f| Path::new(f).file_name().map(|n| n.to_string_lossy().into_owned()));
                format!(
                    "{}{}: {}",
                    file.flatten().unwrap_or_default(),
                    e.line.map(|l| format!(":{l}")).unwrap_or_default(),
                    e.message.as_deref().unwrap_or("unknown error").trim()
                )
            })
            .collect();
        EventError::Schema(text.join("; "))
    })
}

fn validate_one(parser: &Parser, ctx: &mut SchemaValidationContext, xml: &[u8]) -> Result<String, EventError> {
    let doc = check_document(parser, ctx, xml)?;
    let root = doc.get_root_element().ok_or_else(|| EventError::Malformed("empty document".into()))?;
    root.get_child_elements()
        .first()
        .map(|child| child.get_name())
        .ok_or_else(|| EventError::Malformed("<Event> has no child element".into()))
}

/// Compiles a standalone XSD given as text (it may not include other files).
fn compile_schema_text(text: &str) -> Result<SchemaValidationContext, EventError> {
    let mut parser_ctx = SchemaParserContext::from_buffer(text.as_bytes());
    SchemaValidationContext::from_parser(&mut parser_ctx).map_err(|errors| {
        let text: Vec<String> = errors
            .iter()
            .map(|e| {
                let line = e.line.map(|l| format!("line {l}: ")).unwrap_or_default();
                format!("{line}{}", e.message.as_deref().unwrap_or("unknown error").trim())
            })
            .collect();
        EventError::Schema(text.join("; "))
    })
}

fn check_document(
    parser: &Parser,
    ctx: &mut SchemaValidationContext,
    xml: &[u8],
) -> Result<libxml::tree::Document, EventError> {
    // Reject document type declarations outright: events never need them, and they are
    // how entity-expansion and external-entity attacks start.
    if contains_doctype(xml) {
        return Err(EventError::Malformed("document type declarations are not allowed".into()));
    }
    let options = ParserOptions { recover: false, no_net: true, ..ParserOptions::default() };
    let (doc, _) = parser
        .parse_string_with_diagnostics(xml, options)
        .map_err(|failure| EventError::Malformed(format!("{failure:?}")))?;
    ctx.validate_document(&doc).map_err(|errors| {
        EventError::Invalid(
            errors
                .into_iter()
                .map(|e| {
                    let message = e.message.unwrap_or_else(|| "unknown violation".into()).trim().to_owned();
                    Violation { line: e.line, element: element_of(&message), message }
                })
                .collect(),
        )
    })?;
    Ok(doc)
}

/// libxml2 starts schema messages with `Element '{namespace}Name': …`.
fn element_of(message: &str) -> Option<String> {
    let rest = message.strip_prefix("Element '")?;
    let name = &rest[..rest.find('\'')?];
    Some(name.rsplit('}').next().unwrap_or(name).to_owned())
}

fn contains_doctype(xml: &[u8]) -> bool {
    xml.windows(9).any(|w| w.eq_ignore_ascii_case(b"<!DOCTYPE"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::PresenceEvent;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().map(|rt| rt.block_on(f)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn validates_presence_and_rejects_bad_events() {
        let validator = EventValidator::start(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(validator.types().iter().any(|t| t == "Call"), "{:?}", validator.types());
        assert_eq!(validator.types().len(), 16);
        let status = PresenceEvent::Status { id: "n1".into(), load: 1.5, workers: 2 }.to_xml();
        assert_eq!(block_on(validator.validate(status.as_bytes())), Ok("NodeStatus".to_owned()));

        let wrong = format!(
            "<Event xmlns=\"{EVENT_NAMESPACE}\"><NodeStatus><Id>n1</Id><Load>x</Load><Workers>1</Workers></NodeStatus></Event>"
        );
        let Err(EventError::Invalid(v)) = block_on(validator.validate(wrong.as_bytes())) else { panic!("accepted") };
        assert!(v[0].message.contains("Load"), "{v:?}");
        assert_eq!(v[0].element.as_deref(), Some("Load"));
        assert_eq!(v[0].line, Some(1));

        let unknown = format!("<Event xmlns=\"{EVENT_NAMESPACE}\"><Nope/></Event>");
        assert!(matches!(block_on(validator.validate(unknown.as_bytes())), Err(EventError::Invalid(_))));
        let foreign_ns = "<Event xmlns=\"urn:other\"><NodeLeave><Id>a</Id></NodeLeave></Event>";
        assert!(matches!(block_on(validator.validate(foreign_ns.as_bytes())), Err(EventError::Invalid(_))));
        assert!(matches!(block_on(validator.validate(b"<Event>")), Err(EventError::Malformed(_))));
        let bomb = b"<!DOCTYPE l [<!ENTITY a \"aaaa\">]><Event/>";
        assert!(matches!(block_on(validator.validate(bomb)), Err(EventError::Malformed(_))));
    }

    #[test]
    fn a_dropped_in_schema_is_valid_after_a_reload() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let validator = EventValidator::start(&[dir.path().to_owned()]).unwrap_or_else(|e| panic!("{e}"));
        let event = format!("<Event xmlns=\"{EVENT_NAMESPACE}\"><Backup><Host>h1</Host></Backup></Event>");
        assert!(block_on(validator.validate(event.as_bytes())).is_err());
        let xsd = format!(
            r#"<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="{EVENT_NAMESPACE}" xmlns="{EVENT_NAMESPACE}" elementFormDefault="qualified">
                 <xs:element name="Backup"><xs:complexType><xs:sequence><xs:element name="Host" type="xs:string"/></xs:sequence></xs:complexType></xs:element>
               </xs:schema>"#
        );
        std::fs::write(dir.path().join("Backup.xsd"), &xsd).unwrap_or_else(|e| panic!("{e}"));
        let types = block_on(validator.reload()).unwrap_or_else(|e| panic!("{e}"));
        assert!(types.contains(&"Backup".to_owned()));
        assert_eq!(block_on(validator.validate(event.as_bytes())), Ok("Backup".to_owned()));

        // A broken schema is refused and the running set stays.
        std::fs::write(dir.path().join("Broken.xsd"), "<xs:schema").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(block_on(validator.reload()), Err(EventError::Schema(_))));
        assert_eq!(block_on(validator.validate(event.as_bytes())), Ok("Backup".to_owned()));
    }
}
