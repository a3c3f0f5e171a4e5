//! The operator's shared view of the cluster: one watch and one cache per kind,
//! read by every controller (`watches`), what those caches say about an SFU pod's
//! health (`health`), and the one mechanism for the lag between our own writes and
//! the caches (`expectations`).
//!
//! The caches are owned here and only read by the controllers: a second watch of a
//! kind doubles its decoding in the operator and in the API server, and two
//! controllers judging one pod from different caches could disagree.

pub mod expectations;
pub mod health;
mod watches;

use std::sync::Arc;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use switchboard_crds::{Meeting, SfuPool};

pub use expectations::Expectations;
pub use health::{AUTOSCALER_REMOVAL_TAINT, FAILED_NODE_TAINT, ZONE_LABEL, node_view, slim_node, thresholds};
pub use watches::{Changes, MeetingEvents, MeetingWatch, PoolChanges, Watches};

/// The caches every controller reads (cheap to clone: each is a shared store).
#[derive(Clone)]
pub struct Caches {
    /// SFU pods (selected by label).
    pub pods: Store<Pod>,
    /// The SFUs' heartbeat Leases.
    pub leases: Store<Lease>,
    /// Nodes, slimmed (`slim_node`).
    pub nodes: Store<Node>,
    pub pools: Store<SfuPool>,
    pub meetings: Store<Meeting>,
}

impl Caches {
    /// Waits until the pod, Lease, node and pool caches have their first full list:
    /// a controller acting on a cache still filling would see pods as missing and
    /// create pods a pool already has. (The shared Meeting store is not awaited
    /// here: its readiness did not resolve for the Meeting controller's own
    /// reconciles; the ledger sweep keeps its guard against an empty Meeting cache.)
    pub async fn synced(&self) {
        let _ = self.pods.wait_until_ready().await;
        let _ = self.leases.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
        let _ = self.pools.wait_until_ready().await;
    }

    /// The SFU pods of `pool` (its namespace, its label, its controller owner
    /// reference), including those being deleted.
    pub fn pool_pods(&self, pool: &SfuPool) -> Vec<Arc<Pod>> {
        let ns = pool.namespace();
        self.pods
            .state()
            .into_iter()
            .filter(|p| p.namespace() == ns && crate::sfu_pool::build::owned_by(p, pool))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kube::runtime::reflector::{self, store::Writer};
    use kube::runtime::watcher::Event;

    use super::*;

    fn listed<K>(writer: &mut Writer<K>)
    where
        K: kube::Resource + Clone + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitDone);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_synced_until_every_cache_is_listed() {
        let (pods, mut pod_writer) = reflector::store::<Pod>();
        let (leases, mut lease_writer) = reflector::store::<Lease>();
        let (nodes, mut node_writer) = reflector::store::<Node>();
        let (pools, mut pool_writer) = reflector::store::<SfuPool>();
        let (meetings, mut meeting_writer) = reflector::store::<Meeting>();
        let caches = Caches { pods, leases, nodes, pools, meetings };
        // Pods, Leases and nodes listed; pools not yet: a pool reconciled now would
        // see none of its pods.
        listed(&mut pod_writer);
        listed(&mut lease_writer);
        listed(&mut node_writer);
        listed(&mut meeting_writer);
        let waiting = tokio::time::timeout(Duration::from_secs(60), caches.synced()).await;
        assert!(waiting.is_err(), "synced before the pools were listed");
        listed(&mut pool_writer);
        tokio::time::timeout(Duration::from_secs(1), caches.synced()).await.expect("synced once all are listed");
    }
}
