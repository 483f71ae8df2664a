//! What bounds the HTTP endpoint before and after login: concurrent requests per peer
//! address and per session, and a growing wait between failed logins per user and per
//! address. Everything here is kept in memory of bounded size, so a flood of new peers
//! or invented user names cannot grow it without limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use std::time::Instant;

/// The endpoint's limits (`[http]` in agent.toml).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Entries in one JSON-RPC batch.
    pub max_batch: usize,
    /// Requests in progress from one peer address.
    pub per_peer: usize,
    /// Requests in progress in one session.
    pub per_session: usize,
    /// Body size read before a session exists: enough for `login` and the SASL steps.
    pub unauthenticated_body: usize,
    /// Failed logins per user answered at once; each one after waits twice as long as
    /// the one before, from one second up to [`HttpLimits::max_login_wait`].
    pub free_login_failures: u32,
    /// The same per peer address, where several people may sit behind one (NAT).
    pub free_login_failures_per_peer: u32,
    /// The longest wait after failed logins.
    pub max_login_wait: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_batch: 1000,
            per_peer: 32,
            per_session: 16,
            unauthenticated_body: 16 * 1024,
            free_login_failures: 3,
            free_login_failures_per_peer: 10,
            max_login_wait: Duration::from_secs(60),
        }
    }
}

/// How many keys (peers, sessions, users) the tables below remember at most.
const MAX_KEYS: usize = 100_000;

/// Counts requests in progress per key.
#[derive(Debug, Default)]
pub struct InFlight {
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

/// One request in progress; leaving drops the count.
#[derive(Debug)]
pub struct Pass {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl InFlight {
    /// Enters a request under `key` unless `max` are in progress there already.
    pub fn enter(&self, key: String, max: usize) -> Option<Pass> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.len() >= MAX_KEYS && !counts.contains_key(&key) {
            return None;
        }
        let count = counts.entry(key.clone()).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Pass { counts: self.counts.clone(), key })
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Failed logins per key (`user:NAME`, `peer:ADDRESS`).
#[derive(Debug, Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<String, Failures>>,
}

/// Failures are forgotten after this long without a new one.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

impl LoginThrottle {
    /// How long the keys must still wait before another login may be tried (the
    /// longest of them), or `None` when they may try now.
    pub fn wait(&self, keys: &[String], limits: &HttpLimits) -> Option<Duration> {
        self.wait_at(keys, limits, Instant::now())
    }

    fn wait_at(&self, keys: &[String], limits: &HttpLimits, now: Instant) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        keys.iter()
            .filter_map(|key| Some((key, failures.get(key)?)))
            .filter_map(|(key, f)| {
                let free = if key.starts_with("peer:") {
                    limits.free_login_failures_per_peer
                } else {
                    limits.free_login_failures
                };
                let beyond = f.count.checked_sub(free)?;
                let wait = Duration::from_secs(1u64 << beyond.min(16)).min(limits.max_login_wait);
                (f.last + wait).checked_duration_since(now).filter(|left| !left.is_zero())
            })
            .max()
    }

    /// Counts a failed login for each key.
    pub fn failed(&self, keys: &[String]) {
        self.failed_at(keys, Instant::now());
    }

    fn failed_at(&self, keys: &[String], now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() >= MAX_KEYS {
            failures.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
        }
        for key in keys {
            if failures.len() >= MAX_KEYS && !failures.contains_key(key) {
                continue;
            }
            let entry = failures.entry(key.clone()).or_insert(Failures { count: 0, last: now });
            if now.duration_since(entry.last) >= FORGET_AFTER {
                entry.count = 0;
            }
            entry.count = entry.count.saturating_add(1);
            entry.last = now;
        }
    }

    /// A successful login clears its keys.
    pub fn succeeded(&self, keys: &[String]) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        for key in keys {
            failures.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_in_progress_are_bounded_per_key() {
        let in_flight = InFlight::default();
        let first = in_flight.enter("peer:a".into(), 2);
        let second = in_flight.enter("peer:a".into(), 2);
        assert!(first.is_some() && second.is_some());
        assert!(in_flight.enter("peer:a".into(), 2).is_none());
        assert!(in_flight.enter("peer:b".into(), 2).is_some());
        drop(first);
        assert!(in_flight.enter("peer:a".into(), 2).is_some());
    }

    #[test]
    fn failed_logins_wait_longer_each_time_until_one_succeeds() {
        let (throttle, limits) = (LoginThrottle::default(), HttpLimits::default());
        let keys = vec!["user:ada".to_owned(), "peer:127.0.0.1".to_owned()];
        let peer_only = vec!["user:bob".to_owned(), "peer:127.0.0.1".to_owned()];
        let mut now = Instant::now();
        for _ in 0..limits.free_login_failures {
            assert_eq!(throttle.wait_at(&keys, &limits, now), None);
            throttle.failed_at(&keys, now);
        }
        let mut waits = Vec::new();
        for _ in 0..8 {
            let wait = throttle.wait_at(&keys, &limits, now).unwrap_or_default();
            waits.push(wait.as_secs());
            now += wait;
            assert_eq!(throttle.wait_at(&keys, &limits, now), None);
            throttle.failed_at(&keys, now);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        // Eleven failures from the address: another user there waits too.
        assert!(throttle.wait_at(&peer_only, &limits, now).is_some());
        // Another user from another address is not held up.
        assert_eq!(throttle.wait_at(&["user:bob".into(), "peer:10.0.0.2".into()], &limits, now), None);
        throttle.succeeded(&keys);
        assert_eq!(throttle.wait_at(&keys, &limits, now), None);
    }
}
