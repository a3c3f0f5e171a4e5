//! The Switchboard operator: kube-rs controllers behind Lease-based leader
//! election, with Prometheus metrics and health endpoints.

pub mod admission;
pub mod api_client;
pub mod conditions;
pub mod config;
pub mod crd_install;
pub mod events;
pub mod health;
pub mod http;
pub mod labels;
pub mod leader;
pub mod meeting;
pub mod metrics;
pub mod recording_job;
pub mod remediation;
pub mod sfu_pool;
pub mod signaling_pool;

use std::future::Future;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};

pub use config::OperatorConfig;
pub use metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    /// A low-cardinality label for the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 403 => "forbidden",
            Error::Kube(kube::Error::Api(s)) if s.code == 422 => "invalid",
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "transport",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Health as `/readyz` reports it.
#[derive(Clone, Default)]
pub struct Health {
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, std::sync::atomic::Ordering::Relaxed);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Runs the operator: waits to lead, then runs every controller until `shutdown`
/// resolves (then releases leadership) or leadership is lost (then returns an
/// error, and the process should exit so that it restarts as a standby).
pub async fn run(
    client: Client,
    config: OperatorConfig,
    metrics: Metrics,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Fail fast, before election, when the API server is unreachable or the CRDs are missing.
    let probe: Api<switchboard_crds::SfuPool> = match &config.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    probe.list(&kube::api::ListParams::default().limit(1)).await?;
    health.set_ready(true);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let leases: Api<Lease> = Api::namespaced(client.clone(), &config.leader_namespace);
    let mut elector = leader::LeaderElector::new(leases, &config.leader_lease, &config.identity, config.lease_duration);
    tokio::select! {
        _ = elector.acquire() => {}
        _ = stopped(stop_rx.clone()) => return Ok(()),
    }
    metrics.leader.set(1);

    let controllers = run_controllers(client.clone(), config.clone(), metrics.clone(), stop_rx.clone());
    tokio::pin!(controllers);
    let result = tokio::select! {
        lost = elector.hold() => {
            metrics.leader.set(0);
            tracing::error!(reason = %lost, "lost leadership; stopping");
            Err(anyhow::anyhow!(lost))
        }
        _ = &mut controllers => {
            // The controllers end only on shutdown: in-flight reconciles have finished.
            elector.release().await;
            Ok(())
        }
    };
    metrics.leader.set(0);
    result
}

/// Changed Meetings held for the slowest subscriber before the watch waits for it.
const MEETING_EVENTS_BUFFER: usize = 1024;

/// Every controller, sharing one cache per watched kind, until `stop` turns true.
async fn run_controllers(
    client: Client,
    config: OperatorConfig,
    metrics: Metrics,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    use futures::{StreamExt, stream};
    use kube::ResourceExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let (pools, meetings): (Api<switchboard_crds::SfuPool>, Api<switchboard_crds::Meeting>) =
        match &config.watch_namespace {
            Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
    let (pool_store, writer) = reflector::store();
    let pool_stream = watcher(pools, watcher::Config::default())
        .default_backoff()
        .modify(|p: &mut switchboard_crds::SfuPool| p.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects();
    // One watch of Meetings for every controller that reads them: each subscriber is
    // handed the changed Meetings from the one cache (a second watch doubled the
    // decoding of every Meeting event, in the operator and in the API server). A
    // subscriber that is never polled would stall the others: subscribe only for the
    // controllers this replica runs.
    let (meeting_store, writer) = reflector::store_shared(MEETING_EVENTS_BUFFER);
    let only = |name: &'static str| config.runs(name);
    let subscribe = |name: &'static str| only(name).then(|| writer.subscribe().expect("a shared store"));
    let (meeting_events, recording_events) = (subscribe("meeting"), subscribe("recordingjob"));
    let (meeting_events, recording_events) =
        (stream::iter(meeting_events).flatten(), stream::iter(recording_events).flatten());
    let meeting_watch = watcher(meetings, watcher::Config::default())
        .default_backoff()
        .modify(|m: &mut switchboard_crds::Meeting| m.managed_fields_mut().clear())
        .reflect_shared(writer)
        .take_until(stopped(stop.clone()))
        .for_each(|event| async move {
            if let Err(e) = event {
                tracing::warn!(error = %e, "meeting watch");
            }
        });
    let watches = sfu_pool::Watches::new(&client, &config);
    let caches =
        health::Caches { pods: watches.pods.clone(), leases: watches.leases.clone(), nodes: watches.nodes.clone() };
    let shared = meeting::Shared { meetings: meeting_store.clone(), pools: pool_store.clone(), caches: caches.clone() };
    let (trigger_tx, trigger_rx) = futures::channel::mpsc::unbounded();
    let (fault_tx, fault_rx) = futures::channel::mpsc::unbounded();
    let reporter = kube::runtime::events::Reporter {
        controller: labels::FIELD_MANAGER.into(),
        instance: Some(config.identity.clone()),
    };
    let detector = remediation::Detector {
        client: client.clone(),
        caches,
        pools: pool_store.clone(),
        metrics: metrics.clone(),
        events: events::Queue::start(kube::runtime::events::Recorder::new(client.clone(), reporter)),
        meetings: fault_tx,
        pools_to_plan: trigger_tx.clone(),
    };
    let detector = detector.run(stopped(stop.clone()));
    let pools = sfu_pool::run(
        client.clone(),
        config.clone(),
        metrics.clone(),
        watches,
        pool_stream,
        pool_store,
        meeting_store.clone(),
        trigger_rx,
        stopped(stop.clone()),
    );
    let signaling = signaling_pool::run(client.clone(), config.clone(), metrics.clone(), stopped(stop.clone()));
    let recordings = recording_job::run(
        client.clone(),
        config.clone(),
        metrics.clone(),
        recording_events,
        meeting_store.clone(),
        stopped(stop.clone()),
    );
    let meetings =
        meeting::run(client, config.clone(), metrics, meeting_events, shared, trigger_tx, fault_rx, stopped(stop));
    // Futures do nothing until polled: a controller left out is never started.
    let controllers = futures::future::join5(
        async {
            if only("sfupool") {
                pools.await
            }
        },
        async {
            if only("meeting") {
                meetings.await
            }
        },
        async {
            if only("remediation") {
                detector.await
            }
        },
        async {
            if only("signalingpool") {
                signaling.await
            }
        },
        async {
            if only("recordingjob") {
                recordings.await
            }
        },
    );
    futures::future::join(meeting_watch, controllers).await;
}
