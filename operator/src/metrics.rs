//! Prometheus metrics (prometheus-client), served on `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    /// The pipeline step that failed (`crate::Error::step`).
    pub step: &'static str,
    /// The API server's answer (`crate::Error::kind`).
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub namespace: String,
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodActionLabels {
    pub action: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlacementLabels {
    pub result: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Every metric the operator exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub leader: Gauge,
    pub pool_ready_pods: Family<PoolLabels, Gauge>,
    pub pool_desired_pods: Family<PoolLabels, Gauge>,
    pub pool_max_pods: Family<PoolLabels, Gauge>,
    pub pool_allocated_participants: Family<PoolLabels, Gauge>,
    pub pool_capacity_participants: Family<PoolLabels, Gauge>,
    pub sfu_pod_actions: Family<PodActionLabels, Counter>,
    pub meetings: Family<PhaseLabels, Gauge>,
    pub placements: Family<PlacementLabels, Counter>,
    pub placement_latency: Histogram,
    pub reservations: Gauge,
    pub reservations_made: Counter,
    pub sfu_faults: Family<ReasonLabels, Counter>,
    pub migrations: Family<ReasonLabels, Counter>,
    pub migration_duration: Histogram,
    pub nodes_cordoned: Counter,
    pub evictions: Family<ResultLabels, Counter>,
}

fn reconcile_histogram() -> Histogram {
    Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
}

/// Registers `metric` under `name` and hands it back.
fn register<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

/// Registers a new default metric (a counter, gauge or family) under `name`.
fn new<M>(registry: &mut Registry, name: &str, help: &str) -> M
where
    M: prometheus_client::registry::Metric + Clone + Default,
{
    register(registry, name, help, M::default())
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("switchboard");
        switchboard_metrics_exposition::build_info(&mut r, env!("CARGO_PKG_VERSION"));
        let seconds = |buckets: &[f64]| Histogram::new(buckets.iter().copied());
        let by_controller = Family::new_with_constructor(reconcile_histogram as fn() -> Histogram);
        Self {
            reconciles: new(&mut r, "reconciles", "Reconciles run, by controller"),
            reconcile_errors: new(
                &mut r,
                "reconcile_errors",
                "Reconciles that failed, by controller, failed step and error kind",
            ),
            reconcile_duration: register(&mut r, "reconcile_duration_seconds", "Time a reconcile takes", by_controller),
            leader: new(&mut r, "leader", "1 while this replica leads and reconciles"),
            pool_ready_pods: new(&mut r, "sfupool_ready_pods", "Ready SFU pods of a pool"),
            pool_desired_pods: new(&mut r, "sfupool_desired_pods", "SFU pods a pool aims for"),
            pool_max_pods: new(&mut r, "sfupool_max_pods", "A pool's autoscaling.maxReplicas"),
            pool_allocated_participants: new(
                &mut r,
                "sfupool_allocated_participants",
                "Participants the pool's SFUs report",
            ),
            pool_capacity_participants: new(
                &mut r,
                "sfupool_capacity_participants",
                "Participants the Ready pods hold",
            ),
            sfu_pod_actions: new(&mut r, "sfu_pod_actions", "SFU pods created, drained and deleted, by reason"),
            meetings: new(&mut r, "meetings", "Meetings by phase"),
            placements: new(&mut r, "meeting_placements", "Placement attempts by result and reason"),
            placement_latency: register(
                &mut r,
                "meeting_placement_latency_seconds",
                "Time from a meeting being due (created, or its start) to its assignment",
                seconds(&[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]),
            ),
            reservations: new(&mut r, "meeting_reservations", "Meetings holding a reservation ahead of their start"),
            reservations_made: new(&mut r, "meeting_reservations_made", "Reservations made for scheduled meetings"),
            sfu_faults: new(&mut r, "sfu_faults", "SFU pods found failed or leaving with their node, by reason"),
            migrations: new(&mut r, "meeting_migrations", "Meetings moved off a failed or leaving SFU pod, by reason"),
            migration_duration: register(
                &mut r,
                "meeting_migration_duration_seconds",
                "Time from a fault becoming detectable (its threshold elapsed) to the meeting re-placed",
                seconds(&[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0]),
            ),
            nodes_cordoned: new(&mut r, "nodes_cordoned", "Failed nodes the operator cordoned and tainted"),
            evictions: new(&mut r, "sfu_evictions", "SFU pod evictions through the Eviction API, by result"),
            registry: Arc::new(r),
        }
    }
}

impl Metrics {
    /// The OpenMetrics text (what tests in this process read).
    pub fn encode(&self) -> String {
        self.render(Some(switchboard_metrics_exposition::OPENMETRICS)).1
    }

    /// `/metrics` for a request's Accept header: its Content-Type and body
    /// (OpenMetrics or the classic Prometheus text format, see `switchboard_metrics_exposition`).
    pub fn render(&self, accept: Option<&str>) -> (&'static str, String) {
        switchboard_metrics_exposition::encode(&self.registry, accept)
    }

    pub fn reconciles_of(&self, controller: &'static str) -> u64 {
        self.reconciles.get_or_create(&ControllerLabels { controller }).get()
    }
}
