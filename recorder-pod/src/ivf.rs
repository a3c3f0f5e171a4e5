//! IVF (the VP8/VP9 elementary-stream file): a 32-byte header, then frames with a
//! 12-byte header each. Timestamps are milliseconds from the recording's epoch, so
//! chunks concatenate into one track with gaps kept. H.264 goes in the same frame
//! (one Annex-B access unit per frame, fourcc `H264`), which ffmpeg reads too.

use std::io::Write;

pub const TIMEBASE_HZ: u32 = 1000;

/// The IVF fourcc of a video MIME type the recorder writes.
pub fn fourcc(mime: &str) -> &'static [u8; 4] {
    match mime.to_ascii_lowercase().as_str() {
        "video/vp9" => b"VP90",
        "video/h264" => b"H264",
        _ => b"VP80",
    }
}

pub fn file_header(fourcc: &[u8; 4], width: u16, height: u16) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[..4].copy_from_slice(b"DKIF");
    h[6..8].copy_from_slice(&32u16.to_le_bytes());
    h[8..12].copy_from_slice(fourcc);
    h[12..14].copy_from_slice(&width.to_le_bytes());
    h[14..16].copy_from_slice(&height.to_le_bytes());
    h[16..20].copy_from_slice(&TIMEBASE_HZ.to_le_bytes()); // rate
    h[20..24].copy_from_slice(&1u32.to_le_bytes()); // scale
    h
}

pub struct IvfWriter<W: Write> {
    out: W,
}

impl<W: Write> IvfWriter<W> {
    pub fn new(mut out: W, fourcc: &[u8; 4], width: u16, height: u16) -> std::io::Result<Self> {
        out.write_all(&file_header(fourcc, width, height))?;
        Ok(Self { out })
    }

    pub fn write_frame(&mut self, frame: &[u8], pts_ms: u64) -> std::io::Result<()> {
        let mut h = [0u8; 12];
        h[..4].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        h[4..].copy_from_slice(&pts_ms.to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(frame)
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub pts_ms: u64,
    pub data: Vec<u8>,
}

/// Frames of one chunk; a frame cut short by a crash ends the list.
pub fn read_frames(data: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    if data.len() < 32 || &data[..4] != b"DKIF" {
        return frames;
    }
    let mut at = u16::from_le_bytes([data[6], data[7]]) as usize;
    while data.len() >= at + 12 {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let pts_ms = u64::from_le_bytes(data[at + 4..at + 12].try_into().unwrap());
        if data.len() < at + 12 + len {
            break;
        }
        frames.push(Frame { pts_ms, data: data[at + 12..at + 12 + len].to_vec() });
        at += 12 + len;
    }
    frames
}

/// Frame size of a VP8 keyframe (RFC 6386 §9.1), if `frame` is one.
pub fn vp8_keyframe_size(frame: &[u8]) -> Option<(u16, u16)> {
    if frame.len() < 10 || frame[0] & 1 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    Some((u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff, u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff))
}

/// One IVF from several chunks in order; frames that do not move time forward (a
/// retried recorder overlapping the last run) are dropped.
pub fn concatenate(chunks: &[Vec<u8>]) -> (Vec<u8>, Vec<Frame>) {
    let mut frames: Vec<Frame> = Vec::new();
    for chunk in chunks {
        for f in read_frames(chunk) {
            if frames.last().is_some_and(|l| f.pts_ms <= l.pts_ms) {
                continue;
            }
            frames.push(f);
        }
    }
    // The chunks' own fourcc (VP8, VP9 or H.264), not an assumed one.
    let fourcc: [u8; 4] = chunks.iter().find_map(|c| c.get(8..12)?.try_into().ok()).unwrap_or(*b"VP80");
    let (w, h) = frames.iter().find_map(|f| vp8_keyframe_size(&f.data)).unwrap_or((0, 0));
    let mut out = file_header(&fourcc, w, h).to_vec();
    // Bytes 24..28 are the frame count by the IVF spec, but ffmpeg reads them as the
    // stream's duration in timebase units (ms here): write what players will show.
    let span = match (frames.first(), frames.last()) {
        (Some(a), Some(b)) if frames.len() > 1 => {
            (b.pts_ms - a.pts_ms) * frames.len() as u64 / (frames.len() as u64 - 1)
        }
        _ => 0,
    };
    out[24..28].copy_from_slice(&(span.min(u32::MAX as u64) as u32).to_le_bytes());
    for f in &frames {
        out.extend_from_slice(&(f.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&f.pts_ms.to_le_bytes());
        out.extend_from_slice(&f.data);
    }
    (out, frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_concatenate_in_time_order() {
        let chunk = |pts: &[u64]| {
            let mut w = IvfWriter::new(Vec::new(), b"VP80", 0, 0).unwrap();
            for p in pts {
                w.write_frame(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00], *p).unwrap();
            }
            w.into_inner()
        };
        let a = chunk(&[0, 66]);
        assert_eq!(read_frames(&a).len(), 2);
        assert_eq!(read_frames(&a[..a.len() - 3]).len(), 1, "a frame cut short is not read");
        let (file, frames) = concatenate(&[a, chunk(&[66, 5000])]);
        assert_eq!(frames.iter().map(|f| f.pts_ms).collect::<Vec<_>>(), vec![0, 66, 5000]);
        assert_eq!(read_frames(&file).len(), 3);
        assert_eq!(vp8_keyframe_size(&frames[0].data), Some((320, 240)));
        assert_eq!(&file[12..16], &[0x40, 0x01, 0xf0, 0x00], "size taken from the first keyframe");
        assert_eq!(&file[8..12], b"VP80");
    }

    #[test]
    fn joined_chunks_keep_their_codec() {
        for mime in ["video/VP9", "video/H264"] {
            let mut w = IvfWriter::new(Vec::new(), fourcc(mime), 0, 0).unwrap();
            w.write_frame(&[0, 0, 0, 1, 0x65, 0x88], 0).unwrap();
            let (file, _) = concatenate(&[w.into_inner()]);
            assert_eq!(&file[8..12], fourcc(mime), "{mime}");
        }
        assert_eq!(fourcc("video/h264"), b"H264");
        assert_eq!(fourcc("video/vp8"), b"VP80");
    }
}
