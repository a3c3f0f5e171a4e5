//! Switchboard's recorder: joins a meeting's SFU as a hidden subscriber, writes each
//! track as it arrives (Opus to Ogg, VP8/VP9 to IVF) in chunks, composites a layout
//! with ffmpeg after the meeting, stores the files on a PVC or in an S3-compatible
//! bucket, and reports to its RecordingJob.

pub mod compose;
pub mod config;
pub mod http;
pub mod ivf;
pub mod keys;
pub mod ogg;
pub mod run;
pub mod storage;
pub mod tracks;
