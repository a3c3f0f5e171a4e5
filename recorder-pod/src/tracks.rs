//! The recorder's [`MediaSink`]: each received track is reassembled into frames
//! (reordering, depacketizing), stamped on the recording's clock, and written to
//! chunk files that are closed every few seconds, so a crash loses at most the open
//! chunk's unflushed tail.
//!
//! Timing: a track's RTP timestamps are mapped to wall-clock time by the last RTCP
//! sender report of that track (arrival time until the first one comes). The SFU
//! sends all of a meeting's tracks from one clock, so tracks line up with each other
//! and every file carries times from one epoch: the first sample of the recording.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use switchboard_sfu_client::{MediaSink, SinkTrack};
use webrtc::media::io::sample_builder::SampleBuilder;
use webrtc::rtp::codecs::{h264::H264Packet, opus::OpusPacket, vp8::Vp8Packet, vp9::Vp9Packet};

use crate::ivf::{self, IvfWriter};
use crate::ogg::{OPUS_SAMPLE_RATE, OggOpusWriter};

/// What a track directory holds besides its chunks (`track.json`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrackMeta {
    pub publisher: String,
    pub track: String,
    pub video: bool,
    pub mime_type: String,
}

/// The recording's own metadata (`recording.json`), written by the first run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecordingMeta {
    pub epoch_unix_ms: u64,
}

pub const RECORDING_META: &str = "recording.json";
pub const TRACK_META: &str = "track.json";
pub const TRACKS_DIR: &str = "tracks";

/// Maps a track's RTP time to Unix time.
#[derive(Clone, Copy, Debug)]
pub struct RtpClock {
    anchor_rtp: u32,
    anchor_unix_us: i64,
    rate: u32,
    from_sender_report: bool,
}

impl RtpClock {
    pub fn from_arrival(rtp: u32, arrival_unix_us: i64, rate: u32) -> Self {
        Self { anchor_rtp: rtp, anchor_unix_us: arrival_unix_us, rate, from_sender_report: false }
    }

    /// Re-anchors on a sender report, unless it disagrees with the current mapping by
    /// more than [`MAX_REPORT_JUMP_US`] (a report from a sender that had not sent yet,
    /// or a sender clock far off): then it is ignored and `false` returned.
    pub fn sender_report(&mut self, ntp_time: u64, rtp: u32) -> bool {
        let reported = ntp_to_unix_us(ntp_time);
        if (reported - self.unix_us(rtp)).abs() > MAX_REPORT_JUMP_US {
            return false;
        }
        self.anchor_rtp = rtp;
        self.anchor_unix_us = reported;
        self.from_sender_report = true;
        true
    }

    pub fn unix_us(&self, rtp: u32) -> i64 {
        let ticks = rtp.wrapping_sub(self.anchor_rtp) as i32 as i64;
        self.anchor_unix_us + ticks * 1_000_000 / self.rate.max(1) as i64
    }
}

/// Sender reports may move a track's clock by this much at most (clock offsets between
/// hosts of a cluster are far smaller; larger jumps are bogus reports).
pub const MAX_REPORT_JUMP_US: i64 = 3_000_000;

/// NTP 32.32 (seconds since 1900) to microseconds since 1970.
pub fn ntp_to_unix_us(ntp: u64) -> i64 {
    let secs = (ntp >> 32) as i64 - 2_208_988_800;
    let frac = ((ntp & 0xffff_ffff) * 1_000_000) >> 32;
    secs * 1_000_000 + frac as i64
}

fn unix_us_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

enum Builder {
    Opus(SampleBuilder<OpusPacket>),
    Vp8(SampleBuilder<Vp8Packet>),
    Vp9(SampleBuilder<Vp9Packet>),
    /// Access units in Annex-B form (start codes, parameter sets in band), as an IVF
    /// with the `H264` fourcc carries them to ffmpeg.
    H264(SampleBuilder<H264Packet>),
}

impl Builder {
    fn new(mime: &str) -> Option<Self> {
        // Late packets (retransmissions) are waited for this many packets.
        Some(match mime.to_ascii_lowercase().as_str() {
            "audio/opus" => Builder::Opus(SampleBuilder::new(10, OpusPacket, 48_000)),
            "video/vp8" => Builder::Vp8(SampleBuilder::new(128, Vp8Packet::default(), 90_000)),
            "video/vp9" => Builder::Vp9(SampleBuilder::new(128, Vp9Packet::default(), 90_000)),
            "video/h264" => Builder::H264(SampleBuilder::new(128, H264Packet::default(), 90_000)),
            _ => return None,
        })
    }
    fn push(&mut self, p: webrtc::rtp::packet::Packet) {
        match self {
            Builder::Opus(b) => b.push(p),
            Builder::Vp8(b) => b.push(p),
            Builder::Vp9(b) => b.push(p),
            Builder::H264(b) => b.push(p),
        }
    }
    fn pop(&mut self) -> Option<webrtc::media::Sample> {
        match self {
            Builder::Opus(b) => b.pop(),
            Builder::Vp8(b) => b.pop(),
            Builder::Vp9(b) => b.pop(),
            Builder::H264(b) => b.pop(),
        }
    }
}

enum ChunkWriter {
    Ogg(OggOpusWriter<BufWriter<File>>),
    Ivf(IvfWriter<BufWriter<File>>),
}

struct OpenChunk {
    path: PathBuf,
    writer: ChunkWriter,
    opened: Instant,
}

impl OpenChunk {
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.writer {
            ChunkWriter::Ogg(w) => w.flush_inner(),
            ChunkWriter::Ivf(w) => w.flush_inner(),
        }
    }
}

trait FlushInner {
    fn flush_inner(&mut self) -> std::io::Result<()>;
}
impl FlushInner for OggOpusWriter<BufWriter<File>> {
    fn flush_inner(&mut self) -> std::io::Result<()> {
        self.get_mut().flush()
    }
}
impl FlushInner for IvfWriter<BufWriter<File>> {
    fn flush_inner(&mut self) -> std::io::Result<()> {
        self.get_mut().flush()
    }
}

struct TrackState {
    meta: TrackMeta,
    dir: PathBuf,
    builder: Builder,
    clock: Option<RtpClock>,
    pending_sr: Option<(u64, u32)>,
    chunk: Option<OpenChunk>,
    /// Video: nothing is written before the first keyframe of this run.
    keyframe_seen: bool,
    /// Audio: where the last packet ended, in samples from the epoch.
    last_end_granule: u64,
    last_pts_ms: Option<u64>,
}

/// Counts for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    pub tracks: usize,
    pub chunks: usize,
    pub bytes: u64,
    pub frames: u64,
}

struct State {
    epoch_unix_ms: Option<u64>,
    tracks: HashMap<(String, String), TrackState>,
    totals: Totals,
    closed: Vec<PathBuf>,
    last_media: Option<Instant>,
}

/// Writes every track of a meeting under `dir/tracks/`.
pub struct TrackRecorder {
    dir: PathBuf,
    attempt: i32,
    chunk_length: Duration,
    state: Mutex<State>,
}

/// File-name safe: letters, digits, `-`, `_` and `.`; the rest becomes `_`.
pub fn safe_name(s: &str) -> String {
    let cleaned: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    if cleaned.is_empty() || cleaned.starts_with('.') { format!("_{cleaned}") } else { cleaned }
}

impl TrackRecorder {
    /// `dir`: the recording's directory (it may hold an earlier run's chunks and epoch).
    pub fn new(dir: &Path, attempt: i32, chunk_length: Duration) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join(TRACKS_DIR))?;
        let epoch = std::fs::read(dir.join(RECORDING_META))
            .ok()
            .and_then(|b| serde_json::from_slice::<RecordingMeta>(&b).ok())
            .map(|m| m.epoch_unix_ms);
        Ok(Self {
            dir: dir.to_owned(),
            attempt,
            chunk_length,
            state: Mutex::new(State {
                epoch_unix_ms: epoch,
                tracks: HashMap::new(),
                totals: Totals::default(),
                closed: Vec::new(),
                last_media: None,
            }),
        })
    }

    pub fn totals(&self) -> Totals {
        self.state.lock().unwrap().totals
    }

    /// (publisher, track) of every track RTP arrived on.
    pub fn heard(&self) -> std::collections::HashSet<(String, String)> {
        self.state.lock().unwrap().tracks.iter().filter(|(_, t)| t.clock.is_some()).map(|(k, _)| k.clone()).collect()
    }

    /// When media last arrived.
    pub fn last_media(&self) -> Option<Instant> {
        self.state.lock().unwrap().last_media
    }

    /// Flushes open chunks, closes those older than the chunk length, and returns the
    /// paths of chunks closed since the last call (for uploads).
    pub fn tick(&self) -> Vec<PathBuf> {
        let mut st = self.state.lock().unwrap();
        let mut closed = std::mem::take(&mut st.closed);
        for t in st.tracks.values_mut() {
            if t.chunk.as_ref().is_some_and(|c| c.opened.elapsed() >= self.chunk_length) {
                closed.extend(close(t));
            } else if let Some(c) = &mut t.chunk
                && let Err(e) = c.flush()
            {
                tracing::warn!(path = %c.path.display(), error = %e, "chunk flush failed");
            }
        }
        closed
    }

    /// Closes every chunk (the recording is over) and returns their paths.
    pub fn finish(&self) -> Vec<PathBuf> {
        let mut st = self.state.lock().unwrap();
        let mut closed = std::mem::take(&mut st.closed);
        for t in st.tracks.values_mut() {
            closed.extend(close(t));
        }
        closed
    }

    fn track_state<'a>(&self, st: &'a mut State, track: &SinkTrack) -> Option<&'a mut TrackState> {
        let key = (track.publisher.clone(), track.id.clone());
        if !st.tracks.contains_key(&key) {
            let Some(builder) = Builder::new(&track.mime_type) else {
                tracing::warn!(track = %track.id, mime = %track.mime_type, "codec not recorded");
                return None;
            };
            let meta = TrackMeta {
                publisher: track.publisher.clone(),
                track: track.id.clone(),
                video: track.video,
                mime_type: track.mime_type.clone(),
            };
            let dir = self.dir.join(TRACKS_DIR).join(safe_name(&track.publisher)).join(safe_name(&track.id));
            if let Err(e) = std::fs::create_dir_all(&dir)
                .and_then(|_| std::fs::write(dir.join(TRACK_META), serde_json::to_vec_pretty(&meta).unwrap()))
            {
                tracing::error!(dir = %dir.display(), error = %e, "cannot create the track directory");
                return None;
            }
            tracing::info!(publisher = %meta.publisher, track = %meta.track, mime = %meta.mime_type, "recording track");
            st.totals.tracks += 1;
            st.tracks.insert(
                key.clone(),
                TrackState {
                    meta,
                    dir,
                    builder,
                    clock: None,
                    pending_sr: None,
                    chunk: None,
                    keyframe_seen: !track.video,
                    last_end_granule: 0,
                    last_pts_ms: None,
                },
            );
        }
        st.tracks.get_mut(&key)
    }

    fn write_sample(&self, st: &mut State, key: &(String, String), sample: webrtc::media::Sample) {
        let epoch = st.epoch_unix_ms;
        let t = st.tracks.get_mut(key).expect("track exists");
        let Some(clock) = t.clock else { return };
        let at_us = clock.unix_us(sample.packet_timestamp);
        let epoch_ms = match epoch {
            Some(e) => e,
            None => {
                let e = (at_us / 1000).max(0) as u64;
                let meta = RecordingMeta { epoch_unix_ms: e };
                if let Err(err) = write_durably(&self.dir.join(RECORDING_META), &serde_json::to_vec(&meta).unwrap()) {
                    tracing::error!(error = %err, "cannot write the recording's epoch");
                }
                st.epoch_unix_ms = Some(e);
                e
            }
        };
        let t = st.tracks.get_mut(key).expect("track exists");
        let rel_us = (at_us - epoch_ms as i64 * 1000).max(0) as u64;
        if t.meta.video && !t.keyframe_seen {
            let key_frame = match t.meta.mime_type.to_ascii_lowercase().as_str() {
                "video/vp8" => ivf::vp8_keyframe_size(&sample.data).is_some(),
                "video/h264" => switchboard_sfu_client::encoded::h264_keyframe(&sample.data),
                // VP9 uncompressed header: frame_type bit after the marker/profile/show bits.
                _ => sample.data.first().is_some_and(|b| b & 0x04 == 0),
            };
            if !key_frame {
                return;
            }
            t.keyframe_seen = true;
        }
        if t.chunk.is_none() {
            let ext = if t.meta.video { "ivf" } else { "ogg" };
            let path = t.dir.join(format!("{:010}-a{}.{ext}", rel_us / 1000, self.attempt));
            let opened = File::create(&path).and_then(|f| {
                let out = BufWriter::with_capacity(64 * 1024, f);
                Ok(if t.meta.video {
                    let fourcc = ivf::fourcc(&t.meta.mime_type);
                    ChunkWriter::Ivf(IvfWriter::new(out, fourcc, 0, 0)?)
                } else {
                    ChunkWriter::Ogg(OggOpusWriter::new(out, serial_of(&t.meta))?)
                })
            });
            match opened {
                Ok(writer) => {
                    t.chunk = Some(OpenChunk { path, writer, opened: Instant::now() });
                    st.totals.chunks += 1;
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot open a chunk");
                    return;
                }
            }
        }
        let t = st.tracks.get_mut(key).expect("track exists");
        let chunk = t.chunk.as_mut().expect("opened above");
        let written = match &mut chunk.writer {
            ChunkWriter::Ogg(w) => {
                let start = rel_us * OPUS_SAMPLE_RATE / 1_000_000;
                let samples = crate::ogg::opus_samples(&sample.data);
                // Granules never go backwards, whatever jitter the clock mapping has.
                let end = (start + samples).max(t.last_end_granule + 1);
                t.last_end_granule = end;
                w.write_packet(&sample.data, end)
            }
            ChunkWriter::Ivf(w) => {
                let pts = (rel_us / 1000).max(t.last_pts_ms.map_or(0, |p| p + 1));
                t.last_pts_ms = Some(pts);
                w.write_frame(&sample.data, pts)
            }
        };
        match written {
            Ok(()) => {
                st.totals.frames += 1;
                st.totals.bytes += sample.data.len() as u64;
            }
            Err(e) => tracing::error!(error = %e, "chunk write failed"),
        }
    }
}

fn serial_of(meta: &TrackMeta) -> u32 {
    // FNV-1a of the track's name: stable across runs, so chunks share a serial.
    format!("{}/{}", meta.publisher, meta.track)
        .bytes()
        .fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

fn close(t: &mut TrackState) -> Option<PathBuf> {
    let chunk = t.chunk.take()?;
    let file = match chunk.writer {
        ChunkWriter::Ogg(w) => w.into_inner().into_inner(),
        ChunkWriter::Ivf(w) => w.into_inner().into_inner(),
    };
    match file {
        Ok(f) => {
            if let Err(e) = f.sync_all() {
                tracing::warn!(path = %chunk.path.display(), error = %e, "chunk fsync failed");
            }
        }
        Err(e) => tracing::error!(path = %chunk.path.display(), error = %e.error(), "chunk flush failed"),
    }
    Some(chunk.path)
}

/// Writes a small file through a temporary name, so readers see the old or the new one.
pub fn write_durably(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(tmp, path)
}

impl MediaSink for TrackRecorder {
    fn rtp(&self, track: &SinkTrack, packet: &webrtc::rtp::packet::Packet) {
        let mut st = self.state.lock().unwrap();
        st.last_media = Some(Instant::now());
        let key = (track.publisher.clone(), track.id.clone());
        let Some(t) = self.track_state(&mut st, track) else { return };
        if t.clock.is_none() {
            let mut clock = RtpClock::from_arrival(packet.header.timestamp, unix_us_now(), track.clock_rate);
            if let Some((ntp, rtp)) = t.pending_sr.take() {
                let _ = clock.sender_report(ntp, rtp);
            }
            t.clock = Some(clock);
        }
        t.builder.push(packet.clone());
        let mut ready = Vec::new();
        while let Some(sample) = t.builder.pop() {
            ready.push(sample);
        }
        for sample in ready {
            self.write_sample(&mut st, &key, sample);
        }
    }

    fn sender_report(&self, track: &SinkTrack, ntp_time: u64, rtp_time: u32) {
        let mut st = self.state.lock().unwrap();
        let Some(t) = self.track_state(&mut st, track) else { return };
        match &mut t.clock {
            Some(c) => {
                if !c.sender_report(ntp_time, rtp_time) {
                    tracing::debug!(
                        track = %track.id,
                        "sender report ignored: it disagrees with the arrival times by seconds"
                    );
                }
            }
            None => t.pending_sr = Some((ntp_time, rtp_time)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_time_maps_through_sender_reports_across_wraparound() {
        let c = RtpClock::from_arrival(u32::MAX - 899, 1_000_000, 90_000);
        assert_eq!(c.unix_us(900), 1_000_000 + 20_000, "1800 ticks later, across the wrap");
        // NTP for Unix second 10, half past.
        let ntp = ((2_208_988_800u64 + 10) << 32) | (1u64 << 31);
        assert_eq!(ntp_to_unix_us(ntp), 10_500_000);
        let mut c = RtpClock::from_arrival(1000, 10_400_000, 90_000);
        assert!(c.sender_report(ntp, 1000), "100 ms off: accepted");
        assert_eq!(c.unix_us(1000 + 90_000), 11_500_000);
        assert_eq!(c.unix_us(1000u32.wrapping_sub(45_000)), 10_000_000);
        // A report from before the first packet (RTP 0 at the epoch) is ignored.
        assert!(!c.sender_report((2_208_988_800u64 + 5000) << 32, 0));
        assert_eq!(c.unix_us(1000), 10_500_000);
    }

    #[test]
    fn names_are_file_safe() {
        assert_eq!(safe_name("alice/cam 1"), "alice_cam_1");
        assert_eq!(safe_name(".."), "_..");
        assert_eq!(safe_name(""), "_");
    }
}

/// Tracks the SFU announced to the recorder (published, not since unpublished, muted,
/// or gone with their publisher) that no packet arrived on: `(publisher, track)`.
pub fn unheard(
    events: &[switchboard_sfu_api::Event],
    heard: &std::collections::HashSet<(String, String)>,
) -> Vec<(String, String)> {
    use switchboard_sfu_api::Event;
    let mut live: Vec<(String, String)> = Vec::new();
    for e in events {
        match e {
            Event::TrackPublished { participant, track, .. } => live.push((participant.clone(), track.clone())),
            Event::TrackUnpublished { participant, track } => {
                live.retain(|k| k != &(participant.clone(), track.clone()))
            }
            Event::TrackMuted { participant, track, muted: true } => {
                live.retain(|k| k != &(participant.clone(), track.clone()))
            }
            Event::TrackMuted { participant, track, muted: false } => live.push((participant.clone(), track.clone())),
            Event::ParticipantLeft { participant } => live.retain(|(p, _)| p != participant),
            _ => {}
        }
    }
    live.sort();
    live.dedup();
    live.retain(|k| !heard.contains(k));
    live
}

/// Decides when announced-but-silent tracks warrant fresh connections to the SFU.
pub struct UnheardWatch {
    since: HashMap<(String, String), Instant>,
    last_rejoin: Instant,
    after: Duration,
}

impl UnheardWatch {
    /// Rejoin when a track stays unheard for `after`, at most once per `2 × after`.
    pub fn new(after: Duration) -> Self {
        Self { since: HashMap::new(), last_rejoin: Instant::now(), after }
    }

    /// The tracks to rejoin for, if it is time to.
    pub fn check(
        &mut self,
        events: &[switchboard_sfu_api::Event],
        heard: &std::collections::HashSet<(String, String)>,
    ) -> Option<Vec<(String, String)>> {
        let now_unheard = unheard(events, heard);
        self.since.retain(|k, _| now_unheard.contains(k));
        for k in now_unheard {
            self.since.entry(k).or_insert_with(Instant::now);
        }
        let stuck: Vec<_> =
            self.since.iter().filter(|(_, t)| t.elapsed() >= self.after).map(|(k, _)| k.clone()).collect();
        if stuck.is_empty() || self.last_rejoin.elapsed() < self.after * 2 {
            return None;
        }
        self.last_rejoin = Instant::now();
        self.since.clear();
        Some(stuck)
    }
}

#[cfg(test)]
mod unheard_tests {
    use super::*;
    use switchboard_sfu_api::{Event, MediaKind, Source};

    #[test]
    fn only_live_unmuted_tracks_without_packets_are_unheard() {
        let publish = |p: &str, t: &str| Event::TrackPublished {
            participant: p.into(),
            track: t.into(),
            kind: MediaKind::Audio,
            codec: "opus".into(),
            source: Source::Microphone,
        };
        let events = vec![
            publish("a", "a-mic"),
            publish("b", "b-mic"),
            publish("b", "b-cam"),
            publish("c", "c-mic"),
            Event::TrackMuted { participant: "b".into(), track: "b-cam".into(), muted: true },
            Event::ParticipantLeft { participant: "c".into() },
        ];
        let heard = [("a".to_owned(), "a-mic".to_owned())].into_iter().collect();
        assert_eq!(unheard(&events, &heard), vec![("b".to_owned(), "b-mic".to_owned())]);
    }
}
