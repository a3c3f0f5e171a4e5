//! adapt-bench: how a viewer's picture follows its link, with the SFU's send-side
//! estimate (transport-cc feedback, probing, pacing, pausing video) side by side with
//! REMB alone (`SWITCHBOARD_SEND_SIDE_BWE=false`: the estimate Chromium computes and
//! reports, as before issue #30), in the same run on the same machine.
//!
//! Each run: an `sfu-pod` process and a signaling replica (the release binaries) on the
//! host's end of a link into a network namespace; a publisher Chromium on the host sends
//! its camera (three simulcast layers) and microphone; a viewer Chromium inside the
//! namespace shows it at 1280×720 (`signaling-pod/tests/browser/adaptive.mjs`). The
//! link's downlink goes 3 Mbps → 600 kbps → 3 Mbps → 150 kbps (tbf), as in the browser
//! test. Reported from the viewer's `getStats` every 200 ms: the time until the decoded
//! width steps down and back up, freezes (stretches without a new frame) of 1 s or more
//! and the longest, frames decoded per phase, what arrives at 150 kbps; and the SFU's
//! CPU time over the run.
//!
//! Needs root (network namespaces), the local control plane (`eval "$(e2e/cluster/up)"`),
//! redis-server, Debian's chromium and the release binaries:
//!
//! ```text
//! cargo build --release -p signaling-pod -p sfu-pod -p switchboard-e2e --bin signaling-pod --bin sfu-pod --bin adapt-bench
//! target/release/adapt-bench [--runs 2]
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kube::Api;
use switchboard_crds::Meeting;
use switchboard_e2e::browser::{Sample, freezes, phase, reached};
use switchboard_e2e::netns::Link;

#[path = "../../../signaling-pod/src/bench_support.rs"]
mod support;
use support::*;

/// The downlink's schedule: (bits per second, seconds).
const SCHEDULE: [(u64, u64); 4] = [(3_000_000, 20), (600_000, 20), (3_000_000, 25), (150_000, 20)];

/// What one run measured.
#[derive(Default)]
struct Run {
    down_ms: Option<u64>,
    up_ms: Option<u64>,
    /// Widths decoded at the end of each phase.
    widths: Vec<u64>,
    /// Freezes of a second or more in the first three phases (3 Mbps, 600 kbps, 3 Mbps).
    freezes: Vec<u64>,
    longest_freeze_ms: u64,
    frames: Vec<u64>,
    /// At 150 kbps, after its first 8 s: frames decoded, audio packets received.
    starved_frames: u64,
    starved_audio_packets: u64,
    audio_concealed: f64,
    sfu_cpu_secs: f64,
    seconds: f64,
}

/// An `sfu-pod` process whose media port is on `ip` (its only candidate).
fn sfu_on(ip: std::net::Ipv4Addr, token: &str, send_side_bwe: bool) -> anyhow::Result<(Child, String)> {
    let env = [
        ("SWITCHBOARD_POD_IP", ip.to_string()),
        ("SWITCHBOARD_MEDIA_ADDR", format!("{ip}:0")),
        ("SWITCHBOARD_SEND_SIDE_BWE", send_side_bwe.to_string()),
    ];
    sfu_process_with("adapt-bench", token, &env)
}

async fn run(meetings: &Api<Meeting>, ns: &str, redis: &str, name: &str, send_side_bwe: bool) -> anyhow::Result<Run> {
    let link = Link::create().map_err(anyhow::Error::msg)?;
    link.set_downlink_bps(Some(SCHEDULE[0].0)).map_err(anyhow::Error::msg)?;
    let token = switchboard_sfu_client::ApiToken::generate();
    let (sfu, sfu_endpoint) = sfu_on(link.host_ip, token.expose(), send_side_bwe)?;
    let listen = [("SIGNALING_ADDR", format!("{}:0", link.host_ip))];
    let (_replica, url) = replica(ns, redis, &format!("{name}-signaling"), token.expose(), &listen)?;
    create_meeting_with(
        meetings,
        name,
        serde_json::json!({"host": "pat", "participants": {"expected": 2}}),
        &sfu_endpoint,
    )
    .await?;
    let page = |user: &str| format!("{url}/j/{name}?token={}", user_token(user));
    let dir = std::env::temp_dir().join(format!("adapt-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (ready, stop) = (dir.join("ready"), dir.join("stop"));
    let (publisher, viewer, link_name) = (page("pat"), page("val"), link.name.clone());
    let (r, s) = (ready.clone(), stop.clone());
    let script =
        std::thread::spawn(move || switchboard_e2e::browser::adaptive(&link_name, None, &publisher, &viewer, &r, &s));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready.exists() && !script.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !ready.exists() {
        std::fs::write(&stop, "stop")?;
        let out = script.join().map_err(|_| anyhow::anyhow!("the browser thread panicked"))?;
        bail!("{name}: the viewer never decoded video: {out:?}");
    }
    let cpu_before = cpu_seconds(sfu.0.id());
    let started = Instant::now();
    let mut changes = Vec::new();
    for (bps, seconds) in SCHEDULE {
        link.set_downlink_bps(Some(bps)).map_err(anyhow::Error::msg)?;
        changes.push(now_ms());
        tokio::time::sleep(Duration::from_secs(seconds)).await;
    }
    changes.push(now_ms());
    let sfu_cpu_secs = cpu_seconds(sfu.0.id()) - cpu_before;
    let seconds = started.elapsed().as_secs_f64();
    std::fs::write(&stop, "stop")?;
    let report = script
        .join()
        .map_err(|_| anyhow::anyhow!("the browser thread panicked"))?
        .map_err(|e| anyhow::anyhow!("browsers: {e}"))?;
    let _ = std::fs::remove_dir_all(&dir);
    let samples: Vec<Sample> = serde_json::from_value(report["samples"].clone())?;
    let phases: Vec<_> = changes.windows(2).map(|w| phase(&samples, w[0], w[1])).collect();
    let high = phases[0].width_at_end;
    let freezes: Vec<u64> = (0..3).flat_map(|i| freezes(&samples, changes[i], changes[i + 1], 1_000)).collect();
    let starved = phase(&samples, changes[3] + 8_000, changes[4]);
    Ok(Run {
        // Within the phase, else never.
        down_ms: reached(&samples, changes[1], |w| w > 0 && w < high).filter(|ms| *ms < changes[2] - changes[1]),
        up_ms: reached(&samples, changes[2], |w| w >= high).filter(|ms| *ms < changes[3] - changes[2]),
        widths: phases.iter().map(|p| p.width_at_end).collect(),
        longest_freeze_ms: phases[..3].iter().map(|p| p.longest_freeze_ms).max().unwrap_or(0),
        freezes,
        frames: phases.iter().map(|p| p.frames).collect(),
        starved_frames: starved.frames,
        starved_audio_packets: starved.audio_packets,
        audio_concealed: phases[3].audio_concealed,
        sfu_cpu_secs,
        seconds,
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn ms(v: Option<u64>) -> String {
    v.map_or("never".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0))
}

type Column = Box<dyn Fn(&Run) -> String>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut runs = 1;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--runs" => runs = args.next().context("--runs N")?.parse::<usize>()?.max(1),
            other => bail!("unknown argument {other:?} (adapt-bench [--runs N])"),
        }
    }
    let (client, ns) = namespace("adapt-bench").await?;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let meetings: Api<Meeting> = Api::namespaced(client.clone(), &ns);
    let (_redis, redis) = redis().await?;
    let mut results: Vec<(String, Run)> = Vec::new();
    for i in 0..runs {
        for (label, send_side) in [("send-side (TWCC)", true), ("REMB only", false)] {
            let name = format!("adapt-{}-{i}", if send_side { "twcc" } else { "remb" });
            eprintln!("adapt-bench: {name}");
            results.push((label.to_owned(), run(&meetings, &ns, &redis, &name, send_side).await?));
        }
    }
    let rows: Vec<(&str, Column)> = vec![
        ("width at 3 Mbps / 600 kbps / 3 Mbps / 150 kbps", Box::new(|r| format!("{:?}", r.widths))),
        ("3 Mbps → 600 kbps: below the 3 Mbps width after", Box::new(|r| ms(r.down_ms))),
        ("600 kbps → 3 Mbps: back at that width after", Box::new(|r| ms(r.up_ms))),
        ("freezes ≥ 1 s (first three phases)", Box::new(|r| format!("{} {:?}", r.freezes.len(), r.freezes))),
        ("longest freeze (first three phases)", Box::new(|r| format!("{} ms", r.longest_freeze_ms))),
        ("frames decoded per phase", Box::new(|r| format!("{:?}", r.frames))),
        (
            "150 kbps after 8 s: frames / audio packets",
            Box::new(|r| format!("{} / {}", r.starved_frames, r.starved_audio_packets)),
        ),
        ("150 kbps: audio samples concealed", Box::new(|r| format!("{:.1} %", r.audio_concealed * 100.0))),
        (
            "SFU CPU over the run (% of a core)",
            Box::new(|r| format!("{:.1} s ({:.1} %)", r.sfu_cpu_secs, r.sfu_cpu_secs * 100.0 / r.seconds)),
        ),
    ];
    print!("| measure |");
    for (label, _) in &results {
        print!(" {label} |");
    }
    print!("\n|---|");
    for _ in &results {
        print!("---|");
    }
    println!();
    for (measure, f) in rows {
        print!("| {measure} |");
        for (_, r) in &results {
            print!(" {} |", f(r));
        }
        println!();
    }
    let _ = namespaces.delete(&ns, &Default::default()).await;
    Ok(())
}
