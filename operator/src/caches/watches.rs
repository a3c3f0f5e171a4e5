//! The watches behind [`Caches`]: started once, each feeding one cache, and the
//! streams of changed objects the controllers are triggered by.

use futures::stream::BoxStream;
use futures::{StreamExt, stream};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use switchboard_crds::{Meeting, SfuPool};

use super::Caches;
use crate::OperatorConfig;
use crate::labels::*;

/// Changed Meetings held for the slowest subscriber before the watch waits for it.
const MEETING_EVENTS_BUFFER: usize = 1024;

/// The Meetings that changed, from the one Meeting cache.
pub type MeetingEvents = stream::Flatten<stream::Iter<std::option::IntoIter<reflector::ReflectHandle<Meeting>>>>;

pub type Changes<K> = BoxStream<'static, Result<K, watcher::Error>>;

/// The caches, and the change streams that drive them.
pub struct Watches {
    pub caches: Caches,
    /// Consumed by the SfuPool controller.
    pub pool_changes: PoolChanges,
    /// Subscribed to by the controllers that reconcile on Meeting changes.
    pub meeting_watch: MeetingWatch,
}

/// The changed pods, Leases, nodes and pools: what the SfuPool controller is triggered by.
pub struct PoolChanges {
    pub pods: Changes<Pod>,
    pub leases: Changes<Lease>,
    pub nodes: Changes<Node>,
    pub pools: Changes<SfuPool>,
}

fn api<K>(client: &Client, config: &OperatorConfig) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match &config.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

impl Watches {
    pub fn new(client: &Client, config: &OperatorConfig) -> Self {
        let (pods, pod_writer) = reflector::store();
        let pod_changes = watcher(api::<Pod>(client, config), watcher::Config::default().labels(&sfu_pods_selector()))
            .default_backoff()
            .modify(|p: &mut Pod| p.managed_fields_mut().clear())
            .reflect(pod_writer)
            .touched_objects()
            .boxed();
        let (leases, lease_writer) = reflector::store();
        let lease_changes = watcher(api::<Lease>(client, config), watcher::Config::default().labels(POOL_LABEL))
            .default_backoff()
            .modify(|l: &mut Lease| l.managed_fields_mut().clear())
            .reflect(lease_writer)
            .touched_objects()
            .boxed();
        let (nodes, node_writer) = reflector::store();
        // Full nodes: readiness and cordons are in spec and status (images stripped).
        let node_changes = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .modify(super::slim_node)
            .reflect(node_writer)
            .touched_objects()
            .boxed();
        let (pools, pool_writer) = reflector::store();
        let pool_changes = watcher(api::<SfuPool>(client, config), watcher::Config::default())
            .default_backoff()
            .modify(|p: &mut SfuPool| p.managed_fields_mut().clear())
            .reflect(pool_writer)
            .applied_objects()
            .boxed();
        // One watch of Meetings for every controller that reads them: each subscriber
        // is handed the changed Meetings from the one cache.
        let (meetings, meeting_writer) = reflector::store_shared(MEETING_EVENTS_BUFFER);
        Self {
            caches: Caches { pods, leases, nodes, pools, meetings },
            pool_changes: PoolChanges {
                pods: pod_changes,
                leases: lease_changes,
                nodes: node_changes,
                pools: pool_changes,
            },
            meeting_watch: MeetingWatch { writer: meeting_writer, api: api::<Meeting>(client, config) },
        }
    }
}

impl PoolChanges {
    /// Keeps the caches filling with no controller consuming the changes (a
    /// replica that does not run the SfuPool controller), until `stop` resolves.
    pub async fn fill(self, stop: impl std::future::Future<Output = ()> + Send + 'static) {
        let changes: [BoxStream<'static, ()>; 4] = [
            self.pods.map(|_| ()).boxed(),
            self.leases.map(|_| ()).boxed(),
            self.nodes.map(|_| ()).boxed(),
            self.pools.map(|_| ()).boxed(),
        ];
        stream::select_all(changes).take_until(stop).for_each(|_| async {}).await
    }
}

/// The one watch of Meetings, handing changed Meetings to each subscriber.
pub struct MeetingWatch {
    writer: Writer<Meeting>,
    api: Api<Meeting>,
}

impl MeetingWatch {
    /// The changed Meetings, for one controller. A subscriber that is never polled
    /// stalls the others: subscribe only for the controllers this replica runs
    /// (`wanted` false gives an empty stream).
    pub fn subscribe(&self, wanted: bool) -> MeetingEvents {
        let handle = wanted.then(|| self.writer.subscribe().expect("a shared store"));
        stream::iter(handle).flatten()
    }

    /// Feeds the cache and the subscribers until `stop` resolves.
    pub async fn run(self, stop: impl std::future::Future<Output = ()> + Send + 'static) {
        watcher(self.api, watcher::Config::default())
            .default_backoff()
            .modify(|m: &mut Meeting| m.managed_fields_mut().clear())
            .reflect_shared(self.writer)
            .take_until(stop)
            .for_each(|event| async move {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "meeting watch");
                }
            })
            .await
    }
}
