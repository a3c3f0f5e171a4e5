//! Our own writes, remembered until the caches show them.
//!
//! A controller reads the caches, and the caches trail the API server: right after
//! it creates a pod, places a meeting or writes a migration, the next reconcile can
//! still see the world before that write and would do it again (a second pod, a
//! second placement, a second move). So each such write is expected here, and a
//! reconcile that finds an expectation its cache does not yet satisfy waits instead
//! of acting. An expectation not satisfied within the timeout is forgotten: the
//! write was lost or undone, and acting again is right. (client-go's controllers
//! use the same idea, `ControllerExpectations`.)
//!
//! Pure: time is passed in, so the rule is unit-tested without a cluster.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Expected writes of type `E`, per object key.
pub struct Expectations<E> {
    timeout: Duration,
    by_key: Mutex<HashMap<String, Vec<(E, Instant)>>>,
}

impl<E: Clone> Expectations<E> {
    /// Expectations that are forgotten `timeout` after they were made.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout, by_key: Mutex::default() }
    }

    /// Remembers that a write `expected` of `key` was made at `now`.
    pub fn expect(&self, key: &str, expected: E, now: Instant) {
        self.by_key.lock().expect("lock").entry(key.to_owned()).or_default().push((expected, now));
    }

    /// The expectations of `key` the caches do not show yet: those `seen` says the
    /// caches show, and those past the timeout, are forgotten.
    pub fn pending(&self, key: &str, now: Instant, seen: impl Fn(&E) -> bool) -> Vec<E> {
        let mut by_key = self.by_key.lock().expect("lock");
        let Some(list) = by_key.get_mut(key) else { return Vec::new() };
        list.retain(|(e, at)| now.saturating_duration_since(*at) < self.timeout && !seen(e));
        let pending: Vec<E> = list.iter().map(|(e, _)| e.clone()).collect();
        if list.is_empty() {
            by_key.remove(key);
        }
        pending
    }

    /// Forgets every expectation of the objects `keep` rejects (objects that are gone).
    pub fn retain_keys(&self, keep: impl Fn(&str) -> bool) {
        self.by_key.lock().expect("lock").retain(|k, _| keep(k));
    }

    /// Objects with expectations, for bounding memory.
    pub fn len(&self) -> usize {
        self.by_key.lock().expect("lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    enum Write {
        Created(&'static str),
        Deleted(&'static str),
    }

    #[test]
    fn pending_until_seen_or_timed_out() {
        let t0 = Instant::now();
        let e = Expectations::new(Duration::from_secs(30));
        e.expect("ns/pool", Write::Created("a"), t0);
        e.expect("ns/pool", Write::Deleted("b"), t0);
        // The cache shows neither write yet.
        assert_eq!(e.pending("ns/pool", t0, |_| false), vec![Write::Created("a"), Write::Deleted("b")]);
        // Another object has none.
        assert!(e.pending("ns/other", t0, |_| false).is_empty());
        // The creation shows; the deletion does not.
        let seen = |w: &Write| *w == Write::Created("a");
        assert_eq!(e.pending("ns/pool", t0 + Duration::from_secs(1), seen), vec![Write::Deleted("b")]);
        // Once seen, forgotten even if the cache goes back.
        assert_eq!(e.pending("ns/pool", t0 + Duration::from_secs(2), |_| false), vec![Write::Deleted("b")]);
        // Past the timeout: forgotten, and the key with it.
        assert!(e.pending("ns/pool", t0 + Duration::from_secs(30), |_| false).is_empty());
        assert!(e.is_empty());
    }

    #[test]
    fn gone_objects_are_forgotten() {
        let t0 = Instant::now();
        let e = Expectations::new(Duration::from_secs(30));
        e.expect("ns/a", Write::Created("x"), t0);
        e.expect("ns/b", Write::Created("y"), t0);
        e.retain_keys(|k| k == "ns/b");
        assert_eq!(e.len(), 1);
        assert_eq!(e.pending("ns/b", t0, |_| false), vec![Write::Created("y")]);
    }
}
