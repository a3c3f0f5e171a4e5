//! webinar-bench: a large meeting joining over signaling, as a Webinar (attendees
//! counted: their presence reaches hosts only, everyone else gets `audience {count}` at
//! most once a second) side by side with the same joins into an Interactive meeting
//! (every join broadcast to everyone: how a Webinar's attendees were treated before).
//!
//! One host, then `--attendees` joiners through two signaling replicas sharing a Redis,
//! `--concurrency` at a time, no media. Reports the join latency (REST join →
//! `joined`), the messages the clients received per join, deliveries per second, and
//! the replicas' CPU.
//!
//! With `--media N`, then the same webinar with media through a cascade: `sfu-pod`
//! processes, an origin and `--edges` edges relaying from it; the host (camera and
//! microphone) and 3 panelists (microphones, real Opus tones) on the origin, the first
//! N attendees receiving media on the edges (webrtc-rs, receive-only), the rest on
//! signaling only; once with the voices routed (each attendee gets the 3 loudest) and
//! once mixed (`spec.audio: Mixed`). Reports what the attendees received over
//! `--seconds` (packets, loss), each SFU's CPU, and what crossed the origin → edge links.
//!
//! Needs the local control plane (`eval "$(e2e/cluster/up)"`), redis-server, and the
//! release binaries:
//!
//! ```text
//! cargo build --release -p signaling-pod -p sfu-pod --bins
//! target/release/webinar-bench --attendees 1000 --concurrency 50
//! target/release/webinar-bench --attendees 1000 --concurrency 50 --media 200 --edges 2
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use kube::Api;
use switchboard_crds::Meeting;
use switchboard_signaling_client::{Rest, SignalingClient};

#[path = "../bench_support.rs"]
mod support;
use support::*;

struct Args {
    attendees: usize,
    concurrency: usize,
    /// The join queue's rate per meeting (`SIGNALING_JOINS_PER_SECOND`, its burst the same).
    join_rate: f64,
    /// Attendees receiving media in the cascade runs (0: no such runs).
    media: usize,
    edges: usize,
    seconds: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args { attendees: 1000, concurrency: 50, join_rate: 1000.0, media: 0, edges: 2, seconds: 10 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> anyhow::Result<usize> { Ok(it.next().context("a value")?.parse()?) };
        match flag.as_str() {
            "--attendees" => a.attendees = value()?,
            "--concurrency" => a.concurrency = value()?.max(1),
            "--join-rate" => a.join_rate = value()?.max(1) as f64,
            "--media" => a.media = value()?,
            "--edges" => a.edges = value()?.max(1),
            "--seconds" => a.seconds = value()?.max(1) as u64,
            other => bail!(
                "unknown flag {other}: --attendees N, --concurrency N, --join-rate N, --media N, --edges N, --seconds N"
            ),
        }
    }
    Ok(a)
}

/// How a table row reads one run.
type Column = Box<dyn Fn(&Run) -> String>;

/// One run's figures.
struct Run {
    joined: usize,
    failed: usize,
    latency_ms: Vec<f64>,
    join_secs: f64,
    /// Frames the clients received after their `joined`, until things settled.
    received: usize,
    cpu_secs: f64,
    settled_secs: f64,
}

/// The host joins, then `n` joiners through the two replicas; waits until no client has
/// received anything for two seconds.
async fn run(
    meetings: &Api<Meeting>,
    name: &str,
    spec: serde_json::Value,
    sfu: &str,
    urls: [&str; 2],
    pids: [u32; 2],
    a: &Args,
) -> anyhow::Result<Run> {
    create_meeting_with(meetings, name, spec, sfu).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = || pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let cpu_before = cpu();
    let host_grant = Rest::new(urls[0], &user_token("bench-host")).join(name).await?;
    let (host, _) = SignalingClient::join(&host_grant.signaling_url, &host_grant.session_token).await?;
    let started = Instant::now();
    let results: Vec<anyhow::Result<(SignalingClient, f64)>> = futures::stream::iter(0..a.attendees)
        .map(|i| async move {
            let t0 = Instant::now();
            let grant = Rest::new(urls[i % 2], &user_token(&format!("a{i:05}"))).join(name).await?;
            let (c, _) = SignalingClient::join(&grant.signaling_url, &grant.session_token).await?;
            Ok((c, t0.elapsed().as_secs_f64() * 1000.0))
        })
        .buffer_unordered(a.concurrency)
        .collect()
        .await;
    let join_secs = started.elapsed().as_secs_f64();
    let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| r.is_ok());
    if let Some(Err(e)) = failed.first() {
        eprintln!("{name}: first failed join: {e:#}");
    }
    let clients: Vec<(SignalingClient, f64)> = ok.into_iter().map(Result::unwrap).collect();
    // Settled: nobody received anything for two seconds (the audience count included).
    let total = |cs: &[(SignalingClient, f64)]| cs.iter().map(|(c, _)| c.received().len()).sum::<usize>();
    let mut last = (total(&clients), Instant::now());
    let deadline = Instant::now() + Duration::from_secs(120);
    while last.1.elapsed() < Duration::from_secs(2) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = total(&clients);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let settled_secs = started.elapsed().as_secs_f64() - 2.0;
    let cpu_secs = cpu() - cpu_before;
    let mut latency_ms: Vec<f64> = clients.iter().map(|(_, ms)| *ms).collect();
    latency_ms.sort_by(f64::total_cmp);
    // Each client's first frame is its `joined`.
    let received = last.0 - clients.len();
    let joined = clients.len();
    drop(clients);
    drop(host);
    Ok(Run { joined, failed: failed.len(), latency_ms, join_secs, received, cpu_secs, settled_secs })
}

/// An origin and `edges` edge `sfu-pod` processes: (pod name, endpoint, process).
fn cascade(edges: usize, token: &str) -> anyhow::Result<Vec<(String, String, Child)>> {
    (0..=edges)
        .map(|i| {
            let pod = if i == 0 { "origin".to_owned() } else { format!("edge-{i}") };
            let (child, endpoint) = sfu_process(&pod, token)?;
            Ok((pod, endpoint, child))
        })
        .collect()
}

#[path = "../bench_media.rs"]
mod media;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    raise_fd_limit();
    let (client, ns) = namespace("webinar-bench").await?;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let meetings: Api<Meeting> = Api::namespaced(client.clone(), &ns);
    let (_redis, redis) = redis().await?;
    let sfu = sfu_pod::local::start("sfu-bench").await?;
    let queue =
        [("SIGNALING_JOINS_PER_SECOND", a.join_rate.to_string()), ("SIGNALING_JOIN_BURST", a.join_rate.to_string())];
    let (replica_a, url_a) = replica(&ns, &redis, "replica-a", sfu.token.expose(), &queue)?;
    let (replica_b, url_b) = replica(&ns, &redis, "replica-b", sfu.token.expose(), &queue)?;
    let urls = [url_a.as_str(), url_b.as_str()];
    let pids = [replica_a.0.id(), replica_b.0.id()];
    let n = a.attendees;
    let participants = serde_json::json!({"expected": n + 1, "max": n + 10});
    let webinar = serde_json::json!({"mode": "Webinar", "participants": participants});
    let interactive = serde_json::json!({"mode": "Interactive", "participants": participants});
    let (counted, broadcast) = if a.media == 0 || std::env::var_os("WEBINAR_BENCH_MEDIA_ONLY").is_none() {
        let counted = run(&meetings, "webinar", webinar, &sfu.endpoint, urls, pids, &a).await?;
        let broadcast = run(&meetings, "interactive", interactive, &sfu.endpoint, urls, pids, &a).await?;
        (Some(counted), Some(broadcast))
    } else {
        (None, None)
    };

    let rows: Vec<(String, Column)> = vec![
        ("joined (failed)".into(), Box::new(|r: &Run| format!("{} ({})", r.joined, r.failed))),
        (
            "join latency, REST join → `joined`, p50 / p99".into(),
            Box::new(|r: &Run| {
                format!("{:.0} / {:.0} ms", percentile(&r.latency_ms, 0.5), percentile(&r.latency_ms, 0.99))
            }),
        ),
        (
            "all joined in".into(),
            Box::new(|r: &Run| format!("{:.1} s ({:.0} joins/s)", r.join_secs, r.joined as f64 / r.join_secs)),
        ),
        ("messages the clients received after `joined`".into(), Box::new(|r: &Run| format!("{}", r.received))),
        ("  per join".into(), Box::new(|r: &Run| format!("{:.1}", r.received as f64 / r.joined.max(1) as f64))),
        (
            "  deliveries per second, until settled".into(),
            Box::new(|r: &Run| format!("{:.0}", r.received as f64 / r.settled_secs.max(0.001))),
        ),
        ("signaling CPU (2 replicas)".into(), Box::new(|r: &Run| format!("{:.1} s", r.cpu_secs))),
        ("  per join".into(), Box::new(|r: &Run| format!("{:.1} ms", r.cpu_secs * 1000.0 / r.joined.max(1) as f64))),
    ];
    if let (Some(counted), Some(broadcast)) = (counted, broadcast) {
        println!(
            "| {n} joiners, {} at a time, join queue {}/s | Webinar: attendees counted | Interactive: every join broadcast |\n|---|---|---|",
            a.concurrency, a.join_rate
        );
        for (measure, f) in rows {
            println!("| {measure} | {} | {} |", f(&counted), f(&broadcast));
        }
    }
    if a.media > 0 {
        let token = switchboard_sfu_client::ApiToken::generate();
        let (_replica_c, url_c) = replica(&ns, &redis, "replica-c", token.expose(), &queue)?;
        let (_replica_d, url_d) = replica(&ns, &redis, "replica-d", token.expose(), &queue)?;
        let media_urls = [url_c.as_str(), url_d.as_str()];
        let mut runs = Vec::new();
        for audio in ["Routed", "Mixed"] {
            let sfus = cascade(a.edges, token.expose())?;
            let name = format!("media-{}", audio.to_lowercase());
            runs.push((audio, media::run(&meetings, &ns, &name, audio, &sfus, media_urls, &a).await?));
        }
        media::table(&a, &runs);
    }
    let _ = namespaces.delete(&ns, &Default::default()).await;
    Ok(())
}
