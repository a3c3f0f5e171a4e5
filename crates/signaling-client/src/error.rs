//! What can go wrong talking to signaling, by what a caller could do about it.

use std::time::Duration;

use switchboard_signaling_proto::ErrorPayload;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the signaling WebSocket and REST facade, and of media through them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The WebSocket to `url` could not be opened (refused, bad handshake, HTTP error).
    #[error("connecting {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// Signaling answered the request `request` (a message type) with an `error` message.
    #[error("`{request}` refused ({:?}): {}", payload.code, payload.reason)]
    Refused { request: String, payload: ErrorPayload },
    /// A message signaling sent does not fit the protocol: `what` (a reply to `offer`)
    /// is not the payload expected.
    #[error("signaling protocol: {what} is not what was expected: {source}")]
    Protocol {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// Nothing satisfying `what` arrived within `after`.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    /// The WebSocket closed while waiting for `what`.
    #[error("the signaling connection closed while waiting for {what}")]
    Closed { what: String },
    /// Media signaling through a session that has made no media join yet.
    #[error("media signaling before the session's media join")]
    NotJoined,
    /// A newer media join of the same session took over its media events.
    #[error("the media session was replaced by a newer media join")]
    Replaced,
    /// The REST facade answered `method` `url` with the error status `status`; `body` is
    /// its JSON (`{code, message}`), or the text when it was not JSON.
    #[error("{method} {url}: HTTP {status}: {body}")]
    Http { method: reqwest::Method, url: String, status: u16, body: serde_json::Value },
    /// The REST facade could not be reached, or the connection broke before the reply was read.
    #[error("{method} {url}: signaling could not be reached: {source}")]
    Transport {
        method: reqwest::Method,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The REST facade accepted `method` `url`, but its reply is not the JSON expected.
    #[error("{method} {url}: the reply is not the JSON expected: {source}")]
    Decode {
        method: reqwest::Method,
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// Media (WebRTC, an SFU's API) failed.
    #[error(transparent)]
    Media(switchboard_sfu_client::Error),
}

/// From media: a signaling error that travelled through
/// [`MediaSignal`](switchboard_sfu_client::MediaSignal) comes back as itself.
impl From<switchboard_sfu_client::Error> for Error {
    fn from(e: switchboard_sfu_client::Error) -> Self {
        match e {
            switchboard_sfu_client::Error::Signal(inner) => match inner.downcast::<Error>() {
                Ok(own) => *own,
                Err(other) => Self::Media(switchboard_sfu_client::Error::Signal(other)),
            },
            other => Self::Media(other),
        }
    }
}

impl Error {
    /// What signaling said when it refused a request, also when the request was made
    /// on a media participant's behalf ([`Error::Media`] of a signaling refusal).
    pub fn refusal(&self) -> Option<&ErrorPayload> {
        match self {
            Self::Refused { payload, .. } => Some(payload),
            Self::Media(switchboard_sfu_client::Error::Signal(inner)) => {
                inner.downcast_ref::<Error>().and_then(Error::refusal)
            }
            _ => None,
        }
    }

    /// The HTTP status of a REST refusal, or of a refused WebSocket upgrade (503 or 429
    /// from signaling's connection limits and drain).
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Http { status, .. } => Some(*status),
            Self::Connect { source, .. } => match source.as_ref() {
                tokio_tungstenite::tungstenite::Error::Http(r) => Some(r.status().as_u16()),
                _ => None,
            },
            _ => None,
        }
    }

    /// The `Retry-After` (seconds) of a refused WebSocket upgrade.
    pub fn retry_after(&self) -> Option<Duration> {
        let Self::Connect { source, .. } = self else { return None };
        let tokio_tungstenite::tungstenite::Error::Http(r) = source.as_ref() else { return None };
        let secs: u64 = r.headers().get("retry-after")?.to_str().ok()?.trim().parse().ok()?;
        Some(Duration::from_secs(secs))
    }
}

/// Into an SFU client's error, for [`switchboard_sfu_client::MediaSignal`]: media errors
/// come back as they were, the rest travel as [`switchboard_sfu_client::Error::Signal`].
impl From<Error> for switchboard_sfu_client::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Media(media) => media,
            other => switchboard_sfu_client::Error::signal(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_signaling_proto::ErrorCode;

    fn refused() -> Error {
        Error::Refused {
            request: "offer".into(),
            payload: ErrorPayload {
                code: ErrorCode::Forbidden,
                reason: "viewers do not publish".into(),
                refused: None,
            },
        }
    }

    #[test]
    fn a_refusal_is_found_also_through_media() {
        assert_eq!(refused().refusal().unwrap().code, ErrorCode::Forbidden);
        assert_eq!(refused().to_string(), "`offer` refused (Forbidden): viewers do not publish");
        // A participant joined through signaling gets the refusal as its media error...
        let media: switchboard_sfu_client::Error = refused().into();
        assert!(matches!(&media, switchboard_sfu_client::Error::Signal(_)), "{media:?}");
        assert_eq!(media.to_string(), refused().to_string());
        assert_eq!(Error::Media(media).refusal().map(|p| p.code), Some(ErrorCode::Forbidden));
        // ...and the media session's caller gets it back as it was.
        let media: switchboard_sfu_client::Error = refused().into();
        let back = Error::from(media);
        assert!(matches!(&back, Error::Refused { request, .. } if request == "offer"), "{back:?}");
        assert_eq!(Error::Closed { what: "a reply".into() }.refusal(), None);
    }

    #[test]
    fn media_errors_do_not_nest_on_the_way_back() {
        let timeout = switchboard_sfu_client::Error::Timeout {
            participant: "p".into(),
            what: "video".into(),
            after: Duration::from_secs(1),
            seen: "received: []".into(),
        };
        let back: switchboard_sfu_client::Error = Error::Media(timeout).into();
        assert!(matches!(back, switchboard_sfu_client::Error::Timeout { .. }), "{back:?}");
        let again = Error::from(back);
        assert!(matches!(again, Error::Media(switchboard_sfu_client::Error::Timeout { .. })), "{again:?}");
        let other = switchboard_sfu_client::Error::signal(std::io::Error::other("some other signal"));
        assert!(matches!(Error::from(other), Error::Media(switchboard_sfu_client::Error::Signal(_))));
    }
}
