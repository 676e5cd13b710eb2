//! Coalescing: concurrent misses for one key wait for the first request (the leader); when
//! its response is stored they are served from it, otherwise each goes upstream itself.

use std::{collections::HashMap, sync::Arc, sync::Mutex};

use tokio::sync::watch;

use super::store::Entry;

/// What a leader's fetch came to, for the requests waiting on it.
pub(super) type Outcome = Option<Arc<Entry>>;

/// The misses being fetched, by base key.
#[derive(Default)]
pub(super) struct InFlight(Mutex<HashMap<Arc<str>, watch::Receiver<Option<Outcome>>>>);

impl InFlight {
    /// Becomes the one request fetching `base`, or gets a receiver for that request's
    /// outcome.
    pub(super) fn lead_or_wait(
        self: &Arc<InFlight>,
        base: &Arc<str>,
    ) -> Result<Leader, watch::Receiver<Option<Outcome>>> {
        let mut in_flight = self.lock();
        if let Some(waiting) = in_flight.get(base) {
            return Err(waiting.clone());
        }
        let (done, waiting) = watch::channel(None);
        in_flight.insert(base.clone(), waiting);
        Ok(Leader {
            in_flight: self.clone(),
            base: base.clone(),
            done,
        })
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, watch::Receiver<Option<Outcome>>>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The one request fetching a key: its outcome wakes the waiters; dropped without one
/// (an error, a cancelled request) it tells them to fetch for themselves.
pub struct Leader {
    in_flight: Arc<InFlight>,
    base: Arc<str>,
    done: watch::Sender<Option<Outcome>>,
}

impl Leader {
    pub(super) fn finish(self, outcome: Outcome) {
        self.done.send_replace(Some(outcome));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.in_flight.lock().remove(&self.base);
        if self.done.borrow().is_none() {
            self.done.send_replace(Some(None));
        }
    }
}
