//! End-to-end encryption's key exchange (`docs/e2ee.md`): the messages signaling
//! routes between members of an E2EE meeting without being able to read the keys.
//!
//! Each member announces an ECDH P-256 public key (`e2ee-hello`); each publisher sends
//! its media key to each member wrapped under the key the two share (`e2ee-key`). The
//! server checks shapes and sizes here, and routing (who may send to whom) in the
//! session; it never decodes a wrapped key. Everything is bounded so a hostile client
//! cannot make the server store or fan out more than a few hundred bytes per member.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The scheme a client implements, named in `join` (`e2ee: 1`); an E2EE meeting
/// refuses a join without it.
pub const SCHEME_VERSION: u8 = 1;
/// Entries of one `e2ee-key` (the server checks each recipient).
pub const MAX_KEY_ENTRIES: usize = 200;
/// Members in one `e2ee-members` message; a longer list comes in several.
pub const MEMBERS_PER_MESSAGE: usize = 200;
/// Largest key id: a JSON number stays exact up to 2^53 - 1.
pub const MAX_KID: u64 = (1 << 53) - 1;

/// An uncompressed P-256 point (`04 || x || y`).
const PUBLIC_KEY_BYTES: usize = 65;
/// The AES-GCM nonce of a wrapped key.
const IV_BYTES: usize = 12;
/// A 32-byte media key and its 16-byte tag.
const WRAPPED_KEY_BYTES: usize = 48;

/// `e2ee-hello`, both ways: a member's public key. From a client without `toPeerId` it
/// announces the key (stored, sent to those who need it); with `toPeerId` it asks that
/// publisher to send its media key again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HelloPayload {
    /// base64url without padding of the 65-byte uncompressed point.
    pub public_key: String,
    /// The envelope's `toPeerId`, never the payload's.
    #[serde(skip)]
    pub to: Option<String>,
}

/// `e2ee-key` from a publisher: its media key for key id `kid`, wrapped once per
/// recipient.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyPayload {
    pub kid: u64,
    pub entries: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyEntry {
    /// The recipient's participant id.
    pub to: String,
    /// base64url of the 12-byte AES-GCM nonce.
    pub iv: String,
    /// base64url of the wrapped 32-byte key and its tag (48 bytes).
    pub key: String,
}

/// `e2ee-key` to a recipient (`fromPeerId`: the publisher): its own entry only.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeliveredKey {
    pub kid: u64,
    pub iv: String,
    pub key: String,
}

/// `e2ee-members`: the members whose public keys the asker needs (a publisher: every
/// admitted member; a viewer: the publishers). `done` marks the last message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MembersPayload {
    pub members: Vec<Member>,
    pub done: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub participant_id: String,
    pub public_key: String,
}

fn decoded_len(what: &str, s: &str, bytes: usize) -> Result<Vec<u8>, String> {
    let chars = (bytes * 8).div_ceil(6);
    if s.len() != chars {
        return Err(format!("{what} is {chars} base64url characters ({bytes} bytes), not {}", s.len()));
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|e| format!("{what} is not base64url without padding: {e}"))
}

/// A public key's shape: 65 bytes, uncompressed (`0x04` first). Whether it is a point
/// on the curve is the peers' business (WebCrypto refuses one that is not).
pub fn check_public_key(s: &str) -> Result<(), String> {
    let raw = decoded_len("publicKey", s, PUBLIC_KEY_BYTES)?;
    if raw[0] != 0x04 {
        return Err("publicKey must be an uncompressed P-256 point (first byte 0x04)".into());
    }
    Ok(())
}

/// An `e2ee-key`'s shape: 1 to [`MAX_KEY_ENTRIES`] entries, each recipient a valid id
/// named once, each nonce and wrapped key of its exact size.
pub fn check_key(k: &KeyPayload) -> Result<(), String> {
    if k.kid > MAX_KID {
        return Err(format!("kid is 0 to {MAX_KID}"));
    }
    if k.entries.is_empty() || k.entries.len() > MAX_KEY_ENTRIES {
        return Err(format!("entries holds 1 to {MAX_KEY_ENTRIES} recipients, not {}", k.entries.len()));
    }
    let mut seen = std::collections::HashSet::new();
    for e in &k.entries {
        switchboard_sfu_api::paths::check_id("participant", &e.to)?;
        if !seen.insert(e.to.as_str()) {
            return Err(format!("`{}` is named twice", e.to));
        }
        decoded_len("iv", &e.iv, IV_BYTES)?;
        decoded_len("key", &e.key, WRAPPED_KEY_BYTES)?;
    }
    Ok(())
}
