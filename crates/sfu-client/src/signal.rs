//! How a [`Participant`](crate::Participant) reaches its SFU: directly over the SFU's
//! internal HTTP API ([`SfuApi`]), or through signaling (the WebSocket client in
//! `switchboard-signaling-client`). The media side is the same either way.

use switchboard_sfu_api::{
    AnswerResponse, Candidate, EventsResponse, JoinRequest, OfferRequest, SdpBody, SequencedEvent, paths,
};

use crate::http::SfuApi;

/// Why reading events stopped.
#[derive(Debug)]
pub enum EventsError {
    /// Try again shortly (the server was unreachable for a moment).
    Transient(anyhow::Error),
    /// The participant is gone; stop reading.
    Fatal(anyhow::Error),
}

/// The media-signaling operations of one participant in one room.
#[async_trait::async_trait]
pub trait MediaSignal: Send + Sync + 'static {
    /// Joins the room; returns the publisher answer when the request had an offer.
    async fn join(&self, room: &str, request: JoinRequest) -> anyhow::Result<AnswerResponse>;
    async fn publisher_offer(
        &self,
        room: &str,
        participant: &str,
        request: OfferRequest,
    ) -> anyhow::Result<AnswerResponse>;
    async fn subscriber_answer(&self, room: &str, participant: &str, sdp: String) -> anyhow::Result<()>;
    async fn subscriber_restart(&self, room: &str, participant: &str) -> anyhow::Result<()>;
    async fn candidate(&self, room: &str, participant: &str, candidate: Candidate) -> anyhow::Result<()>;
    /// Events after sequence number `after`, waiting a while for the first.
    async fn events(&self, room: &str, participant: &str, after: u64) -> Result<Vec<SequencedEvent>, EventsError>;
    async fn leave(&self, room: &str, participant: &str) -> anyhow::Result<()>;
}

#[async_trait::async_trait]
impl MediaSignal for SfuApi {
    async fn join(&self, room: &str, request: JoinRequest) -> anyhow::Result<AnswerResponse> {
        Ok(self.post(&self.url(paths::PARTICIPANTS, room, "", ""), &request).await?)
    }
    async fn publisher_offer(
        &self,
        room: &str,
        participant: &str,
        request: OfferRequest,
    ) -> anyhow::Result<AnswerResponse> {
        Ok(self.post(&self.url(paths::PUBLISHER_OFFER, room, participant, ""), &request).await?)
    }
    async fn subscriber_answer(&self, room: &str, participant: &str, sdp: String) -> anyhow::Result<()> {
        let _: serde_json::Value =
            self.post(&self.url(paths::SUBSCRIBER_ANSWER, room, participant, ""), &SdpBody { sdp }).await?;
        Ok(())
    }
    async fn subscriber_restart(&self, room: &str, participant: &str) -> anyhow::Result<()> {
        let _: serde_json::Value =
            self.post(&self.url(paths::SUBSCRIBER_RESTART, room, participant, ""), &serde_json::json!({})).await?;
        Ok(())
    }
    async fn candidate(&self, room: &str, participant: &str, candidate: Candidate) -> anyhow::Result<()> {
        let _: serde_json::Value = self.post(&self.url(paths::CANDIDATE, room, participant, ""), &candidate).await?;
        Ok(())
    }
    async fn events(&self, room: &str, participant: &str, after: u64) -> Result<Vec<SequencedEvent>, EventsError> {
        let url = format!("{}?after={after}&waitMs=10000", self.url(paths::EVENTS, room, participant, ""));
        match self.get::<EventsResponse>(&url).await {
            Ok(batch) => Ok(batch.events),
            Err(e) if e.code().is_some() => Err(EventsError::Fatal(e.into())),
            Err(e) => Err(EventsError::Transient(e.into())),
        }
    }
    async fn leave(&self, room: &str, participant: &str) -> anyhow::Result<()> {
        let _: serde_json::Value = self.delete(&self.url(paths::PARTICIPANT, room, participant, "")).await?;
        Ok(())
    }
}
