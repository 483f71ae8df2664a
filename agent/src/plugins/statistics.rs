//! Call statistics: subscribes to `Call` events and answers `callStatistics()` — calls
//! and the missed-call ratio per extension (the callee) and per hour.
//!
//! A call is counted once per call id however many events it produced (an incoming
//! call that is then missed is one missed call).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use clacks_core::bus::Bus;
use clacks_core::command::CommandResult;
use clacks_core::events::open_envelope;
use serde::Serialize;

#[derive(Default)]
struct Calls {
    /// Call id → (extension, hour, missed).
    by_id: HashMap<String, (String, String, bool)>,
}

/// One row of `callStatistics()`.
#[derive(Debug, Serialize, PartialEq, clacks_core::ResultSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatisticsRow {
    /// The called extension.
    pub extension: String,
    /// The hour the calls started in, `YYYY-MM-DDTHH`.
    pub hour: String,
    /// Calls to the extension in that hour.
    pub calls: u64,
    /// Of which missed.
    pub missed: u64,
    /// missed / calls.
    pub missed_ratio: f64,
}

/// The `statistics` plugin.
pub struct StatisticsPlugin {
    calls: Arc<Mutex<Calls>>,
}

impl StatisticsPlugin {
    /// Subscribes to `Call` events on `bus` and starts counting.
    pub async fn start(
        bus: &Bus,
        validator: clacks_core::events::EventValidator,
    ) -> Result<Arc<StatisticsPlugin>, clacks_core::bus::BusError> {
        let mut events =
            clacks_core::events::filter::subscribe(bus, &validator, &["Call".to_owned()], Default::default()).await?;
        let calls: Arc<Mutex<Calls>> = Arc::default();
        let counting = calls.clone();
        tokio::spawn(async move {
            while let Some(message) = events.recv().await {
                // Validated on arrival; the checks below only pick the fields.
                let Ok(call) = open_envelope(&message.body) else { continue };
                let (Ok(id), Ok(kind), Ok(callee), Ok(started)) = (
                    call.child_text("Id"),
                    call.child_text("Type"),
                    call.child_text("Callee"),
                    call.child_text("Started"),
                ) else {
                    continue;
                };
                let hour = started.get(..13).unwrap_or(started).to_owned();
                let mut calls = counting.lock().unwrap_or_else(PoisonError::into_inner);
                let entry = calls.by_id.entry(id.to_owned()).or_insert_with(|| (callee.to_owned(), hour, false));
                entry.2 |= kind == "missed";
            }
        });
        Ok(Arc::new(StatisticsPlugin { calls }))
    }

    /// The current table.
    pub fn rows(&self) -> Vec<StatisticsRow> {
        let calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        let mut table: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        for (extension, hour, missed) in calls.by_id.values() {
            let cell = table.entry((extension.clone(), hour.clone())).or_default();
            cell.0 += 1;
            cell.1 += u64::from(*missed);
        }
        table
            .into_iter()
            .map(|((extension, hour), (calls, missed))| StatisticsRow {
                extension,
                hour,
                calls,
                missed,
                missed_ratio: if calls == 0 { 0.0 } else { (missed as f64 / calls as f64 * 1000.0).round() / 1000.0 },
            })
            .collect()
    }
}

#[clacks_core::plugin(target = "statistics")]
impl StatisticsPlugin {
    /// Calls and missed-call ratio per extension and hour, from the Call events seen since this node started.
    #[command(idempotent)]
    fn call_statistics(&self) -> CommandResult<Vec<StatisticsRow>> {
        Ok(self.rows())
    }
}
