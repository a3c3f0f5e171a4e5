//! Recorder benchmark: CPU and memory of the recorder while it records a meeting of N
//! participants (each publishing 640x360 VP8 at 15 fps and Opus), and the time and
//! CPU ffmpeg takes to composite the gallery MP4, per minute of meeting.
//!
//!   cargo build --release -p recorder-pod --bins
//!   target/release/recorder-bench --participants 10 --seconds 60
//!   target/release/recorder-bench --participants 10 --seconds 60 --composite-only
//!
//! `--composite-only` skips the live meeting: it writes every participant's camera and
//! microphone chunks directly (the recorder's own writers, the same test media), so
//! compositing is measured with exactly N cameras and N microphones.
//!
//! The SFU and the publishers run in this process; the recorder runs as a child
//! process (this binary with `--record`) so that its CPU time and peak memory are its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use recorder_pod::compose;
use recorder_pod::tracks::TrackRecorder;
use switchboard_crds::recording_job::{Layout, RecordingFormat};
use switchboard_sfu_api::ParticipantKind;
use switchboard_sfu_client::encoded::{EncodedCodec, ToneClip, VideoClip, encode_clip};
use switchboard_sfu_client::{JoinOptions, Participant, Publish, SfuApi};

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// CPU seconds (user + system) of waited-for children so far.
fn children_cpu() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Peak resident memory of a process, MiB (VmHWM).
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

async fn record_child(endpoint: String, room: String, dir: PathBuf, seconds: u64) {
    let recorder = Arc::new(TrackRecorder::new(&dir, 1, Duration::from_secs(2)).expect("recording dir"));
    let join = |n: u32| {
        let opts = JoinOptions { kind: ParticipantKind::Hidden, sink: Some(recorder.clone()), ..Default::default() };
        let (endpoint, room) = (endpoint.clone(), room.clone());
        async move { Participant::join(SfuApi::new(endpoint), &room, &format!("recorder-{n}"), opts).await }
    };
    let mut p = join(0).await.expect("recorder joins");
    // As the recorder pod does: tracks announced but silent make it rejoin.
    let mut watch = recorder_pod::tracks::UnheardWatch::new(Duration::from_secs(6));
    let mut rejoins = 0;
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(500)).await;
        recorder.tick();
        let heard = recorder.heard();
        if let Some(stuck) = p.with_events(|events| watch.check(events, &heard)) {
            rejoins += 1;
            eprintln!("recorder: rejoining for {stuck:?}");
            let _ = p.leave().await;
            p = join(rejoins).await.expect("recorder rejoins");
        }
    }
    recorder.finish();
    let t = recorder.totals();
    eprintln!(
        "recorder: {} tracks, {} chunks, {} frames, {} bytes, {rejoins} rejoins",
        t.tracks, t.chunks, t.frames, t.bytes
    );
    let _ = p.leave().await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--record") {
        let (endpoint, room, dir, seconds) =
            (args[i + 1].clone(), args[i + 2].clone(), PathBuf::from(&args[i + 3]), args[i + 4].parse().unwrap());
        return record_child(endpoint, room, dir, seconds).await;
    }
    let participants: usize = arg("--participants", 10);
    let seconds: u64 = arg("--seconds", 60);
    let work = std::env::temp_dir().join(format!("recorder-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();

    // Test media: 10 s, looped by the publishers.
    let camera = VideoClip {
        width: 640,
        height: 360,
        kbps: 500,
        keyframe_interval: 30,
        fixed_keyframes: false,
        ..VideoClip::new(EncodedCodec::Vp8, "testsrc2")
    };
    let video = encode_clip(camera, 10, &work.join("cam.ivf")).expect("ffmpeg encodes the camera");
    let tone = ToneClip { kbps: 32, stereo: false, ..ToneClip::new(440) };
    let audio = encode_clip(tone, 10, &work.join("mic.ogg")).expect("ffmpeg encodes the tone");

    if args.iter().any(|a| a == "--composite-only") {
        let dir = work.join("recording");
        write_tracks(&dir, participants, seconds, &video, &audio);
        return composite(&dir, participants, None, &args, &work).await;
    }
    let sfu = sfu_pod::local::start("bench-sfu").await.expect("SFU");
    let room = "bench.meeting".to_owned();
    let dir = work.join("recording");
    // The recorder first, so that it hears every track from its start.
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--record", &sfu.endpoint, &room, dir.to_str().unwrap(), &(seconds + 3).to_string()])
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("recorder child");
    let pid = child.id();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut publishers = Vec::new();
    for i in 0..participants {
        let opts = JoinOptions {
            manual_subscribe: true,
            publish: vec![
                Publish::encoded(&format!("p{i}-cam"), video.clone()),
                Publish::encoded(&format!("p{i}-mic"), audio.clone()),
            ],
            ..Default::default()
        };
        publishers.push(
            Participant::join(SfuApi::new(sfu.endpoint.clone()), &room, &format!("p{i}"), opts)
                .await
                .expect("publisher"),
        );
    }
    let cpu_before = children_cpu();
    let mut peak = 0.0f64;
    let waited = tokio::task::spawn_blocking(move || {
        let mut child = child;
        loop {
            if let Some(p) = peak_rss_mib(pid) {
                peak = peak.max(p);
            }
            if let Ok(Some(status)) = child.try_wait() {
                return (status, peak);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let (status, peak) = waited.await.unwrap();
    assert!(status.success(), "the recorder failed: {status}");
    let record_cpu = children_cpu() - cpu_before;
    for p in publishers {
        let _ = p.leave().await;
    }

    composite(&dir, participants, Some((record_cpu, peak, seconds + 3)), &args, &work).await;
}

/// Writes `participants` cameras and microphones of `seconds` each, as the recorder would.
fn write_tracks(
    dir: &std::path::Path,
    participants: usize,
    seconds: u64,
    video: &switchboard_sfu_client::EncodedMedia,
    audio: &switchboard_sfu_client::EncodedMedia,
) {
    use recorder_pod::{ivf::IvfWriter, ogg::OggOpusWriter, tracks::TrackMeta};
    for i in 0..participants {
        for (media, track, mime) in
            [(video, format!("p{i}-cam"), "video/VP8"), (audio, format!("p{i}-mic"), "audio/opus")]
        {
            let tdir = dir.join("tracks").join(format!("p{i}")).join(&track);
            std::fs::create_dir_all(&tdir).unwrap();
            let meta = TrackMeta {
                publisher: format!("p{i}"),
                track: track.clone(),
                video: media.video(),
                mime_type: mime.into(),
            };
            std::fs::write(tdir.join("track.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
            let ext = if media.video() { "ivf" } else { "ogg" };
            let file =
                std::io::BufWriter::new(std::fs::File::create(tdir.join(format!("0000000000-a1.{ext}"))).unwrap());
            let mut at = Duration::ZERO;
            let end = Duration::from_secs(seconds);
            if media.video() {
                let mut w = IvfWriter::new(file, b"VP80", 0, 0).unwrap();
                for f in media.frames.iter().cycle() {
                    if at + f.duration > end {
                        break;
                    }
                    w.write_frame(&f.data, at.as_millis() as u64).unwrap();
                    at += f.duration;
                }
            } else {
                let mut w = OggOpusWriter::new(file, 1).unwrap();
                for f in media.frames.iter().cycle() {
                    if at + f.duration > end {
                        break;
                    }
                    at += f.duration;
                    w.write_packet(&f.data, at.as_micros() as u64 * 48 / 1000).unwrap();
                }
            }
        }
    }
}

async fn composite(
    dir: &std::path::Path,
    participants: usize,
    recording: Option<(f64, f64, u64)>,
    args: &[String],
    work: &std::path::Path,
) {
    let began = Instant::now();
    let tracks = compose::join_tracks(dir).expect("tracks");
    let join_s = began.elapsed().as_secs_f64();
    let missing: Vec<String> = (0..participants)
        .flat_map(|i| [format!("p{i}-cam"), format!("p{i}-mic")])
        .filter(|t| !tracks.iter().any(|f| &f.meta.track == t))
        .collect();
    if !missing.is_empty() {
        eprintln!("tracks never received: {missing:?}");
    }
    let (start, end) = compose::span(&tracks);
    let media_minutes = (end - start) as f64 / 60_000.0;
    let mut rows = Vec::new();
    for (layout, format) in [(Layout::Gallery, RecordingFormat::MP4), (Layout::Speaker, RecordingFormat::MP4)] {
        let output = dir.join(compose::output_name(layout, format));
        let cpu0 = children_cpu();
        let t0 = Instant::now();
        compose::run_ffmpeg("ffmpeg", &tracks, layout, format, &output, Duration::from_secs(3600))
            .await
            .expect("composite");
        let wall = t0.elapsed().as_secs_f64();
        let cpu = children_cpu() - cpu0;
        rows.push((
            format!("{layout:?} {format:?}"),
            wall,
            cpu,
            std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0),
        ));
    }

    let cams = tracks.iter().filter(|t| t.meta.video).count();
    println!(
        "recorder-bench: {participants} participants (640x360 VP8 15 fps + Opus each), {:.1} s of media, {} tracks ({cams} cameras)",
        media_minutes * 60.0,
        tracks.len()
    );
    println!();
    println!("| recording | value |");
    println!("|---|---|");
    if let Some((record_cpu, peak, secs)) = recording {
        println!(
            "| recorder CPU | {:.1} % of one core ({record_cpu:.1} CPU-s over {secs} s) |",
            record_cpu / secs as f64 * 100.0
        );
        println!("| recorder peak memory (VmHWM) | {peak:.0} MiB |");
    }
    println!("| tracks | {} |", tracks.len());
    println!("| joining chunks into track files | {join_s:.2} s |");
    println!();
    // CPU seconds per meeting minute equal CPU minutes per meeting hour.
    println!(
        "| compositing | wall s | CPU s | wall s per meeting minute | CPU s per meeting minute (= CPU min per meeting hour) | output MiB |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, wall, cpu, size) in rows {
        println!(
            "| {name} | {wall:.1} | {cpu:.1} | {:.1} | {:.1} | {:.1} |",
            wall / media_minutes,
            cpu / media_minutes,
            size as f64 / 1048576.0
        );
    }
    if args.iter().any(|a| a == "--keep") {
        println!("\nkept: {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(work);
    }
}
