//! A WebRTC participant (webrtc-rs) driven through an SFU's internal API.
//!
//! Tests, the load generator, SFU-to-SFU relays and the recorder all join rooms the
//! same way a signaling server would on a browser's behalf.

pub mod auth;
pub mod encoded;
pub mod error;
pub mod http;
pub mod loss;
pub mod media;
pub mod participant;
pub mod signal;

pub use auth::ApiToken;
pub use encoded::{EncodedCodec, EncodedFrame, EncodedMedia};
pub use error::{Error, Result};
pub use http::SfuApi;
pub use media::NetworkOptions;
pub use participant::{JoinOptions, MediaSink, Participant, Publish, PublishKind, ReceivedTrack, SinkTrack};
pub use signal::{EventsError, MediaSignal};
