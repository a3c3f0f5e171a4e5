//! Real encoded media for publishers: VP8 frames from IVF files, H.264 access units
//! from Annex-B files and Opus packets from Ogg files (as ffmpeg writes them), so that
//! what a recorder or a browser receives decodes; [`encode_clip`] has ffmpeg make such
//! files for tests and benchmarks. Also the VP8 and H.264 keyframe tests a receiver
//! needs for real payloads.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::{Error, Result};

fn invalid(path: &Path, problem: impl Into<String>) -> Error {
    Error::InvalidMedia { path: path.to_owned(), problem: problem.into() }
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let what = format!("{what} {}", path.display());
    move |source| Error::Io { what, source }
}

/// One encoded frame (VP8) or packet (Opus), and how long it plays.
#[derive(Clone, Debug)]
pub struct EncodedFrame {
    pub data: Bytes,
    pub duration: Duration,
}

/// What an encoded stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodedCodec {
    Vp8,
    H264,
    Opus,
}

/// A whole encoded stream, shared by the publishers that send it.
#[derive(Clone, Debug)]
pub struct EncodedMedia {
    pub codec: EncodedCodec,
    pub frames: Arc<Vec<EncodedFrame>>,
}

impl EncodedMedia {
    pub fn video(&self) -> bool {
        self.codec != EncodedCodec::Opus
    }

    pub fn duration(&self) -> Duration {
        self.frames.iter().map(|f| f.duration).sum()
    }
}

/// A test clip ffmpeg encodes from one of its synthetic sources (lavfi), for tests and
/// benchmarks that publish real media without shipping media files.
#[derive(Clone, Debug, PartialEq)]
pub enum Clip {
    Video(VideoClip),
    Tone(ToneClip),
}

/// A moving test pattern, VP8 in IVF or H.264 Annex-B.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoClip {
    pub codec: EncodedCodec,
    /// The lavfi video source: `testsrc2`, `smptebars`.
    pub pattern: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub kbps: u32,
    /// A keyframe every this many frames; with `fixed_keyframes`, never sooner either.
    pub keyframe_interval: u32,
    pub fixed_keyframes: bool,
}

impl VideoClip {
    /// 320x240 at 15 fps, 200 kbps, a keyframe every third of a second (a new subscriber
    /// starts at once), as the end-to-end tests publish.
    pub fn new(codec: EncodedCodec, pattern: &str) -> Self {
        Self {
            codec,
            pattern: pattern.into(),
            width: 320,
            height: 240,
            fps: 15,
            kbps: 200,
            keyframe_interval: 5,
            fixed_keyframes: true,
        }
    }
}

/// A sine tone in Ogg Opus: 20 ms packets, a page per packet.
#[derive(Clone, Debug, PartialEq)]
pub struct ToneClip {
    pub frequency: u32,
    pub kbps: u32,
    pub stereo: bool,
}

impl ToneClip {
    /// Stereo at 48 kbps.
    pub fn new(frequency: u32) -> Self {
        Self { frequency, kbps: 48, stereo: true }
    }
}

impl From<VideoClip> for Clip {
    fn from(v: VideoClip) -> Self {
        Self::Video(v)
    }
}

impl From<ToneClip> for Clip {
    fn from(t: ToneClip) -> Self {
        Self::Tone(t)
    }
}

impl Clip {
    /// The ffmpeg arguments that write `seconds` of this clip to `path`.
    fn ffmpeg_args(&self, seconds: u32, path: &Path) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        let mut push = |more: &[&str]| args.extend(more.iter().map(|a| a.to_string()));
        push(&["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i"]);
        match self {
            Self::Video(v) => {
                push(&[
                    &format!("{}=size={}x{}:rate={}", v.pattern, v.width, v.height, v.fps),
                    "-t",
                    &seconds.to_string(),
                ]);
                match v.codec {
                    EncodedCodec::H264 => push(&[
                        "-pix_fmt",
                        "yuv420p",
                        "-c:v",
                        "libx264",
                        "-profile:v",
                        "baseline",
                        "-level",
                        "3.1",
                        "-preset",
                        "ultrafast",
                        "-tune",
                        "zerolatency",
                    ]),
                    EncodedCodec::Vp8 | EncodedCodec::Opus => {
                        push(&["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8"])
                    }
                }
                push(&["-b:v", &format!("{}k", v.kbps), "-g", &v.keyframe_interval.to_string()]);
                if v.fixed_keyframes {
                    push(&["-keyint_min", &v.keyframe_interval.to_string()]);
                }
                if v.codec == EncodedCodec::H264 {
                    push(&["-bf", "0", "-f", "h264"]);
                }
            }
            Self::Tone(t) => {
                push(&[&format!("sine=frequency={}:sample_rate=48000", t.frequency), "-t", &seconds.to_string()]);
                push(&[
                    "-c:a",
                    "libopus",
                    "-b:a",
                    &format!("{}k", t.kbps),
                    "-frame_duration",
                    "20",
                    "-page_duration",
                    "20000",
                ]);
                if t.stereo {
                    push(&["-ac", "2"]);
                }
            }
        }
        args.push(path.display().to_string());
        args
    }
}

/// Has ffmpeg (from `PATH`) write `seconds` of `clip` to `path` (IVF for VP8, Annex-B for
/// H.264, Ogg for a tone), and reads it back as media to publish.
pub fn encode_clip(clip: impl Into<Clip>, seconds: u32, path: &Path) -> Result<EncodedMedia> {
    let clip = clip.into();
    let args = clip.ffmpeg_args(seconds, path);
    let out = std::process::Command::new("ffmpeg")
        .args(&args)
        .output()
        .map_err(|source| Error::Io { what: "running ffmpeg".into(), source })?;
    if !out.status.success() {
        return Err(Error::Encoder {
            command: format!("ffmpeg {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    match clip {
        Clip::Video(VideoClip { codec: EncodedCodec::H264, fps, .. }) => load_h264(path, fps),
        Clip::Video(_) => load_ivf(path),
        Clip::Tone(_) => load_ogg_opus(path),
    }
}

/// Reads the VP8 frames of an IVF file.
pub fn load_ivf(path: &Path) -> Result<EncodedMedia> {
    let file = std::fs::File::open(path).map_err(io("open", path))?;
    let (mut reader, header) = webrtc::media::io::ivf_reader::IVFReader::new(std::io::BufReader::new(file))
        .map_err(|e| invalid(path, format!("not IVF ({e})")))?;
    if &header.four_cc != b"VP80" {
        return Err(invalid(path, "only VP8 IVF files are supported"));
    }
    let tick = header.timebase_numerator as f64 / header.timebase_denominator.max(1) as f64;
    let mut raw = Vec::new();
    while let Ok((frame, h)) = reader.parse_next_frame() {
        raw.push((frame.freeze(), h.timestamp));
    }
    if raw.is_empty() {
        return Err(invalid(path, "no frames"));
    }
    // A frame plays until the next one starts; the last as long as the one before.
    let mut frames = Vec::with_capacity(raw.len());
    for i in 0..raw.len() {
        let ticks = match (raw.get(i + 1), i.checked_sub(1).and_then(|p| raw.get(p))) {
            (Some(next), _) => next.1.saturating_sub(raw[i].1),
            (None, Some(prev)) => raw[i].1.saturating_sub(prev.1),
            (None, None) => 1,
        };
        frames.push(EncodedFrame {
            data: raw[i].0.clone(),
            duration: Duration::from_secs_f64(ticks.max(1) as f64 * tick),
        });
    }
    Ok(EncodedMedia { codec: EncodedCodec::Vp8, frames: Arc::new(frames) })
}

/// Reads an H.264 Annex-B stream (`ffmpeg -f h264`), one access unit per frame at `fps`.
pub fn load_h264(path: &Path, fps: u32) -> Result<EncodedMedia> {
    let bytes = std::fs::read(path).map_err(io("read", path))?;
    let duration = Duration::from_secs_f64(1.0 / fps.max(1) as f64);
    let frames: Vec<EncodedFrame> =
        access_units(&bytes).into_iter().map(|au| EncodedFrame { data: Bytes::from(au), duration }).collect();
    if frames.is_empty() {
        return Err(invalid(path, "no H.264 slices"));
    }
    Ok(EncodedMedia { codec: EncodedCodec::H264, frames: Arc::new(frames) })
}

/// An Annex-B stream cut into access units (pictures), each in Annex-B form. A picture
/// starts at a slice whose first macroblock is 0 (its first bit, ue(v) = 0, is set), or
/// at parameter sets and SEI after a picture's slices; its other slices follow it.
pub fn access_units(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut units = Vec::new();
    let mut unit = Vec::new();
    let mut has_slice = false;
    for nal in annexb_nals(stream) {
        let slice = matches!(nal[0] & 0x1f, 1 | 5);
        let first_slice = slice && nal.get(1).is_some_and(|b| b & 0x80 != 0);
        if has_slice && (first_slice || !slice) {
            units.push(std::mem::take(&mut unit));
            has_slice = false;
        }
        unit.extend_from_slice(&[0, 0, 0, 1]);
        unit.extend_from_slice(nal);
        has_slice |= slice;
    }
    if has_slice {
        units.push(unit);
    }
    units
}

/// The NAL units of an Annex-B stream, without their start codes; empty ones skipped.
pub fn annexb_nals(data: &[u8]) -> Vec<&[u8]> {
    let starts: Vec<usize> =
        (0..data.len().saturating_sub(2)).filter(|&i| data[i..i + 3] == [0, 0, 1]).map(|i| i + 3).collect();
    let mut nals = Vec::with_capacity(starts.len());
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map_or(data.len(), |next| next - 3);
        let mut nal = &data[start..end];
        // The zero byte of a four-byte start code belongs to the next one.
        while let [rest @ .., 0] = nal {
            nal = rest;
        }
        if !nal.is_empty() {
            nals.push(nal);
        }
    }
    nals
}

/// Whether an Annex-B access unit holds an IDR slice (a decoder can start there).
pub fn h264_keyframe(annexb: &[u8]) -> bool {
    annexb_nals(annexb).iter().any(|nal| nal[0] & 0x1f == 5)
}

/// Reads the Opus packets of an Ogg Opus file (the two header packets skipped).
pub fn load_ogg_opus(path: &Path) -> Result<EncodedMedia> {
    let bytes = std::fs::read(path).map_err(io("read", path))?;
    let packets = ogg_packets(&bytes).map_err(|problem| invalid(path, format!("not Ogg ({problem})")))?;
    if !packets.first().is_some_and(|p| p.starts_with(b"OpusHead")) {
        return Err(invalid(path, "not Ogg Opus"));
    }
    let frames: Vec<EncodedFrame> = packets
        .into_iter()
        .skip(2)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let duration = opus_packet_duration(&p);
            EncodedFrame { data: Bytes::from(p), duration }
        })
        .collect();
    if frames.is_empty() {
        return Err(invalid(path, "no audio packets"));
    }
    Ok(EncodedMedia { codec: EncodedCodec::Opus, frames: Arc::new(frames) })
}

/// The packets of an Ogg bitstream, joined across pages by their lacing values.
fn ogg_packets(mut data: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    let mut packets = Vec::new();
    let mut current = Vec::new();
    while !data.is_empty() {
        if data.len() < 27 || &data[..4] != b"OggS" {
            return Err("bad page");
        }
        let segments = data[26] as usize;
        if data.len() < 27 + segments {
            return Err("truncated page");
        }
        let lacing = &data[27..27 + segments];
        let mut at = 27 + segments;
        for &len in lacing {
            if data.len() < at + len as usize {
                return Err("truncated page");
            }
            current.extend_from_slice(&data[at..at + len as usize]);
            at += len as usize;
            if len < 255 {
                packets.push(std::mem::take(&mut current));
            }
        }
        data = &data[at..];
    }
    Ok(packets)
}

/// Play time of an Opus packet from its TOC byte (RFC 6716 §3.1).
pub fn opus_packet_duration(packet: &[u8]) -> Duration {
    let Some(&toc) = packet.first() else { return Duration::from_millis(20) };
    let config = toc >> 3;
    let frame_us: u64 = match config {
        0..=11 => [10_000, 20_000, 40_000, 60_000][(config % 4) as usize],
        12..=15 => [10_000, 20_000][(config % 2) as usize],
        _ => [2_500, 5_000, 10_000, 20_000][(config % 4) as usize],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => packet.get(1).map(|b| (b & 0x3f) as u64).unwrap_or(1).max(1),
    };
    Duration::from_micros(frame_us * frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annexb_streams_split_into_nal_units_and_idr_slices_are_keyframes() {
        let stream = [0, 0, 0, 1, 0x67, 0x42, 0, 0, 1, 0x68, 0xce, 0, 0, 0, 1, 0x65, 0x88, 0x00, 0, 0, 1, 0x41, 0x9a];
        let nals = annexb_nals(&stream);
        assert_eq!(nals, vec![&[0x67, 0x42][..], &[0x68, 0xce], &[0x65, 0x88], &[0x41, 0x9a]]);
        assert!(h264_keyframe(&stream[..18]), "SPS, PPS, IDR");
        assert!(!h264_keyframe(&stream[18..]), "a P slice");
        assert!(annexb_nals(&[0, 0]).is_empty());
    }

    #[test]
    fn pictures_of_several_slices_are_one_access_unit() {
        let nal = |bytes: &[u8]| [&[0, 0, 0, 1][..], bytes].concat();
        // SPS, PPS, an IDR in two slices (first_mb 0, then 40), then a P picture in two.
        let stream = [
            nal(&[0x67, 0x42]),
            nal(&[0x68, 0xce]),
            nal(&[0x65, 0x88]),
            nal(&[0x65, 0x00, 0xa4]),
            nal(&[0x41, 0x9a]),
            nal(&[0x41, 0x00, 0xa4]),
        ]
        .concat();
        let units = access_units(&stream);
        assert_eq!(units.len(), 2, "{units:?}");
        assert_eq!(annexb_nals(&units[0]).len(), 4);
        assert!(h264_keyframe(&units[0]) && !h264_keyframe(&units[1]));
        assert_eq!(annexb_nals(&units[1]), vec![&[0x41, 0x9a][..], &[0x41, 0x00, 0xa4]]);
    }

    #[test]
    fn opus_durations_follow_the_toc() {
        // config 11 (SILK WB 60 ms)… config 31 (CELT FB 20 ms), code 0.
        assert_eq!(opus_packet_duration(&[31 << 3]), Duration::from_millis(20));
        assert_eq!(opus_packet_duration(&[(31 << 3) | 1]), Duration::from_millis(40));
        assert_eq!(opus_packet_duration(&[(1 << 3) | 3, 3]), Duration::from_millis(60));
    }

    #[test]
    fn ogg_packets_span_pages() {
        fn page(lacing: &[u8], body: &[u8]) -> Vec<u8> {
            let mut p = b"OggS".to_vec();
            p.extend_from_slice(&[0; 22]);
            p.push(lacing.len() as u8);
            p.extend_from_slice(lacing);
            p.extend_from_slice(body);
            p
        }
        let mut data = page(&[255], &[1; 255]);
        data.extend(page(&[3, 2], &[2, 2, 2, 3, 3]));
        let packets = ogg_packets(&data).unwrap();
        assert_eq!(packets.len(), 2);
        assert_eq!(packets[0].len(), 258);
        assert_eq!(packets[1], vec![3, 3]);
        assert_eq!(ogg_packets(&data[..30]), Err("truncated page"));
        assert_eq!(ogg_packets(b"RIFF"), Err("bad page"));
    }

    #[test]
    fn clips_are_the_ffmpeg_commands_the_tests_ran() {
        let args = |clip: Clip, path: &str| clip.ffmpeg_args(10, Path::new(path)).join(" ");
        let vp8 = VideoClip::new(EncodedCodec::Vp8, "testsrc2");
        let head = "-hide_banner -loglevel error -y -f lavfi -i";
        assert_eq!(
            args(vp8.clone().into(), "cam.ivf"),
            format!(
                "{head} testsrc2=size=320x240:rate=15 -t 10 -c:v libvpx -deadline realtime -cpu-used 8 \
                 -b:v 200k -g 5 -keyint_min 5 cam.ivf"
            )
        );
        assert_eq!(
            args(VideoClip::new(EncodedCodec::H264, "smptebars").into(), "cam.h264"),
            format!(
                "{head} smptebars=size=320x240:rate=15 -t 10 -pix_fmt yuv420p -c:v libx264 -profile:v baseline \
                 -level 3.1 -preset ultrafast -tune zerolatency -b:v 200k -g 5 -keyint_min 5 -bf 0 -f h264 cam.h264"
            )
        );
        assert_eq!(
            args(ToneClip::new(660).into(), "mic.ogg"),
            format!(
                "{head} sine=frequency=660:sample_rate=48000 -t 10 -c:a libopus -b:a 48k -frame_duration 20 \
                 -page_duration 20000 -ac 2 mic.ogg"
            )
        );
        let bench =
            VideoClip { width: 640, height: 360, kbps: 500, keyframe_interval: 30, fixed_keyframes: false, ..vp8 };
        assert!(
            args(bench.into(), "b.ivf").ends_with(
                "size=640x360:rate=15 -t 10 -c:v libvpx -deadline realtime -cpu-used 8 -b:v 500k -g 30 b.ivf"
            )
        );
        assert!(
            args(ToneClip { kbps: 32, stereo: false, ..ToneClip::new(440) }.into(), "b.ogg")
                .ends_with("-b:a 32k -frame_duration 20 -page_duration 20000 b.ogg")
        );
    }

    #[test]
    fn files_that_cannot_be_published_say_which_and_why() {
        let dir = std::env::temp_dir().join(format!("sfu-client-encoded-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.ogg");
        let e = load_ogg_opus(&missing).unwrap_err();
        assert!(matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound), "{e:?}");
        assert!(e.to_string().starts_with(&format!("read {}: ", missing.display())), "{e}");

        let wav = dir.join("tone.ogg");
        std::fs::write(&wav, b"RIFF....WAVEfmt ").unwrap();
        let e = load_ogg_opus(&wav).unwrap_err();
        assert!(matches!(&e, Error::InvalidMedia { path, .. } if path == &wav), "{e:?}");
        assert_eq!(e.to_string(), format!("{}: not Ogg (bad page)", wav.display()));

        let empty = dir.join("empty.h264");
        std::fs::write(&empty, [0, 0, 0, 1]).unwrap();
        assert!(matches!(load_h264(&empty, 15), Err(Error::InvalidMedia { .. })));
        let not_ivf = dir.join("cam.ivf");
        std::fs::write(&not_ivf, b"not an ivf file at all, but long enough for a header").unwrap();
        assert!(matches!(load_ivf(&not_ivf), Err(Error::InvalidMedia { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
