#!/usr/bin/env python3
"""Writes vectors.json beside this file: known answers for the E2EE frame scheme.

An implementation independent of the Rust crate (HKDF from hmac/hashlib, AES-GCM and P-256
from the `cryptography` package), so that vectors.json checks the crate rather than echoing
it. The crate's tests/vectors.rs and the browser's JavaScript replay the file; rerunning this
script must leave it unchanged. For the JavaScript's sake every number is below 2^53 (exact as
a JS number), and each frame's "clear" is at most its plaintext's length, so it is the n byte
of the frame as it stands.

    python3 crates/sframe/tests/vectors.py
"""

import hashlib
import hmac
import json
import pathlib

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SUITE = 0x0004


def hkdf_extract(ikm: bytes) -> bytes:
    return hmac.new(b"", ikm, hashlib.sha256).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def ratchet(base: bytes) -> bytes:
    return hkdf_expand(hkdf_extract(base), b"SFrame 1.0 Ratchet", 32)


def derive(base: bytes, kid: int) -> tuple[bytes, bytes]:
    secret = hkdf_extract(base)
    suffix = kid.to_bytes(8, "big") + SUITE.to_bytes(2, "big")
    key = hkdf_expand(secret, b"SFrame 1.0 Secret key " + suffix, 16)
    salt = hkdf_expand(secret, b"SFrame 1.0 Secret salt " + suffix, 12)
    return key, salt


def field(value: int) -> tuple[int, bytes]:
    if value < 8:
        return value, b""
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return 0b1000 | (len(raw) - 1), raw


def header(kid: int, ctr: int) -> bytes:
    kbits, kbytes = field(kid)
    cbits, cbytes = field(ctr)
    return bytes([kbits << 4 | cbits]) + kbytes + cbytes


def encrypt(base: bytes, kid: int, ctr: int, clear: int, plaintext: bytes) -> bytes:
    if not plaintext:
        return b""
    n = min(clear, len(plaintext), 255)
    key, salt = derive(base, kid)
    nonce = bytes(a ^ b for a, b in zip(salt, ctr.to_bytes(12, "big")))
    h = header(kid, ctr)
    tail = h + bytes([n, 0x20 | len(h)])
    sealed = AESGCM(key).encrypt(nonce, plaintext[n:], tail + plaintext[:n])
    return plaintext[:n] + sealed + tail


def safety_code(id_a: str, pub_a: bytes, id_b: str, pub_b: bytes) -> str:
    (lo_id, lo_pub), (hi_id, hi_pub) = sorted([(id_a.encode(), pub_a), (id_b.encode(), pub_b)])
    h = hashlib.sha256(
        b"SB-E2EE-1 safety\x00" + lo_id + b"\x00" + lo_pub + hi_id + b"\x00" + hi_pub
    ).digest()
    return " ".join(f"{int.from_bytes(h[5 * i:5 * i + 5], 'big') % 100000:05d}" for i in range(4))


def seeded(label: str, length: int) -> bytes:
    """Deterministic bytes: SHA-256 in counter mode over a label."""
    out, i = b"", 0
    while len(out) < length:
        out += hashlib.sha256(f"{label}/{i}".encode()).digest()
        i += 1
    return out[:length]


def p256_public(label: str) -> bytes:
    scalar = int.from_bytes(seeded(label, 32), "big") % (2**256 - 2**224 + 2**192 + 2**96 - 1)
    key = ec.derive_private_key(scalar, ec.SECP256R1())
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def main() -> None:
    frames = []
    for name, kid, ctr, clear, length in [
        ("vp8-key", 0, 0, 10, 40),
        ("vp8-delta", 0x101, 70000, 3, 25),
        ("opus", 5, 1, 1, 3),
        ("all-encrypted", 0x1234567, 2**40, 0, 16),
        ("all-clear", 7, 8, 4, 4),
        ("long-header-most-clear", 2**53 - 1, 2**53 - 2, 255, 300),
    ]:
        assert kid < 2**53 and ctr < 2**53 and clear <= min(length, 255)
        base = seeded(f"sframe vector base {name}", 32)
        plaintext = seeded(f"sframe vector plaintext {name}", length)
        frames.append(
            {
                "name": name,
                "base": base.hex(),
                "kid": kid,
                "ctr": ctr,
                "clear": clear,
                "plaintext": plaintext.hex(),
                "frame": encrypt(base, kid, ctr, clear, plaintext).hex(),
            }
        )

    ratchets = []
    base = seeded("sframe vector ratchet", 32)
    for _ in range(3):
        ratchets.append({"base": base.hex(), "ratcheted": ratchet(base).hex()})
        base = ratchet(base)

    safety_codes = []
    for id_a, id_b in [("alice", "bob"), ("participant-b7", "participant-a3"), ("émile", "zoë")]:
        pub_a, pub_b = p256_public(f"safety {id_a}"), p256_public(f"safety {id_b}")
        safety_codes.append(
            {
                "idA": id_a,
                "pubA": pub_a.hex(),
                "idB": id_b,
                "pubB": pub_b.hex(),
                "code": safety_code(id_a, pub_a, id_b, pub_b),
            }
        )

    doc = {
        "about": (
            "Known answers for docs/e2ee.md, written by crates/sframe/tests/vectors.py. "
            "frames: encrypt(base, kid, ctr, clear, plaintext) = frame, where clear (at most "
            "len(plaintext) and 255) is the frame's n byte; every number is below 2^53. "
            "ratchets: ratchet(base) = ratcheted. safetyCodes: safetyCode(idA, pubA, idB, pubB) = code."
        ),
        "frames": frames,
        "ratchets": ratchets,
        "safetyCodes": safety_codes,
    }
    path = pathlib.Path(__file__).with_name("vectors.json")
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
