//! The Meetings signaling serves, read from the API server (a reflector over the
//! namespace), and what it writes back as field manager `switchboard-signaling`:
//! participant counts, and `endRequested` when a host ends a meeting for everyone (the
//! operator owns the rest of the status).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store as Reflector};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use switchboard_crds::meeting::{Meeting, MeetingPhase, SfuEndpoint};
use switchboard_signaling_proto::{Permission, Permissions, Role};
use tokio::sync::broadcast;

pub const FIELD_MANAGER: &str = "switchboard-signaling";

#[derive(Clone)]
pub struct Directory {
    pub api: Api<Meeting>,
    pub namespace: String,
    store: Reflector<Meeting>,
    /// Names of meetings that changed.
    pub changed: broadcast::Sender<String>,
    /// Counts last written, so unchanged counts are not written again.
    written: Arc<Mutex<HashMap<String, (i32, i32)>>>,
}

impl Directory {
    /// Starts watching; resolves once the first list arrived.
    pub async fn start(client: Client, namespace: &str) -> anyhow::Result<Self> {
        let api: Api<Meeting> = Api::namespaced(client, namespace);
        let (store, writer) = reflector::store();
        let (changed, _) = broadcast::channel(1024);
        let tx = changed.clone();
        let stream = reflector::reflector(writer, watcher(api.clone(), watcher::Config::default()))
            .default_backoff()
            .touched_objects();
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(m) => {
                        let _ = tx.send(m.name_any());
                    }
                    Err(e) => tracing::warn!(error = %e, "meeting watch"),
                }
            }
        });
        store.wait_until_ready().await?;
        Ok(Self { api, namespace: namespace.into(), store, changed, written: Arc::default() })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Meeting>> {
        self.store.get(&reflector::ObjectRef::new(name).within(&self.namespace))
    }

    /// Every meeting of the namespace.
    pub fn all(&self) -> Vec<Arc<Meeting>> {
        self.store.state()
    }

    /// A meeting by name or by room code.
    pub fn find(&self, id: &str) -> Option<Arc<Meeting>> {
        self.get(id).or_else(|| {
            self.store.state().into_iter().find(|m| m.status.as_ref().and_then(|s| s.room_code.as_deref()) == Some(id))
        })
    }

    /// The name of a meeting's room on the SFUs.
    pub fn room(&self, name: &str) -> String {
        room_of(&self.namespace, name)
    }

    /// The key of a meeting's state in Redis: namespace, name and UID, so a meeting
    /// deleted and created again under its name shares nothing with the old one.
    pub fn state_key(&self, m: &Meeting) -> String {
        state_key(&self.namespace, m)
    }

    /// What a session token is bound to.
    pub fn binding(&self, m: &Meeting) -> crate::auth::MeetingBinding {
        crate::auth::MeetingBinding {
            namespace: self.namespace.clone(),
            name: m.name_any(),
            uid: m.metadata.uid.clone().unwrap_or_default(),
        }
    }

    /// Ends the meeting for everyone: who and when go into the status, which every
    /// replica's watch then acts on (each closes its connections to the meeting with
    /// `meeting-ended`, and refuses joins), and the operator moves the meeting to
    /// `Ended`. A JSON patch, not an apply: an apply of this field alone would take
    /// the participant count out of this manager's fields. Its `test` pins the meeting
    /// the host is in, not one created again under its name (a status write ignores a
    /// UID in the body).
    pub async fn end(&self, m: &Meeting, by: &str) -> kube::Result<()> {
        let at = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
        let ops = serde_json::json!([
            {"op": "test", "path": "/metadata/uid", "value": m.metadata.uid},
            {"op": "add", "path": "/status/endRequested", "value": {"at": at, "by": by}},
        ]);
        let patch: json_patch::Patch = serde_json::from_value(ops).expect("a JSON patch");
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        self.api.patch_status(&m.name_any(), &params, &Patch::<()>::Json(patch)).await?;
        Ok(())
    }

    /// Writes the participant count (and the peak) when it changed.
    pub async fn report(&self, name: &str, current: i32) -> kube::Result<()> {
        let Some(m) = self.get(name) else { return Ok(()) };
        let peak = m.status.as_ref().and_then(|s| s.participants.as_ref()).map(|p| p.peak).unwrap_or(0).max(current);
        if self.written.lock().unwrap().get(name) == Some(&(current, peak)) {
            return Ok(());
        }
        let patch = serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1",
            "kind": "Meeting",
            "status": {"participants": {"current": current, "peak": peak}},
        });
        self.api.patch_status(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&patch)).await?;
        self.written.lock().unwrap().insert(name.into(), (current, peak));
        Ok(())
    }
}

/// The SFU room of a Meeting (see [`switchboard_crds::meeting::room_name`]).
pub fn room_of(namespace: &str, name: &str) -> String {
    switchboard_crds::meeting::room_name(namespace, name)
}

/// `namespace/name/uid`: names and namespaces hold no `/`.
pub fn state_key(namespace: &str, m: &Meeting) -> String {
    key_of(namespace, &m.name_any(), m.metadata.uid.as_deref().unwrap_or_default())
}

/// The state key of meeting `name` with UID `uid`.
pub fn key_of(namespace: &str, name: &str, uid: &str) -> String {
    format!("{namespace}/{name}/{uid}")
}

/// Why the meeting cannot be recorded by signaling, if it cannot.
pub fn recording_refused(m: &Meeting) -> Option<&'static str> {
    use switchboard_crds::meeting::RecordingMode;
    if m.spec.recording.as_ref().is_some_and(|r| r.policy == RecordingMode::Off) {
        return Some("recording is off for this meeting (spec.recording.policy: Off)");
    }
    if m.spec.e2ee {
        return Some("this meeting is end-to-end encrypted: the server cannot record it");
    }
    None
}

/// Why the meeting is over, if it is: a host ended it (at once, before the operator
/// marks it `Ended`), or it ended.
pub fn ended(m: &Meeting) -> Option<String> {
    let status = m.status.as_ref()?;
    if let Some(r) = &status.end_requested {
        return Some(format!("{} ended the meeting for everyone", r.by));
    }
    (status.phase == Some(MeetingPhase::Ended)).then(|| "the meeting has ended".into())
}

/// Whether participants can be in the meeting now.
pub fn open(m: &Meeting) -> Result<(), String> {
    if let Some(reason) = ended(m) {
        return Err(reason);
    }
    match m.status.as_ref().and_then(|s| s.phase) {
        Some(MeetingPhase::Failed) => Err("the meeting failed; see its conditions".into()),
        _ => Ok(()),
    }
}

/// Every SFU serving the meeting, origin first.
pub fn endpoints(m: &Meeting) -> Vec<SfuEndpoint> {
    match m.status.as_ref().and_then(|s| s.assignment.as_ref()) {
        Some(a) => std::iter::once(a.origin.clone()).chain(a.edges.iter().cloned()).collect(),
        None => Vec::new(),
    }
}

/// The SFU for the participant that joined `slot`th (from 1): the origin fills its
/// share first, then each edge in turn; past every share, the least-shared SFU is
/// chosen by rotation.
pub fn choose_sfu(m: &Meeting, slot: u64) -> Option<SfuEndpoint> {
    let all = endpoints(m);
    let mut seen = 0u64;
    for e in &all {
        let share = e.participants.unwrap_or(i32::MAX).max(0) as u64;
        if slot <= seen.saturating_add(share) {
            return Some(e.clone());
        }
        seen = seen.saturating_add(share);
    }
    (!all.is_empty()).then(|| all[(slot as usize) % all.len()].clone())
}

/// The latest migration generation (0 before any move).
pub fn generation(m: &Meeting) -> i64 {
    m.status.as_ref().and_then(|s| s.migrations.last()).map(|g| g.generation).unwrap_or(0)
}

pub fn role_of(r: switchboard_crds::meeting::Role) -> Role {
    use switchboard_crds::meeting::Role as R;
    match r {
        R::Host => Role::Host,
        R::CoHost => Role::CoHost,
        R::Participant => Role::Participant,
        R::Viewer => Role::Viewer,
    }
}

fn permission_of(p: switchboard_crds::meeting::Permission) -> Permission {
    use switchboard_crds::meeting::Permission as P;
    match p {
        P::MuteOthers => Permission::MuteOthers,
        P::RemoveParticipant => Permission::RemoveParticipant,
        P::StartRecording => Permission::StartRecording,
        P::ShareScreen => Permission::ShareScreen,
        P::SendChat => Permission::SendChat,
        P::UnmuteSelf => Permission::UnmuteSelf,
        P::EndMeeting => Permission::EndMeeting,
    }
}

/// The meeting's permissions: role defaults with its overrides, and no recording for
/// anyone when the meeting may not be recorded.
pub fn permissions(m: &Meeting) -> Permissions {
    let p = m.spec.permissions.iter().fold(Permissions::default(), |p, o| {
        p.with_override(
            role_of(o.role),
            o.allow.iter().copied().map(permission_of).collect(),
            o.deny.iter().copied().map(permission_of).collect(),
        )
    });
    if recording_refused(m).is_none() {
        return p;
    }
    [Role::Host, Role::CoHost, Role::Participant, Role::Viewer]
        .into_iter()
        .fold(p, |p, r| p.with_override(r, Vec::new(), vec![Permission::StartRecording]))
}
