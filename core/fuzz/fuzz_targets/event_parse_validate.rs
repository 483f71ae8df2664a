//! Fuzz target for everything an untrusted event goes through: XSD validation on the
//! libxml2 thread, the envelope and presence-event readers, (for documents that parse)
//! a subscription filter, and the subscriber's path to a script: XML → JSON → Rhai
//! value. Any panic or crash is a bug; errors are expected.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run event_parse_validate` in core/fuzz.

#![no_main]

use std::sync::OnceLock;

use clacks_core::events::filter::CompiledFilter;
use clacks_core::events::{EventValidator, Filter, PresenceEvent, event_json, open_envelope};
use libfuzzer_sys::fuzz_target;

fn validator() -> &'static EventValidator {
    static VALIDATOR: OnceLock<EventValidator> = OnceLock::new();
    VALIDATOR.get_or_init(|| EventValidator::start(&[]).unwrap_or_else(|e| panic!("schemas: {e}")))
}

thread_local! {
    // Compiled filters are not Send; libFuzzer drives the target from one thread.
    static FILTER: CompiledFilter = Filter::parse("/Event/Call[Callee = '100'] or //e:Id = 'x'")
        .and_then(|f| f.compile())
        .unwrap_or_else(|e| panic!("{e}"));
}

fuzz_target!(|data: &[u8]| {
    let _ = validator().validate_blocking(data);
    let _ = open_envelope(data);
    // What a subscriber shows and hands to scripts, valid or not.
    let shown = event_json("Call", data);
    let _ = clacks_scripting::from_json(&shown);
    let _ = PresenceEvent::from_xml(data);
    if std::str::from_utf8(data).is_ok() {
        FILTER.with(|filter| {
            let _ = filter.matches(data);
        });
    }
});
