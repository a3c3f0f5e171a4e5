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

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("switchboard");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        registry.register("reconciles", "Reconciles run, by controller", reconciles.clone());
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by controller, failed step and error kind",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
        });
        registry.register("reconcile_duration_seconds", "Time a reconcile takes", reconcile_duration.clone());
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica leads and reconciles", leader.clone());
        let pool_ready_pods = Family::<PoolLabels, Gauge>::default();
        registry.register("sfupool_ready_pods", "Ready SFU pods of a pool", pool_ready_pods.clone());
        let pool_desired_pods = Family::<PoolLabels, Gauge>::default();
        registry.register("sfupool_desired_pods", "SFU pods a pool aims for", pool_desired_pods.clone());
        let pool_allocated_participants = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "sfupool_allocated_participants",
            "Participants the pool's SFUs report",
            pool_allocated_participants.clone(),
        );
        let pool_capacity_participants = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "sfupool_capacity_participants",
            "Participants the Ready pods hold",
            pool_capacity_participants.clone(),
        );
        let sfu_pod_actions = Family::<PodActionLabels, Counter>::default();
        registry.register(
            "sfu_pod_actions",
            "SFU pods created, drained and deleted, by reason",
            sfu_pod_actions.clone(),
        );
        let meetings = Family::<PhaseLabels, Gauge>::default();
        registry.register("meetings", "Meetings by phase", meetings.clone());
        let placements = Family::<PlacementLabels, Counter>::default();
        registry.register("meeting_placements", "Placement attempts by result and reason", placements.clone());
        let placement_latency =
            Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]);
        registry.register(
            "meeting_placement_latency_seconds",
            "Time from a meeting being due (created, or its start) to its assignment",
            placement_latency.clone(),
        );
        let reservations = Gauge::default();
        registry.register(
            "meeting_reservations",
            "Meetings holding a reservation ahead of their start",
            reservations.clone(),
        );
        let reservations_made = Counter::default();
        registry.register(
            "meeting_reservations_made",
            "Reservations made for scheduled meetings",
            reservations_made.clone(),
        );
        let sfu_faults = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "sfu_faults",
            "SFU pods found failed or leaving with their node, by reason",
            sfu_faults.clone(),
        );
        let migrations = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "meeting_migrations",
            "Meetings moved off a failed or leaving SFU pod, by reason",
            migrations.clone(),
        );
        let migration_duration = Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0]);
        registry.register(
            "meeting_migration_duration_seconds",
            "Time from a fault becoming detectable (its threshold elapsed) to the meeting re-placed",
            migration_duration.clone(),
        );
        let nodes_cordoned = Counter::default();
        registry.register("nodes_cordoned", "Failed nodes the operator cordoned and tainted", nodes_cordoned.clone());
        let evictions = Family::<ResultLabels, Counter>::default();
        registry.register("sfu_evictions", "SFU pod evictions through the Eviction API, by result", evictions.clone());
        Self {
            registry: Arc::new(registry),
            sfu_faults,
            migrations,
            migration_duration,
            nodes_cordoned,
            evictions,
            meetings,
            placements,
            placement_latency,
            reservations,
            reservations_made,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            leader,
            pool_ready_pods,
            pool_desired_pods,
            pool_allocated_participants,
            pool_capacity_participants,
            sfu_pod_actions,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("metrics encode");
        out
    }

    pub fn reconciles_of(&self, controller: &'static str) -> u64 {
        self.reconciles.get_or_create(&ControllerLabels { controller }).get()
    }
}
