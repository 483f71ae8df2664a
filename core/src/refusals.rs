//! Remembering who was refused, so that a hostile sender repeating itself fills neither
//! the log nor memory: the first refusal of each sender is a warning, the rest are debug
//! lines, and at most [`MAX_REMEMBERED`] senders are remembered.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

/// How many distinct senders are remembered; past that every refusal is a debug line.
pub const MAX_REMEMBERED: usize = 256;

/// Senders refused so far.
#[derive(Debug, Default)]
pub struct Refusals {
    seen: Mutex<HashSet<String>>,
}

impl Refusals {
    /// Whether this is the first refusal of `sender` (it should be logged as a warning).
    pub fn first(&self, sender: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.len() < MAX_REMEMBERED && seen.insert(sender.to_owned())
    }

    /// Logs the refusal of `sender`: a warning the first time, debug after.
    pub fn log(&self, sender: Option<&str>, what: &str, why: &str) {
        let sender = sender.unwrap_or("(no user_id)");
        if self.first(sender) {
            tracing::warn!(%sender, %what, "{why} (further ones from this sender are logged at debug level)");
        } else {
            tracing::debug!(%sender, %what, "{why}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sender_is_first_once_and_memory_is_bounded() {
        let refusals = Refusals::default();
        assert!(refusals.first("mallory"));
        assert!(!refusals.first("mallory"));
        for i in 0..MAX_REMEMBERED * 2 {
            refusals.first(&format!("sender-{i}"));
        }
        assert_eq!(refusals.seen.lock().expect("lock").len(), MAX_REMEMBERED);
        assert!(!refusals.first("someone new"));
    }
}
