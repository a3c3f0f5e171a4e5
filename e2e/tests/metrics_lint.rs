//! Every component's `/metrics` passes `promtool check metrics` (Prometheus' own parser
//! and naming lint, built by `e2e/monitoring/build`) and exports `*_build_info`.
//!
//! Each test starts one component in-process, as it runs in its pod (the operator under
//! the repo's RBAC against the local control plane; the SFU on loopback; signaling with
//! a real Redis and the control plane; the recorder's HTTP server), makes it do
//! something so that its labelled families have samples, and fetches `/metrics` over
//! HTTP twice: with `Accept: text/plain` (the classic text format, which promtool
//! reads) and with the OpenMetrics Accept header (what Prometheus asks for first).

use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::json;
use switchboard_e2e::fixtures::{Setup, apply, pool, setup};
use switchboard_e2e::{TestNamespace, monitoring, wait_for};
use switchboard_signaling_client::SignalingClient;

const WAIT: Duration = Duration::from_secs(60);
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Fetches `url` in both formats and checks them: the classic text passes promtool,
/// carries `<prefix>_build_info{version=…} 1` and every one of `expected` (sample
/// prefixes); the OpenMetrics text ends with `# EOF`. Returns the classic text.
async fn check(url: &str, prefix: &str, expected: &[&str]) -> String {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let fetch = |accept: &'static str| {
        let request = http.get(url).header(ACCEPT, accept);
        async move {
            let response = request.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
            assert!(response.status().is_success(), "GET {url}: {}", response.status());
            let content_type = response.headers()[CONTENT_TYPE].to_str().unwrap().to_owned();
            (content_type, response.text().await.unwrap())
        }
    };

    let (content_type, text) = fetch("text/plain").await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8", "{url}");
    if let Err(e) = monitoring::check_metrics(&text) {
        panic!("{url}: {e:#}\n--- the metrics:\n{text}");
    }
    let build_info = format!("{prefix}_build_info{{version=\"{VERSION}\"}} 1");
    assert!(text.lines().any(|l| l == build_info), "{build_info} in\n{text}");
    for sample in expected {
        assert!(text.lines().any(|l| l.starts_with(sample)), "a sample {sample}… in\n{text}");
    }
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");

    let (content_type, openmetrics) = fetch("application/openmetrics-text; version=1.0.0").await;
    assert!(content_type.starts_with("application/openmetrics-text; version=1.0.0"), "{url}: {content_type}");
    assert!(openmetrics.ends_with("# EOF\n"), "{url}:\n{openmetrics}");
    assert!(openmetrics.lines().any(|l| l == build_info), "{build_info} in\n{openmetrics}");
    // The OpenMetrics text is what promtool cannot read: the conversion is what makes it pass.
    assert!(monitoring::check_metrics(&openmetrics).is_err(), "promtool took OpenMetrics:\n{openmetrics}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_metrics_pass_promtool() {
    let Setup { ns, operator, .. } = setup("metrics-lint").await;
    let pools = ns.api();
    apply(&pools, &pool("linted", json!({"minReplicas": 1, "maxReplicas": 1}), json!({}))).await;
    let metrics = operator.metrics.clone();
    wait_for("the pool reconciled and its pod created", WAIT, || {
        let text = metrics.encode();
        async move {
            text.contains("switchboard_sfupool_desired_pods{") && text.contains("switchboard_sfu_pod_actions_total{")
        }
    })
    .await;
    let (addr, serve) = switchboard_operator::http::serve(
        "127.0.0.1:0".parse().unwrap(),
        operator.metrics.clone(),
        switchboard_operator::Health::default(),
    )
    .await
    .unwrap();
    let server = tokio::spawn(serve);
    check(
        &format!("http://{addr}/metrics"),
        "switchboard",
        &[
            "switchboard_reconciles_total{controller=\"sfupool\"}",
            "switchboard_reconcile_duration_seconds_bucket{",
            "switchboard_sfupool_desired_pods{",
            "switchboard_sfu_pod_actions_total{",
            "switchboard_leader 1",
        ],
    )
    .await;
    server.abort();
    operator.stop().await.unwrap();
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sfu_metrics_pass_promtool() {
    let sfu = sfu_pod::local::start("lint-sfu").await.expect("SFU starts");
    // A call without the credential: refused and counted by error code.
    let refused = reqwest::get(format!("{}/v1/rooms/linted", sfu.endpoint)).await.unwrap();
    assert_eq!(refused.status(), 401);
    check(
        &format!("{}/metrics", sfu.endpoint),
        "switchboard_sfu",
        &[
            "switchboard_sfu_api_errors_total{code=\"unauthorized\"} 1",
            "switchboard_sfu_rtp_received_bytes_total ",
            "switchboard_sfu_rtp_forwarded_bytes_total ",
            "switchboard_sfu_rooms ",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signaling_metrics_pass_promtool() {
    let client = switchboard_e2e::client().await;
    switchboard_e2e::install_crds(&client).await;
    let ns = TestNamespace::create(&client, "metrics-lint-sig").await;
    let redis = switchboard_e2e::Redis::start();
    let config = signaling_pod::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        public_url: None,
        namespace: ns.name.clone(),
        redis_url: redis.url.clone(),
        auth: signaling_pod::config::AuthSettings {
            user_hmac_keys: vec![b"metrics-lint-user-key-0123456789abcdef".to_vec()],
            user_jwks_refresh: Duration::from_secs(60),
            session_key: Some(b"metrics-lint-session-key-0123456789abcdef".to_vec()),
            ..Default::default()
        },
        turn: None,
        replica: "lint".into(),
        pool: None,
        rate_per_second: 20.0,
        rate_burst: 60.0,
        limits: Default::default(),
        session_ttl: Duration::from_secs(3600),
        recording_pvc: "recordings".into(),
        redis_access: Default::default(),
    };
    let server = signaling_pod::start(config, client.clone()).await.expect("signaling starts");
    // A join with a token that is none: a message handled and an error replied, by type and code.
    let ws = format!("{}/ws", server.url.replacen("http", "ws", 1));
    let refused = SignalingClient::join(&ws, "not-a-session-token").await;
    assert!(refused.is_err(), "a join with a bad token is refused");
    check(
        &format!("{}/metrics", server.url),
        "switchboard_signaling",
        &[
            "switchboard_signaling_messages_total{type=\"join\"}",
            "switchboard_signaling_errors_total{code=",
            "switchboard_signaling_connections ",
            "switchboard_signaling_draining 0",
        ],
    )
    .await;
    server.serve.abort();
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorder_metrics_pass_promtool() {
    let metrics = recorder_pod::http::Metrics::default();
    metrics.observe(&recorder_pod::tracks::Totals { tracks: 2, chunks: 3, bytes: 40_000, frames: 500 });
    metrics.compose_duration.observe(3.5);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let server = tokio::spawn(axum::serve(listener, recorder_pod::http::router(metrics)).into_future());
    check(
        &url,
        "switchboard_recorder",
        &[
            "switchboard_recorder_media_written_bytes_total 40000",
            "switchboard_recorder_compose_duration_seconds_bucket{le=\"4.0\"} 1",
            "switchboard_recorder_chunks_total 3",
            "switchboard_recorder_tracks 2",
        ],
    )
    .await;
    server.abort();
}
