use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn random_key() -> [u8; BASE_KEY_LEN] {
    rand::random()
}

/// A plaintext of `len` bytes that differ from each other.
fn frame_of(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// RFC 9605 Appendix C.1: every header vector encodes and decodes.
#[test]
fn rfc9605_header_vectors() {
    let text = include_str!("../tests/rfc9605-headers.txt");
    let mut count = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [kid, ctr, encoded] = parts[..] else {
            panic!("bad vector line {line:?}");
        };
        let kid = u64::from_str_radix(kid.trim_start_matches("0x"), 16).unwrap();
        let ctr = u64::from_str_radix(ctr.trim_start_matches("0x"), 16).unwrap();
        let encoded = hex(encoded);
        assert_eq!(encode_header(kid, ctr), encoded, "kid {kid:#x} ctr {ctr:#x}");
        let mut with_more = encoded.clone();
        with_more.extend([0xaa, 0xbb]);
        assert_eq!(parse_header(&with_more), Ok((kid, ctr, encoded.len())));
        count += 1;
    }
    assert_eq!(count, 17 * 17);
}

/// RFC 9605 Appendix C.3, cipher suite 0x0004: key derivation, nonce and AEAD.
#[test]
fn rfc9605_sframe_vector_suite_4() {
    let base_key = hex("000102030405060708090a0b0c0d0e0f");
    let (kid, ctr): (u64, u64) = (0x123, 0x4567);

    let label = [KEY_LABEL, &kid.to_be_bytes(), &CIPHER_SUITE.to_be_bytes()].concat();
    assert_eq!(label, hex("534672616d6520312e30205365637265 74206b65792000000000000001230004"));
    let label = [SALT_LABEL, &kid.to_be_bytes(), &CIPHER_SUITE.to_be_bytes()].concat();
    assert_eq!(label, hex("534672616d6520312e30205365637265 742073616c7420000000000000012300 04"));
    let (secret, _) = Hkdf::<Sha256>::extract(None, &base_key);
    assert_eq!(secret.to_vec(), hex("d926952ca8b7ec4a95941d1ada3a5203 ceff8cceee34f574d23909eb314c40c0"));

    let keys = derive_from(&base_key, kid);
    assert_eq!(keys.key.to_vec(), hex("d34f547f4ca4f9a7447006fe7fcbf768"));
    assert_eq!(keys.salt.to_vec(), hex("75234edefe07819026751816"));
    assert_eq!(keys.nonce(ctr).to_vec(), hex("75234edefe07819026755d71"));

    let header = encode_header(kid, ctr);
    let metadata = hex("4945544620534672616d65205747");
    let aad = [header.as_slice(), &metadata].concat();
    assert_eq!(aad, hex("99012345674945544620534672616d65 205747"));
    let pt = hex("64726166742d696574662d736672616d 652d656e63");
    let ct = [header, keys.seal(ctr, &aad, &pt)].concat();
    let expected = hex("9901234567b7412c2513a1b66dbb4884 1bbaf17f598751176ad847681a69c6d0 b091c07018ce4adb34eb");
    assert_eq!(ct, expected);
    assert_eq!(keys.open(ctr, &aad, &ct[5..]), Ok(pt));
}

/// HKDF-Extract with an empty salt is the same as with RFC 5869's default, HashLen zeros.
#[test]
fn empty_salt_is_the_default_salt() {
    let ikm = random_key();
    let (none, _) = Hkdf::<Sha256>::extract(None, &ikm);
    let (empty, _) = Hkdf::<Sha256>::extract(Some(&[]), &ikm);
    let (zeros, _) = Hkdf::<Sha256>::extract(Some(&[0; 32]), &ikm);
    assert_eq!(none, empty);
    assert_eq!(none, zeros);
}

#[test]
fn kid_packs_generation_and_step() {
    assert_eq!(kid(0, 0), 0);
    assert_eq!(kid(1, 1), 0x101);
    assert_eq!(kid(0xabc, 0xff), 0xabcff);
    assert_eq!(kid_generation(0xabcff), 0xabc);
    assert_eq!(kid_step(0xabcff), 0xff);
}

#[test]
fn parse_header_rejects_short_input() {
    assert_eq!(parse_header(&[]), Err(Error::BadHeader));
    // X=1, 2 KID bytes declared, 1 present.
    assert_eq!(parse_header(&[0x90, 0x01]), Err(Error::BadHeader));
    // KID present, Y=1 with 1 CTR byte declared, none present.
    assert_eq!(parse_header(&[0x98, 0x01, 0x00]), Err(Error::BadHeader));
}

#[test]
fn round_trips_each_frame_kind() {
    let base = random_key();
    for (kind, clear) in [(FrameKind::Vp8Key, 10), (FrameKind::Vp8Delta, 3), (FrameKind::Opus, 1)] {
        assert_eq!(clear_bytes(kind), clear);
        let plaintext = frame_of(200);
        let frame = encrypt(&base, 0x101, 42, clear_bytes(kind), &plaintext);
        let header_len = encode_header(0x101, 42).len();
        assert_eq!(frame.len(), plaintext.len() + TAG_LEN + header_len + 2);
        assert_eq!(frame[..clear], plaintext[..clear], "clear bytes stay at the start");
        assert_ne!(frame[clear..plaintext.len()], plaintext[clear..]);
        assert_eq!(parse_trailer(&frame), Ok(Trailer { kid: 0x101, ctr: 42, clear, header_len }));
        let decrypted = decrypt(&base, &frame).unwrap();
        assert_eq!(decrypted, Decrypted { kid: 0x101, ctr: 42, clear, plaintext });
    }
}

#[test]
fn frame_shorter_than_clear_count_is_all_clear_and_authenticated() {
    let base = random_key();
    let plaintext = frame_of(4);
    let frame = encrypt(&base, 3, 6, VP8_KEY_CLEAR_BYTES, &plaintext);
    assert_eq!(frame.len(), 4 + TAG_LEN + 1 + 2);
    let trailer = parse_trailer(&frame).unwrap();
    assert_eq!(trailer.clear, 4);
    assert_eq!(decrypt(&base, &frame).unwrap().plaintext, plaintext);
    assert_eq!(decrypt(&random_key(), &frame), Err(Error::Authentication));
}

#[test]
fn clear_count_is_capped_at_255() {
    let base = random_key();
    let plaintext = frame_of(400);
    let frame = encrypt(&base, 1, 1, 1000, &plaintext);
    assert_eq!(parse_trailer(&frame).unwrap().clear, MAX_CLEAR_BYTES);
    assert_eq!(decrypt(&base, &frame).unwrap().plaintext, plaintext);
}

#[test]
fn empty_frame_passes_through() {
    let base = random_key();
    assert!(encrypt(&base, 1, 1, 10, &[]).is_empty());
    let decrypted = decrypt(&base, &[]).unwrap();
    assert!(decrypted.plaintext.is_empty());
    assert!(decrypt_with_ratchets(&base, &[], 3).unwrap().plaintext.is_empty());
    assert!(parse_trailer(&[]).is_err());
}

#[test]
fn every_bit_flip_fails_to_decrypt() {
    let base = random_key();
    for (kid, ctr, clear, len) in [(0, 0, 10, 40), (0x101, 70000, 3, 25), (5, 1, 1, 3), (7, 8, 10, 4)] {
        let frame = encrypt(&base, kid, ctr, clear, &frame_of(len));
        assert!(decrypt(&base, &frame).is_ok());
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut altered = frame.clone();
                altered[byte] ^= 1 << bit;
                assert!(decrypt(&base, &altered).is_err(), "flipping bit {bit} of byte {byte} of {}", frame.len());
                assert!(decrypt_with_ratchets(&base, &altered, 4).is_err());
            }
        }
    }
}

#[test]
fn wrong_key_fails() {
    let frame = encrypt(&random_key(), 0, 0, 10, &frame_of(50));
    assert_eq!(decrypt(&random_key(), &frame), Err(Error::Authentication));
}

#[test]
fn malformed_trailers_are_named() {
    // A fixed key: the last check depends on the tag's last byte.
    let base = [7; BASE_KEY_LEN];
    let frame = encrypt(&base, 0x101, 70000, 3, &frame_of(25));
    let len = frame.len();

    assert_eq!(decrypt(&base, &[0x21]), Err(Error::Truncated { len: 1, needed: 2 }));
    assert!(matches!(decrypt(&base, &frame[len - 8..]), Err(Error::Truncated { .. })));

    let mut bad_version = frame.clone();
    bad_version[len - 1] = (2 << 5) | (frame[len - 1] & 0x1f);
    assert_eq!(decrypt(&base, &bad_version), Err(Error::BadVersion(2)));

    for h in [0, 18, 31] {
        let mut bad_len = frame.clone();
        bad_len[len - 1] = 0x20 | h;
        assert_eq!(decrypt(&base, &bad_len), Err(Error::BadHeader), "h = {h}");
    }

    // A header one byte longer than it parses to.
    let mut long = frame.clone();
    long[len - 1] += 1;
    assert_eq!(decrypt(&base, &long), Err(Error::BadHeader));
}

#[test]
fn ratchet_steps_are_found_within_max_steps() {
    let mut sender = Sender::new(random_key(), 4);
    let step0 = *sender.base_key();
    for _ in 0..3 {
        sender.ratchet();
    }
    assert_eq!(sender.kid(), kid(4, 3));
    let plaintext = frame_of(30);
    let frame = sender.encrypt(FrameKind::Vp8Delta, &plaintext);

    assert_eq!(decrypt(&step0, &frame), Err(Error::Authentication));
    let found = decrypt_with_ratchets(&step0, &frame, 3).unwrap();
    assert_eq!(found.plaintext, plaintext);
    assert_eq!(found.kid, kid(4, 3));
    assert_eq!(decrypt_with_ratchets(&step0, &frame, 10).unwrap().plaintext, plaintext);
    assert_eq!(decrypt_with_ratchets(&step0, &frame, 2), Err(Error::Authentication));
    // A ratchet only goes forward.
    assert_eq!(decrypt_with_ratchets(&ratchet(sender.base_key()), &frame, 10), Err(Error::Authentication));
}

#[test]
fn a_new_generation_key_never_decrypts_another_generation() {
    let mut sender = Sender::new(random_key(), 0);
    let old_frames: Vec<_> = (0..5).map(|i| sender.encrypt(FrameKind::Opus, &frame_of(20 + i))).collect();
    let departed = *sender.base_key();

    sender.rekey(random_key(), 1);
    let new_frames: Vec<_> = (0..5).map(|i| sender.encrypt(FrameKind::Vp8Key, &frame_of(60 + i))).collect();
    for frame in &new_frames {
        assert_eq!(kid_generation(parse_trailer(frame).unwrap().kid), 1);
        assert!(decrypt(sender.base_key(), frame).is_ok());
        assert_eq!(decrypt_with_ratchets(&departed, frame, 255), Err(Error::Authentication));
    }
    for frame in &old_frames {
        assert_eq!(decrypt_with_ratchets(sender.base_key(), frame, 255), Err(Error::Authentication));
    }
}

#[test]
fn sender_counts_frames_and_skips_empty_ones() {
    let mut sender = Sender::new(random_key(), 2);
    assert_eq!(sender.ctr(), 0);
    assert!(sender.encrypt(FrameKind::Opus, &[]).is_empty());
    assert_eq!(sender.ctr(), 0);
    for expected in 0..3 {
        let frame = sender.encrypt(FrameKind::Opus, &frame_of(10));
        assert_eq!(parse_trailer(&frame).unwrap().ctr, expected);
    }
    sender.ratchet();
    let frame = sender.encrypt_with_clear(0, &frame_of(10));
    let trailer = parse_trailer(&frame).unwrap();
    assert_eq!((trailer.kid, trailer.ctr, trailer.clear), (kid(2, 1), 0, 0));
    assert_eq!(sender.ctr(), 1);
    sender.rekey(random_key(), 3);
    assert_eq!((sender.kid(), sender.ctr()), (kid(3, 0), 0));
}

#[test]
#[should_panic(expected = "ratchet step 255 is the last")]
fn sender_ratchet_step_does_not_wrap() {
    let mut sender = Sender::new(random_key(), 0);
    for _ in 0..255 {
        sender.ratchet();
    }
    assert_eq!(sender.kid(), kid(0, 255));
    sender.ratchet();
}

#[test]
fn nonce_xors_counter_into_low_bytes() {
    let keys = KeySalt { key: [0; KEY_LEN], salt: [0xff; NONCE_LEN] };
    assert_eq!(keys.nonce(0), [0xff; NONCE_LEN]);
    let mut expected = [0xff; NONCE_LEN];
    expected[4..].copy_from_slice(&(!0x0102_0304_0506_0708u64).to_be_bytes());
    assert_eq!(keys.nonce(0x0102_0304_0506_0708), expected);
}

#[test]
fn safety_code_is_symmetric_and_shaped() {
    let pub_a = [4; 65];
    let pub_b = [5; 65];
    let code = safety_code("alice", &pub_a, "bob", &pub_b);
    assert_eq!(code, safety_code("bob", &pub_b, "alice", &pub_a));
    let groups: Vec<&str> = code.split(' ').collect();
    assert_eq!(groups.len(), 4);
    assert!(groups.iter().all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit())));
    assert_ne!(code, safety_code("alice", &pub_b, "bob", &pub_a));
    assert_ne!(code, safety_code("alice", &pub_a, "carol", &pub_b));
}
