//! sfu-pod as a library: the driver pieces, so tests and the load generator can read
//! its configuration and types. The binary is `src/main.rs`.

pub mod api;
pub mod config;
pub mod heartbeat;
pub mod local;
pub mod metrics;
pub mod quality;
pub mod relay;
pub mod sfu;
pub mod subscriber_track;
pub mod transport_cc;
