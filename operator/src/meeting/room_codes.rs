//! Room codes handed out from blocks of a cluster-wide counter.
//!
//! The counter lives in a Lease in the operator's namespace (annotations: next
//! sequence number and the permutation key). Taking a block is a read followed
//! by an update carrying the read resourceVersion: of two writers, one gets a
//! 409 and retries, so no two blocks overlap, and `switchboard_placement::room_code`
//! maps distinct sequence numbers to distinct codes. A crash loses at most the
//! rest of a block and of the spare one (codes are skipped, never reused).
//!
//! The next block is taken in the background once half of the current one is
//! handed out: a placement never waits for the counter unless codes run out
//! faster than the API server answers (at 500 placements/s a block lasts about
//! a second; refilling only when empty stalled every placement for a read and a
//! write on a busy API server, twice a second).

use std::sync::Arc;

use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, PostParams};
use switchboard_placement::room_code::{self, Key};

pub const ROOM_CODES_LEASE: &str = "switchboard-room-codes";
const NEXT_ANNOTATION: &str = "switchboard.dev/room-code-next";
const KEY_ANNOTATION: &str = "switchboard.dev/room-code-key";
/// Codes taken per counter update.
const BLOCK: u64 = 512;

/// Sequence numbers `[next, end)` taken from the counter, and its key.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Block {
    key: Key,
    next: u64,
    end: u64,
}

#[derive(Default)]
struct State {
    current: Option<Block>,
    /// Taken ahead, used when `current` runs out.
    spare: Option<Block>,
    /// A background take of `spare` is under way.
    refilling: bool,
}

impl State {
    /// The next sequence number, if a block has one left.
    fn take(&mut self) -> Option<(Key, u64)> {
        if self.current.is_none_or(|b| b.next >= b.end) {
            self.current = self.spare.take();
        }
        let block = self.current.as_mut()?;
        let sequence = block.next;
        block.next += 1;
        Some((block.key, sequence))
    }

    /// Whether the spare block should be taken now (and mark it under way).
    fn start_refill(&mut self) -> bool {
        let low = self.current.is_none_or(|b| b.end - b.next < BLOCK / 2);
        let start = low && self.spare.is_none() && !self.refilling;
        self.refilling |= start;
        start
    }
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
    pub fn new(api: Api<Lease>) -> Arc<Self> {
        Arc::new(Self { api, state: Default::default() })
    }

    /// The next unused room code.
    pub async fn next(self: &Arc<Self>) -> kube::Result<String> {
        let mut state = self.state.lock().await;
        let (key, sequence) = match state.take() {
            Some(taken) => taken,
            None => {
                // Out of codes (the first call, or a refill still under way): wait for a block.
                state.current = Some(self.take_block().await?);
                state.take().expect("a fresh block has codes")
            }
        };
        if state.start_refill() {
            let codes = self.clone();
            tokio::spawn(async move {
                let taken = codes.take_block().await;
                let mut state = codes.state.lock().await;
                state.refilling = false;
                match taken {
                    Ok(block) => state.spare = Some(block),
                    // The next call that runs out takes a block itself (and reports the error).
                    Err(e) => tracing::warn!(error = %e, "taking the next block of room codes"),
                }
            });
        }
        Ok(room_code::encode(key, sequence))
    }

    async fn take_block(&self) -> kube::Result<Block> {
        loop {
            match self.api.get_opt(ROOM_CODES_LEASE).await? {
                None => {
                    let key = random_key();
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(ROOM_CODES_LEASE.into()),
                            annotations: Some(
                                [
                                    (NEXT_ANNOTATION.to_owned(), BLOCK.to_string()),
                                    (KEY_ANNOTATION.to_owned(), format!("{key:016x}")),
                                ]
                                .into(),
                            ),
                            ..Default::default()
                        },
                        ..Default::default()
                    };
                    match self.api.create(&PostParams::default(), &lease).await {
                        Ok(_) => return Ok(Block { key: Key(key), next: 0, end: BLOCK }),
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(e),
                    }
                }
                Some(mut lease) => {
                    let annotations = lease.annotations();
                    let next: u64 = annotations.get(NEXT_ANNOTATION).and_then(|n| n.parse().ok()).unwrap_or(0);
                    let key = annotations.get(KEY_ANNOTATION).and_then(|k| u64::from_str_radix(k, 16).ok());
                    let Some(key) = key else {
                        return Err(kube::Error::Service(
                            format!("lease {ROOM_CODES_LEASE} has no valid {KEY_ANNOTATION}").into(),
                        ));
                    };
                    let end = next + BLOCK;
                    if end > room_code::MAX_SEQUENCE {
                        return Err(kube::Error::Service("room code space exhausted".into()));
                    }
                    lease.annotations_mut().insert(NEXT_ANNOTATION.into(), end.to_string());
                    // replace carries the resourceVersion we read: a concurrent taker gets 409.
                    match self.api.replace(ROOM_CODES_LEASE, &PostParams::default(), &lease).await {
                        Ok(_) => return Ok(Block { key: Key(key), next, end }),
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(next: u64, end: u64) -> Block {
        Block { key: Key(7), next, end }
    }

    #[test]
    fn a_refill_starts_once_half_a_block_is_handed_out_and_the_spare_follows_the_current() {
        let mut state = State { current: Some(block(0, BLOCK)), ..Default::default() };
        for sequence in 0..=BLOCK / 2 {
            assert_eq!(state.take(), Some((Key(7), sequence)));
            assert_eq!(state.start_refill(), sequence == BLOCK / 2, "after handing out {sequence}");
        }
        // Under way: no second refill.
        state.take();
        assert!(!state.start_refill());
        state.refilling = false;
        state.spare = Some(block(5 * BLOCK, 6 * BLOCK));
        for _ in BLOCK / 2 + 2..BLOCK {
            state.take();
        }
        // The current block is used up; the spare takes over, and it is full: no refill yet.
        assert_eq!(state.take(), Some((Key(7), 5 * BLOCK)));
        assert_eq!(state.spare, None);
        assert!(!state.start_refill());
    }

    #[test]
    fn with_no_block_left_nothing_is_handed_out() {
        let mut state = State { current: Some(block(3, 4)), ..Default::default() };
        assert_eq!(state.take(), Some((Key(7), 3)));
        assert_eq!(state.take(), None);
        assert!(state.start_refill());
        let mut empty = State::default();
        assert_eq!(empty.take(), None);
    }
}
