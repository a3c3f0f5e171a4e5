//! Ogg Opus (RFC 7845), written one packet per page so that a file cut short by a crash
//! loses at most its last page. Granule positions count 48 kHz samples from the
//! recording's epoch, so chunks concatenate into one track with gaps kept.

use std::io::Write;

pub const OPUS_SAMPLE_RATE: u64 = 48_000;
const HEADER_TYPE_CONTINUED: u8 = 0x01;
const HEADER_TYPE_BOS: u8 = 0x02;

/// CRC-32 of Ogg pages (polynomial 0x04c11db7, no reflection, init 0).
fn crc_table() -> &'static [u32; 256] {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut r = (i as u32) << 24;
            for _ in 0..8 {
                r = if r & 0x8000_0000 != 0 { (r << 1) ^ 0x04c1_1db7 } else { r << 1 };
            }
            *e = r;
        }
        t
    })
}

pub fn crc(data: &[u8]) -> u32 {
    let t = crc_table();
    data.iter().fold(0u32, |c, &b| (c << 8) ^ t[(((c >> 24) as u8) ^ b) as usize])
}

/// Samples (at 48 kHz) an Opus packet plays for, from its TOC byte.
pub fn opus_samples(packet: &[u8]) -> u64 {
    switchboard_sfu_client::encoded::opus_packet_duration(packet).as_micros() as u64 * OPUS_SAMPLE_RATE / 1_000_000
}

/// Builds one page holding `packet` whole.
pub fn page(header_type: u8, granule: u64, serial: u32, sequence: u32, packet: &[u8]) -> Vec<u8> {
    let mut lacing = vec![255u8; packet.len() / 255];
    lacing.push((packet.len() % 255) as u8);
    let mut p = Vec::with_capacity(27 + lacing.len() + packet.len());
    p.extend_from_slice(b"OggS");
    p.push(0);
    p.push(header_type);
    p.extend_from_slice(&granule.to_le_bytes());
    p.extend_from_slice(&serial.to_le_bytes());
    p.extend_from_slice(&sequence.to_le_bytes());
    p.extend_from_slice(&[0; 4]);
    p.push(lacing.len() as u8);
    p.extend_from_slice(&lacing);
    p.extend_from_slice(packet);
    let sum = crc(&p);
    p[22..26].copy_from_slice(&sum.to_le_bytes());
    p
}

/// The two header pages of an Opus stream.
pub fn opus_headers(serial: u32, channels: u8) -> Vec<u8> {
    let mut head = b"OpusHead".to_vec();
    head.push(1); // version
    head.push(channels);
    head.extend_from_slice(&0u16.to_le_bytes()); // pre-skip: WebRTC streams start mid-flow
    head.extend_from_slice(&48_000u32.to_le_bytes());
    head.extend_from_slice(&0i16.to_le_bytes());
    head.push(0); // channel mapping family 0
    let mut tags = b"OpusTags".to_vec();
    let vendor = b"switchboard-recorder";
    tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    tags.extend_from_slice(vendor);
    tags.extend_from_slice(&0u32.to_le_bytes());
    let mut out = page(HEADER_TYPE_BOS, 0, serial, 0, &head);
    out.extend(page(0, 0, serial, 1, &tags));
    out
}

/// Writes Opus packets as pages to `out`.
pub struct OggOpusWriter<W: Write> {
    out: W,
    serial: u32,
    sequence: u32,
}

impl<W: Write> OggOpusWriter<W> {
    pub fn new(mut out: W, serial: u32) -> std::io::Result<Self> {
        out.write_all(&opus_headers(serial, 2))?;
        Ok(Self { out, serial, sequence: 2 })
    }

    /// `end_granule`: the sample position (from the epoch) where this packet ends.
    pub fn write_packet(&mut self, packet: &[u8], end_granule: u64) -> std::io::Result<()> {
        let p = page(0, end_granule, self.serial, self.sequence, packet);
        self.sequence += 1;
        self.out.write_all(&p)
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

/// A parsed page: its granule position, its packets (only pages holding whole
/// packets, as [`OggOpusWriter`] writes them), and whether it is a header page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub granule: u64,
    pub packet: Vec<u8>,
}

/// The audio pages of one chunk file; a page cut short by a crash ends the list.
pub fn read_pages(data: &[u8]) -> Vec<Page> {
    let mut pages = Vec::new();
    let mut at = 0;
    while data.len() >= at + 27 && &data[at..at + 4] == b"OggS" {
        let segments = data[at + 26] as usize;
        let body = at + 27 + segments;
        if data.len() < body {
            break;
        }
        let len: usize = data[at + 27..body].iter().map(|&l| l as usize).sum();
        if data.len() < body + len {
            break;
        }
        let header_type = data[at + 5];
        let granule = u64::from_le_bytes(data[at + 6..at + 14].try_into().unwrap());
        let packet = &data[body..body + len];
        let is_header = packet.starts_with(b"OpusHead") || packet.starts_with(b"OpusTags");
        if !is_header && header_type & HEADER_TYPE_CONTINUED == 0 {
            pages.push(Page { granule, packet: packet.to_vec() });
        }
        at = body + len;
    }
    pages
}

/// One Ogg Opus stream from the audio pages of several chunks, in order, with page
/// numbers and checksums rewritten.
pub fn concatenate(chunks: &[Vec<u8>], serial: u32) -> (Vec<u8>, Vec<Page>) {
    let mut out = opus_headers(serial, 2);
    let mut all = Vec::new();
    let mut sequence = 2;
    let mut last_granule = 0;
    for chunk in chunks {
        for p in read_pages(chunk) {
            // A retried recorder may overlap what the last run wrote: keep time moving forward.
            if p.granule <= last_granule && last_granule > 0 {
                continue;
            }
            last_granule = p.granule;
            out.extend(page(0, p.granule, serial, sequence, &p.packet));
            sequence += 1;
            all.push(p);
        }
    }
    (out, all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_a_known_ogg_page() {
        // The CRC of "123456789" under Ogg's parameters (CRC-32/MPEG-2 without the final xor, init 0).
        assert_eq!(crc(b"123456789"), 0x89a1_897f);
    }

    #[test]
    fn pages_round_trip_and_truncated_tails_are_dropped() {
        let mut w = OggOpusWriter::new(Vec::new(), 7).unwrap();
        w.write_packet(&[0xf8, 1, 2, 3], 960).unwrap();
        w.write_packet(&vec![9u8; 300], 1920).unwrap();
        let data = w.into_inner();
        let pages = read_pages(&data);
        assert_eq!(pages.len(), 2);
        assert_eq!(pages[1].packet.len(), 300);
        assert_eq!(pages[1].granule, 1920);
        let cut = &data[..data.len() - 10];
        assert_eq!(read_pages(cut).len(), 1, "a page cut short is not read");
    }

    #[test]
    fn chunks_concatenate_with_gaps_kept_and_overlaps_dropped() {
        let chunk = |granules: &[u64]| {
            let mut w = OggOpusWriter::new(Vec::new(), 1).unwrap();
            for g in granules {
                w.write_packet(&[0xf8], *g).unwrap();
            }
            w.into_inner()
        };
        let (file, pages) = concatenate(&[chunk(&[960, 1920]), chunk(&[1920, 96_000])], 3);
        assert_eq!(pages.iter().map(|p| p.granule).collect::<Vec<_>>(), vec![960, 1920, 96_000]);
        assert_eq!(read_pages(&file).len(), 3);
    }
}
