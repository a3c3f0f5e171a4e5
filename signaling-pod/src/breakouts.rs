//! Breakout rooms: a host splits a meeting into rooms and brings everyone back
//! (`docs/signaling.md`, "Breakout rooms"; the wire types are in
//! `switchboard_signaling_proto::breakouts`).
//!
//! A room is a Meeting of its own (`spec.parentRef`, an ownerReference to the main
//! meeting, `ttlAfterEnded: 0s`): the operator places it beside the main meeting, ends
//! it with it, and deletes it once ended. What a room shares with the main meeting lives
//! under the main meeting's Redis key (`store.rs`: `bo`, `bo:where`): which rooms are
//! open, who belongs in which, the timer. Everything else of a room (participants,
//! chat, recording) is under the room's own key, so a room's chat stays in the room.
//!
//! Sessions are moved by the replica holding them ([`BusWhat::MoveTo`], see
//! `Session::switch_meeting`); `bo:where` is the truth they converge to when a bus
//! message is lost (each session compares itself with it on refresh and on resume).
//! Timers live in Redis too, so whichever replica is alive drives them ([`run`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt as _;
use kube::api::{ObjectMeta, PostParams};
use rand::SeedableRng as _;
use rand::seq::SliceRandom as _;
use switchboard_crds::meeting::{Meeting, MeetingSpec, ParentRef, ParticipantLimits};
use switchboard_signaling_proto::breakouts::{
    Assignment, ClosingPayload, DEFAULT_COUNTDOWN_SECONDS, HelpPayload, OpenPayload, RoomInfo, StatePayload,
};
use switchboard_signaling_proto::{Envelope, ErrorCode, ProtoError, types};

use crate::app::App;
use crate::meetings;
use crate::session::now_ms;
use crate::store::{Audience, BreakoutRoom, BreakoutState, Bus, BusWhat};

/// How long opening waits for the operator to place every room.
pub const PLACEMENT_WAIT: Duration = Duration::from_secs(15);
/// Rooms of one meeting are opened at most this often: each opening creates up to 50
/// Meetings, and a host opening and closing in a loop must not do that in a loop.
pub const OPEN_EVERY: Duration = Duration::from_secs(30);
/// A participant asks for help at most this often.
pub const HELP_EVERY: Duration = Duration::from_secs(30);
/// Held while one replica opens, closes or starts a countdown.
const LOCK_TTL: Duration = Duration::from_secs(30);
/// Longest room Meeting title (the CRD's bound).
const MAX_TITLE_CHARS: usize = 200;
/// The label naming a room's main meeting (`kubectl get meetings -l …`).
pub const MAIN_LABEL: &str = "switchboard.dev/breakout-of";
/// Annotations a room carries so that its family's state can be rebuilt when Redis
/// lost it ([`restore`]): the room's name, and the timer of the opening.
pub const ROOM_NAME_ANNOTATION: &str = "switchboard.dev/breakout-room";
const ENDS_AT_ANNOTATION: &str = "switchboard.dev/breakouts-ends-at-ms";
const COUNTDOWN_ANNOTATION: &str = "switchboard.dev/breakouts-countdown-seconds";
const BY_ANNOTATION: &str = "switchboard.dev/breakouts-opened-by";

#[derive(Debug, thiserror::Error)]
pub enum BreakoutError {
    #[error("this is a breakout room: open, close and move from the main meeting's rooms, not inside one")]
    InRoom,
    #[error("breakout rooms are open already; close them first")]
    AlreadyOpen,
    #[error("another host is opening or closing breakout rooms now; try again")]
    Busy,
    #[error("no breakout rooms are open")]
    NoneOpen,
    #[error("only someone in a breakout room asks for help")]
    NotInRoom,
    #[error("there is no room {0}")]
    NoSuchRoom(u32),
    #[error("no participant `{0}` in this meeting or its rooms")]
    UnknownParticipant(String),
    #[error("help was asked for less than {} s ago", HELP_EVERY.as_secs())]
    HelpTooSoon,
    #[error("rooms were opened less than {} s ago; open them again a little later", OPEN_EVERY.as_secs())]
    OpenedTooSoon,
    #[error("the meeting is not open: {0}")]
    Unavailable(String),
    #[error("room meeting name `{0}` is over 253 characters")]
    NameTooLong(String),
    #[error("the rooms were not placed on an SFU within {} s; none were opened", PLACEMENT_WAIT.as_secs())]
    Unplaced,
    #[error("the API server refused a room: {0}")]
    Api(String),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl BreakoutError {
    /// The `error` a WebSocket client gets.
    pub fn proto(&self) -> ProtoError {
        let code = match self {
            Self::InRoom | Self::NotInRoom | Self::NoSuchRoom(_) | Self::NameTooLong(_) => ErrorCode::InvalidPayload,
            Self::AlreadyOpen | Self::Busy => ErrorCode::BreakoutsOpen,
            Self::NoneOpen => ErrorCode::NoBreakouts,
            Self::UnknownParticipant(_) => ErrorCode::UnknownParticipant,
            Self::HelpTooSoon | Self::OpenedTooSoon => ErrorCode::RateLimited,
            Self::Unavailable(_) => ErrorCode::MeetingUnavailable,
            Self::Unplaced | Self::Api(_) | Self::Redis(_) => ErrorCode::Internal,
        };
        ProtoError::new(code, self.to_string())
    }

    /// The REST status and code.
    pub fn rest(&self) -> (u16, &'static str) {
        match self {
            Self::InRoom => (409, "breakoutRoom"),
            Self::AlreadyOpen | Self::Busy => (409, "breakoutsOpen"),
            Self::NoneOpen => (409, "noBreakouts"),
            Self::NotInRoom | Self::NoSuchRoom(_) | Self::NameTooLong(_) => (400, "badRequest"),
            Self::UnknownParticipant(_) => (404, "unknownParticipant"),
            Self::HelpTooSoon | Self::OpenedTooSoon => (429, "rateLimited"),
            Self::Unavailable(_) => (409, "meetingUnavailable"),
            Self::Unplaced => (503, "breakoutsUnplaced"),
            Self::Api(_) | Self::Redis(_) => (500, "internal"),
        }
    }
}

type Result<T> = std::result::Result<T, BreakoutError>;

/// The main meeting of `m`: `m` itself, or the meeting its `parentRef` names (the
/// same object its ownerReference points at, when it has one).
pub fn main_of(app: &App, m: &Arc<Meeting>) -> Option<Arc<Meeting>> {
    let Some(parent) = &m.spec.parent_ref else { return Some(m.clone()) };
    let main = app.meetings.get(&parent.name)?;
    let owner_uid = m.owner_references().iter().find(|o| o.kind == "Meeting").map(|o| o.uid.clone());
    match owner_uid {
        Some(uid) if main.metadata.uid.as_deref() != Some(uid.as_str()) => None,
        _ => Some(main),
    }
}

/// The Redis key of a room.
fn room_key(app: &App, room: &BreakoutRoom) -> String {
    meetings::key_of(&app.meetings.namespace, &room.meeting, &room.uid)
}

/// The keys of every channel in the family: the main meeting's, then each room's.
fn family_keys(app: &App, main_key: &str, state: &BreakoutState) -> Vec<String> {
    std::iter::once(main_key.to_owned()).chain(state.rooms.iter().map(|r| room_key(app, r))).collect()
}

/// A server notice on a meeting's channel (from nobody).
fn notice(to: Audience, meeting: &str, type_: &str, payload: impl serde::Serialize) -> Bus {
    let mut env = Envelope::new(type_, payload).room(meeting);
    env.broadcast = true;
    Bus { to, what: BusWhat::Deliver(env) }
}

/// Who goes into which room: `ids` (the participants who are not hosts or co-hosts)
/// shuffled with `seed` and dealt round-robin, so rooms differ in size by one at most;
/// or as `manual` says, leaving in the main room whoever it does not name (and
/// skipping names of participants no longer here).
pub fn assign(
    ids: &[String],
    rooms: usize,
    mode: Assignment,
    manual: &BTreeMap<String, u32>,
    seed: u64,
) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new(); rooms];
    match mode {
        Assignment::Auto => {
            let mut shuffled = ids.to_vec();
            shuffled.sort();
            shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
            for (i, id) in shuffled.into_iter().enumerate() {
                out[i % rooms].push(id);
            }
        }
        Assignment::Manual => {
            for id in ids {
                if let Some(&room) = manual.get(id)
                    && (room as usize) < rooms
                {
                    out[room as usize].push(id.clone());
                }
            }
        }
    }
    out
}

/// A room's Meeting: beside its main meeting, owned by it, as it is (mode, audio, pool,
/// region, E2EE, permissions, recording policy: an automatically recorded meeting's
/// rooms are recorded too, each by its own recorder), without a waiting room or mute on
/// entry (everyone was admitted already), deleted as soon as it ends.
pub fn room_meeting(main: &Meeting, generation: u64, index: usize, name: &str, size: usize) -> Result<Meeting> {
    room_meeting_timed(main, generation, index, name, size, &Timer::default())
}

/// What a room remembers of its opening's timer.
#[derive(Default)]
pub struct Timer {
    pub ends_at_ms: Option<u64>,
    pub countdown_seconds: u32,
    pub by: String,
}

fn room_meeting_timed(
    main: &Meeting,
    generation: u64,
    index: usize,
    name: &str,
    size: usize,
    timer: &Timer,
) -> Result<Meeting> {
    let main_name = main.name_any();
    let meeting = format!("{main_name}-bo{generation}-{}", index + 1);
    if meeting.len() > 253 {
        return Err(BreakoutError::NameTooLong(meeting));
    }
    let title: String = format!("{} — {name}", main.spec.title).chars().take(MAX_TITLE_CHARS).collect();
    let expected = (size as i32 + 1).max(2);
    Ok(Meeting {
        metadata: ObjectMeta {
            name: Some(meeting),
            labels: Some([(MAIN_LABEL.to_owned(), main_name.clone())].into()),
            annotations: Some(
                [
                    (ROOM_NAME_ANNOTATION.to_owned(), name.to_owned()),
                    (COUNTDOWN_ANNOTATION.to_owned(), timer.countdown_seconds.to_string()),
                    (BY_ANNOTATION.to_owned(), timer.by.clone()),
                ]
                .into_iter()
                .chain(timer.ends_at_ms.map(|e| (ENDS_AT_ANNOTATION.to_owned(), e.to_string())))
                .collect(),
            ),
            owner_references: Some(vec![OwnerReference {
                api_version: "switchboard.dev/v1alpha1".into(),
                kind: "Meeting".into(),
                name: main_name.clone(),
                uid: main.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..Default::default()
        },
        spec: MeetingSpec {
            title,
            host: main.spec.host.clone(),
            schedule: None,
            // Hosts move people between rooms at will: a room holds what its main meeting
            // holds, whatever it was opened with.
            participants: ParticipantLimits {
                expected,
                max: Some(main.spec.participants.max.unwrap_or(main.spec.participants.expected).max(expected)),
            },
            mode: main.spec.mode,
            sfu_pool_selector: main.spec.sfu_pool_selector.clone(),
            region: main.spec.region.clone(),
            waiting_room: false,
            mute_on_entry: false,
            escalation: None,
            audio: main.spec.audio,
            recording: main.spec.recording.clone(),
            e2ee: main.spec.e2ee,
            parent_ref: Some(ParentRef { name: main_name }),
            permissions: main.spec.permissions.clone(),
            empty_timeout: main.spec.empty_timeout.clone(),
            ttl_after_ended: Some(switchboard_crds::common::Duration::from_secs(0)),
        },
        status: None,
    })
}

/// The rooms and who belongs in each, as hosts see them.
pub async fn state_of(app: &App, main_key: &str, state: Option<&BreakoutState>) -> Result<StatePayload> {
    let Some(state) = state else { return Ok(StatePayload::default()) };
    let places = app.store.breakout_places(main_key).await?;
    let mut rooms: Vec<RoomInfo> = state
        .rooms
        .iter()
        .map(|r| RoomInfo { name: r.name.clone(), meeting: r.meeting.clone(), participants: Vec::new() })
        .collect();
    for (pid, meeting) in places {
        if let Some(room) = rooms.iter_mut().find(|r| r.meeting == meeting) {
            room.participants.push(pid);
        }
    }
    for r in &mut rooms {
        r.participants.sort();
    }
    Ok(StatePayload {
        open: true,
        generation: state.generation,
        rooms,
        ends_at_ms: state.ends_at_ms,
        closing_at_ms: state.closing_at_ms,
    })
}

/// Tells the hosts and co-hosts of the family (wherever they are) how the rooms stand;
/// `closed`: they just closed (the rooms of `state` are told too, since hosts may still
/// be in them).
async fn tell_hosts(
    app: &App,
    main: &Meeting,
    main_key: &str,
    state: &BreakoutState,
    closed: bool,
) -> Result<StatePayload> {
    let payload = if closed { StatePayload::default() } else { state_of(app, main_key, Some(state)).await? };
    let keys = family_keys(app, main_key, state);
    for key in keys {
        app.store.publish(&key, &notice(Audience::Admitters, &main.name_any(), types::BREAKOUTS, &payload)).await?;
    }
    Ok(payload)
}

fn lock_holder(app: &App) -> String {
    format!("{}-{:016x}", app.cfg.replica, rand::random::<u64>())
}

/// Opens rooms: creates their Meetings, waits for the operator to place them, records
/// who goes where and moves those sessions. Refused in a room, while rooms are open,
/// or for a meeting that is not open. Rooms not all placed in time are ended again.
pub async fn open(app: &Arc<App>, main: &Meeting, by: &str, req: &OpenPayload) -> Result<StatePayload> {
    if main.spec.parent_ref.is_some() {
        return Err(BreakoutError::InRoom);
    }
    meetings::open(main).map_err(BreakoutError::Unavailable)?;
    let key = app.meetings.state_key(main);
    let holder = lock_holder(app);
    if !app.store.lock_breakouts(&key, &holder, LOCK_TTL).await? {
        return Err(BreakoutError::Busy);
    }
    let opened = open_locked(app, main, &key, by, req).await;
    let _ = app.store.unlock_breakouts(&key, &holder).await;
    opened
}

async fn open_locked(app: &Arc<App>, main: &Meeting, key: &str, by: &str, req: &OpenPayload) -> Result<StatePayload> {
    if app.store.breakouts(key).await?.is_some() {
        return Err(BreakoutError::AlreadyOpen);
    }
    if !app.store.may_open_breakouts(key, OPEN_EVERY).await? {
        return Err(BreakoutError::OpenedTooSoon);
    }
    let mut movable: Vec<String> = app
        .store
        .all(key)
        .await?
        .into_iter()
        .filter(|r| r.info.admitted && !r.info.role.admits())
        .map(|r| r.info.id)
        .collect();
    movable.sort();
    let names = req.room_names();
    let groups = assign(&movable, names.len(), req.assignment, &req.manual, rand::random());
    let generation = app.store.next_breakout_generation(key).await?;
    let now = now_ms();
    let timer = Timer {
        ends_at_ms: req.seconds.map(|s| now + u64::from(s) * 1000),
        countdown_seconds: req.countdown_seconds.unwrap_or(DEFAULT_COUNTDOWN_SECONDS),
        by: by.to_owned(),
    };
    let mut rooms = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let room = match room_meeting_timed(main, generation, i, name, groups[i].len(), &timer) {
            Ok(r) => r,
            Err(e) => {
                end_rooms(app, &rooms, by).await;
                return Err(e);
            }
        };
        match app.meetings.api.create(&PostParams::default(), &room).await {
            Ok(created) => rooms.push(BreakoutRoom {
                name: name.clone(),
                meeting: created.name_any(),
                uid: created.metadata.uid.clone().unwrap_or_default(),
            }),
            Err(e) => {
                end_rooms(app, &rooms, by).await;
                return Err(BreakoutError::Api(e.to_string()));
            }
        }
    }
    // Placed: the operator wrote each room's assignment (the reflector has it).
    let deadline = tokio::time::Instant::now() + PLACEMENT_WAIT;
    loop {
        let placed = rooms.iter().all(|r| {
            app.meetings.get(&r.meeting).is_some_and(|m| {
                m.metadata.uid.as_deref() == Some(r.uid.as_str()) && meetings::choose_sfu(&m, 0).is_some()
            })
        });
        if placed {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            end_rooms(app, &rooms, by).await;
            return Err(BreakoutError::Unplaced);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let state = BreakoutState {
        generation,
        rooms,
        by: by.to_owned(),
        opened_at_ms: now,
        ends_at_ms: timer.ends_at_ms,
        countdown_seconds: timer.countdown_seconds,
        closing_at_ms: None,
    };
    app.store.set_breakouts(key, &state).await?;
    let places: Vec<(String, String)> = groups
        .iter()
        .zip(&state.rooms)
        .flat_map(|(ids, room)| ids.iter().map(|id| (id.clone(), room.meeting.clone())))
        .collect();
    app.store.place_in_breakouts(key, &places).await?;
    for (i, room) in state.rooms.iter().enumerate() {
        for pid in &groups[i] {
            let to = BusWhat::MoveTo { meeting: room.meeting.clone(), uid: room.uid.clone() };
            app.store.publish(key, &Bus { to: Audience::Peer(pid.clone()), what: to }).await?;
        }
    }
    app.metrics.breakout_rooms_opened.inc_by(state.rooms.len() as u64);
    app.breakouts_open.lock().unwrap().insert(key.to_owned());
    tracing::info!(meeting = %main.name_any(), rooms = state.rooms.len(), moved = places.len(), %by, "breakout rooms opened");
    tell_hosts(app, main, key, &state, false).await
}

/// Ends rooms (the operator then deletes them); failures are logged, the main meeting's
/// end takes them with it in any case.
async fn end_rooms(app: &App, rooms: &[BreakoutRoom], by: &str) {
    for r in rooms {
        let Some(m) = app.meetings.get(&r.meeting).filter(|m| m.metadata.uid.as_deref() == Some(r.uid.as_str())) else {
            continue;
        };
        if meetings::ended(&m).is_some() {
            continue;
        }
        if let Err(e) = app.meetings.end(&m, by).await {
            tracing::warn!(room = %r.meeting, error = %e, "ending a breakout room");
        }
    }
}

/// The open rooms of `main` as the API server has them (the newest opening's, in
/// order), with the timer they remember: the family's state when Redis lost it.
pub fn rooms_of(app: &App, main: &Meeting) -> Option<BreakoutState> {
    let (name, uid) = (main.name_any(), main.metadata.uid.clone().unwrap_or_default());
    let mut rooms: Vec<(u64, usize, Arc<Meeting>)> = app
        .meetings
        .all()
        .into_iter()
        .filter(|m| m.spec.parent_ref.as_ref().is_some_and(|p| p.name == name))
        .filter(|m| m.owner_references().iter().any(|o| o.uid == uid))
        .filter(|m| meetings::ended(m).is_none())
        .filter_map(|m| {
            let rest = m.name_any().strip_prefix(&format!("{name}-bo"))?.to_owned();
            let (g, i) = rest.split_once('-')?;
            Some((g.parse().ok()?, i.parse().ok()?, m))
        })
        .collect();
    let generation = rooms.iter().map(|r| r.0).max()?;
    rooms.retain(|r| r.0 == generation);
    rooms.sort_by_key(|r| r.1);
    let first = &rooms.first()?.2;
    let note = |k: &str| first.annotations().get(k).cloned();
    let opened = first.metadata.creation_timestamp.as_ref().map(|t| t.0.as_millisecond().max(0) as u64);
    Some(BreakoutState {
        generation,
        rooms: rooms
            .iter()
            .map(|(_, _, m)| BreakoutRoom {
                name: m.annotations().get(ROOM_NAME_ANNOTATION).cloned().unwrap_or_else(|| m.name_any()),
                meeting: m.name_any(),
                uid: m.metadata.uid.clone().unwrap_or_default(),
            })
            .collect(),
        by: note(BY_ANNOTATION).unwrap_or_default(),
        opened_at_ms: opened.unwrap_or_else(now_ms),
        ends_at_ms: note(ENDS_AT_ANNOTATION).and_then(|e| e.parse().ok()),
        countdown_seconds: note(COUNTDOWN_ANNOTATION).and_then(|c| c.parse().ok()).unwrap_or(DEFAULT_COUNTDOWN_SECONDS),
        closing_at_ms: None,
    })
}

/// Redis lost a family's breakout state while its rooms are open (a session in room
/// `room` noticed): the state is written back from the rooms' Meetings, and the session
/// writes where it is. Under the lock, and not for an opening that was closed (a room
/// whose end the reflector has not seen yet).
pub async fn restore(app: &App, main: &Meeting, room: &str, pid: &str) -> Result<()> {
    let key = app.meetings.state_key(main);
    let holder = lock_holder(app);
    if !app.store.lock_breakouts(&key, &holder, LOCK_TTL).await? {
        return Ok(());
    }
    let restored = async {
        let state = match app.store.breakouts(&key).await? {
            Some(s) => s,
            None => {
                let Some(state) = rooms_of(app, main) else { return Ok(()) };
                if app.store.breakouts_closed(&key, state.generation).await? {
                    return Ok(());
                }
                app.store.set_breakouts(&key, &state).await?;
                tracing::info!(meeting = %main.name_any(), rooms = state.rooms.len(), "breakout rooms restored after Redis lost them");
                state
            }
        };
        if state.rooms.iter().any(|r| r.meeting == room) && app.store.breakout_of(&key, pid).await?.is_none() {
            app.store.place_in_breakouts(&key, &[(pid.to_owned(), room.to_owned())]).await?;
        }
        Ok(())
    }
    .await;
    let _ = app.store.unlock_breakouts(&key, &holder).await;
    restored
}

/// Where participant `pid` of the family is now: the key and name of the meeting whose
/// participant it is (its recorded room first, then the main meeting, then every room).
async fn locate(app: &App, main: &Meeting, key: &str, state: &BreakoutState, pid: &str) -> Result<(String, String)> {
    let recorded = app.store.breakout_of(key, pid).await?;
    let mut places: Vec<(String, String)> = Vec::new();
    if let Some(r) = recorded.as_ref().and_then(|m| state.rooms.iter().find(|r| &r.meeting == m)) {
        places.push((room_key(app, r), r.meeting.clone()));
    }
    places.push((key.to_owned(), main.name_any()));
    places.extend(state.rooms.iter().map(|r| (room_key(app, r), r.meeting.clone())));
    for (k, name) in places {
        if app.store.get(&k, pid).await?.is_some() {
            return Ok((k, name));
        }
    }
    Err(BreakoutError::UnknownParticipant(pid.to_owned()))
}

/// Moves a participant into room `room` (or back to the main room). A host or co-host
/// moving itself visits.
pub async fn move_participant(app: &App, main: &Meeting, pid: &str, room: Option<u32>) -> Result<StatePayload> {
    let key = app.meetings.state_key(main);
    let state = app.store.breakouts(&key).await?.ok_or(BreakoutError::NoneOpen)?;
    let to = match room {
        Some(i) => Some(state.rooms.get(i as usize).ok_or(BreakoutError::NoSuchRoom(i))?),
        None => None,
    };
    let (at, _) = locate(app, main, &key, &state, pid).await?;
    // The main room is written too: no entry means Redis lost it (see `Session::follow_breakouts`).
    let place = to.map(|r| r.meeting.clone()).unwrap_or_else(|| main.name_any());
    app.store.place_in_breakouts(&key, &[(pid.to_owned(), place)]).await?;
    let (meeting, uid) = match to {
        Some(r) => (r.meeting.clone(), r.uid.clone()),
        None => (main.name_any(), main.metadata.uid.clone().unwrap_or_default()),
    };
    app.store.publish(&at, &Bus { to: Audience::Peer(pid.to_owned()), what: BusWhat::MoveTo { meeting, uid } }).await?;
    tell_hosts(app, main, &key, &state, false).await
}

/// A host's message to everyone in every room and in the main room.
pub async fn broadcast(app: &App, main: &Meeting, from: &str, name: &str, text: &str) -> Result<usize> {
    let key = app.meetings.state_key(main);
    let state = app.store.breakouts(&key).await?.ok_or(BreakoutError::NoneOpen)?;
    let payload = switchboard_signaling_proto::breakouts::BroadcastPayload {
        text: text.trim().to_owned(),
        name: Some(name.to_owned()),
    };
    let keys = family_keys(app, &key, &state);
    for k in &keys {
        let mut bus = notice(Audience::All, &main.name_any(), types::BREAKOUT_BROADCAST, &payload);
        if let BusWhat::Deliver(env) = &mut bus.what {
            env.from_peer_id = Some(from.to_owned());
        }
        app.store.publish(k, &bus).await?;
    }
    Ok(keys.len())
}

/// A participant in room `room` asks for help: its hosts and co-hosts hear of it
/// wherever they are, at most once every [`HELP_EVERY`] per participant.
pub async fn ask_for_help(app: &App, room: &Arc<Meeting>, pid: &str, name: &str) -> Result<()> {
    if room.spec.parent_ref.is_none() {
        return Err(BreakoutError::NotInRoom);
    }
    let main = main_of(app, room).ok_or(BreakoutError::NotInRoom)?;
    let key = app.meetings.state_key(&main);
    let state = app.store.breakouts(&key).await?.ok_or(BreakoutError::NotInRoom)?;
    let index = state.rooms.iter().position(|r| r.meeting == room.name_any()).ok_or(BreakoutError::NotInRoom)?;
    if !app.store.may_ask_for_help(&key, pid, HELP_EVERY).await? {
        return Err(BreakoutError::HelpTooSoon);
    }
    let payload = HelpPayload {
        participant_id: pid.to_owned(),
        name: name.to_owned(),
        room: state.rooms[index].name.clone(),
        index: index as u32,
    };
    for k in family_keys(app, &key, &state) {
        app.store.publish(&k, &notice(Audience::Admitters, &main.name_any(), types::HELP_REQUESTED, &payload)).await?;
    }
    Ok(())
}

/// Starts the countdown (everyone is told), or closes at once with 0. A countdown
/// already running is shortened, never lengthened.
pub async fn close(app: &Arc<App>, main: &Meeting, countdown: Option<u32>) -> Result<u64> {
    let key = app.meetings.state_key(main);
    let holder = lock_holder(app);
    if !app.store.lock_breakouts(&key, &holder, LOCK_TTL).await? {
        return Err(BreakoutError::Busy);
    }
    let closing = start_countdown(app, main, &key, countdown).await;
    let _ = app.store.unlock_breakouts(&key, &holder).await;
    let at = closing?;
    if at <= now_ms() {
        close_now(app, main, &key).await?;
    }
    Ok(at)
}

/// Under the lock: sets `closingAtMs` and tells everyone.
async fn start_countdown(app: &App, main: &Meeting, key: &str, countdown: Option<u32>) -> Result<u64> {
    let mut state = app.store.breakouts(key).await?.ok_or(BreakoutError::NoneOpen)?;
    let seconds = countdown.unwrap_or(state.countdown_seconds);
    let at = now_ms() + u64::from(seconds) * 1000;
    if state.closing_at_ms.is_some_and(|c| c <= at) {
        return Ok(state.closing_at_ms.unwrap_or(at));
    }
    state.closing_at_ms = Some(at);
    app.store.set_breakouts(key, &state).await?;
    let payload = ClosingPayload { at_ms: at, seconds };
    for k in family_keys(app, key, &state) {
        app.store.publish(&k, &notice(Audience::All, &main.name_any(), types::BREAKOUTS_CLOSING, &payload)).await?;
    }
    tell_hosts(app, main, key, &state, false).await?;
    Ok(at)
}

/// Everyone goes home and the rooms end. Sessions are told to move first; a room's end
/// moves whoever did not hear it (`Session::meeting_changed` follows `home`).
pub async fn close_now(app: &App, main: &Meeting, key: &str) -> Result<()> {
    let holder = lock_holder(app);
    if !app.store.lock_breakouts(key, &holder, LOCK_TTL).await? {
        return Ok(());
    }
    let closed = async {
        let Some(state) = app.store.breakouts(key).await? else { return Ok(()) };
        let home = BusWhat::MoveTo { meeting: main.name_any(), uid: main.metadata.uid.clone().unwrap_or_default() };
        for r in &state.rooms {
            app.store.publish(&room_key(app, r), &Bus { to: Audience::All, what: home.clone() }).await?;
        }
        app.store.mark_breakouts_closed(key, state.generation).await?;
        end_rooms(app, &state.rooms, &state.by).await;
        app.store.clear_breakouts(key).await?;
        app.breakouts_open.lock().unwrap().remove(key);
        tracing::info!(meeting = %main.name_any(), rooms = state.rooms.len(), "breakout rooms closed");
        tell_hosts(app, main, key, &state, true).await.map(drop)
    }
    .await;
    let _ = app.store.unlock_breakouts(key, &holder).await;
    closed
}

/// The breakout timers of every meeting, driven by every replica each second (a lock
/// makes one act): a timer that ran out starts the countdown; a countdown that ran out
/// closes the rooms. Also keeps `app.breakouts_open`, which tells sessions when to
/// compare themselves with `bo:where`.
pub async fn run(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = timers(&app).await {
            tracing::warn!(error = %e, "breakout timers");
        }
    }
}

async fn timers(app: &Arc<App>) -> Result<()> {
    let prefix = format!("{}/", app.meetings.namespace);
    let keys: Vec<String> = app.store.with_breakouts().await?.into_iter().filter(|k| k.starts_with(&prefix)).collect();
    *app.breakouts_open.lock().unwrap() = keys.iter().cloned().collect::<HashSet<_>>();
    for key in keys {
        let mut parts = key.splitn(3, '/');
        let (_, name, uid) = (parts.next(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        let main = app.meetings.get(name).filter(|m| m.metadata.uid.as_deref() == Some(uid));
        let Some(main) = main.filter(|m| meetings::ended(m).is_none()) else {
            // The main meeting ended or went: the operator ends its rooms.
            app.store.clear_breakouts(&key).await?;
            continue;
        };
        let Some(state) = app.store.breakouts(&key).await? else {
            app.store.clear_breakouts(&key).await?;
            continue;
        };
        let now = now_ms();
        match (state.closing_at_ms, state.ends_at_ms) {
            (Some(at), _) if at <= now => close_now(app, &main, &key).await?,
            (None, Some(ends)) if ends <= now => {
                let holder = lock_holder(app);
                if app.store.lock_breakouts(&key, &holder, LOCK_TTL).await? {
                    let started = start_countdown(app, &main, &key, None).await;
                    let _ = app.store.unlock_breakouts(&key, &holder).await;
                    started?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("p-{i}")).collect()
    }

    #[test]
    fn automatic_assignment_deals_everyone_into_rooms_of_even_size() {
        for (people, rooms, sizes) in
            [(6, 2, vec![3, 3]), (5, 2, vec![3, 2]), (2, 3, vec![1, 1, 0]), (0, 2, vec![0, 0])]
        {
            let out = assign(&ids(people), rooms, Assignment::Auto, &BTreeMap::new(), 7);
            assert_eq!(out.iter().map(Vec::len).collect::<Vec<_>>(), sizes, "{people} into {rooms}");
            let mut all: Vec<String> = out.concat();
            all.sort();
            assert_eq!(all, ids(people), "everyone once");
        }
        // The seed shuffles: not always the same rooms.
        let a = assign(&ids(10), 2, Assignment::Auto, &BTreeMap::new(), 1);
        let differs = (2..20).any(|s| assign(&ids(10), 2, Assignment::Auto, &BTreeMap::new(), s) != a);
        assert!(differs);
    }

    #[test]
    fn manual_assignment_follows_the_map_and_leaves_the_rest_in_the_main_room() {
        let manual: BTreeMap<String, u32> =
            [("p-0".into(), 1), ("p-2".into(), 0), ("gone".into(), 0), ("p-3".into(), 9)].into();
        let out = assign(&ids(4), 2, Assignment::Manual, &manual, 0);
        assert_eq!(out, vec![vec!["p-2".to_owned()], vec!["p-0".to_owned()]]);
    }

    #[test]
    fn a_room_is_owned_by_its_main_meeting_and_copies_what_it_must() {
        let main: Meeting = serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting",
            "metadata": {"name": "standup", "uid": "u-1"},
            "spec": {"title": "Standup", "host": "amy", "participants": {"expected": 10, "max": 12},
                     "mode": "Webinar", "waitingRoom": true, "muteOnEntry": true, "e2ee": true,
                     "recording": {"policy": "Off"},
                     "permissions": [{"role": "participant", "deny": ["send_chat"]}]},
        }))
        .unwrap();
        let room = room_meeting(&main, 3, 1, "Blue", 4).unwrap();
        assert_eq!(room.name_any(), "standup-bo3-2");
        let owner = &room.owner_references()[0];
        assert_eq!((owner.uid.as_str(), owner.controller), ("u-1", Some(true)));
        assert_eq!(room.spec.parent_ref.as_ref().unwrap().name, "standup");
        assert_eq!(room.spec.title, "Standup — Blue");
        assert_eq!((room.spec.participants.expected, room.spec.participants.max), (5, Some(12)));
        assert!(room.spec.e2ee && !room.spec.waiting_room && !room.spec.mute_on_entry);
        assert_eq!(room.spec.permissions, main.spec.permissions);
        assert_eq!(room.spec.recording, main.spec.recording, "recorded as the main meeting is");
        assert_eq!(room.spec.ttl_after_ended.unwrap().as_std(), Duration::ZERO);
        let mut unbounded = main.clone();
        unbounded.spec.participants.max = None;
        assert_eq!(room_meeting(&unbounded, 1, 0, "A", 3).unwrap().spec.participants.max, Some(10), "the main's size");
        let long = Meeting { metadata: ObjectMeta { name: Some("m".repeat(250)), ..Default::default() }, ..main };
        assert!(matches!(room_meeting(&long, 1, 0, "A", 1), Err(BreakoutError::NameTooLong(_))));
    }
}
