//! Room codes handed out from blocks of a cluster-wide counter.
//!
//! The counter lives in a Lease in the operator's namespace (annotations: next
//! sequence number and the permutation key). Taking a block is a read followed
//! by an update carrying the read resourceVersion: of two writers, one gets a
//! 409 and retries, so no two blocks overlap, and `switchboard_placement::room_code`
//! maps distinct sequence numbers to distinct codes. A crash loses at most the
//! rest of a block (codes are skipped, never reused).

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::ResourceExt;
use switchboard_placement::room_code::{self, Key};

pub const ROOM_CODES_LEASE: &str = "switchboard-room-codes";
const NEXT_ANNOTATION: &str = "switchboard.dev/room-code-next";
const KEY_ANNOTATION: &str = "switchboard.dev/room-code-key";
/// Codes taken per counter update.
const BLOCK: u64 = 256;

#[derive(Default)]
struct State {
    key: Option<Key>,
    next: u64,
    end: u64,
}

pub struct RoomCodes {
    api: Api<Lease>,
    state: tokio::sync::Mutex<State>,
}

fn random_key() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
}

impl RoomCodes {
    pub fn new(api: Api<Lease>) -> Self {
        Self { api, state: Default::default() }
    }

    /// The next unused room code.
    pub async fn next(&self) -> kube::Result<String> {
        let mut state = self.state.lock().await;
        if state.key.is_none() || state.next >= state.end {
            self.take_block(&mut state).await?;
        }
        let sequence = state.next;
        state.next += 1;
        Ok(room_code::encode(state.key.expect("key after a block"), sequence))
    }

    async fn take_block(&self, state: &mut State) -> kube::Result<()> {
        loop {
            match self.api.get_opt(ROOM_CODES_LEASE).await? {
                None => {
                    let key = random_key();
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(ROOM_CODES_LEASE.into()),
                            annotations: Some(
                                [(NEXT_ANNOTATION.to_owned(), BLOCK.to_string()), (KEY_ANNOTATION.to_owned(), format!("{key:016x}"))]
                                    .into(),
                            ),
                            ..Default::default()
                        },
                        ..Default::default()
                    };
                    match self.api.create(&PostParams::default(), &lease).await {
                        Ok(_) => {
                            *state = State { key: Some(Key(key)), next: 0, end: BLOCK };
                            return Ok(());
                        }
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(e),
                    }
                }
                Some(mut lease) => {
                    let annotations = lease.annotations();
                    let next: u64 = annotations.get(NEXT_ANNOTATION).and_then(|n| n.parse().ok()).unwrap_or(0);
                    let key = annotations.get(KEY_ANNOTATION).and_then(|k| u64::from_str_radix(k, 16).ok());
                    let Some(key) = key else {
                        return Err(kube::Error::Service(format!("lease {ROOM_CODES_LEASE} has no valid {KEY_ANNOTATION}").into()));
                    };
                    let end = next + BLOCK;
                    if end > room_code::MAX_SEQUENCE {
                        return Err(kube::Error::Service("room code space exhausted".into()));
                    }
                    lease.annotations_mut().insert(NEXT_ANNOTATION.into(), end.to_string());
                    // replace carries the resourceVersion we read: a concurrent taker gets 409.
                    match self.api.replace(ROOM_CODES_LEASE, &PostParams::default(), &lease).await {
                        Ok(_) => {
                            *state = State { key: Some(Key(key)), next, end };
                            return Ok(());
                        }
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
}
