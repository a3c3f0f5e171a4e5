//! Reconciles admitted in the order they were asked for.
//!
//! kube-runtime's controller keeps the reconciles beyond its concurrency limit in a
//! `HashSet` and starts an arbitrary one whenever a slot frees. Under a backlog, some
//! objects wait as long as the backlog lasts while newer ones go first (the figures:
//! BENCHMARKS.md, "Meeting controller"). So the controllers run without
//! kube-runtime's limit and take a permit here first; a tokio
//! `Semaphore` hands permits out first come, first served. A reconcile waiting here is
//! small (its object and the context): the work itself is built once admitted.

use std::future::Future;
use std::sync::Arc;

use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone)]
pub struct Admission(Arc<Semaphore>);

impl Admission {
    /// At most `concurrent` admitted reconciles at a time.
    pub fn new(concurrent: usize) -> Self {
        Self(Arc::new(Semaphore::new(concurrent)))
    }

    /// Waits for a turn, in arrival order. `None` once [`close`](Self::close)d: the
    /// controller is shutting down and the reconcile should end at once.
    pub async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().acquire_owned().await.ok()
    }

    /// A turn for the reconcile of `object`, and the object as the cache has it now
    /// (it may have changed while the reconcile waited). `None`: closed, or the
    /// object is gone; the reconcile has nothing to do.
    pub async fn admit_latest<K>(&self, store: &Store<K>, object: &K) -> Option<(OwnedSemaphorePermit, Arc<K>)>
    where
        K: Resource + Clone + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        let turn = self.admit().await?;
        Some((turn, store.get(&ObjectRef::from_obj(object))?))
    }

    /// Turns every waiting and later reconcile away (graceful shutdown waits for them).
    pub fn close(&self) {
        self.0.close();
    }

    /// `shutdown`, closing the admission when it resolves: a controller's
    /// `graceful_shutdown_on` then does not wait for reconciles still waiting a turn.
    pub fn close_on(
        &self,
        shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    ) -> impl Future<Output = ()> + Send + Sync + 'static {
        let admission = self.clone();
        async move {
            shutdown.await;
            admission.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn waiters_are_admitted_in_arrival_order_and_turned_away_once_closed() {
        let admission = Admission::new(2);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..8u32 {
            let (admission, order) = (admission.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = admission.admit().await.expect("open");
                order.lock().unwrap().push(i);
                // Later arrivals finish sooner: order must still follow arrival.
                tokio::time::sleep(Duration::from_millis(100 - 10 * u64::from(i))).await;
            }));
            // Arrivals one after another, while the first two hold both permits.
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());

        let held = admission.admit().await.expect("open");
        let _other = admission.admit().await.expect("open");
        let waiter = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit().await.is_none() }
        });
        tokio::task::yield_now().await;
        admission.close();
        assert!(waiter.await.unwrap(), "a waiter is turned away on close");
        drop(held);
        assert!(admission.admit().await.is_none(), "no admission after close");
    }
}
