//! Renews the pod's heartbeat Lease with its state and load. Runs on its own task with
//! short timeouts: an unreachable API server costs failed renewals, never media.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use switchboard_heartbeat::{Heartbeat, Load, RENEW_INTERVAL, SfuState};
use switchboard_sfu_api::NodeState;
use tracing::{debug, warn};

use crate::config;
use crate::sfu::Sfu;

const FIELD_MANAGER: &str = "switchboard-sfu";

/// CPU time (user + system) a process used, in seconds, from /proc (`"self"` or a pid).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

pub async fn run(sfu: Arc<Sfu>, cfg: config::Heartbeat, endpoint: String) {
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "no Kubernetes client: the heartbeat is off");
            return;
        }
    };
    let leases: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut last = (Instant::now(), cpu_seconds("self").unwrap_or(0.0), 0u64, 0u64, 0u64);
    let mut tick = tokio::time::interval(RENEW_INTERVAL);
    loop {
        tick.tick().await;
        let status = sfu.status();
        let now = Instant::now();
        let cpu = cpu_seconds("self").unwrap_or(0.0);
        let bytes_in = sfu.metrics.bytes_in.get();
        let bytes_out = sfu.metrics.bytes_out.get();
        let packets = sfu.metrics.packets_in.get() + sfu.metrics.packets_out.get();
        let secs = now.duration_since(last.0).as_secs_f64().max(0.001);
        let load = Load {
            participants: status.participants as u32,
            rooms: status.rooms as u32,
            published_tracks: status.published_tracks as u32,
            subscribed_tracks: status.subscriptions as u32,
            bitrate_in_bps: ((bytes_in - last.2) as f64 * 8.0 / secs) as u64,
            bitrate_out_bps: ((bytes_out - last.3) as f64 * 8.0 / secs) as u64,
            cpu_cores: ((cpu - last.1) / secs) as f32,
            packets_per_second: (packets.saturating_sub(last.4) as f64 / secs) as u64,
        };
        last = (now, cpu, bytes_in, bytes_out, packets);
        let state = match status.state {
            NodeState::Starting => SfuState::Starting,
            NodeState::Ready => SfuState::Ready,
            NodeState::Draining | NodeState::Drained => SfuState::Draining,
        };
        let lease = Heartbeat::new(state, endpoint.clone(), load).to_lease(
            &cfg.namespace,
            &cfg.pod,
            &cfg.pool,
            jiff::Timestamp::now(),
            cfg.ttl,
        );
        let patch = Patch::Apply(&lease);
        let renew = leases.patch(&cfg.pod, &params, &patch);
        match tokio::time::timeout(Duration::from_secs(2), renew).await {
            Ok(Ok(_)) => debug!("heartbeat renewed"),
            Ok(Err(e)) => {
                sfu.metrics.heartbeat_failures.inc();
                warn!(error = %e, "heartbeat not renewed");
            }
            Err(_) => {
                sfu.metrics.heartbeat_failures.inc();
                warn!("heartbeat not renewed: the API server did not answer in time");
            }
        }
    }
}
