//! The Switchboard operator: kube-rs controllers behind Lease-based leader
//! election, with Prometheus metrics and health endpoints.

pub mod admission;
pub mod api_client;
pub mod caches;
pub mod conditions;
pub mod config;
pub mod controller;
pub mod crd_install;
pub mod error;
pub mod events;
#[cfg(test)]
pub mod fixtures;
pub mod http;
pub mod labels;
pub mod leader;
pub mod meeting;
pub mod metrics;
pub mod recording_job;
pub mod remediation;
pub mod seats;
pub mod sfu_pool;
pub mod signaling_pool;

use std::future::Future;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};

pub use config::OperatorConfig;
pub use error::{Error, Result};
pub use metrics::Metrics;

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

/// Every controller, sharing one cache per watched kind, until `stop` turns true.
/// Futures do nothing until polled: a controller this replica does not run is
/// never started (`OperatorConfig::runs`).
async fn run_controllers(
    client: Client,
    config: OperatorConfig,
    metrics: Metrics,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let runs = |name: &'static str| config.runs(name);
    let caches::Watches { caches, pool_changes, meeting_watch } = caches::Watches::new(&client, &config);
    let meeting_events = meeting_watch.subscribe(runs("meeting"));
    let recording_events = meeting_watch.subscribe(runs("recordingjob"));
    let (trigger_tx, trigger_rx) = futures::channel::mpsc::unbounded();
    let (fault_tx, fault_rx) = futures::channel::mpsc::unbounded();
    let detector =
        remediation::Detector::new(&client, &config, caches.clone(), metrics.clone(), fault_tx, trigger_tx.clone());
    // The pod, Lease, node and pool watches fill the caches every controller reads:
    // the SfuPool controller drives them, or they run on their own without it.
    let pool_side = {
        let (client, config, metrics, caches, stop) =
            (client.clone(), config.clone(), metrics.clone(), caches.clone(), stop.clone());
        let runs_pools = config.runs("sfupool");
        async move {
            if runs_pools {
                sfu_pool::run(client, config, metrics, caches, pool_changes, trigger_rx, stopped(stop)).await
            } else {
                pool_changes.fill(stopped(stop)).await
            }
        }
    };
    let controllers = futures::future::join5(
        pool_side,
        run_if(
            runs("meeting"),
            meeting::run(
                client.clone(),
                config.clone(),
                metrics.clone(),
                meeting_events,
                caches.clone(),
                trigger_tx,
                fault_rx,
                stopped(stop.clone()),
            ),
        ),
        run_if(runs("remediation"), detector.run(stopped(stop.clone()))),
        run_if(
            runs("signalingpool"),
            signaling_pool::run(client.clone(), config.clone(), metrics.clone(), stopped(stop.clone())),
        ),
        run_if(
            runs("recordingjob"),
            recording_job::run(
                client,
                config.clone(),
                metrics,
                recording_events,
                caches.meetings.clone(),
                stopped(stop.clone()),
            ),
        ),
    );
    futures::future::join(meeting_watch.run(stopped(stop)), controllers).await;
}

async fn run_if(wanted: bool, controller: impl Future<Output = ()>) {
    if wanted {
        controller.await
    }
}
