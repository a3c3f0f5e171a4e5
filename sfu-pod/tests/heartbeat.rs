//! The SFU's heartbeat Lease against the real API server, and media that keeps flowing
//! when the API server is gone.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use switchboard_e2e::{TestNamespace, client, cluster, eventually};
use switchboard_heartbeat::{Observed, SfuState};
use switchboard_sfu_client::Publish;

const TIMEOUT: Duration = Duration::from_secs(30);

async fn beat(leases: &kube::Api<Lease>, pod: &str) -> Option<Observed> {
    leases.get_opt(pod).await.ok().flatten().and_then(|l| Observed::from_lease(&l).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sfu_renews_its_lease_with_state_load_and_endpoint() {
    let _slot = media_slot().await;
    let client = client().await;
    let ns = TestNamespace::create(&client, "sfu-heartbeat").await;
    let kubeconfig = cluster().kubeconfig.to_string_lossy().into_owned();
    let sfu = SfuProcess::start_with(
        "sfu-0",
        &[
            ("KUBECONFIG", &kubeconfig),
            ("SWITCHBOARD_POOL", "eu-west"),
            ("SWITCHBOARD_NAMESPACE", &ns.name),
            ("SWITCHBOARD_POD_NAME", "eu-west-sfu-0"),
            ("SWITCHBOARD_HEARTBEAT_TTL_SECONDS", "10"),
        ],
    );
    let leases: kube::Api<Lease> = ns.api();
    let first = eventually("a Ready heartbeat", TIMEOUT, || async {
        beat(&leases, "eu-west-sfu-0").await.filter(|o| o.heartbeat.state == SfuState::Ready)
    })
    .await;
    assert_eq!(first.pool.as_deref(), Some("eu-west"));
    assert_eq!(first.heartbeat.endpoint, sfu.api.base, "the advertised endpoint is the API it serves");
    assert_eq!(first.lease_duration, Duration::from_secs(10));

    // Load follows the rooms.
    let alice = join(&sfu.api, "r", "alice", vec![Publish::audio("alice-mic")]).await;
    let bob = join(&sfu.api, "r", "bob", vec![]).await;
    bob.wait_until("alice's audio", WAIT, |rx| rx.get("alice-mic").is_some_and(|t| t.packets > 20)).await.unwrap();
    let loaded = eventually("load in the heartbeat", TIMEOUT, || async {
        beat(&leases, "eu-west-sfu-0")
            .await
            .filter(|o| o.heartbeat.load.participants == 2 && o.heartbeat.load.bitrate_in_bps > 0)
    })
    .await;
    assert_eq!(loaded.heartbeat.load.rooms, 1);
    assert_eq!(loaded.heartbeat.load.published_tracks, 1);
    assert_eq!(loaded.heartbeat.load.subscribed_tracks, 1);
    // Opus at 20 ms: ~50 packets/s in and ~50 forwarded.
    let pps = eventually("the packet rate in the heartbeat", TIMEOUT, || async {
        beat(&leases, "eu-west-sfu-0").await.map(|o| o.heartbeat.load.packets_per_second).filter(|p| *p > 0)
    })
    .await;
    assert!((40..=400).contains(&pps), "{pps} packets/s for one audio track forwarded once");
    assert!(loaded.renewed > first.renewed, "the Lease is renewed");

    // A drain shows in the Lease, for the operator.
    let _: serde_json::Value =
        sfu.api.post(&format!("{}/v1/drain", sfu.api.base), &serde_json::json!({})).await.unwrap();
    eventually("a Draining heartbeat", TIMEOUT, || async {
        beat(&leases, "eu-west-sfu-0").await.filter(|o| o.heartbeat.state == SfuState::Draining)
    })
    .await;
    drop((alice, bob));
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_keeps_flowing_when_the_api_server_is_unreachable() {
    let _slot = media_slot().await;
    // A kubeconfig whose server refuses connections.
    let dir = std::env::temp_dir().join(format!("sfu-no-apiserver-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: gone, cluster: {server: 'https://127.0.0.1:9'}}]\n\
         users: [{name: u, user: {token: x}}]\ncontexts: [{name: c, context: {cluster: gone, user: u}}]\ncurrent-context: c\n",
    )
    .unwrap();
    let sfu = SfuProcess::start_with(
        "sfu-island",
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("SWITCHBOARD_POOL", "eu-west"),
            ("SWITCHBOARD_NAMESPACE", "nowhere"),
            ("SWITCHBOARD_POD_NAME", "island-0"),
        ],
    );
    let alice = join(&sfu.api, "r", "alice", vec![Publish::audio("alice-mic"), Publish::video("alice-cam")]).await;
    let bob = join(&sfu.api, "r", "bob", vec![]).await;
    bob.wait_until("alice's media", WAIT, |rx| {
        ["alice-mic", "alice-cam"].iter().all(|t| rx.get(*t).is_some_and(|r| r.packets > 50))
    })
    .await
    .unwrap();
    let failures = eventually("failed renewals counted", TIMEOUT, || async {
        let (_, metrics) = sfu.api.get_text("/metrics").await.ok()?;
        let line = metrics.lines().find(|l| l.starts_with("switchboard_sfu_heartbeat_failures_total"))?.to_owned();
        let n: f64 = line.rsplit(' ').next()?.parse().ok()?;
        (n >= 2.0).then_some(n)
    })
    .await;
    // Media went on all along.
    let before = bob.received()["alice-cam"].packets;
    bob.wait_until("more video", WAIT, |rx| rx["alice-cam"].packets > before + 30).await.unwrap();
    assert!(failures >= 2.0);
    drop(alice);
    let _ = std::fs::remove_dir_all(dir);
}
