//! What can go wrong for an SFU client, by what a caller could do about it.

use std::path::PathBuf;
use std::time::Duration;

use switchboard_sfu_api::{ApiError, ErrorCode};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the SFU's HTTP API, of WebRTC and of the media files publishers send.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SFU answered with an error status. `error` is its `{code, message}` body, or,
    /// when the body is not one (a proxy's page), code `Internal` and the raw body.
    #[error("{method} {url}: the SFU refused the request (HTTP {status}): {error}")]
    Refused { method: reqwest::Method, url: String, status: u16, error: ApiError },
    /// The SFU could not be reached, or the connection broke before the reply was read.
    #[error("{method} {url}: the SFU could not be reached: {source}")]
    Transport {
        method: reqwest::Method,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The SFU accepted the request, but its reply is not the JSON expected.
    #[error("{method} {url}: the SFU's reply is not the JSON expected: {source}")]
    Decode {
        method: reqwest::Method,
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// webrtc-rs failed at `what` (building the API, a peer connection, a description, a track).
    #[error("WebRTC, {what}: {source}")]
    WebRtc {
        what: String,
        #[source]
        source: webrtc::Error,
    },
    /// A local I/O operation failed: `what` says which (a socket, a media file).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A media file that cannot be published: not the container or codec expected, or empty.
    #[error("{}: {problem}", path.display())]
    InvalidMedia { path: PathBuf, problem: String },
    /// An encoder run ([`encoded::encode_clip`](crate::encoded::encode_clip)) failed:
    /// `command` is what ran, `stderr` what it said.
    #[error("{command} failed: {stderr}")]
    Encoder { command: String, stderr: String },
    /// The other side broke the media-signaling protocol (an offer answered without an sdp).
    #[error("media signaling: {0}")]
    Protocol(String),
    /// `participant` waited `after` for `what` in vain; `seen` is what it had by then.
    #[error("{participant}: timed out after {after:?} waiting for {what}; {seen}")]
    Timeout { participant: String, what: String, after: Duration, seen: String },
    /// A [`MediaSignal`](crate::MediaSignal) other than the SFU's API (signaling's
    /// WebSocket) failed; downcast to its own error type for the details.
    #[error(transparent)]
    Signal(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl Error {
    /// The SFU's error code when it refused the request; `None` for every other failure.
    pub fn code(&self) -> Option<ErrorCode> {
        self.refusal().map(|e| e.code)
    }

    /// What the SFU said when it refused the request.
    pub fn refusal(&self) -> Option<&ApiError> {
        match self {
            Self::Refused { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Wraps the error of another [`MediaSignal`](crate::MediaSignal) implementation.
    pub fn signal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Signal(Box::new(e))
    }

    /// The HTTP error status `status` with `body`, from `method` `url`.
    pub(crate) fn refused(method: reqwest::Method, url: &str, status: u16, body: &str) -> Self {
        let error = serde_json::from_str::<ApiError>(body)
            .unwrap_or_else(|_| ApiError { code: ErrorCode::Internal, message: format!("HTTP {status}: {body}") });
        Self::Refused { method, url: url.to_owned(), status, error }
    }
}

/// Adds what was being done to a webrtc-rs error.
pub(crate) trait WebRtcContext<T> {
    fn during(self, what: impl Into<String>) -> Result<T>;
}

impl<T> WebRtcContext<T> for std::result::Result<T, webrtc::Error> {
    fn during(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::WebRtc { what: what.into(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_of_the_sfu_gives_its_code() {
        let body = r#"{"code":"alreadyJoined","message":"p is in the room"}"#;
        let e = Error::refused(reqwest::Method::POST, "http://sfu/v1/rooms/r/participants", 409, body);
        assert_eq!(e.code(), Some(ErrorCode::AlreadyJoined));
        assert!(matches!(&e, Error::Refused { status: 409, .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "POST http://sfu/v1/rooms/r/participants: the SFU refused the request (HTTP 409): AlreadyJoined: p is in the room"
        );
    }

    #[test]
    fn any_other_error_body_is_an_internal_refusal_keeping_status_and_body() {
        let e = Error::refused(reqwest::Method::GET, "http://sfu/v1/x", 502, "<html>bad gateway</html>");
        assert_eq!(e.code(), Some(ErrorCode::Internal), "a refusal all the same");
        let error = e.refusal().unwrap();
        assert_eq!(error.message, "HTTP 502: <html>bad gateway</html>");
        assert!(e.to_string().contains("GET http://sfu/v1/x"), "{e}");
    }

    #[test]
    fn only_refusals_carry_a_code() {
        let io = Error::Io { what: "bind".into(), source: std::io::Error::other("no") };
        assert_eq!(io.code(), None);
        let webrtc: Result<()> = Err(webrtc::Error::ErrConnectionClosed).during("closing the subscriber connection");
        let webrtc = webrtc.unwrap_err();
        assert_eq!(webrtc.code(), None);
        assert!(webrtc.to_string().starts_with("WebRTC, closing the subscriber connection: "), "{webrtc}");
        let signal = Error::signal(std::io::Error::other("the WebSocket closed"));
        assert_eq!(signal.code(), None);
        assert_eq!(signal.to_string(), "the WebSocket closed");
    }
}
