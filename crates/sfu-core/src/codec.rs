//! What the forwarding decisions need to know about a payload: is this the first packet
//! of a keyframe, and (for VP8) the picture size. Parsing stops at the first bytes; the
//! SFU never decodes media.

/// Codecs the SFU forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    Opus,
    Vp8,
    Vp9,
    H264,
}

impl Codec {
    /// From an SDP MIME type (`video/VP8`, `audio/opus`, case-insensitive).
    pub fn from_mime(mime: &str) -> Option<Self> {
        let subtype = mime.rsplit('/').next()?.to_ascii_lowercase();
        Some(match subtype.as_str() {
            // RED (RFC 2198) carries Opus frames: the track is Opus, each packet either
            // plain or with redundancy (see [`red_primary`]).
            "opus" | "red" => Self::Opus,
            "vp8" => Self::Vp8,
            "vp9" => Self::Vp9,
            "h264" => Self::H264,
            _ => return None,
        })
    }

    pub fn is_video(self) -> bool {
        !matches!(self, Self::Opus)
    }

    /// RTP clock rate.
    pub fn clock_rate(self) -> u32 {
        if self.is_video() { 90_000 } else { 48_000 }
    }
}

/// At most this many redundant blocks in a RED payload (libwebrtc's NetEq refuses more;
/// browsers send one or two).
pub const RED_MAX_BLOCKS: usize = 32;

/// The primary (newest) frame of a RED payload (RFC 2198) whose blocks all carry
/// `payload_type`, or `None` for a malformed one: more than [`RED_MAX_BLOCKS`] blocks,
/// a header or block past the end, a block of another payload type.
pub fn red_primary(payload: &[u8], payload_type: u8) -> Option<&[u8]> {
    red_blocks(payload, payload_type).map(|red| red.primary)
}

/// A RED payload's frames.
#[derive(Debug, PartialEq, Eq)]
pub struct Red<'a> {
    pub primary: &'a [u8],
    /// Oldest first, each with its timestamp offset back from the packet's.
    pub redundant: Vec<(u16, &'a [u8])>,
}

/// A RED payload's frames; `None` when malformed (as [`red_primary`]).
pub fn red_blocks(payload: &[u8], payload_type: u8) -> Option<Red<'_>> {
    // Headers: 4 bytes per redundant block (F=1, PT, 14-bit offset, 10-bit length),
    // then 1 byte for the primary (F=0, PT).
    let mut at = 0;
    let mut headers = Vec::new();
    loop {
        let first = *payload.get(at)?;
        if first & 0x7f != payload_type {
            return None;
        }
        if first & 0x80 == 0 {
            at += 1;
            break;
        }
        let h = payload.get(at..at + 4)?;
        let offset = (u16::from(h[1]) << 6) | (u16::from(h[2]) >> 2);
        let length = (usize::from(h[2] & 0x03) << 8) | usize::from(h[3]);
        headers.push((offset, length));
        if headers.len() > RED_MAX_BLOCKS {
            return None;
        }
        at += 4;
    }
    let mut blocks = Vec::with_capacity(headers.len());
    for (offset, length) in headers {
        blocks.push((offset, payload.get(at..at + length)?));
        at += length;
    }
    Some(Red { primary: &payload[at..], redundant: blocks })
}

/// Whether `payload` (an RTP payload of `codec`) starts a keyframe.
pub fn is_keyframe_start(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Opus => false,
        Codec::Vp8 => vp8_frame(payload).is_some_and(|f| f.keyframe),
        Codec::Vp9 => vp9_keyframe_start(payload),
        Codec::H264 => h264_keyframe(payload),
    }
}

/// The parts of a VP8 payload (RFC 7741) the SFU reads.
#[derive(Debug, PartialEq, Eq)]
pub struct Vp8Frame {
    pub keyframe: bool,
    /// Width and height, present in keyframes only.
    pub size: Option<(u16, u16)>,
}

/// Parses the payload descriptor and, for the first packet of a frame, the frame tag.
/// Returns `None` for packets that do not start a frame.
pub fn vp8_frame(payload: &[u8]) -> Option<Vp8Frame> {
    let first = *payload.first()?;
    let extended = first & 0x80 != 0;
    let start = first & 0x10 != 0;
    let partition = first & 0x07;
    if !start || partition != 0 {
        return None;
    }
    let mut i = 1;
    if extended {
        let ext = *payload.get(i)?;
        i += 1;
        if ext & 0x80 != 0 {
            // PictureID: one or two bytes.
            let pid = *payload.get(i)?;
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if ext & 0x30 != 0 {
            i += 1; // TID/KEYIDX
        }
    }
    let tag = payload.get(i..i + 3)?;
    let keyframe = tag[0] & 0x01 == 0;
    let size = if keyframe {
        // Start code 9d 01 2a, then 14-bit width and height (2 bits of scale each).
        payload.get(i + 3..i + 10).and_then(|h| {
            (h[..3] == [0x9d, 0x01, 0x2a])
                .then(|| (u16::from_le_bytes([h[3], h[4]]) & 0x3fff, u16::from_le_bytes([h[5], h[6]]) & 0x3fff))
        })
    } else {
        None
    };
    Some(Vp8Frame { keyframe, size })
}

/// The picture numbering in a VP8 payload descriptor (RFC 7741): PictureID (7 or 15
/// bits) and TL0PICIDX, where present. Each simulcast layer numbers its own pictures, so
/// a subscription that switches layers must renumber them to run on: a receiver that
/// sees the numbers jump back takes the new layer's frames for old ones and waits (for
/// seconds) for a keyframe request of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vp8Numbers {
    /// PictureID and whether it has 15 bits (else 7).
    pub picture_id: Option<(u16, bool)>,
    pub tl0_pic_idx: Option<u8>,
}

/// Where the numbers sit in the descriptor: (PictureID offset, 15 bits?), TL0PICIDX offset.
type Vp8Offsets = (Option<(usize, bool)>, Option<usize>);

fn vp8_number_offsets(payload: &[u8]) -> Option<Vp8Offsets> {
    let first = *payload.first()?;
    if first & 0x80 == 0 {
        return Some((None, None));
    }
    let ext = *payload.get(1)?;
    let mut i = 2;
    let mut picture = None;
    if ext & 0x80 != 0 {
        let long = *payload.get(i)? & 0x80 != 0;
        payload.get(i + usize::from(long))?;
        picture = Some((i, long));
        i += if long { 2 } else { 1 };
    }
    let tl0 = if ext & 0x40 != 0 {
        payload.get(i)?;
        Some(i)
    } else {
        None
    };
    Some((picture, tl0))
}

/// The picture numbers of a VP8 payload (`None`: a descriptor cut short).
pub fn vp8_numbers(payload: &[u8]) -> Option<Vp8Numbers> {
    let (picture, tl0) = vp8_number_offsets(payload)?;
    Some(Vp8Numbers {
        picture_id: picture.map(|(i, long)| {
            if long {
                (u16::from_be_bytes([payload[i], payload[i + 1]]) & 0x7fff, true)
            } else {
                (u16::from(payload[i] & 0x7f), false)
            }
        }),
        tl0_pic_idx: tl0.map(|i| payload[i]),
    })
}

/// Writes `numbers` into a VP8 payload's descriptor in place (those it has room for: a
/// 7-bit PictureID keeps 7 bits).
pub fn set_vp8_numbers(payload: &mut [u8], numbers: Vp8Numbers) {
    let Some((picture, tl0)) = vp8_number_offsets(payload) else { return };
    if let (Some((i, long)), Some((id, _))) = (picture, numbers.picture_id) {
        if long {
            let [hi, lo] = (id & 0x7fff).to_be_bytes();
            payload[i] = 0x80 | hi;
            payload[i + 1] = lo;
        } else {
            payload[i] = (id & 0x7f) as u8;
        }
    }
    if let (Some(i), Some(idx)) = (tl0, numbers.tl0_pic_idx) {
        payload[i] = idx;
    }
}

/// VP9 payload descriptor (RFC 9628): P (inter-picture predicted) clear and B (start of
/// frame) set.
fn vp9_keyframe_start(payload: &[u8]) -> bool {
    payload.first().is_some_and(|b| b & 0x40 == 0 && b & 0x08 != 0)
}

/// H.264 (RFC 6184): an IDR slice or SPS in a single NAL, STAP-A, or the first FU-A fragment.
fn h264_keyframe(payload: &[u8]) -> bool {
    let Some(&header) = payload.first() else { return false };
    let is_key = |nal_type: u8| nal_type == 5 || nal_type == 7;
    match header & 0x1f {
        24 => {
            // STAP-A: 16-bit sizes followed by NAL units.
            let mut i = 1;
            while i + 2 < payload.len() {
                let size = u16::from_be_bytes([payload[i], payload[i + 1]]) as usize;
                if payload.get(i + 2).is_some_and(|n| is_key(n & 0x1f)) {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        28 => payload.get(1).is_some_and(|fu| fu & 0x80 != 0 && is_key(fu & 0x1f)),
        t => is_key(t),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn vp8_picture_numbers_read_and_write_in_place() {
        // X, then I and L: a 15-bit PictureID 0x1234 and TL0PICIDX 7, then the frame.
        let mut p = vec![0x90, 0xc0, 0x80 | 0x12, 0x34, 7, 0x10, 0x02, 0x9d];
        assert_eq!(vp8_numbers(&p), Some(Vp8Numbers { picture_id: Some((0x1234, true)), tl0_pic_idx: Some(7) }));
        set_vp8_numbers(&mut p, Vp8Numbers { picture_id: Some((0x7fff, true)), tl0_pic_idx: Some(255) });
        assert_eq!(p, vec![0x90, 0xc0, 0xff, 0xff, 255, 0x10, 0x02, 0x9d]);
        // A 7-bit PictureID keeps 7 bits; no extension, nothing to number.
        let mut short = vec![0x90, 0x80, 0x05, 0x10];
        set_vp8_numbers(&mut short, Vp8Numbers { picture_id: Some((0x1ff, true)), tl0_pic_idx: Some(1) });
        assert_eq!(short, vec![0x90, 0x80, 0x7f, 0x10]);
        assert_eq!(vp8_numbers(&[0x10, 0x00]), Some(Vp8Numbers::default()));
        // Cut short: nothing read, nothing written.
        assert_eq!(vp8_numbers(&[0x90, 0xc0, 0x80]), None);
        let mut cut = vec![0x90, 0xc0, 0x80];
        set_vp8_numbers(&mut cut, Vp8Numbers { picture_id: Some((1, true)), tl0_pic_idx: None });
        assert_eq!(cut, vec![0x90, 0xc0, 0x80]);
    }

    #[test]
    fn red_payloads_give_their_primary_and_redundant_frames_and_malformed_ones_nothing() {
        // One redundant block (offset 960, 3 bytes) and the primary (2 bytes), PT 111.
        let red = [0x80 | 111, 0x0f, 0x00, 0x03, 111, 1, 2, 3, 9, 8];
        assert_eq!(
            red_blocks(&red, 111),
            Some(Red { primary: &[9u8, 8][..], redundant: vec![(960, &[1u8, 2, 3][..])] })
        );
        assert_eq!(red_primary(&red, 111), Some(&[9u8, 8][..]));
        // The first packet of a talk spurt: the primary alone.
        assert_eq!(red_primary(&[111, 7, 7], 111), Some(&[7u8, 7][..]));
        assert_eq!(red_primary(&[111], 111), Some(&[][..]), "an empty primary is legal");
        // Malformed: another payload type, a block longer than the packet, headers cut
        // short, no primary header, too many blocks.
        assert_eq!(red_primary(&red, 63), None);
        assert_eq!(red_primary(&[0x80 | 111, 0x0f, 0x00, 0x30, 111, 1], 111), None);
        assert_eq!(red_primary(&[0x80 | 111, 0x0f], 111), None);
        assert_eq!(red_primary(&[], 111), None);
        let many: Vec<u8> =
            std::iter::repeat_n([0x80 | 111, 0, 0, 0], RED_MAX_BLOCKS + 1).flatten().chain([111]).collect();
        assert_eq!(red_primary(&many, 111), None);
        let most: Vec<u8> =
            std::iter::repeat_n([0x80 | 111, 0, 0, 0], RED_MAX_BLOCKS).flatten().chain([111, 5]).collect();
        assert_eq!(red_primary(&most, 111), Some(&[5u8][..]));
    }

    use super::*;

    /// A VP8 keyframe payload as libvpx packetizes it: descriptor with a 15-bit picture
    /// id, frame tag, start code, 640x360.
    pub fn vp8_keyframe() -> Vec<u8> {
        vec![0x90, 0x80, 0x80, 0x01, 0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01, 0xaa]
    }

    #[test]
    fn vp8_keyframes_and_sizes_are_read() {
        assert_eq!(vp8_frame(&vp8_keyframe()), Some(Vp8Frame { keyframe: true, size: Some((640, 360)) }));
        assert!(is_keyframe_start(Codec::Vp8, &vp8_keyframe()));
        // Inter frame: frame tag bit 0 set.
        let inter = [0x10, 0x01, 0x00, 0x00, 0xaa];
        assert_eq!(vp8_frame(&inter), Some(Vp8Frame { keyframe: false, size: None }));
        // A continuation packet (S clear) starts nothing.
        let mut cont = vp8_keyframe();
        cont[0] &= !0x10;
        assert_eq!(vp8_frame(&cont), None);
        assert!(!is_keyframe_start(Codec::Vp8, &[]));
        assert!(!is_keyframe_start(Codec::Vp8, &[0x90]));
        // X set, I set with a 15-bit PictureID (M bit), then the frame tag.
        assert!(is_keyframe_start(Codec::Vp8, &[0x90, 0x80, 0x81, 0x23, 0x50, 0x00, 0x00]));
        assert!(!is_keyframe_start(Codec::Vp8, &[0x90, 0x80, 0x81, 0x23, 0x51, 0x00, 0x00]));
        // X set with TL0PICIDX and TID/KEYIDX bytes before the tag.
        assert!(is_keyframe_start(Codec::Vp8, &[0x90, 0x70, 0x05, 0x20, 0x50, 0x00, 0x00]));
    }

    #[test]
    fn vp9_and_h264_keyframes_are_recognised() {
        assert!(is_keyframe_start(Codec::Vp9, &[0x08]));
        assert!(!is_keyframe_start(Codec::Vp9, &[0x48]));
        assert!(!is_keyframe_start(Codec::Vp9, &[0x00]));
        assert!(is_keyframe_start(Codec::H264, &[0x65, 0x88])); // IDR
        assert!(!is_keyframe_start(Codec::H264, &[0x41, 0x9a])); // non-IDR slice
        assert!(is_keyframe_start(Codec::H264, &[0x78, 0x00, 0x02, 0x67, 0x42])); // STAP-A with SPS
        assert!(is_keyframe_start(Codec::H264, &[0x7c, 0x85])); // FU-A start of IDR
        assert!(!is_keyframe_start(Codec::H264, &[0x7c, 0x05])); // FU-A middle
        assert!(!is_keyframe_start(Codec::Opus, &[0x00]));
    }

    #[test]
    fn mime_types_map_to_codecs() {
        assert_eq!(Codec::from_mime("video/VP8"), Some(Codec::Vp8));
        assert_eq!(Codec::from_mime("audio/opus"), Some(Codec::Opus));
        assert_eq!(Codec::from_mime("video/AV1"), None);
        assert_eq!(Codec::Opus.clock_rate(), 48_000);
    }
}
