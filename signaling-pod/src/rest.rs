//! The REST facade (JSON, `Authorization: Bearer <user JWT>`), the WebSocket
//! upgrade, health, metrics, and the browser client.

use std::sync::Arc;

use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kube::ResourceExt as _;
use kube::api::{ObjectMeta, PostParams};
use serde::{Deserialize, Serialize};
use switchboard_crds::meeting::{Meeting, MeetingAudio, MeetingMode, MeetingSpec, ParticipantLimits};
use switchboard_signaling_proto::breakouts::{
    self, BroadcastPayload, ClosePayload, MovePayload, OpenPayload, StatePayload,
};
use switchboard_signaling_proto::rest::{ChatPage, CreateMeeting, JoinGrant, MeetingInfo};
use switchboard_signaling_proto::{MAX_FRAME_BYTES, Permission, Role, types};

use crate::access::{MeetingFacts, role_in};
use crate::app::App;
use crate::auth::{self, Identity};
use crate::meetings;
use crate::recordings::{self, StartError};

/// Every REST error: a machine-readable code and a sentence.
#[derive(Serialize, Deserialize, Debug)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
}

pub struct Refusal(StatusCode, &'static str, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { code: self.1, message: self.2 })).into_response()
    }
}

fn bad_request(m: impl Into<String>) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, "badRequest", m.into())
}
fn not_found(id: &str) -> Refusal {
    Refusal(StatusCode::NOT_FOUND, "notFound", format!("no meeting `{id}`"))
}
fn internal(e: impl std::fmt::Display) -> Refusal {
    Refusal(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/api/v1/meetings", post(create_meeting))
        .route("/api/v1/meetings/{id}", get(read_meeting))
        .route("/api/v1/meetings/{id}/join", post(join_meeting))
        .route("/api/v1/meetings/{id}/chat", get(chat_history))
        .route("/api/v1/meetings/{id}/recordings", post(create_recording))
        .route("/api/v1/meetings/{id}/recordings/stop", post(stop_recording))
        .route("/api/v1/meetings/{id}/breakouts", post(open_breakouts).get(read_breakouts))
        .route("/api/v1/meetings/{id}/breakouts/move", post(move_breakout))
        .route("/api/v1/meetings/{id}/breakouts/broadcast", post(broadcast_breakouts))
        .route("/api/v1/meetings/{id}/breakouts/close", post(close_breakouts))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/ws", get(websocket))
        .route("/", get(page))
        .route("/j/{code}", get(page))
        .route("/e2ee-worker.js", get(e2ee_worker))
        .route("/healthz", get(|| async { "ok" }))
        // Not ready while draining (SIGTERM), whatever else holds.
        .route("/readyz", get(ready).layer(axum::middleware::from_fn_with_state(app.clone(), unready_while_draining)))
        .route("/metrics", get(metrics))
        .with_state(app)
}

fn user(app: &App, headers: &HeaderMap) -> Result<Identity, Refusal> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(Refusal(StatusCode::UNAUTHORIZED, "unauthenticated", "send `Authorization: Bearer <JWT>`".into()))?;
    app.users.verify(token.trim()).map_err(|e| Refusal(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string()))
}

/// The user's role in the meeting (see [`crate::access`]).
fn role_of(app: &App, m: &Meeting, who: &Identity) -> Role {
    role_in(&MeetingFacts::of(&app.meetings.namespace, m), who)
}

/// Meeting details and chat are for the meeting's hosts and co-hosts and for users with
/// an admitted participant in it now; a waiting guest or an outsider gets 403.
async fn member(app: &App, m: &Meeting, who: &Identity) -> Result<(), Refusal> {
    if role_of(app, m, who).admits() {
        return Ok(());
    }
    let key = app.meetings.state_key(m);
    if app.store.is_member(&key, &who.sub).await.map_err(internal)? {
        return Ok(());
    }
    Err(Refusal(
        StatusCode::FORBIDDEN,
        "notAMember",
        "only the meeting's hosts and its admitted participants may read it".into(),
    ))
}

fn info(m: &Meeting) -> MeetingInfo {
    let s = m.status.clone().unwrap_or_default();
    MeetingInfo {
        id: m.name_any(),
        title: m.spec.title.clone(),
        phase: s.phase.map(|p| format!("{p:?}")),
        room_code: s.room_code,
        join_url: s.join_url,
        participants: s.participants.map(|p| p.current).unwrap_or(0),
        e2ee: m.spec.e2ee,
    }
}

async fn create_meeting(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<CreateMeeting>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<MeetingInfo>), Response> {
    let claims = user(&app, &headers).map_err(IntoResponse::into_response)?;
    let Json(req) = body.map_err(|e| bad_request(e.body_text()).into_response())?;
    // The user's quota, over all replicas: 429 with `Retry-After` beyond it.
    app.limits.take_creation(&app.store.client, &claims.sub).await.map_err(IntoResponse::into_response)?;
    // The creator hosts it (`spec.host`): nobody else is host through it.
    let name = format!("m-{}", random_suffix(10));
    let meeting = Meeting {
        metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() },
        spec: MeetingSpec {
            title: req.title,
            host: claims.sub.clone(),
            schedule: None,
            participants: ParticipantLimits { expected: req.expected_participants, max: req.max_participants },
            mode: if req.webinar { MeetingMode::Webinar } else { MeetingMode::Interactive },
            sfu_pool_selector: None,
            region: None,
            waiting_room: req.waiting_room,
            mute_on_entry: req.mute_on_entry,
            escalation: None,
            audio: MeetingAudio::Routed,
            recording: None,
            e2ee: req.e2ee,
            parent_ref: None,
            permissions: Vec::new(),
            empty_timeout: None,
            ttl_after_ended: None,
        },
        status: None,
    };
    // The API server checks the schema; its message names the field.
    let created = app.meetings.api.create(&PostParams::default(), &meeting).await.map_err(|e| {
        match e {
            kube::Error::Api(s) if s.code == 422 || s.code == 400 => bad_request(s.message),
            other => internal(other),
        }
        .into_response()
    })?;
    // The operator gives the meeting its room code and join URL within moments.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut seen = created;
    while tokio::time::Instant::now() < deadline {
        if let Some(m) = app.meetings.get(&name) {
            seen = (*m).clone();
            if m.status.as_ref().is_some_and(|s| s.room_code.is_some()) {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tracing::info!(meeting = %name, host = %claims.sub, "meeting created");
    Ok((StatusCode::CREATED, Json(info(&seen))))
}

fn find(app: &App, id: &str) -> Result<Arc<Meeting>, Refusal> {
    app.meetings.find(id).ok_or_else(|| not_found(id))
}

async fn read_meeting(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<MeetingInfo>, Refusal> {
    let who = user(&app, &headers)?;
    let m = find(&app, &id)?;
    member(&app, &m, &who).await?;
    Ok(Json(info(&m)))
}

async fn join_meeting(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JoinGrant>, Refusal> {
    let claims = user(&app, &headers)?;
    let m = find(&app, &id)?;
    meetings::open(&m).map_err(|r| Refusal(StatusCode::CONFLICT, "meetingUnavailable", r))?;
    if let Some(parent) = &m.spec.parent_ref {
        return Err(Refusal(
            StatusCode::CONFLICT,
            "breakoutRoom",
            format!(
                "`{id}` is a breakout room: join its main meeting `{}`; a host moves people into rooms",
                parent.name
            ),
        ));
    }
    let key = app.meetings.state_key(&m);
    if app.store.is_removed(&key, &claims.sub).await.map_err(internal)? {
        return Err(Refusal(StatusCode::FORBIDDEN, "removed", "a host removed you from this meeting".into()));
    }
    let max = m.spec.participants.max.unwrap_or(m.spec.participants.expected);
    let present = app.store.all(&key).await.map_err(internal)?.len() as i32;
    if present >= max {
        return Err(Refusal(StatusCode::CONFLICT, "meetingFull", format!("the meeting is full ({max} participants)")));
    }
    // Past its escalation size, an Interactive meeting takes newcomers as attendees; its
    // hosts hear of it once.
    let facts = MeetingFacts::of(&app.meetings.namespace, &m).with_present(&m, present);
    let role = role_in(&facts, &claims);
    if facts.escalated
        && role != role_of(&app, &m, &claims)
        && app.store.first_escalation(&key).await.map_err(internal)?
    {
        let attendees_from = m.spec.escalation.map(|e| e.attendees_from).unwrap_or_default();
        let payload = switchboard_signaling_proto::EscalatedPayload { attendees_from, participants: present };
        let env = switchboard_signaling_proto::Envelope::new(types::ESCALATED, payload).room(&m.name_any());
        let bus =
            crate::store::Bus { to: crate::store::Audience::Admitters, what: crate::store::BusWhat::Deliver(env) };
        app.store.publish(&key, &bus).await.map_err(internal)?;
        tracing::info!(meeting = %m.name_any(), present, "escalated: newcomers join as attendees");
    }
    let participant_id = format!("p-{}", random_suffix(12));
    let now = auth::now_unix();
    let name_shown = claims.name.clone().unwrap_or_else(|| claims.sub.clone());
    let session_token = app.sessions.issue(
        &participant_id,
        &app.meetings.binding(&m),
        &claims.sub,
        &name_shown,
        role,
        now,
        now + app.cfg.session_ttl.as_secs(),
    );
    let ice_servers = app.ice_servers(&participant_id);
    Ok(Json(JoinGrant {
        participant_id,
        session_token,
        signaling_url: app.ws_url(),
        role,
        ice_servers,
        e2ee: m.spec.e2ee,
    }))
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct ChatQuery {
    pub before: Option<u64>,
    pub limit: Option<usize>,
}

async fn chat_history(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<ChatQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ChatPage>, Refusal> {
    let who = user(&app, &headers)?;
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(bad_request("limit must be between 1 and 500"));
    }
    let m = find(&app, &id)?;
    member(&app, &m, &who).await?;
    let (messages, next_before) =
        app.store.chat_page(&app.meetings.state_key(&m), q.before, limit, &who.sub).await.map_err(internal)?;
    Ok(Json(ChatPage { messages, next_before }))
}

async fn create_recording(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), Refusal> {
    let claims = user(&app, &headers)?;
    let m = find(&app, &id)?;
    if let Some(reason) = meetings::recording_refused(&m) {
        return Err(Refusal(StatusCode::FORBIDDEN, "recordingOff", reason.into()));
    }
    let role = role_of(&app, &m, &claims);
    if !meetings::permissions(&m).allows(role, Permission::StartRecording) {
        return Err(Refusal(StatusCode::FORBIDDEN, "forbidden", format!("a {role:?} may not start a recording")));
    }
    meetings::open(&m).map_err(|r| Refusal(StatusCode::CONFLICT, "meetingUnavailable", r))?;
    let name = recordings::start(&app, &m, &claims.sub).await.map_err(|e| match e {
        StartError::Refused(r) => Refusal(StatusCode::FORBIDDEN, "recordingOff", r.into()),
        e @ (StartError::Active(_) | StartError::Starting) => {
            Refusal(StatusCode::CONFLICT, "recordingActive", e.to_string())
        }
        StartError::Failed(e) => internal(e),
    })?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "recordingJob": name }))))
}

/// Ends the running recording early: for those who may start one. 404 when none runs.
async fn stop_recording(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, Refusal> {
    let claims = user(&app, &headers)?;
    let m = find(&app, &id)?;
    let role = role_of(&app, &m, &claims);
    if !meetings::permissions(&m).allows(role, Permission::StartRecording) {
        return Err(Refusal(StatusCode::FORBIDDEN, "forbidden", format!("a {role:?} may not stop a recording")));
    }
    let name = recordings::stop(&app, &m, &claims.sub).await.map_err(|e| match e {
        e @ recordings::StopError::NoneRunning => Refusal(StatusCode::NOT_FOUND, "noRecording", e.to_string()),
        recordings::StopError::Failed(e) => internal(e),
    })?;
    Ok(Json(serde_json::json!({ "recordingJob": name })))
}

/// A breakout error as a REST refusal.
fn breakout_refusal(e: crate::breakouts::BreakoutError) -> Refusal {
    let (status, code) = e.rest();
    Refusal(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), code, e.to_string())
}

/// The main meeting `id` names (a room names its main meeting), for one of its hosts or
/// co-hosts: breakout rooms are theirs to run.
fn breakouts_of(app: &App, id: &str, who: &Identity) -> Result<Arc<Meeting>, Refusal> {
    let m = find(app, id)?;
    let main = crate::breakouts::main_of(app, &m).ok_or_else(|| not_found(id))?;
    if !role_of(app, &main, who).admits() {
        return Err(Refusal(StatusCode::FORBIDDEN, "forbidden", "only hosts and co-hosts run breakout rooms".into()));
    }
    Ok(main)
}

/// A JSON body, or 400 naming what is wrong with it.
fn body<T>(b: Result<Json<T>, axum::extract::rejection::JsonRejection>) -> Result<T, Refusal> {
    b.map(|Json(t)| t).map_err(|e| bad_request(e.body_text()))
}

async fn open_breakouts(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    req: Result<Json<OpenPayload>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<StatePayload>), Refusal> {
    let who = user(&app, &headers)?;
    let req = body(req)?;
    breakouts::check_open(&req).map_err(bad_request)?;
    let m = find(&app, &id)?;
    if m.spec.parent_ref.is_some() {
        return Err(breakout_refusal(crate::breakouts::BreakoutError::InRoom));
    }
    let main = breakouts_of(&app, &id, &who)?;
    let state = crate::breakouts::open(&app, &main, &who.sub, &req).await.map_err(breakout_refusal)?;
    Ok((StatusCode::CREATED, Json(state)))
}

async fn read_breakouts(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<StatePayload>, Refusal> {
    let who = user(&app, &headers)?;
    let main = breakouts_of(&app, &id, &who)?;
    let key = app.meetings.state_key(&main);
    let state = app.store.breakouts(&key).await.map_err(internal)?;
    if state.is_none() {
        return Err(Refusal(StatusCode::NOT_FOUND, "noBreakouts", "no breakout rooms are open".into()));
    }
    crate::breakouts::state_of(&app, &key, state.as_ref()).await.map(Json).map_err(breakout_refusal)
}

async fn move_breakout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    req: Result<Json<MovePayload>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<StatePayload>, Refusal> {
    let who = user(&app, &headers)?;
    let req = body(req)?;
    breakouts::check_move(&req).map_err(bad_request)?;
    let main = breakouts_of(&app, &id, &who)?;
    let state = crate::breakouts::move_participant(&app, &main, &req.participant_id, req.room)
        .await
        .map_err(breakout_refusal)?;
    Ok(Json(state))
}

async fn broadcast_breakouts(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    req: Result<Json<BroadcastPayload>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, Refusal> {
    let who = user(&app, &headers)?;
    let req = body(req)?;
    breakouts::check_broadcast(&req).map_err(bad_request)?;
    let main = breakouts_of(&app, &id, &who)?;
    let name = who.name.clone().unwrap_or_else(|| who.sub.clone());
    let channels = crate::breakouts::broadcast(&app, &main, "", &name, &req.text).await.map_err(breakout_refusal)?;
    Ok(Json(serde_json::json!({ "rooms": channels - 1 })))
}

async fn close_breakouts(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    req: Result<Json<ClosePayload>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, Refusal> {
    let who = user(&app, &headers)?;
    let req = body(req)?;
    breakouts::check_close(&req).map_err(bad_request)?;
    let main = breakouts_of(&app, &id, &who)?;
    let at = crate::breakouts::close(&app, &main, req.countdown_seconds).await.map_err(breakout_refusal)?;
    Ok(Json(serde_json::json!({ "closingAtMs": at })))
}

async fn websocket(
    State(app): State<Arc<App>>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // Caps per replica and per client address, the accept rate, the drain: refused with
    // 503 or 429 and `Retry-After` before the upgrade (`limits.rs`).
    let peer = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let ip = crate::limits::client_ip(peer, &headers, &app.limits.settings.trusted_proxies);
    let permit = match app.limits.admit(ip) {
        Ok(permit) => permit,
        Err(refused) => return refused.into_response(),
    };
    // Frames up to 1 MiB are read so an oversized (but sane) one gets an `error`
    // reply; beyond that the connection is closed.
    // Small buffers: most connections are idle, and 10,000 of them at the default
    // 128 KiB each would cost over a GiB.
    ws.max_message_size(16 * MAX_FRAME_BYTES)
        .max_frame_size(16 * MAX_FRAME_BYTES)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| crate::session::serve(app, socket, permit))
}

/// `/readyz` answers 503 from the moment the replica starts draining.
async fn unready_while_draining(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if app.limits.draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining: shutting down").into_response();
    }
    next.run(req).await
}

async fn page() -> Html<&'static str> {
    Html(include_str!("../web/index.html"))
}

/// The page's media encryption (`docs/e2ee.md`), run in a worker.
async fn e2ee_worker() -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/javascript")], include_str!("../web/e2ee-worker.js"))
}

/// Ready while Redis answers and the pub/sub that carries the meetings' messages is up;
/// 503 says which is not, and why.
async fn ready(State(app): State<Arc<App>>) -> (StatusCode, String) {
    if let Err(why) = app.hub.pubsub_up() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("redis pub/sub down: {why}"));
    }
    let within = std::time::Duration::from_secs(2);
    let why = match tokio::time::timeout(within, app.store.ping()).await {
        Ok(Ok(())) => return (StatusCode::OK, "ready".into()),
        Ok(Err(e)) => format!("redis unreachable: {e}"),
        Err(_) => format!("redis did not answer a PING within {within:?}"),
    };
    app.hub.note_trouble();
    (StatusCode::SERVICE_UNAVAILABLE, why)
}

/// OpenMetrics or the classic Prometheus text format, by the Accept header (`switchboard_metrics_exposition`).
async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> impl IntoResponse {
    let mut registry = app.metrics.registry(&app.hub);
    app.limits.metrics.register(&mut registry);
    let accept = headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = switchboard_metrics_exposition::encode(&registry, accept);
    ([(axum::http::header::CONTENT_TYPE, content_type)], body)
}

async fn openapi() -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], include_str!("../openapi.json"))
}

pub fn random_suffix(n: usize) -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

#[cfg(test)]
mod tests {
    /// The OpenAPI document describes every REST route the router serves.
    #[test]
    fn openapi_lists_every_rest_route() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../openapi.json")).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        let routes = include_str!("rest.rs")
            .lines()
            .filter_map(|l| l.trim().strip_prefix(".route(\"/api/v1/"))
            .map(|l| format!("/api/v1/{}", l.split('"').next().unwrap()))
            .filter(|p| !p.ends_with("openapi.json"))
            .collect::<Vec<_>>();
        assert_eq!(routes.len(), 10, "{routes:?}");
        for r in &routes {
            assert!(paths.contains_key(r), "{r} is missing from openapi.json");
        }
        assert_eq!(paths.len(), routes.len(), "openapi.json documents a route the server does not have");
    }
}
