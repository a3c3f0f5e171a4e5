//! Room codes: 12 characters of `[a-z0-9]`, unique across the cluster by
//! construction rather than by luck.
//!
//! The operator takes sequence numbers in blocks from a counter object it updates
//! with optimistic concurrency (two operators can never hold the same block), and
//! turns each number into a code with a keyed Feistel permutation of the 62-bit
//! space. A permutation is a bijection, so distinct numbers give distinct codes;
//! the key keeps codes from looking sequential (guessing the next meeting's code
//! from your own is not possible without it). 2^62 < 36^12, so every code fits in
//! 12 characters.

const BITS: u32 = 62;
const HALF: u32 = BITS / 2;
const HALF_MASK: u64 = (1 << HALF) - 1;
const ROUNDS: u64 = 6;
const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
pub const LENGTH: usize = 12;
/// The largest sequence number that has a code.
pub const MAX_SEQUENCE: u64 = (1 << BITS) - 1;

/// Secret of the permutation, stored next to the counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key(pub u64);

fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser: cheap and well-distributed.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn round(key: Key, r: u64, half: u64) -> u64 {
    mix(half ^ key.0.rotate_left(r as u32 * 11) ^ r.wrapping_mul(0x9e37_79b9_7f4a_7c15)) & HALF_MASK
}

/// The permutation of `[0, 2^62)`.
pub fn permute(key: Key, sequence: u64) -> u64 {
    assert!(sequence <= MAX_SEQUENCE, "sequence {sequence} beyond the code space");
    let (mut left, mut right) = (sequence >> HALF, sequence & HALF_MASK);
    for r in 0..ROUNDS {
        let next = left ^ round(key, r, right);
        left = right;
        right = next;
    }
    (left << HALF) | right
}

/// The inverse of [`permute`] (it proves the bijection in tests and decodes codes).
pub fn unpermute(key: Key, value: u64) -> u64 {
    let (mut left, mut right) = (value >> HALF, value & HALF_MASK);
    for r in (0..ROUNDS).rev() {
        let prev = right ^ round(key, r, left);
        right = left;
        left = prev;
    }
    (left << HALF) | right
}

/// The room code of a sequence number.
pub fn encode(key: Key, sequence: u64) -> String {
    let mut n = permute(key, sequence);
    let mut out = [b'a'; LENGTH];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(out.to_vec()).expect("ASCII")
}

/// The sequence number of a room code, if it is one.
pub fn decode(key: Key, code: &str) -> Option<u64> {
    if code.len() != LENGTH {
        return None;
    }
    let mut n: u64 = 0;
    for c in code.bytes() {
        let digit = ALPHABET.iter().position(|&a| a == c)? as u64;
        n = n.checked_mul(36)?.checked_add(digit)?;
    }
    (n <= MAX_SEQUENCE).then(|| unpermute(key, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_twelve_lowercase_alphanumerics_and_decode_back() {
        let key = Key(0x5eed_1234_abcd_0042);
        for seq in [0, 1, 2, 1023, 1024, 999_999, MAX_SEQUENCE] {
            let code = encode(key, seq);
            assert_eq!(code.len(), LENGTH);
            assert!(code.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "{code}");
            assert_eq!(decode(key, &code), Some(seq));
        }
    }

    #[test]
    fn distinct_sequences_give_distinct_codes() {
        let key = Key(7);
        let codes: HashSet<String> = (0..200_000).map(|s| encode(key, s)).collect();
        assert_eq!(codes.len(), 200_000);
    }

    #[test]
    fn the_permutation_is_a_bijection() {
        // Inverse on both sides over random-looking points of the whole space.
        let key = Key(0xdead_beef);
        let mut x = 1u64;
        for _ in 0..100_000 {
            x = mix(x) & MAX_SEQUENCE;
            assert_eq!(unpermute(key, permute(key, x)), x);
            assert_eq!(permute(key, unpermute(key, x)), x);
        }
    }

    #[test]
    fn neighbouring_sequences_do_not_look_sequential() {
        let key = Key(99);
        let (a, b) = (encode(key, 500), encode(key, 501));
        let shared = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
        assert!(shared < 6, "{a} {b}");
        assert_ne!(encode(Key(1), 500), encode(Key(2), 500));
    }
}
