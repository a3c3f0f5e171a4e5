//! sfu-bench: the SFU load generator.
//!
//! Starts a fresh `sfu-pod` (the release binary next to this one) per scenario on
//! loopback, drives it with webrtc-rs participants publishing synthetic VP8-shaped video,
//! and prints one table row per scenario:
//!
//! * packets delivered to subscribers per second (counted at the receivers, the same way
//!   for both SFUs), and per SFU CPU core (the SFU process's CPU time over the window,
//!   from /proc);
//! * latency publisher send → subscriber receive on loopback, p50/p99, and the same
//!   over a direct peer-to-peer connection in the same process, so that the difference
//!   is what the SFU adds;
//! * loss: packets never received (NACK included) over packets sent.
//!
//! Scenarios: `fanout:N` (one publisher, N subscribers), `mesh:N` (N participants,
//! each publishing and receiving the others) and `lastn:N:K` (N participants each
//! publishing a thumbnail-sized camera ([`THUMBNAIL_PPS`], `--thumbnail-pps`) and showing K of the others:
//! a grid page, the rest paused as the browser client pauses tiles off screen;
//! `lastn:49:48` is the same room with every camera shown). With `--janus URL` the
//! fan-out and mesh scenarios run against a Janus VideoRoom too (see `janus.rs`).
//!
//!     cargo build --release -p sfu-pod
//!     target/release/sfu-bench --scenarios fanout:10,fanout:25,fanout:50,mesh:4,mesh:8 --seconds 10
//!
//! `--sfu-threads N` starts the SFU with `SWITCHBOARD_WORKER_THREADS=N` (default: all cores).
//! `--twcc` runs each scenario with REMB subscribers and with transport-cc subscribers
//! (the send-side estimate's cost, see [`TWCC`]).

use std::time::{Duration, Instant};

use switchboard_sfu_client::{JoinOptions, NetworkOptions, Participant, Publish, PublishKind, SfuApi};

#[path = "../bench/direct.rs"]
mod direct;
#[path = "../bench/janus.rs"]
mod janus;

/// Video each publisher sends: packets per second and bytes per packet (≈ 1.6 Mbps).
pub const VIDEO_PPS: u32 = 200;
pub const VIDEO_BYTES: usize = 1000;
/// A grid tile's camera in `lastn` scenarios, packets/s of 1,000 bytes: 30 (≈ 240
/// kbps) unless `--thumbnail-pps` says otherwise.
pub static THUMBNAIL_PPS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(30);
/// `--remb BPS`: every subscriber reports this downlink estimate (REMB, 5 a second, as a
/// browser does), so the SFU's layer allocation runs on every report; 0: none.
pub static REMB_BPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// `--twcc`: each scenario runs twice, side by side: subscribers that report REMB (20 Mbps,
/// 5 a second: the SFU takes the receiver's estimate) and subscribers that send
/// transport-wide feedback and take RTX (the SFU numbers every packet, runs the
/// send-side estimate per subscriber and probes), so the rows show what the send-side
/// estimate costs.
static TWCC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(Clone, Copy, Debug)]
pub enum Scenario {
    FanOut(usize),
    Mesh(usize),
    /// (participants, cameras each shows)
    LastN(usize, usize),
}

impl Scenario {
    fn parse(s: &str) -> anyhow::Result<Self> {
        let want = || anyhow::anyhow!("scenario {s:?}: want fanout:N, mesh:N or lastn:N:K");
        let (kind, n) = s.split_once(':').ok_or_else(want)?;
        if kind == "lastn" {
            let (n, k) = n.split_once(':').ok_or_else(want)?;
            let (n, k): (usize, usize) = (n.parse()?, k.parse()?);
            anyhow::ensure!(n >= 2 && (1..n).contains(&k), "lastn:N:K needs 1 <= K < N, got {s:?}");
            return Ok(Self::LastN(n, k));
        }
        let n: usize = n.parse()?;
        match kind {
            "fanout" => Ok(Self::FanOut(n)),
            "mesh" => Ok(Self::Mesh(n)),
            _ => Err(want()),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Self::FanOut(n) => format!("1→{n} fan-out"),
            Self::Mesh(n) => format!("{n}×{n} mesh"),
            Self::LastN(n, k) if k + 1 == *n => format!("{n} cameras, all shown"),
            Self::LastN(n, k) => format!("{n} cameras, last-N {k}"),
        }
    }

    /// (publishers, receivers per published track)
    pub fn shape(&self) -> (usize, usize) {
        match *self {
            Self::FanOut(n) => (1, n),
            Self::Mesh(n) => (n, n - 1),
            Self::LastN(n, k) => (n, k),
        }
    }
}

/// What one run measured.
#[derive(Debug, Default)]
pub struct Measured {
    pub forwarded_pps: f64,
    pub cpu_cores: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub loss_pct: f64,
    pub receivers: usize,
}

impl Measured {
    /// From a window of `wall` seconds: stream advance, SFU CPU seconds, sorted
    /// latencies, and packets expected and missing.
    pub fn new(
        receivers: usize,
        wall: f64,
        advance: u64,
        cpu_seconds: f64,
        latencies: &[u32],
        expected: u64,
        missing: u64,
    ) -> Self {
        Self {
            forwarded_pps: advance as f64 / wall,
            cpu_cores: cpu_seconds / wall,
            p50_ms: percentile(latencies, 0.5),
            p99_ms: percentile(latencies, 0.99),
            loss_pct: if expected == 0 { f64::NAN } else { missing as f64 * 100.0 / expected as f64 },
            receivers,
        }
    }
}

/// One received track since a mark: adds its latencies to `latencies` and returns
/// (stream advance, packets expected, packets missing), leaving out the last half second
/// (NACK may still be at work there).
pub fn tally_track(
    t: &switchboard_sfu_client::ReceivedTrack,
    lat_from: usize,
    seq_from: i64,
    latencies: &mut Vec<u32>,
) -> (u64, u64, u64) {
    latencies.extend_from_slice(&t.latencies_us[lat_from.min(t.latencies_us.len())..]);
    // The stream's advance: unique packets, not padding or duplicates.
    let advance = (t.highest_ext_seq - seq_from).max(0) as u64;
    let end = t.highest_ext_seq - (VIDEO_PPS as i64 / 2);
    if end <= seq_from {
        return (advance, 0, 0);
    }
    let missing = (seq_from..end).filter(|q| !t.unique_seqs.contains(q)).count() as u64;
    (advance, (end - seq_from) as u64, missing)
}

pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// CPU seconds (user + system) of a process.
pub fn cpu_seconds(pid: u32) -> f64 {
    sfu_pod::heartbeat::cpu_seconds(&pid.to_string()).unwrap_or(0.0)
}

struct Sfu {
    child: std::process::Child,
    api: SfuApi,
}

impl Drop for Sfu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_sfu(threads: Option<usize>) -> anyhow::Result<Sfu> {
    use std::io::BufRead;
    let exe = std::env::current_exe()?.with_file_name("sfu-pod");
    let mut command = std::process::Command::new(&exe);
    if let Some(n) = threads {
        command.env("SWITCHBOARD_WORKER_THREADS", n.to_string());
    }
    // The credential of a pool, as the operator gives its SFUs one.
    let token = switchboard_sfu_client::ApiToken::generate();
    let mut child = command
        .env(switchboard_sfu_client::auth::TOKEN_ENV, token.expose())
        .env("SWITCHBOARD_API_ADDR", "127.0.0.1:0")
        .env("SWITCHBOARD_MEDIA_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {}: {e} (cargo build --release -p sfu-pod first)", exe.display()))?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(&line)?;
    Ok(Sfu { child, api: SfuApi::new(v["api"].as_str().unwrap_or_default()).with_token(Some(&token)) })
}

async fn forwarded(api: &SfuApi) -> f64 {
    sfu_pod::metrics::packets_forwarded(api).await
}

fn video(id: &str) -> Publish {
    video_at(id, VIDEO_PPS)
}

fn video_at(id: &str, packets_per_second: u32) -> Publish {
    Publish {
        kind: PublishKind::Video { simulcast: false, packets_per_second, size: VIDEO_BYTES },
        ..Publish::video(id)
    }
}

type Mark = (String, usize, i64);

/// Latencies (sorted), and stream advance, packets expected and missing since `marks`.
fn tally(people: &[Participant], marks: &[Vec<Mark>]) -> (Vec<u32>, u64, u64, u64) {
    let mut latencies = Vec::new();
    let (mut advance, mut expected, mut missing) = (0u64, 0u64, 0u64);
    for (p, mark) in people.iter().zip(marks) {
        let rx = p.received();
        for (track, lat_from, seq_from) in mark {
            let Some(t) = rx.get(track) else { continue };
            let (a, e, m) = tally_track(t, *lat_from, *seq_from, &mut latencies);
            (advance, expected, missing) = (advance + a, expected + e, missing + m);
        }
    }
    latencies.sort_unstable();
    (latencies, advance, expected, missing)
}

fn marks(people: &[Participant]) -> Vec<Vec<Mark>> {
    people
        .iter()
        .map(|p| p.received().into_iter().map(|(k, t)| (k, t.latencies_us.len(), t.highest_ext_seq)).collect())
        .collect()
}

async fn run_switchboard(
    s: Scenario,
    seconds: u64,
    threads: Option<usize>,
    compare_estimates: bool,
) -> anyhow::Result<Measured> {
    let sfu = start_sfu(threads)?;
    let net = NetworkOptions { loopback_only: true, ..Default::default() };
    let twcc = TWCC.load(std::sync::atomic::Ordering::Relaxed);
    // Subscribers: transport-wide feedback and RTX, or REMB alone.
    let sub_net = NetworkOptions { publisher_feedback: twcc, rtx: twcc, ..net.clone() };
    let (publishers, _) = s.shape();
    let mut people = Vec::new();
    match s {
        Scenario::FanOut(n) => {
            people.push(
                Participant::join(
                    sfu.api.clone(),
                    "bench",
                    "pub",
                    JoinOptions { publish: vec![video("pub-cam")], net: net.clone(), ..Default::default() },
                )
                .await?,
            );
            for i in 0..n {
                people.push(
                    Participant::join(
                        sfu.api.clone(),
                        "bench",
                        &format!("sub{i}"),
                        JoinOptions { net: sub_net.clone(), ..Default::default() },
                    )
                    .await?,
                );
                if !twcc && compare_estimates {
                    people.last().unwrap().set_downlink_cap(Some(20_000_000));
                }
            }
        }
        Scenario::Mesh(n) => {
            for i in 0..n {
                let opts =
                    JoinOptions { publish: vec![video(&format!("p{i}-cam"))], net: net.clone(), ..Default::default() };
                people.push(Participant::join(sfu.api.clone(), "bench", &format!("p{i}"), opts).await?);
            }
        }
        Scenario::LastN(n, shown) => {
            for i in 0..n {
                let publish =
                    vec![video_at(&format!("p{i}-cam"), THUMBNAIL_PPS.load(std::sync::atomic::Ordering::Relaxed))];
                let opts = JoinOptions { publish, net: net.clone(), ..Default::default() };
                people.push(Participant::join(sfu.api.clone(), "bench", &format!("p{i}"), opts).await?);
            }
            // Every camera published and reaching everyone before the pages are set.
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let flowing: usize =
                    people.iter().map(|p| p.received().values().filter(|t| t.packets > 5).count()).sum();
                if flowing >= n * (n - 1) {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{}: {flowing} of {} tracks flowing",
                    s.label(),
                    n * (n - 1)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let remb = REMB_BPS.load(std::sync::atomic::Ordering::Relaxed);
            if remb > 0 {
                for p in &people {
                    p.set_downlink_cap(Some(remb));
                }
            }
            // Each shows the next `shown` participants (its grid page) and pauses the rest.
            use switchboard_sfu_api::{SubscriptionRequest, paths};
            for i in 0..n {
                for j in (0..n).filter(|j| *j != i) {
                    let ahead = (j + n - i) % n;
                    let prefs = SubscriptionRequest { paused: ahead > shown, ..Default::default() };
                    let url = sfu.api.url(paths::SUBSCRIPTION, "bench", &format!("p{i}"), &format!("p{j}-cam"));
                    sfu.api.put::<_, serde_json::Value>(&url, &prefs).await?;
                }
            }
        }
    }
    let (_, per_track) = s.shape();
    let want = publishers * per_track;
    // Everyone receiving before the window opens.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let receiving: usize = people.iter().map(|p| p.received().values().filter(|t| t.packets > 20).count()).sum();
        if receiving >= want {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{}: only {receiving} of {want} subscriptions flowing", s.label());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mark = marks(&people);
    let (f0, c0, t0) = (forwarded(&sfu.api).await, cpu_seconds(sfu.child.id()), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (f1, c1, t1) = (forwarded(&sfu.api).await, cpu_seconds(sfu.child.id()), Instant::now());
    // Counted at the receivers, as for Janus (which has no counter here).
    let advance = tally(&people, &mark).1;
    // Let NACK finish the tail before counting losses.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (lat, _, expected, missing) = tally(&people, &mark);
    let wall = t1.duration_since(t0).as_secs_f64();
    eprintln!("{}: SFU forwarded {:.0} pkt/s by its own counter", s.label(), (f1 - f0) / wall);
    Ok(Measured::new(want, wall, advance, c1 - c0, &lat, expected, missing))
}

fn row(system: &str, s: Scenario, m: &Measured, direct: &(f64, f64)) {
    let per_core = if m.cpu_cores > 0.0 { m.forwarded_pps / m.cpu_cores } else { f64::NAN };
    println!(
        "| {system} | {} | {} | {:.0} | {:.2} | {:.0} | {:.2} / {:.2} | {:.2} / {:.2} | {:.3} |",
        s.label(),
        m.receivers,
        m.forwarded_pps,
        m.cpu_cores,
        per_core,
        m.p50_ms,
        m.p99_ms,
        (m.p50_ms - direct.0).max(0.0),
        (m.p99_ms - direct.1).max(0.0),
        m.loss_pct
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut scenarios =
        vec![Scenario::FanOut(10), Scenario::FanOut(25), Scenario::FanOut(50), Scenario::Mesh(4), Scenario::Mesh(8)];
    let mut seconds = 10;
    let mut janus_url: Option<String> = None;
    let mut compare_estimates = false;
    let mut sfu_threads: Option<usize> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--scenarios" => {
                scenarios =
                    args.next().unwrap_or_default().split(',').map(Scenario::parse).collect::<anyhow::Result<_>>()?;
            }
            "--seconds" => seconds = args.next().and_then(|v| v.parse().ok()).unwrap_or(seconds),
            "--remb" => {
                let bps = args.next().and_then(|v| v.parse().ok());
                REMB_BPS.store(
                    bps.ok_or_else(|| anyhow::anyhow!("--remb takes bits per second"))?,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            "--thumbnail-pps" => {
                let pps = args.next().and_then(|v| v.parse().ok()).filter(|n| (1..=VIDEO_PPS).contains(n));
                let pps = pps.ok_or_else(|| anyhow::anyhow!("--thumbnail-pps takes 1..={VIDEO_PPS}"))?;
                THUMBNAIL_PPS.store(pps, std::sync::atomic::Ordering::Relaxed);
            }
            "--janus" => janus_url = args.next(),
            "--twcc" => compare_estimates = true,
            "--sfu-threads" => {
                sfu_threads = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| anyhow::anyhow!("--sfu-threads takes a whole number of at least 1"))?,
                )
            }
            other => anyhow::bail!("unknown argument {other}; see the doc comment of sfu_bench.rs"),
        }
    }
    let direct = direct::baseline(Duration::from_secs(5)).await?;
    println!("direct peer-to-peer on loopback, same process: p50 {:.2} ms, p99 {:.2} ms", direct.0, direct.1);
    println!();
    println!(
        "| system | scenario | receiving tracks | delivered pkt/s | SFU CPU (cores) | pkt/s per core | latency p50 / p99 (ms) | added by the SFU p50 / p99 (ms) | loss % |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut results = Vec::new();
    for s in &scenarios {
        let system = match sfu_threads {
            Some(1) => "Switchboard, 1 thread".to_owned(),
            Some(n) => format!("Switchboard, {n} threads"),
            None => "Switchboard".to_owned(),
        };
        if compare_estimates {
            for (twcc, label) in [(false, "REMB"), (true, "TWCC send-side")] {
                TWCC.store(twcc, std::sync::atomic::Ordering::Relaxed);
                let m = run_switchboard(*s, seconds, sfu_threads, true).await?;
                row(&format!("{system}, {label}"), *s, &m, &direct);
            }
            continue;
        }
        let m = run_switchboard(*s, seconds, sfu_threads, false).await?;
        row(&system, *s, &m, &direct);
        results.push((*s, m));
        if let (Some(url), false) = (&janus_url, matches!(s, Scenario::LastN(..))) {
            match janus::run(url, *s, seconds).await {
                Ok(j) => row("Janus VideoRoom", *s, &j, &direct),
                Err(e) => println!("| Janus VideoRoom | {} | failed: {e:#} |", s.label()),
            }
        }
    }
    let largest = results
        .iter()
        .filter(|(s, m)| matches!(s, Scenario::FanOut(_)) && m.loss_pct == 0.0)
        .map(|(_, m)| m.receivers)
        .max();
    println!();
    println!("largest fan-out with no loss: {}", largest.map(|n| n.to_string()).unwrap_or("none".into()));
    Ok(())
}
