//! The SFU's decisions, without sockets, tasks or clocks of its own.
//!
//! * [`room::Room`]: participants, tracks, subscriptions, simulcast layer selection from
//!   the subscriber's bandwidth estimate, keyframe requests, SSRC/sequence/timestamp
//!   rewriting and active-speaker detection, for one room.
//! * [`node::Node`]: the SFU process's own lifecycle (ready, draining, drained).
//!
//! Time is always passed in (`now: Instant`), so tests drive a simulated clock. A room
//! has one way in, [`Room::handle_input`], and one way out, [`Room::poll_output`]; the
//! module docs of [`room`] say why.

pub mod bwe;
pub mod codec;
pub mod ladder;
pub mod loudest;
pub mod node;
pub mod rewrite;
pub mod room;
pub mod speaker;

#[cfg(test)]
mod tests;

pub use codec::Codec;
pub use room::{
    AudioPolicy, Declaration, Forward, Input, MIX_ALL, Outcome, Output, ParticipantKind, Preferences, Room, RoomError,
    RoomEvent, RtpMeta, Source, SubscriptionId, TrackHandle, TrackInfo, mix_minus,
};
