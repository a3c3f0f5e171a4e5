//! Replays `vectors.json` (written by `vectors.py`, an implementation independent of this
//! crate), which the browser's JavaScript replays too: a drift on either side fails here or
//! there.

use serde_json::Value;
use switchboard_sframe::{
    BASE_KEY_LEN, MAX_CLEAR_BYTES, decrypt, decrypt_with_ratchets, encrypt, parse_trailer, ratchet, safety_code,
};

fn vectors() -> Value {
    serde_json::from_str(include_str!("vectors.json")).expect("vectors.json parses")
}

fn hex(value: &Value) -> Vec<u8> {
    let s = value.as_str().expect("a hex string");
    assert!(
        s.len().is_multiple_of(2) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "lowercase hex without separators: {s:?}"
    );
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn key(value: &Value) -> [u8; BASE_KEY_LEN] {
    hex(value).try_into().expect("a 32-byte key")
}

/// A number, exact in JavaScript too (below 2^53).
fn number(value: &Value) -> u64 {
    let n = value.as_u64().expect("a non-negative integer");
    assert!(n < 1 << 53, "{n} is not exact as a JavaScript number");
    n
}

#[test]
fn frames() {
    let vectors = vectors();
    let frames = vectors["frames"].as_array().unwrap();
    assert!(frames.len() >= 3);
    for v in frames {
        let name = v["name"].as_str().unwrap_or("?");
        let base = key(&v["base"]);
        let (kid, ctr) = (number(&v["kid"]), number(&v["ctr"]));
        let clear = number(&v["clear"]) as usize;
        let plaintext = hex(&v["plaintext"]);
        let frame = hex(&v["frame"]);

        assert_eq!(encrypt(&base, kid, ctr, clear, &plaintext), frame, "{name}: encrypt");

        let trailer = parse_trailer(&frame).unwrap();
        assert_eq!((trailer.kid, trailer.ctr), (kid, ctr), "{name}: trailer");
        assert!(clear <= plaintext.len().min(MAX_CLEAR_BYTES), "{name}: clear is n");
        assert_eq!(trailer.clear, clear, "{name}: clear bytes");

        let decrypted = decrypt(&base, &frame).unwrap();
        assert_eq!(decrypted.plaintext, plaintext, "{name}: decrypt");
        assert_eq!((decrypted.kid, decrypted.ctr, decrypted.clear), (kid, ctr, clear));
        assert_eq!(decrypt_with_ratchets(&base, &frame, 0).unwrap(), decrypted);
    }
}

#[test]
fn ratchets() {
    let vectors = vectors();
    let ratchets = vectors["ratchets"].as_array().unwrap();
    assert!(!ratchets.is_empty());
    for v in ratchets {
        assert_eq!(ratchet(&key(&v["base"])), key(&v["ratcheted"]));
    }
}

#[test]
fn safety_codes() {
    let vectors = vectors();
    let codes = vectors["safetyCodes"].as_array().unwrap();
    assert!(!codes.is_empty());
    for v in codes {
        let (id_a, id_b) = (v["idA"].as_str().unwrap(), v["idB"].as_str().unwrap());
        let (pub_a, pub_b) = (hex(&v["pubA"]), hex(&v["pubB"]));
        assert_eq!((pub_a.len(), pub_a[0], pub_b.len(), pub_b[0]), (65, 4, 65, 4));
        let code = v["code"].as_str().unwrap();
        assert_eq!(safety_code(id_a, &pub_a, id_b, &pub_b), code, "{id_a}/{id_b}");
        assert_eq!(safety_code(id_b, &pub_b, id_a, &pub_a), code, "{id_b}/{id_a}");
    }
}
