//! Seats: the capacity meetings hold in a pool. Two kinds, one owner each:
//! - seats on SFU pods, committed by the Meeting controller to each pod's ledger
//!   (`ledger`: the `Book` writes them, everyone else reads `Ledger::of(pod)`);
//! - reservations of scheduled meetings not yet placed, in the Meeting's status.
//!
//! The SfuPool controller sizes a pool from both, and the failure detector reads
//! the ledgers to find the meetings on a failed pod; neither writes them.

mod ledger;

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use switchboard_crds::Meeting;
use switchboard_crds::meeting::MeetingPhase;

pub use ledger::{Book, CommitError, LEDGER_ANNOTATION, Ledger, Seats};

/// Participants that meetings other than `except` hold as reservations in a pool:
/// scheduled or waiting, not yet placed.
pub fn pool_reserved(meetings: &Store<Meeting>, namespace: &str, pool: &str, except: Option<&str>) -> u64 {
    meetings
        .state()
        .iter()
        .filter(|m| m.namespace().as_deref() == Some(namespace) && Some(m.name_any().as_str()) != except)
        .filter_map(|m| m.status.as_ref())
        .filter(|s| s.assignment.is_none() && matches!(s.phase, Some(MeetingPhase::Scheduled | MeetingPhase::Waiting)))
        .filter_map(|s| s.reservation.as_ref())
        .filter(|r| r.pool == pool)
        .map(|r| r.participants.max(0) as u64)
        .sum()
}
