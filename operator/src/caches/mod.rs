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
