//! webinar-bench's media runs: a webinar through a cascade of `sfu-pod` processes, the
//! host and panelists publishing on the origin, attendees receiving on the edges.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use switchboard_crds::Meeting;
use switchboard_sfu_client::encoded::{ToneClip, encode_clip};
use switchboard_sfu_client::{JoinOptions, NetworkOptions, Publish, PublishKind, ReceivedTrack, SfuApi};
use switchboard_signaling_client::{MediaSession, Rest, SignalingClient};
use switchboard_signaling_proto::Role;

use super::Args;
use super::support::*;

/// The host's camera: synthetic VP8-shaped packets, 30 per second of 1,000 bytes.
const CAMERA_PPS: u32 = 30;
/// Panelists besides the host.
const PANELISTS: usize = 3;

pub struct MediaRun {
    asked: usize,
    joined: usize,
    /// Attendees whose media flowed before the window.
    flowing: usize,
    setup_secs: f64,
    /// Over the window: packets the attendees received (stream advance), per second.
    delivered_pps: f64,
    audio_tracks: f64,
    loss_pct: f64,
    /// Per SFU: (pod, cores over the window, forwarded packets per second).
    sfus: Vec<(String, f64, f64)>,
}

/// What an attendee had received of each track when the window opened.
type Mark = HashMap<String, i64>;

fn advance_and_loss(rx: &HashMap<String, ReceivedTrack>, mark: &Mark) -> (u64, u64, u64) {
    let (mut advance, mut expected, mut missing) = (0, 0, 0);
    for (id, t) in rx {
        let Some(from) = mark.get(id).copied() else { continue };
        advance += (t.highest_ext_seq - from).max(0) as u64;
        // The last half second is left out: NACK may still be at work there.
        let end = t.highest_ext_seq - 25;
        if end > from {
            expected += (end - from) as u64;
            missing += (from..end).filter(|q| !t.unique_seqs.contains(q)).count() as u64;
        }
    }
    (advance, expected, missing)
}

async fn forwarded(endpoint: &str) -> f64 {
    sfu_pod::metrics::packets_forwarded(&SfuApi::new(endpoint.to_owned())).await
}

/// The meeting, Active, assigned to the cascade: the origin takes the host and the
/// panelists (their media joins come first), each edge an equal share of the rest.
async fn create(
    meetings: &Api<Meeting>,
    name: &str,
    audio: &str,
    sfus: &[(String, String, Child)],
    a: &Args,
) -> anyhow::Result<()> {
    let n = a.attendees;
    let m: Meeting = serde_json::from_value(serde_json::json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting", "metadata": {"name": name},
        "spec": {"title": name, "host": "bench-host", "mode": "Webinar", "audio": audio,
                 "participants": {"expected": n + 1 + PANELISTS, "max": n + 10 + PANELISTS}},
    }))?;
    meetings.create(&PostParams::default(), &m).await?;
    let (origin, edges) = sfus.split_first().context("an origin")?;
    let share = a.media.div_ceil(edges.len().max(1)) + 1;
    let edges: Vec<serde_json::Value> = edges
        .iter()
        .map(|(pod, endpoint, _)| {
            serde_json::json!({"pod": pod, "endpoint": endpoint, "parent": origin.0, "participants": share})
        })
        .collect();
    let status = serde_json::json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting",
        "status": {"phase": "Active", "assignment": {
            "pool": "bench",
            "origin": {"pod": origin.0, "endpoint": origin.1, "participants": 1 + PANELISTS},
            "edges": edges,
        }},
    });
    meetings.patch_status(name, &PatchParams::apply("switchboard-operator").force(), &Patch::Apply(&status)).await?;
    Ok(())
}

fn loopback(publish: Vec<Publish>) -> JoinOptions {
    JoinOptions { publish, net: NetworkOptions { loopback_only: true, ..Default::default() }, ..Default::default() }
}

/// Joins over REST and WebSocket.
async fn connect(url: &str, token: &str, meeting: &str) -> anyhow::Result<(Arc<SignalingClient>, String)> {
    let grant = Rest::new(url, token).join(meeting).await?;
    let (c, _) = SignalingClient::join(&grant.signaling_url, &grant.session_token).await?;
    Ok((Arc::new(c), grant.participant_id))
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    meetings: &Api<Meeting>,
    ns: &str,
    name: &str,
    audio: &str,
    sfus: &[(String, String, Child)],
    urls: [&str; 2],
    a: &Args,
) -> anyhow::Result<MediaRun> {
    create(meetings, name, audio, sfus, a).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dir = std::env::temp_dir().join(format!("webinar-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tone = |hz: u32| encode_clip(ToneClip::new(hz), 10, &dir.join(format!("{hz}.ogg"))).context("ffmpeg");
    let started = Instant::now();
    // The host and the panelists, on the origin.
    let (host, host_id) = connect(urls[0], &user_token("bench-host"), name).await?;
    let camera = Publish {
        kind: PublishKind::Video { simulcast: false, packets_per_second: CAMERA_PPS, size: 1000 },
        ..Publish::video("host-cam")
    };
    let mut speakers = vec![
        MediaSession::start(host.clone(), &host_id, loopback(vec![camera, Publish::encoded("host-mic", tone(300)?)]))
            .await?,
    ];
    let mut clients = vec![host];
    for p in 0..PANELISTS {
        let token = meeting_role_token(&format!("panelist{p}"), &format!("{ns}/{name}"), "participant");
        let (c, id) = connect(urls[p % 2], &token, name).await?;
        let mic = Publish::encoded(&format!("panelist{p}-mic"), tone(500 + 300 * p as u32)?);
        speakers.push(MediaSession::start(c.clone(), &id, loopback(vec![mic])).await?);
        clients.push(c);
    }
    // The attendees: the first `media` with media (receive-only), the rest signaling only.
    let joined: Vec<anyhow::Result<(Arc<SignalingClient>, Option<MediaSession>)>> =
        futures::stream::iter(0..a.attendees)
            .map(|i| async move {
                let (c, id) = connect(urls[i % 2], &user_token(&format!("m{i:05}")), name).await?;
                let media = if i < a.media {
                    Some(MediaSession::start_as(c.clone(), &id, loopback(vec![]), Some(Role::Viewer)).await?)
                } else {
                    None
                };
                Ok((c, media))
            })
            .buffer_unordered(a.concurrency)
            .collect()
            .await;
    let mut receivers = Vec::new();
    let mut failed = None;
    let mut joined_count = 0;
    for r in joined {
        match r {
            Ok((c, m)) => {
                joined_count += 1;
                clients.push(c);
                receivers.extend(m);
            }
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    if let Some(e) = failed {
        eprintln!("{name}: a join failed: {e:#}");
    }
    // Media flowing: the host's camera and some audio at every receiver.
    let deadline = Instant::now() + Duration::from_secs(120);
    let flowing = loop {
        let mut n = 0;
        for r in &receivers {
            let rx = r.received().await;
            let video = rx.get("host-cam").is_some_and(|t| t.packets > 30);
            let audio = rx.iter().any(|(k, t)| !t.video && k != "host-cam" && t.packets > 30);
            n += usize::from(video && audio);
        }
        if n == receivers.len() || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let setup_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut marks = Vec::new();
    for r in &receivers {
        let rx = r.received().await;
        marks.push(rx.into_iter().map(|(k, t)| (k, t.highest_ext_seq)).collect::<Mark>());
    }
    let mut before = Vec::new();
    for (_, endpoint, child) in sfus {
        before.push((cpu_seconds(child.0.id()), forwarded(endpoint).await));
    }
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let wall = t0.elapsed().as_secs_f64();
    let mut sfu_rows = Vec::new();
    for ((pod, endpoint, child), (cpu0, f0)) in sfus.iter().zip(before) {
        let cores = (cpu_seconds(child.0.id()) - cpu0) / wall;
        sfu_rows.push((pod.clone(), cores, (forwarded(endpoint).await - f0) / wall));
    }
    let mut advance = 0;
    let mut audio_tracks = 0usize;
    let mut rxs = Vec::new();
    for r in &receivers {
        rxs.push(r.received().await);
    }
    for (rx, mark) in rxs.iter().zip(&marks) {
        advance += advance_and_loss(rx, mark).0;
    }
    // Losses, once NACK has had its second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut expected, mut missing) = (0, 0);
    for (r, mark) in receivers.iter().zip(&marks) {
        let rx = r.received().await;
        // Voices heard in the window (each advanced), not those heard while joining.
        audio_tracks += rx
            .iter()
            .filter(|(id, t)| !t.video && mark.get(*id).is_some_and(|from| t.highest_ext_seq > from + 10))
            .count();
        let (_, e, m) = advance_and_loss(&rx, mark);
        (expected, missing) = (expected + e, missing + m);
    }
    let run = MediaRun {
        asked: a.media,
        joined: joined_count,
        flowing,
        setup_secs,
        delivered_pps: advance as f64 / wall,
        audio_tracks: audio_tracks as f64 / receivers.len().max(1) as f64,
        loss_pct: if expected == 0 { f64::NAN } else { missing as f64 * 100.0 / expected as f64 },
        sfus: sfu_rows,
    };
    drop(receivers);
    drop(speakers);
    drop(clients);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(run)
}

pub fn table(a: &Args, runs: &[(&str, MediaRun)]) {
    println!();
    println!(
        "| Webinar, {} attendees, {} receiving media through {} edges | {} |",
        a.attendees,
        a.media,
        a.edges,
        runs.iter().map(|(audio, _)| format!("voices {}", audio.to_lowercase())).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|{}", "---|".repeat(runs.len()));
    let row = |measure: &str, f: &dyn Fn(&MediaRun) -> String| {
        println!("| {measure} | {} |", runs.iter().map(|(_, r)| f(r)).collect::<Vec<_>>().join(" | "));
    };
    row("attendees joined / with media flowing (asked)", &|r| format!("{} / {} ({})", r.joined, r.flowing, r.asked));
    row("everyone in, media flowing, after", &|r| format!("{:.0} s", r.setup_secs));
    row("packets received per second, all receivers", &|r| format!("{:.0}", r.delivered_pps));
    row("  per receiver", &|r| format!("{:.1}", r.delivered_pps / r.flowing.max(1) as f64));
    row("  audio streams per receiver (in the window)", &|r| format!("{:.1}", r.audio_tracks));
    row("loss", &|r| format!("{:.3} %", r.loss_pct));
    row("SFU CPU, all pods (cores)", &|r| format!("{:.2}", r.sfus.iter().map(|s| s.1).sum::<f64>()));
    row("  per receiving attendee", &|r| {
        format!("{:.2} ms/s", r.sfus.iter().map(|s| s.1).sum::<f64>() * 1000.0 / r.flowing.max(1) as f64)
    });
    for i in 0..runs.first().map_or(0, |(_, r)| r.sfus.len()) {
        let pod = runs[0].1.sfus[i].0.clone();
        row(&format!("  {pod}: cores, forwarded pkt/s"), &|r| format!("{:.2}, {:.0}", r.sfus[i].1, r.sfus[i].2));
    }
}
