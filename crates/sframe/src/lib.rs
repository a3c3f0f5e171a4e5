//! End-to-end encryption of media frames: SFrame ([RFC 9605]) with its header carried as a
//! trailer.
//!
//! The browser client encrypts every encoded audio and video frame before WebRTC packetizes
//! it, so the SFU forwards media it cannot read. This crate is the same scheme in Rust, as a
//! pure library (no IO, no clock, no randomness). Tests use it to check that what the SFU
//! forwards is ciphertext of the right shape ([`parse_trailer`]), that members decrypt each
//! other's frames, and that a departed member's keys no longer decrypt frames sent under a
//! newer key generation. The normative description is `docs/e2ee.md`; `tests/vectors.json`
//! holds known answers that this crate and the browser's JavaScript both replay.
//!
//! # Cipher suite
//!
//! `AES_128_GCM_SHA256_128` (0x0004): AES-128-GCM with a 16-byte tag, keys derived with
//! HKDF-SHA256 ([`CIPHER_SUITE`], [`KEY_LEN`], [`NONCE_LEN`], [`TAG_LEN`]).
//!
//! # Keys
//!
//! Each sender has a 32-byte base key. A key ID is `KID = (generation << 8) | step`
//! ([`kid`]): the generation changes when the sender distributes a fresh random key (for
//! instance when a member leaves), the step when it ratchets its key forward
//! ([`ratchet`]: `HKDF-Expand(HKDF-Extract("", base), "SFrame 1.0 Ratchet", 32)`). The AEAD
//! key and salt for a KID are derived from the base key as in RFC 9605 §4.4.2 ([`derive()`]),
//! and the nonce for counter `CTR` is `salt XOR CTR` ([`KeySalt::nonce`]).
//!
//! # Frame layout
//!
//! For a plaintext frame `P` with `n` leading bytes left in clear:
//!
//! ```text
//! U = P[..n] | C | T | H | n | L
//! ```
//!
//! * `U` is the first `n` bytes of `P`, unencrypted, so that depacketizers and the SFU still
//!   find the codec's payload header where they expect it (see [`clear_bytes`]);
//! * `C | T` is AES-128-GCM of `P[n..]` (ciphertext and 16-byte tag);
//! * `H` is the SFrame header of RFC 9605 §4.3 for (KID, CTR), 1 to 17 bytes
//!   ([`encode_header`]);
//! * `n` is one byte, 0 to 255;
//! * `L = 0x20 | len(H)`: the top three bits are the trailer version ([`VERSION`] = 1), the
//!   low five bits the header's length.
//!
//! The additional authenticated data is `H | n | L | U`, so every byte of an encrypted frame
//! is authenticated. The header is at the end, not the start as in RFC 9605, so that the
//! clear bytes stay at the start of the frame. An empty frame is passed through as it is, in
//! both directions.
//!
//! # Safety codes
//!
//! Two members compare [`safety_code`]s, computed from their ids and identity public keys, to
//! check that no one stands between them in the key exchange.
//!
//! [RFC 9605]: https://www.rfc-editor.org/rfc/rfc9605

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes128Gcm, Key, Nonce};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};

/// The SFrame cipher suite in use: `AES_128_GCM_SHA256_128`.
pub const CIPHER_SUITE: u16 = 0x0004;
/// Length of a sender's base key.
pub const BASE_KEY_LEN: usize = 32;
/// Length of an AES-128-GCM key (`Nk`).
pub const KEY_LEN: usize = 16;
/// Length of a nonce and of a salt (`Nn`).
pub const NONCE_LEN: usize = 12;
/// Length of the authentication tag (`Nt`).
pub const TAG_LEN: usize = 16;
/// Longest SFrame header: the config byte, 8 KID bytes and 8 CTR bytes.
pub const MAX_HEADER_LEN: usize = 17;
/// Most bytes of a frame that can stay in clear (the `n` byte's range).
pub const MAX_CLEAR_BYTES: usize = 255;
/// Trailer version, the top three bits of the last byte of an encrypted frame.
pub const VERSION: u8 = 1;

/// Bytes after the header: `n` and `L`.
const TRAILER_TAIL_LEN: usize = 2;
const RATCHET_LABEL: &[u8] = b"SFrame 1.0 Ratchet";
const KEY_LABEL: &[u8] = b"SFrame 1.0 Secret key ";
const SALT_LABEL: &[u8] = b"SFrame 1.0 Secret salt ";
const SAFETY_LABEL: &[u8] = b"SB-E2EE-1 safety";

/// Why a frame did not decrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The frame is shorter than its trailer says it must be.
    #[error("frame of {len} bytes is too short: its trailer needs at least {needed}")]
    Truncated {
        /// Length of the frame.
        len: usize,
        /// Least length its trailer allows.
        needed: usize,
    },
    /// The trailer's version bits are not [`VERSION`].
    #[error("trailer version {0}, expected {VERSION}")]
    BadVersion(u8),
    /// The SFrame header is malformed: its length is outside `1..=17`, or it does not
    /// parse to exactly that many bytes.
    #[error("malformed SFrame header")]
    BadHeader,
    /// The frame did not authenticate under the key tried: a wrong key, or altered bytes.
    #[error("frame failed authentication")]
    Authentication,
}

/// The kinds of frame the client encrypts, each with its own count of clear bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// A VP8 key frame.
    Vp8Key,
    /// A VP8 inter (delta) frame.
    Vp8Delta,
    /// An Opus packet.
    Opus,
}

/// Clear bytes of a VP8 key frame: the 3-byte frame tag, the 3-byte start code and the
/// 4 bytes of width and height.
pub const VP8_KEY_CLEAR_BYTES: usize = 10;
/// Clear bytes of a VP8 delta frame: the 3-byte frame tag.
pub const VP8_DELTA_CLEAR_BYTES: usize = 3;
/// Clear bytes of an Opus packet: the TOC byte.
pub const OPUS_CLEAR_BYTES: usize = 1;

/// How many leading bytes of a frame of this kind stay in clear.
pub const fn clear_bytes(kind: FrameKind) -> usize {
    match kind {
        FrameKind::Vp8Key => VP8_KEY_CLEAR_BYTES,
        FrameKind::Vp8Delta => VP8_DELTA_CLEAR_BYTES,
        FrameKind::Opus => OPUS_CLEAR_BYTES,
    }
}

/// The KID of a key generation's ratchet step: `(generation << 8) | step`.
///
/// `generation` must be below 2^56; higher bits are lost.
pub const fn kid(generation: u64, step: u8) -> u64 {
    (generation << 8) | step as u64
}

/// The key generation a KID names.
pub const fn kid_generation(kid: u64) -> u64 {
    kid >> 8
}

/// The ratchet step a KID names.
pub const fn kid_step(kid: u64) -> u8 {
    kid as u8
}

/// The next base key of a ratchet:
/// `HKDF-Expand(HKDF-Extract("", base), "SFrame 1.0 Ratchet", 32)`.
pub fn ratchet(base: &[u8; BASE_KEY_LEN]) -> [u8; BASE_KEY_LEN] {
    let mut next = [0; BASE_KEY_LEN];
    Hkdf::<Sha256>::new(None, base)
        .expand(RATCHET_LABEL, &mut next)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    next
}

/// The AEAD key and salt for one KID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySalt {
    /// The AES-128-GCM key.
    pub key: [u8; KEY_LEN],
    /// The salt that counters are XORed into to make nonces.
    pub salt: [u8; NONCE_LEN],
}

impl KeySalt {
    /// The nonce for a counter: the salt XOR the counter as a 96-bit big-endian integer.
    pub fn nonce(&self, ctr: u64) -> [u8; NONCE_LEN] {
        let mut nonce = self.salt;
        for (n, c) in nonce[NONCE_LEN - 8..].iter_mut().zip(ctr.to_be_bytes()) {
            *n ^= c;
        }
        nonce
    }

    /// AES-128-GCM of `msg` under this key and the counter's nonce: ciphertext, then tag.
    fn seal(&self, ctr: u64, aad: &[u8], msg: &[u8]) -> Vec<u8> {
        Aes128Gcm::new(&Key::<Aes128Gcm>::from(self.key))
            .encrypt(&Nonce::from(self.nonce(ctr)), Payload { msg, aad })
            .expect("a media frame is far below AES-GCM's 64 GiB limit")
    }

    /// The plaintext of `sealed` (ciphertext, then tag), if it authenticates.
    fn open(&self, ctr: u64, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Error> {
        Aes128Gcm::new(&Key::<Aes128Gcm>::from(self.key))
            .decrypt(&Nonce::from(self.nonce(ctr)), Payload { msg: sealed, aad })
            .map_err(|_| Error::Authentication)
    }
}

/// The key and salt for `kid` from a sender's base key (RFC 9605 §4.4.2, suite 0x0004):
///
/// ```text
/// secret = HKDF-Extract("", base)
/// key    = HKDF-Expand(secret, "SFrame 1.0 Secret key "  | u64be(KID) | u16be(0x0004), 16)
/// salt   = HKDF-Expand(secret, "SFrame 1.0 Secret salt " | u64be(KID) | u16be(0x0004), 12)
/// ```
pub fn derive(base: &[u8; BASE_KEY_LEN], kid: u64) -> KeySalt {
    derive_from(base, kid)
}

/// [`derive`] for a base key of any length (RFC 9605's test vectors use 16 bytes).
fn derive_from(base: &[u8], kid: u64) -> KeySalt {
    let secret = Hkdf::<Sha256>::new(None, base);
    let label = |prefix: &[u8]| [prefix, &kid.to_be_bytes(), &CIPHER_SUITE.to_be_bytes()].concat();
    let mut keys = KeySalt { key: [0; KEY_LEN], salt: [0; NONCE_LEN] };
    secret.expand(&label(KEY_LABEL), &mut keys.key).expect("16 bytes is a valid HKDF-SHA256 output length");
    secret.expand(&label(SALT_LABEL), &mut keys.salt).expect("12 bytes is a valid HKDF-SHA256 output length");
    keys
}

/// The SFrame header for (KID, CTR), RFC 9605 §4.3.
///
/// The config byte is `X|KKK|Y|CCC`. A KID below 8 is `X = 0, KKK = KID`; any other is
/// `X = 1, KKK = len - 1`, followed by its `len` bytes, the fewest that hold it, big-endian.
/// The CTR is coded the same way in `Y|CCC`, its bytes after the KID's.
pub fn encode_header(kid: u64, ctr: u64) -> Vec<u8> {
    let mut header = Vec::with_capacity(MAX_HEADER_LEN);
    header.push(0);
    let kid_bits = push_field(&mut header, kid);
    let ctr_bits = push_field(&mut header, ctr);
    header[0] = (kid_bits << 4) | ctr_bits;
    header
}

/// Appends the bytes of a header field, if any, and returns its four config bits.
fn push_field(header: &mut Vec<u8>, value: u64) -> u8 {
    if value < 8 {
        return value as u8;
    }
    let len = 8 - (value.leading_zeros() / 8) as usize;
    header.extend_from_slice(&value.to_be_bytes()[8 - len..]);
    0b1000 | (len - 1) as u8
}

/// Parses the SFrame header at the start of `bytes` into (KID, CTR, header length).
///
/// Any bytes after the header are ignored. Fails with [`Error::BadHeader`] when `bytes` is
/// shorter than its config byte declares.
pub fn parse_header(bytes: &[u8]) -> Result<(u64, u64, usize), Error> {
    let &config = bytes.first().ok_or(Error::BadHeader)?;
    let mut at = 1;
    let kid = read_field(bytes, &mut at, config >> 4)?;
    let ctr = read_field(bytes, &mut at, config & 0x0f)?;
    Ok((kid, ctr, at))
}

/// Reads the header field whose four config bits are `bits`, its bytes (if any) at `*at`.
fn read_field(bytes: &[u8], at: &mut usize, bits: u8) -> Result<u64, Error> {
    if bits & 0b1000 == 0 {
        return Ok(u64::from(bits));
    }
    let len = usize::from(bits & 0b0111) + 1;
    let field = bytes.get(*at..*at + len).ok_or(Error::BadHeader)?;
    *at += len;
    Ok(field.iter().fold(0, |acc, &b| (acc << 8) | u64::from(b)))
}

/// What the trailer of an encrypted frame says, read without a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// The key ID.
    pub kid: u64,
    /// The counter.
    pub ctr: u64,
    /// How many leading bytes are in clear (`n`).
    pub clear: usize,
    /// Length of the SFrame header (`h`).
    pub header_len: usize,
}

impl Trailer {
    /// Where the SFrame header starts in a frame of `frame_len` bytes.
    fn header_start(&self, frame_len: usize) -> usize {
        frame_len - TRAILER_TAIL_LEN - self.header_len
    }
}

/// Reads the trailer of an encrypted frame, checking that the frame has the shape of one:
/// version 1, a header of 1 to 17 bytes that parses to exactly its length, and room for the
/// clear bytes and the tag. Says nothing of whether the frame authenticates.
pub fn parse_trailer(frame: &[u8]) -> Result<Trailer, Error> {
    let len = frame.len();
    let &[.., clear, last] = frame else {
        return Err(Error::Truncated { len, needed: TRAILER_TAIL_LEN });
    };
    let version = last >> 5;
    if version != VERSION {
        return Err(Error::BadVersion(version));
    }
    let header_len = usize::from(last & 0x1f);
    if !(1..=MAX_HEADER_LEN).contains(&header_len) {
        return Err(Error::BadHeader);
    }
    let clear = usize::from(clear);
    let needed = clear + TAG_LEN + header_len + TRAILER_TAIL_LEN;
    if len < needed {
        return Err(Error::Truncated { len, needed });
    }
    let header_start = len - TRAILER_TAIL_LEN - header_len;
    let (kid, ctr, parsed) = parse_header(&frame[header_start..len - TRAILER_TAIL_LEN])?;
    if parsed != header_len {
        return Err(Error::BadHeader);
    }
    Ok(Trailer { kid, ctr, clear, header_len })
}

/// Encrypts a frame under the key for `kid` derived from `base`, with counter `ctr`,
/// leaving its first `min(clear, plaintext.len(), 255)` bytes in clear.
///
/// An empty plaintext gives an empty frame. Each (KID, CTR) pair must encrypt one frame only.
pub fn encrypt(base: &[u8; BASE_KEY_LEN], kid: u64, ctr: u64, clear: usize, plaintext: &[u8]) -> Vec<u8> {
    if plaintext.is_empty() {
        return Vec::new();
    }
    let n = clear.min(plaintext.len()).min(MAX_CLEAR_BYTES);
    let (clear_part, secret_part) = plaintext.split_at(n);
    let mut tail = encode_header(kid, ctr);
    let header_len = tail.len() as u8;
    tail.extend([n as u8, (VERSION << 5) | header_len]);
    let aad = [tail.as_slice(), clear_part].concat();
    let sealed = derive(base, kid).seal(ctr, &aad, secret_part);
    [clear_part, &sealed, &tail].concat()
}

/// A decrypted frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decrypted {
    /// The key ID the frame named.
    pub kid: u64,
    /// The counter the frame named.
    pub ctr: u64,
    /// How many leading bytes had been in clear.
    pub clear: usize,
    /// The whole plaintext frame, clear bytes included.
    pub plaintext: Vec<u8>,
}

impl Decrypted {
    /// What an empty frame decrypts to: an empty plaintext, with KID, CTR and clear all 0.
    fn empty() -> Self {
        Decrypted { kid: 0, ctr: 0, clear: 0, plaintext: Vec::new() }
    }
}

/// Decrypts a frame with the key for the KID it names, derived from `base`.
///
/// An empty frame decrypts to an empty plaintext (KID, CTR and clear 0).
pub fn decrypt(base: &[u8; BASE_KEY_LEN], frame: &[u8]) -> Result<Decrypted, Error> {
    if frame.is_empty() {
        return Ok(Decrypted::empty());
    }
    let trailer = parse_trailer(frame)?;
    open(base, &trailer, frame)
}

/// Decrypts a frame whose sender may have ratcheted its key since `base`: tries `base`,
/// then each of up to `max_steps` successive [`ratchet`]s of it, each with the keys for the
/// KID the frame names, and returns the first that authenticates.
///
/// An empty frame decrypts to an empty plaintext (KID, CTR and clear 0).
pub fn decrypt_with_ratchets(base: &[u8; BASE_KEY_LEN], frame: &[u8], max_steps: u8) -> Result<Decrypted, Error> {
    if frame.is_empty() {
        return Ok(Decrypted::empty());
    }
    let trailer = parse_trailer(frame)?;
    let mut key = *base;
    for step in 0..=max_steps {
        if step > 0 {
            key = ratchet(&key);
        }
        match open(&key, &trailer, frame) {
            Err(Error::Authentication) => {}
            result => return result,
        }
    }
    Err(Error::Authentication)
}

/// Decrypts a frame whose trailer has been parsed, under the keys `base` gives its KID.
fn open(base: &[u8; BASE_KEY_LEN], trailer: &Trailer, frame: &[u8]) -> Result<Decrypted, Error> {
    let header_start = trailer.header_start(frame.len());
    let clear_part = &frame[..trailer.clear];
    let aad = [&frame[header_start..], clear_part].concat();
    let secret_part = derive(base, trailer.kid).open(trailer.ctr, &aad, &frame[trailer.clear..header_start])?;
    Ok(Decrypted {
        kid: trailer.kid,
        ctr: trailer.ctr,
        clear: trailer.clear,
        plaintext: [clear_part, &secret_part].concat(),
    })
}

/// One sender's encryption state: its base key, KID and next counter.
///
/// The counter counts the frames encrypted under the current KID, from 0; it starts again
/// at each new KID. A KID is never reused: the ratchet step does not wrap, and a new
/// generation's number must not have been used by this sender before.
#[derive(Debug, Clone)]
pub struct Sender {
    base: [u8; BASE_KEY_LEN],
    kid: u64,
    ctr: u64,
}

impl Sender {
    /// A sender at ratchet step 0 of `generation`, with a fresh base key for it.
    pub fn new(base: [u8; BASE_KEY_LEN], generation: u64) -> Self {
        Sender { base, kid: kid(generation, 0), ctr: 0 }
    }

    /// The current base key (what receivers need to decrypt this sender's frames).
    pub fn base_key(&self) -> &[u8; BASE_KEY_LEN] {
        &self.base
    }

    /// The KID the next frame will carry.
    pub fn kid(&self) -> u64 {
        self.kid
    }

    /// The counter the next frame will carry.
    pub fn ctr(&self) -> u64 {
        self.ctr
    }

    /// Encrypts a frame of this kind with its count of clear bytes ([`clear_bytes`]) and
    /// advances the counter. An empty frame stays empty and uses no counter.
    pub fn encrypt(&mut self, kind: FrameKind, frame: &[u8]) -> Vec<u8> {
        self.encrypt_with_clear(clear_bytes(kind), frame)
    }

    /// Encrypts a frame with `clear` leading bytes in clear (as [`encrypt`]) and advances
    /// the counter. An empty frame stays empty and uses no counter.
    pub fn encrypt_with_clear(&mut self, clear: usize, frame: &[u8]) -> Vec<u8> {
        if frame.is_empty() {
            return Vec::new();
        }
        let encrypted = encrypt(&self.base, self.kid, self.ctr, clear, frame);
        self.ctr += 1;
        encrypted
    }

    /// Ratchets the base key forward one step: the KID's step goes up by one and the
    /// counter starts again at 0.
    ///
    /// # Panics
    ///
    /// At step 255, the last: the sender must [`rekey`](Self::rekey) instead.
    pub fn ratchet(&mut self) {
        let step = kid_step(self.kid).checked_add(1).expect("ratchet step 255 is the last: start a new generation");
        self.base = ratchet(&self.base);
        self.kid = kid(kid_generation(self.kid), step);
        self.ctr = 0;
    }

    /// Starts a new key generation with a fresh base key, at ratchet step 0 and counter 0.
    pub fn rekey(&mut self, base: [u8; BASE_KEY_LEN], generation: u64) {
        self.base = base;
        self.kid = kid(generation, 0);
        self.ctr = 0;
    }
}

/// The safety code of two members, the same whichever is `a`:
///
/// ```text
/// h = SHA-256("SB-E2EE-1 safety" | 0x00 | idLo | 0x00 | pubLo | idHi | 0x00 | pubHi)
/// ```
///
/// where the ids are UTF-8, `idLo` is the bytewise lesser (on equal ids, the one with the
/// lesser key), and each `pub` is that member's 65-byte uncompressed P-256 public key. The
/// code is four groups of five decimal digits separated by spaces; group `i` is
/// `u40be(h[5i..5i+5]) mod 100000`, zero-padded.
pub fn safety_code(id_a: &str, pub_a: &[u8], id_b: &str, pub_b: &[u8]) -> String {
    let a = (id_a.as_bytes(), pub_a);
    let b = (id_b.as_bytes(), pub_b);
    let ((id_lo, pub_lo), (id_hi, pub_hi)) = if a <= b { (a, b) } else { (b, a) };
    let digest = Sha256::new()
        .chain_update(SAFETY_LABEL)
        .chain_update([0])
        .chain_update(id_lo)
        .chain_update([0])
        .chain_update(pub_lo)
        .chain_update(id_hi)
        .chain_update([0])
        .chain_update(pub_hi)
        .finalize();
    digest[..20]
        .chunks_exact(5)
        .map(|group| {
            let value = group.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            format!("{:05}", value % 100_000)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
