//! Stands in for the SFU processes of a pool: renews a heartbeat Lease for each of
//! its pods (as the real SFU does), with a load the test sets per pod.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use switchboard_heartbeat::{Heartbeat, Load, POOL_LABEL, SfuState};

#[derive(Default)]
struct Shared {
    participants: HashMap<String, u32>,
    packets_per_second: HashMap<String, u64>,
    silenced: HashSet<String>,
    endpoints: HashMap<String, String>,
}

/// Heartbeats for every pod of one pool until dropped.
pub struct SimulatedSfus {
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl SimulatedSfus {
    pub fn start(client: Client, namespace: &str, pool: &str, interval: Duration) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (ns, pool, state) = (namespace.to_owned(), pool.to_owned(), shared.clone());
        let task = tokio::spawn(async move {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
            let selector = format!("{POOL_LABEL}={pool}");
            loop {
                if let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await {
                    let mut beats = Vec::new();
                    for pod in list.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
                        let name = pod.name_any();
                        let (participants, packets_per_second, silenced, endpoint) = {
                            let s = state.lock().unwrap();
                            (
                                s.participants.get(&name).copied().unwrap_or(0),
                                s.packets_per_second.get(&name).copied().unwrap_or(0),
                                s.silenced.contains(&name),
                                s.endpoints.get(&name).cloned(),
                            )
                        };
                        if silenced {
                            continue;
                        }
                        let ip =
                            pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_else(|| "127.0.0.1".into());
                        let load = Load {
                            participants,
                            rooms: participants.div_ceil(10),
                            packets_per_second,
                            ..Default::default()
                        };
                        let endpoint = endpoint.unwrap_or_else(|| format!("http://{ip}:7880"));
                        let beat = Heartbeat::new(SfuState::Ready, endpoint, load);
                        let lease = beat.to_lease(&ns, &name, &pool, jiff::Timestamp::now(), Duration::from_secs(10));
                        let leases = &leases;
                        beats.push(async move {
                            let _ = leases
                                .patch(&name, &PatchParams::apply("simulated-sfu").force(), &Patch::Apply(&lease))
                                .await;
                        });
                    }
                    // Every pod beats each round, as every real SFU beats on its own: one
                    // slow write must not make the pods after it miss their heartbeat
                    // timeout (the tests set 4 s).
                    futures::stream::iter(beats).buffer_unordered(16).collect::<Vec<()>>().await;
                }
                tokio::time::sleep(interval).await;
            }
        });
        Self { shared, task }
    }

    /// Sets the participants a pod reports.
    pub fn set_participants(&self, pod: &str, participants: u32) {
        self.shared.lock().unwrap().participants.insert(pod.into(), participants);
    }

    /// Sets the RTP packet rate a pod reports.
    pub fn set_packet_rate(&self, pod: &str, packets_per_second: u64) {
        self.shared.lock().unwrap().packets_per_second.insert(pod.into(), packets_per_second);
    }

    /// Makes a pod's heartbeat name `endpoint` (an SFU running in the test process), so
    /// meetings the operator places on the pod get real media.
    pub fn set_endpoint(&self, pod: &str, endpoint: &str) {
        self.shared.lock().unwrap().endpoints.insert(pod.into(), endpoint.into());
    }

    /// Stops heartbeats of one pod, as if its SFU process died.
    pub fn silence(&self, pod: &str) {
        self.shared.lock().unwrap().silenced.insert(pod.into());
    }
}

impl Drop for SimulatedSfus {
    fn drop(&mut self) {
        self.task.abort();
    }
}
