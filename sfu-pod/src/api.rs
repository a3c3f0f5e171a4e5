//! The internal HTTP API (see `switchboard_sfu_api` for the wire types), probes and
//! metrics.
//!
//! Every request but the probes and metrics (`paths::OPEN`) must carry the pool's
//! credential, `Authorization: Bearer <token>`, compared in constant time; without it,
//! or with another, the answer is `401 unauthorized` (counted in
//! `switchboard_sfu_api_errors_total{code="unauthorized"}`) and nothing is done.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use switchboard_sfu_api::{self as api, ApiError, ErrorCode, paths};
use switchboard_sfu_client::ApiToken;
use switchboard_sfu_client::auth::bearer;

use crate::relay::RelayPolicy;
use crate::sfu::{ApiResult, Sfu, error};

#[derive(Clone)]
pub struct AppState {
    pub sfu: Arc<Sfu>,
    /// Name this SFU gives itself on origins it relays from.
    pub name: String,
    /// The credential callers must present, and this SFU presents to origins. `None`
    /// serves everyone (`SWITCHBOARD_SFU_API_INSECURE=true`, local runs only).
    pub token: Option<ApiToken>,
    /// Which origins the relay endpoint joins.
    pub relay: Arc<RelayPolicy>,
}

struct Failure(ApiError, Arc<Sfu>);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let code = self.0.code;
        let label = match code {
            ErrorCode::BadRequest => "badRequest",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidSdp => "invalidSdp",
            ErrorCode::UnknownRoom => "unknownRoom",
            ErrorCode::UnknownParticipant => "unknownParticipant",
            ErrorCode::UnknownTrack => "unknownTrack",
            ErrorCode::AlreadyJoined => "alreadyJoined",
            ErrorCode::PublishNotAllowed => "publishNotAllowed",
            ErrorCode::RoomConflict => "roomConflict",
            ErrorCode::Draining => "draining",
            ErrorCode::NotReady => "notReady",
            ErrorCode::Internal => "internal",
        };
        self.1.metrics.api_errors.get_or_create(&crate::metrics::CodeLabels { code: label }).inc();
        let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

type Reply<T> = Result<Json<T>, Failure>;

fn reply<T>(sfu: &Arc<Sfu>, r: ApiResult<T>) -> Reply<T> {
    r.map(Json).map_err(|e| Failure(e, sfu.clone()))
}

/// Bodies are parsed here, not by axum's extractor, so that bad JSON gets our error shape.
fn parse<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| error(ErrorCode::BadRequest, format!("the request body is not valid: {e}")))
}

/// Ids that enter the SFU here (a room, a joining participant, declared tracks) are
/// bounded and never `.` or `..` ([`paths::check_id`]); ids of what exists are looked up.
fn new_ids<'a>(ids: impl IntoIterator<Item = (&'static str, &'a str)>) -> ApiResult<()> {
    for (what, id) in ids {
        paths::check_id(what, id).map_err(|r| error(ErrorCode::BadRequest, r))?;
    }
    Ok(())
}

fn tracks(declared: &[api::TrackDescription]) -> impl Iterator<Item = (&'static str, &str)> {
    declared.iter().map(|t| ("track", t.id.as_str()))
}

fn ok() -> serde_json::Value {
    serde_json::json!({})
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(paths::HEALTHZ, get(|| async { "ok" }))
        .route(paths::READYZ, get(readyz))
        .route(paths::METRICS, get(metrics))
        .route(paths::STATUS, get(|State(s): State<AppState>| async move { Json(s.sfu.status()) }))
        .route(paths::DRAIN, post(drain))
        .route(paths::ROOM, put(open_room).get(room_status).delete(close_room))
        .route(paths::RELAY, post(relay))
        .route(paths::PARTICIPANTS, post(join))
        .route(paths::PARTICIPANT, axum::routing::delete(leave))
        .route(paths::PUBLISHER_OFFER, post(publisher_offer))
        .route(paths::SUBSCRIBER_ANSWER, post(subscriber_answer))
        .route(paths::SUBSCRIBER_RESTART, post(subscriber_restart))
        .route(paths::CANDIDATE, post(candidate))
        .route(paths::EVENTS, get(events))
        .route(paths::TRACK, put(mute).delete(unpublish))
        .route(paths::SUBSCRIPTION, put(subscribe).delete(unsubscribe))
        .fallback(|State(s): State<AppState>| async move {
            Failure(error(ErrorCode::BadRequest, "no such endpoint"), s.sfu).into_response()
        })
        // Around every route and the fallback: an unknown path without the credential
        // is a 401 too, so nobody learns the API's shape without it.
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

/// Lets a request through when it is a probe or metrics, or presents the credential.
async fn authenticate(State(s): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = &s.token else { return next.run(request).await };
    if paths::OPEN.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let presented = request.headers().get(AUTHORIZATION).map(|v| bearer(v.as_bytes()));
    let refusal = match presented {
        None => "this API needs the pool's credential: Authorization: Bearer <token>",
        Some(None) => "the Authorization header is not `Bearer <token>`",
        Some(Some(token)) if expected.matches(token) => return next.run(request).await,
        Some(Some(_)) => "the credential is not this pool's",
    };
    tracing::debug!(method = %request.method(), path = request.uri().path(), refusal, "unauthorized API call");
    let mut response = Failure(error(ErrorCode::Unauthorized, refusal), s.sfu.clone()).into_response();
    response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"switchboard-sfu\""));
    response
}

async fn readyz(State(s): State<AppState>) -> Response {
    // A draining SFU still serves its participants (and their reconnects): it stays ready.
    match s.sfu.api_state() {
        api::NodeState::Ready | api::NodeState::Draining => (StatusCode::OK, "ok").into_response(),
        other => (StatusCode::SERVICE_UNAVAILABLE, format!("{other:?}")).into_response(),
    }
}

async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = s.sfu.metrics.render(accept);
    ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn drain(State(s): State<AppState>) -> Json<api::NodeStatus> {
    s.sfu.drain();
    Json(s.sfu.status())
}

async fn open_room(State(s): State<AppState>, Path(room): Path<String>, body: Bytes) -> Reply<api::RoomStatus> {
    let r = (|| {
        // No body (or `null`, what a client sending `()` writes) opens the room as it
        // is: routed when new.
        let asked = if body.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            parse::<Option<api::RoomRequest>>(&body)?.map(|r| r.audio)
        };
        new_ids([("room", room.as_str())])?;
        s.sfu.open_room_as(&room, asked)?;
        s.sfu.room_status(&room)
    })();
    reply(&s.sfu, r)
}

async fn room_status(State(s): State<AppState>, Path(room): Path<String>) -> Reply<api::RoomStatus> {
    reply(&s.sfu, s.sfu.room_status(&room))
}

async fn close_room(State(s): State<AppState>, Path(room): Path<String>) -> Reply<serde_json::Value> {
    let r = s.sfu.close_room(&room).await.map(|_| ok());
    reply(&s.sfu, r)
}

async fn relay(State(s): State<AppState>, Path(room): Path<String>, body: Bytes) -> Reply<serde_json::Value> {
    let r = async {
        let req: api::RelayRequest = parse(&body)?;
        new_ids([("room", room.as_str())])?;
        // Checked before anything happens: a refused origin opens no room.
        let origin = s.relay.check(&req.origin).map_err(|why| {
            let shown: String = req.origin.chars().take(200).collect();
            error(ErrorCode::BadRequest, format!("the relay origin {shown:?} is refused: {why}"))
        })?;
        crate::relay::start_checked(s.sfu.clone(), &room, origin, &s.name, s.token.as_ref()).await.map(|_| ok())
    }
    .await;
    reply(&s.sfu, r)
}

async fn join(State(s): State<AppState>, Path(room): Path<String>, body: Bytes) -> Reply<api::AnswerResponse> {
    let r = async {
        let req: api::JoinRequest = parse(&body)?;
        new_ids(
            [("room", room.as_str()), ("participant", req.participant_id.as_str())]
                .into_iter()
                .chain(tracks(&req.tracks)),
        )?;
        s.sfu.join(&room, req).await
    }
    .await;
    reply(&s.sfu, r)
}

async fn leave(State(s): State<AppState>, Path((room, p)): Path<(String, String)>) -> Reply<serde_json::Value> {
    let r = s.sfu.leave(&room, &p).await.map(|_| ok());
    reply(&s.sfu, r)
}

async fn publisher_offer(
    State(s): State<AppState>,
    Path((room, p)): Path<(String, String)>,
    body: Bytes,
) -> Reply<api::AnswerResponse> {
    let r = async {
        let req: api::OfferRequest = parse(&body)?;
        new_ids(tracks(&req.tracks))?;
        s.sfu.publisher_offer(&room, &p, req).await
    }
    .await;
    reply(&s.sfu, r)
}

async fn subscriber_answer(
    State(s): State<AppState>,
    Path((room, p)): Path<(String, String)>,
    body: Bytes,
) -> Reply<serde_json::Value> {
    let r = async {
        let b: api::SdpBody = parse(&body)?;
        s.sfu.subscriber_answer(&room, &p, b.sdp).await.map(|_| ok())
    }
    .await;
    reply(&s.sfu, r)
}

async fn subscriber_restart(
    State(s): State<AppState>,
    Path((room, p)): Path<(String, String)>,
) -> Reply<serde_json::Value> {
    reply(&s.sfu, s.sfu.subscriber_restart(&room, &p).map(|_| ok()))
}

async fn candidate(
    State(s): State<AppState>,
    Path((room, p)): Path<(String, String)>,
    body: Bytes,
) -> Reply<serde_json::Value> {
    let r = async { s.sfu.add_candidate(&room, &p, parse(&body)?).await.map(|_| ok()) }.await;
    reply(&s.sfu, r)
}

async fn events(
    State(s): State<AppState>,
    Path((room, p)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Reply<api::EventsResponse> {
    let r = async {
        let number = |k: &str| -> ApiResult<u64> {
            q.get(k)
                .map(|v| v.parse::<u64>().map_err(|_| error(ErrorCode::BadRequest, format!("{k} must be a number"))))
                .unwrap_or(Ok(0))
        };
        let query = api::EventsQuery { after: number("after")?, wait_ms: number("waitMs")? };
        s.sfu.events(&room, &p, query).await
    }
    .await;
    reply(&s.sfu, r)
}

async fn mute(
    State(s): State<AppState>,
    Path((room, p, track)): Path<(String, String, String)>,
    body: Bytes,
) -> Reply<serde_json::Value> {
    let r = parse::<api::MuteRequest>(&body).and_then(|m| s.sfu.set_muted(&room, &p, &track, m.muted)).map(|_| ok());
    reply(&s.sfu, r)
}

async fn unpublish(
    State(s): State<AppState>,
    Path((room, p, track)): Path<(String, String, String)>,
) -> Reply<serde_json::Value> {
    reply(&s.sfu, s.sfu.unpublish(&room, &p, &track).map(|_| ok()))
}

async fn subscribe(
    State(s): State<AppState>,
    Path((room, p, track)): Path<(String, String, String)>,
    body: Bytes,
) -> Reply<serde_json::Value> {
    let req = if body.is_empty() { Ok(api::SubscriptionRequest::default()) } else { parse(&body) };
    let r = req.and_then(|req| s.sfu.subscribe(&room, &p, &track, req)).map(|_| ok());
    reply(&s.sfu, r)
}

async fn unsubscribe(
    State(s): State<AppState>,
    Path((room, p, track)): Path<(String, String, String)>,
) -> Reply<serde_json::Value> {
    reply(&s.sfu, s.sfu.unsubscribe(&room, &p, &track).map(|_| ok()))
}
