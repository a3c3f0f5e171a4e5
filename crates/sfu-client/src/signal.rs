//! How a [`Participant`](crate::Participant) reaches its SFU: directly over the SFU's
//! internal HTTP API ([`SfuApi`]), or through signaling (the WebSocket client in
//! `switchboard-signaling-client`). The media side is the same either way.

use switchboard_sfu_api::{
    AnswerResponse, Candidate, EventsResponse, JoinRequest, OfferRequest, SdpBody, SequencedEvent, paths,
};

use crate::error::{Error, Result};
use crate::http::SfuApi;

/// Why reading events stopped.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// Try again shortly (the server was unreachable for a moment).
    #[error(transparent)]
    Transient(Error),
    /// The participant is gone; stop reading.
    #[error(transparent)]
    Fatal(Error),
}

impl EventsError {
    /// A failed event poll of the SFU's API: a refusal (the participant or room is
    /// gone) ends the reading; anything else is worth another try.
    pub fn of_poll(e: Error) -> Self {
        if e.code().is_some() { Self::Fatal(e) } else { Self::Transient(e) }
    }
}

/// The media-signaling operations of one participant in one room.
#[async_trait::async_trait]
pub trait MediaSignal: Send + Sync + 'static {
    /// Joins the room; returns the publisher answer when the request had an offer.
    async fn join(&self, room: &str, request: JoinRequest) -> Result<AnswerResponse>;
    async fn publisher_offer(&self, room: &str, participant: &str, request: OfferRequest) -> Result<AnswerResponse>;
    async fn subscriber_answer(&self, room: &str, participant: &str, sdp: String) -> Result<()>;
    async fn subscriber_restart(&self, room: &str, participant: &str) -> Result<()>;
    async fn candidate(&self, room: &str, participant: &str, candidate: Candidate) -> Result<()>;
    /// Events after sequence number `after`, waiting a while for the first.
    async fn events(&self, room: &str, participant: &str, after: u64) -> Result<Vec<SequencedEvent>, EventsError>;
    async fn leave(&self, room: &str, participant: &str) -> Result<()>;
}

#[async_trait::async_trait]
impl MediaSignal for SfuApi {
    async fn join(&self, room: &str, request: JoinRequest) -> Result<AnswerResponse> {
        self.post(&self.url(paths::PARTICIPANTS, room, "", ""), &request).await
    }
    async fn publisher_offer(&self, room: &str, participant: &str, request: OfferRequest) -> Result<AnswerResponse> {
        self.post(&self.url(paths::PUBLISHER_OFFER, room, participant, ""), &request).await
    }
    async fn subscriber_answer(&self, room: &str, participant: &str, sdp: String) -> Result<()> {
        let _: serde_json::Value =
            self.post(&self.url(paths::SUBSCRIBER_ANSWER, room, participant, ""), &SdpBody { sdp }).await?;
        Ok(())
    }
    async fn subscriber_restart(&self, room: &str, participant: &str) -> Result<()> {
        let _: serde_json::Value =
            self.post(&self.url(paths::SUBSCRIBER_RESTART, room, participant, ""), &serde_json::json!({})).await?;
        Ok(())
    }
    async fn candidate(&self, room: &str, participant: &str, candidate: Candidate) -> Result<()> {
        let _: serde_json::Value = self.post(&self.url(paths::CANDIDATE, room, participant, ""), &candidate).await?;
        Ok(())
    }
    async fn events(&self, room: &str, participant: &str, after: u64) -> Result<Vec<SequencedEvent>, EventsError> {
        let url = format!("{}?after={after}&waitMs=10000", self.url(paths::EVENTS, room, participant, ""));
        match self.get::<EventsResponse>(&url).await {
            Ok(batch) => Ok(batch.events),
            Err(e) => Err(EventsError::of_poll(e)),
        }
    }
    async fn leave(&self, room: &str, participant: &str) -> Result<()> {
        let _: serde_json::Value = self.delete(&self.url(paths::PARTICIPANT, room, participant, "")).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_poll_ends_the_events_and_a_failed_one_is_retried() {
        let gone =
            Error::refused(reqwest::Method::GET, "http://sfu/events", 404, r#"{"code":"unknownRoom","message":"r"}"#);
        assert!(matches!(EventsError::of_poll(gone), EventsError::Fatal(Error::Refused { status: 404, .. })));
        let proxy = Error::refused(reqwest::Method::GET, "http://sfu/events", 502, "bad gateway");
        assert!(matches!(EventsError::of_poll(proxy), EventsError::Fatal(_)), "as before: any refusal is final");
        // A request that never left (here: a URL reqwest cannot send to) is a transport error.
        let unsendable = reqwest::Client::new().get("not a url").build().unwrap_err();
        let transport = Error::Transport { method: reqwest::Method::GET, url: "not a url".into(), source: unsendable };
        assert!(matches!(EventsError::of_poll(transport), EventsError::Transient(Error::Transport { .. })));
        let garbled = Error::Decode {
            method: reqwest::Method::GET,
            url: "http://sfu/events".into(),
            source: serde_json::from_str::<u32>("x").unwrap_err(),
        };
        assert!(matches!(EventsError::of_poll(garbled), EventsError::Transient(_)));
    }
}
