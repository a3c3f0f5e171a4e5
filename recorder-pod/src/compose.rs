//! After the meeting: chunks become one file per track (kept), and the tracks are
//! composited by ffmpeg into the layout asked for. Planning is pure (what files,
//! which offsets, which ffmpeg arguments); running ffmpeg is the only IO.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use switchboard_crds::recording_job::{Layout, RecordingFormat};

use crate::tracks::{TRACK_META, TRACKS_DIR, TrackMeta, safe_name};
use crate::{ivf, ogg};

pub const CANVAS: (u32, u32) = (1280, 720);
pub const FPS: u32 = 15;
/// Audio activity is compared in windows this long to pick the active speaker.
const SPEAKER_WINDOW_MS: u64 = 500;
/// A new speaker must lead for this many windows before the view switches.
const SPEAKER_HOLD_WINDOWS: usize = 3;

/// One track, its chunks joined: where it is and when it plays (ms from the epoch).
#[derive(Clone, Debug, PartialEq)]
pub struct TrackFile {
    pub meta: TrackMeta,
    pub path: PathBuf,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Audio only: (ms from the epoch, bytes) per packet, for the active speaker.
    pub activity: Vec<(u64, u32)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("nothing was recorded")]
    NothingRecorded,
    #[error("reading the chunks: {0}")]
    Io(#[from] std::io::Error),
    #[error("ffmpeg failed ({status}): {stderr}")]
    Ffmpeg { status: String, stderr: String },
    #[error("ffmpeg did not finish within {0:?}")]
    Timeout(Duration),
}

/// Joins every track's chunks into `tracks/<publisher>/<track>.{ogg,ivf}`.
pub fn join_tracks(dir: &Path) -> Result<Vec<TrackFile>, ComposeError> {
    let mut out = Vec::new();
    let root = dir.join(TRACKS_DIR);
    let Ok(publishers) = std::fs::read_dir(&root) else { return Err(ComposeError::NothingRecorded) };
    for publisher in publishers.flatten().filter(|e| e.path().is_dir()) {
        for track_dir in std::fs::read_dir(publisher.path())?.flatten().filter(|e| e.path().is_dir()) {
            let track_dir = track_dir.path();
            let Ok(meta) = std::fs::read(track_dir.join(TRACK_META)) else { continue };
            let Ok(meta) = serde_json::from_slice::<TrackMeta>(&meta) else { continue };
            let ext = if meta.video { "ivf" } else { "ogg" };
            let mut chunks: Vec<PathBuf> = std::fs::read_dir(&track_dir)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == ext))
                .collect();
            // Names start with the chunk's start time, zero-padded: name order is time order.
            chunks.sort();
            let data: Vec<Vec<u8>> = chunks.iter().map(std::fs::read).collect::<Result<_, _>>()?;
            let path = publisher.path().join(format!("{}.{ext}", safe_name(&meta.track)));
            let file = if meta.video {
                let (bytes, frames) = ivf::concatenate(&data);
                let (Some(first), Some(last)) = (frames.first(), frames.last()) else { continue };
                let interval = if frames.len() > 1 {
                    (last.pts_ms - first.pts_ms) / (frames.len() as u64 - 1)
                } else {
                    1000 / FPS as u64
                };
                std::fs::write(&path, bytes)?;
                TrackFile {
                    meta,
                    path,
                    start_ms: first.pts_ms,
                    end_ms: last.pts_ms + interval.clamp(1, 1000),
                    activity: vec![],
                }
            } else {
                let serial = 0x5357_4231;
                let (bytes, pages) = ogg::concatenate(&data, serial);
                let (Some(first), Some(last)) = (pages.first(), pages.last()) else { continue };
                let to_ms = |g: u64| g * 1000 / ogg::OPUS_SAMPLE_RATE;
                std::fs::write(&path, bytes)?;
                let activity = pages.iter().map(|p| (to_ms(p.granule), p.packet.len() as u32)).collect();
                TrackFile {
                    meta,
                    path,
                    start_ms: to_ms(first.granule.saturating_sub(ogg::opus_samples(&first.packet))),
                    end_ms: to_ms(last.granule),
                    activity,
                }
            };
            out.push(file);
        }
    }
    if out.is_empty() {
        return Err(ComposeError::NothingRecorded);
    }
    out.sort_by(|a, b| {
        (a.start_ms, &a.meta.publisher, &a.meta.track).cmp(&(b.start_ms, &b.meta.publisher, &b.meta.track))
    });
    Ok(out)
}

/// The span the composite covers: first sample to last, ms from the epoch.
pub fn span(tracks: &[TrackFile]) -> (u64, u64) {
    let start = tracks.iter().map(|t| t.start_ms).min().unwrap_or(0);
    let end = tracks.iter().map(|t| t.end_ms).max().unwrap_or(start);
    (start, end)
}

/// Grid of `n` cells on the canvas: (columns, rows).
pub fn grid(n: usize) -> (usize, usize) {
    let cols = (n as f64).sqrt().ceil().max(1.0) as usize;
    let rows = n.div_ceil(cols).max(1);
    (cols, rows)
}

/// Who is on screen when, for the Speaker layout: (publisher, from ms, to ms) relative
/// to `start`, covering the whole span. Loudest audio per window (Opus packets grow
/// with speech), switched only after a lead of a few windows.
pub fn speaker_segments(tracks: &[TrackFile], with_video: &[String], start: u64, end: u64) -> Vec<(String, u64, u64)> {
    let windows = ((end - start) / SPEAKER_WINDOW_MS + 1) as usize;
    let mut loudest: Vec<Option<(String, u64)>> = vec![None; windows];
    for t in tracks.iter().filter(|t| !t.meta.video && with_video.contains(&t.meta.publisher)) {
        let mut bytes = vec![0u64; windows];
        for (ms, b) in &t.activity {
            if let Some(w) = ms.checked_sub(start).map(|d| (d / SPEAKER_WINDOW_MS) as usize).filter(|w| *w < windows) {
                bytes[w] += *b as u64;
            }
        }
        for (w, b) in bytes.into_iter().enumerate() {
            if loudest[w].as_ref().is_none_or(|(_, best)| b > *best) && b > 0 {
                loudest[w] = Some((t.meta.publisher.clone(), b));
            }
        }
    }
    let Some(first) = with_video.first() else { return vec![] };
    let mut current = loudest.iter().flatten().next().map(|(p, _)| p.clone()).unwrap_or_else(|| first.clone());
    let mut segments: Vec<(String, u64, u64)> = vec![(current.clone(), 0, 0)];
    let mut candidate: Option<(String, usize)> = None;
    for (w, l) in loudest.iter().enumerate() {
        let leader = l.as_ref().map(|(p, _)| p.clone());
        match leader {
            Some(p) if p != current => {
                let run = match &candidate {
                    Some((c, n)) if *c == p => n + 1,
                    _ => 1,
                };
                candidate = Some((p.clone(), run));
                if run >= SPEAKER_HOLD_WINDOWS {
                    let at = (w + 1 - run) as u64 * SPEAKER_WINDOW_MS;
                    segments.last_mut().unwrap().2 = at;
                    segments.push((p.clone(), at, at));
                    current = p;
                    candidate = None;
                }
            }
            _ => candidate = None,
        }
    }
    segments.last_mut().unwrap().2 = end - start;
    segments.retain(|(_, a, b)| b > a);
    segments
}

/// ffmpeg's arguments for compositing `tracks` into `output`.
pub fn ffmpeg_args(tracks: &[TrackFile], layout: Layout, format: RecordingFormat, output: &Path) -> Vec<String> {
    let (start, end) = span(tracks);
    let duration = (end - start) as f64 / 1000.0;
    // Two filter threads: the graph (decode, scale, overlay) is the bottleneck on small machines.
    let mut args: Vec<String> =
        ["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-filter_complex_threads", "2"]
            .map(String::from)
            .to_vec();
    for t in tracks {
        args.push("-itsoffset".into());
        args.push(format!("{:.3}", (t.start_ms - start) as f64 / 1000.0));
        args.push("-i".into());
        args.push(t.path.display().to_string());
    }
    let (w, h) = CANVAS;
    let mut g = String::new();
    let _ = write!(g, "color=c=0x202124:s={w}x{h}:r={FPS}:d={duration:.3}[bg0]");
    let videos: Vec<usize> = (0..tracks.len()).filter(|i| tracks[*i].meta.video).collect();
    let audios: Vec<usize> = (0..tracks.len()).filter(|i| !tracks[*i].meta.video).collect();
    let mut layer = 0;
    // `only`: a select expression; frames outside it are dropped before scaling (the
    // Speaker layout shows one video at a time, and scaling is most of the cost).
    let fit = |i: usize, cw: u32, ch: u32, label: &str, only: Option<&str>, g: &mut String| {
        let select = only.map(|e| format!("select='{e}',")).unwrap_or_default();
        let _ = write!(
            g,
            ";[{i}:v]{select}scale={cw}:{ch}:force_original_aspect_ratio=decrease:flags=fast_bilinear,pad={cw}:{ch}:-1:-1:color=0x202124,setsar=1[{label}]"
        );
    };
    match layout {
        Layout::Speaker => {
            let with_video: Vec<String> = videos.iter().map(|i| tracks[*i].meta.publisher.clone()).collect();
            let segments = speaker_segments(tracks, &with_video, start, end);
            for &i in &videos {
                let mine: Vec<String> = segments
                    .iter()
                    .filter(|(p, ..)| *p == tracks[i].meta.publisher)
                    .map(|(_, a, b)| format!("between(t,{:.3},{:.3})", *a as f64 / 1000.0, *b as f64 / 1000.0))
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                let shown = mine.join("+");
                fit(i, w, h, &format!("v{i}"), Some(&shown), &mut g);
                let _ = write!(g, ";[bg{layer}][v{i}]overlay=0:0:eof_action=pass:enable='{shown}'[bg{}]", layer + 1);
                layer += 1;
            }
        }
        _ => {
            let (cols, rows) = grid(videos.len());
            let (cw, ch) = ((w / cols as u32) & !1, (h / rows as u32) & !1);
            for (cell, &i) in videos.iter().enumerate() {
                let (x, y) = ((cell % cols) as u32 * cw, (cell / cols) as u32 * ch);
                fit(i, cw, ch, &format!("v{i}"), None, &mut g);
                let _ = write!(g, ";[bg{layer}][v{i}]overlay={x}:{y}:eof_action=pass[bg{}]", layer + 1);
                layer += 1;
            }
        }
    }
    let _ = write!(g, ";[bg{layer}]format=yuv420p[vout]");
    if audios.is_empty() {
        let _ = write!(g, ";anullsrc=r=48000:cl=stereo,atrim=0:{duration:.3}[aout]");
    } else {
        for &i in &audios {
            // Silence before the first packet and in gaps, so every track keeps its place in time.
            let _ = write!(g, ";[{i}:a]aresample=48000:async=1:first_pts=0,aformat=channel_layouts=stereo[a{i}]");
        }
        let inputs: String = audios.iter().map(|i| format!("[a{i}]")).collect();
        let _ = write!(g, ";{inputs}amix=inputs={}:duration=longest:normalize=0,apad[aout]", audios.len());
    }
    args.extend(["-filter_complex".into(), g, "-map".into(), "[vout]".into(), "-map".into(), "[aout]".into()]);
    match format {
        RecordingFormat::MP4 => args.extend(
            [
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-crf",
                "27",
                "-r",
                "15",
                "-g",
                "150",
                "-c:a",
                "aac",
                "-b:a",
                "96k",
                "-movflags",
                "+faststart",
                "-f",
                "mp4",
            ]
            .map(String::from),
        ),
        RecordingFormat::WebM => args.extend(
            [
                "-c:v",
                "libvpx",
                "-deadline",
                "realtime",
                "-cpu-used",
                "8",
                "-b:v",
                "1200k",
                "-r",
                "15",
                "-c:a",
                "libopus",
                "-b:a",
                "64k",
                "-f",
                "webm",
            ]
            .map(String::from),
        ),
    }
    args.extend(["-t".into(), format!("{duration:.3}"), output.display().to_string()]);
    args
}

/// File name of the composite.
pub fn output_name(layout: Layout, format: RecordingFormat) -> String {
    let base = match layout {
        Layout::Gallery => "gallery",
        Layout::Speaker => "speaker",
        Layout::Tracks => "tracks",
    };
    let ext = match format {
        RecordingFormat::MP4 => "mp4",
        RecordingFormat::WebM => "webm",
    };
    format!("{base}.{ext}")
}

/// Runs ffmpeg; the output appears under its name only when ffmpeg succeeded.
pub async fn run_ffmpeg(
    ffmpeg: &str,
    tracks: &[TrackFile],
    layout: Layout,
    format: RecordingFormat,
    output: &Path,
    timeout: Duration,
) -> Result<(), ComposeError> {
    let partial =
        output.with_extension(format!("part.{}", output.extension().and_then(|e| e.to_str()).unwrap_or("out")));
    let args = ffmpeg_args(tracks, layout, format, &partial);
    tracing::info!(ffmpeg, args = %args.join(" "), "compositing");
    let mut cmd = tokio::process::Command::new(ffmpeg);
    // ffmpeg dies with the recorder (a killed recorder's retry composites again).
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => out?,
        Err(_) => return Err(ComposeError::Timeout(timeout)),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String =
            stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ");
        let _ = std::fs::remove_file(&partial);
        return Err(ComposeError::Ffmpeg { status: out.status.to_string(), stderr: tail.chars().take(600).collect() });
    }
    std::fs::rename(&partial, output)?;
    Ok(())
}

/// What the URL of a Tracks-layout recording names: its directory of track files.
pub const TRACKS_DIR_URL: &str = "tracks/";

#[cfg(test)]
mod tests {
    use super::*;

    fn track(publisher: &str, video: bool, start_ms: u64, end_ms: u64, activity: Vec<(u64, u32)>) -> TrackFile {
        TrackFile {
            meta: TrackMeta {
                publisher: publisher.into(),
                track: format!("{publisher}-{}", if video { "cam" } else { "mic" }),
                video,
                mime_type: String::new(),
            },
            path: PathBuf::from(format!("/r/{publisher}.{}", if video { "ivf" } else { "ogg" })),
            start_ms,
            end_ms,
            activity,
        }
    }

    #[test]
    fn grids_fit_every_participant() {
        assert_eq!(grid(1), (1, 1));
        assert_eq!(grid(2), (2, 1));
        assert_eq!(grid(4), (2, 2));
        assert_eq!(grid(5), (3, 2));
        assert_eq!(grid(10), (4, 3));
    }

    #[test]
    fn gallery_offsets_each_track_from_the_first_sample_and_mixes_all_audio() {
        let tracks = vec![
            track("alice", true, 1000, 21_000, vec![]),
            track("alice", false, 1000, 21_000, vec![]),
            track("bob", true, 3500, 20_000, vec![]),
            track("bob", false, 3500, 20_000, vec![]),
        ];
        let args = ffmpeg_args(&tracks, Layout::Gallery, RecordingFormat::MP4, Path::new("/r/out.mp4"));
        let joined = args.join(" ");
        assert!(joined.contains("-itsoffset 0.000 -i /r/alice.ivf"), "{joined}");
        assert!(joined.contains("-itsoffset 2.500 -i /r/bob.ivf"), "{joined}");
        assert!(joined.contains("overlay=640:0"), "bob sits in the second cell: {joined}");
        assert!(joined.contains("amix=inputs=2"), "{joined}");
        assert!(joined.contains("-c:v libx264") && joined.contains("-c:a aac"), "{joined}");
        assert_eq!(args[args.len() - 2], "20.000", "duration: first sample to last");
    }

    #[test]
    fn the_active_speaker_switches_only_after_a_lead() {
        // Alice talks for 4 s, Bob for 4 s, then one loud 0.5 s blip from Alice.
        let talk = |from: u64, to: u64| (from..to).step_by(20).map(|ms| (ms, 120)).collect::<Vec<_>>();
        let quiet = |from: u64, to: u64| (from..to).step_by(20).map(|ms| (ms, 3)).collect::<Vec<_>>();
        let mut alice = talk(0, 4000);
        alice.extend(quiet(4000, 8000));
        alice.extend(talk(8000, 8500));
        alice.extend(quiet(8500, 10_000));
        let mut bob = quiet(0, 4000);
        bob.extend(talk(4000, 10_000));
        let tracks = vec![track("alice", false, 0, 10_000, alice), track("bob", false, 0, 10_000, bob)];
        let seg = speaker_segments(&tracks, &["alice".into(), "bob".into()], 0, 10_000);
        assert_eq!(seg, vec![("alice".into(), 0, 4000), ("bob".into(), 4000, 10_000)]);
        let args = ffmpeg_args(
            &[
                track("alice", true, 0, 10_000, vec![]),
                track("bob", true, 0, 10_000, vec![]),
                tracks[0].clone(),
                tracks[1].clone(),
            ],
            Layout::Speaker,
            RecordingFormat::WebM,
            Path::new("/r/s.webm"),
        )
        .join(" ");
        assert!(
            args.contains("enable='between(t,0.000,4.000)'") && args.contains("enable='between(t,4.000,10.000)'"),
            "{args}"
        );
        assert!(args.contains("-c:v libvpx"), "{args}");
    }
}
