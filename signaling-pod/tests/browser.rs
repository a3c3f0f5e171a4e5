//! Two headless Chromium instances (Debian's chromium, driven by playwright-core) join
//! one meeting through signaling and a real SFU with fake camera and microphone, and
//! each decodes the other's video. The meeting is being recorded, and both pages show
//! the "Recording" indicator. The screenshot is kept in
//! `target/test-artifacts/browser-meeting.png`.

mod common;

use common::*;
use switchboard_e2e::browser::{Phase, Sample, phase, reached, timeline};

/// The browser tests take turns: two Chromium encoders at once on two cores make
/// Chromium drop simulcast layers for lack of CPU.
static BROWSERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A meeting hosted by `host`, placed on an SFU of its own, served by one signaling
/// replica: what each browser test starts from.
struct BrowserMeeting {
    env: TestEnv,
    /// Serves the meeting's media for as long as the test holds it.
    _sfu: sfu_pod::local::LocalSfu,
    server: signaling_pod::Running,
    name: String,
    /// The SFU's pod name (its endpoint is `_sfu.endpoint`).
    sfu_pod: String,
}

impl BrowserMeeting {
    async fn start(prefix: &str, name: &str, host: &str, extra: serde_json::Value) -> Self {
        Self::start_on(prefix, name, host, extra, std::net::Ipv4Addr::LOCALHOST).await
    }

    /// Signaling and the SFU's media on `ip` (the host's end of a test link).
    async fn start_on(prefix: &str, name: &str, host: &str, extra: serde_json::Value, ip: std::net::Ipv4Addr) -> Self {
        let env = env(prefix).await;
        let sfu = sfu_pod::local::start_on(&format!("sfu-{prefix}"), ip.into()).await.unwrap();
        meeting(&env, name, host, extra).await;
        assign(&env, name, &[(&format!("sfu-{prefix}"), &sfu.endpoint)], &[]).await;
        let mut cfg = env.config();
        cfg.listen = (ip, 0).into();
        let server = env.in_process(cfg).await;
        Self { env, _sfu: sfu, server, name: name.into(), sfu_pod: format!("sfu-{prefix}") }
    }

    /// Places each breakout room of the meeting on its SFU as it appears, as the
    /// operator would; until the handle is aborted.
    fn place_rooms(&self) -> tokio::task::JoinHandle<()> {
        place_rooms(self.env.meetings(), (&self.sfu_pod, &self._sfu.endpoint))
    }

    /// The browser client's address for `user`, with a fresh user token.
    fn url(&self, user: &str) -> String {
        format!("{}/j/{}?token={}", self.server.url, self.name, user_token(user, None, 3600))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chromium_browsers_see_each_other_through_signaling_and_the_sfu() {
    let _turn = BROWSERS.lock().await;
    let m = BrowserMeeting::start("sig-browser", "browsers", "hugo", serde_json::json!({})).await;
    let (status, body) = rest(&m.server.url, "hugo", None)
        .call(reqwest::Method::POST, "/api/v1/meetings/browsers/recordings", None)
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let artifacts = switchboard_e2e::repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("browser-meeting.png");
    let _ = std::fs::remove_file(&shot);

    // The SFU and signaling run in this runtime: the browsers wait on a blocking thread.
    let (host, guest, path) = (m.url("hugo"), m.url("iris"), shot.clone());
    let report = tokio::task::spawn_blocking(move || switchboard_e2e::browser::two_peers(&host, &guest, &path))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("browsers: {e}"));
    for page in report.as_array().unwrap() {
        assert!(page["frames"].as_u64().unwrap() > 10, "{report}");
        assert!(page["tiles"].as_u64().unwrap() >= 2, "own tile and the other's: {report}");
        assert_eq!(page["recording"], true, "the Recording indicator shows: {report}");
        assert_eq!(page["consent"], true, "the recording notice asks everyone to take note: {report}");
    }
    let png = std::fs::read(&shot).expect("screenshot saved");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    m.env.ns.delete().await;
}

/// The browser client used as a person would, against a Rust participant (rex) who
/// publishes a camera and a screen share with real VP8 and said something in the chat
/// before: the page shows the earlier chat, one tile per source (rex's camera and
/// screen apart), takes the token out of the address bar, publishes its camera as
/// three simulcast encodings with Opus FEC and DTX; its mute, hand and chat reach rex;
/// its screen share reaches rex as a ScreenShare track and is unpublished when the
/// browser's own "Stop sharing" ends it; rex's tile shows rex muted; a reaction reaches
/// rex; after an ICE restart of both connections media is decoded still; Leave, then
/// Rejoin, joins again from the same tab.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_clients_controls_work_end_to_end() {
    let _turn = BROWSERS.lock().await;
    use switchboard_sfu_api::Source;
    use switchboard_sfu_client::encoded::{EncodedCodec, ToneClip, VideoClip, encode_clip};
    use switchboard_sfu_client::{JoinOptions, NetworkOptions, Publish, PublishKind};
    use switchboard_signaling_client::MediaSession;
    use switchboard_signaling_proto::types;

    let m = BrowserMeeting::start("sig-controls", "controls", "rex", serde_json::json!({})).await;
    let server = &m.server;

    let dir = std::env::temp_dir().join(format!("switchboard-controls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let camera = encode_clip(VideoClip::new(EncodedCodec::Vp8, "testsrc2"), 10, &dir.join("cam.ivf")).unwrap();
    let screen = encode_clip(VideoClip::new(EncodedCodec::Vp8, "smptebars"), 10, &dir.join("screen.ivf")).unwrap();
    let mic = encode_clip(ToneClip::new(440), 10, &dir.join("mic.ogg")).unwrap();
    let (rex, grant, _) = connect(&rest(&server.url, "rex", None), "controls").await;
    let publish = vec![
        Publish::encoded("rex-mic", mic),
        Publish::encoded("rex-cam", camera),
        Publish { id: "rex-screen".into(), kind: PublishKind::Encoded(screen), source: Source::ScreenShare },
    ];
    let net = NetworkOptions { loopback_only: true, ..Default::default() };
    let _media =
        MediaSession::start(rex.clone(), &grant.participant_id, JoinOptions { publish, net, ..Default::default() })
            .await
            .unwrap();
    rex.request(types::CHAT, serde_json::json!({"text": "said before you came"})).await.unwrap();
    rex.request(types::PARTICIPANT_UPDATE, serde_json::json!({"audioMuted": true})).await.unwrap();

    // The host lowers iris's hand a moment after it went up; before that, a late joiner
    // (sam) finds it raised in the participant list.
    let lowerer = {
        let (rex, server_url) = (rex.clone(), server.url.clone());
        tokio::spawn(async move {
            let iris = switchboard_e2e::eventually("iris's hand up", WAIT, || async {
                rex.received()
                    .iter()
                    .find(|e| e.type_ == types::HAND_RAISE && e.payload["raised"] == true)
                    .map(|e| e.payload["participantId"].as_str().unwrap_or_default().to_owned())
            })
            .await;
            let (_sam, _, joined) = connect(&rest(&server_url, "sam", None), "controls").await;
            let sam_saw = joined.participants.iter().any(|p| p.id == iris && p.hand_raised);
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            rex.request(types::HAND_RAISE, serde_json::json!({"raised": false, "participantId": iris})).await.unwrap();
            sam_saw
        })
    };
    let url = m.url("iris");
    let report = tokio::task::spawn_blocking(move || switchboard_e2e::browser::controls(&url))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("browser: {e}"));
    println!("controls report: {report}");

    // Hygiene: the token left the address bar and is kept for the tab only.
    assert!(!report["url"].as_str().unwrap().contains("token"), "{report}");
    assert_eq!(report["sessionToken"], true, "{report}");
    assert!(report["localToken"].is_null(), "{report}");
    // Chat history for a late joiner.
    let chat: Vec<&str> = report["chat"].as_array().unwrap().iter().filter_map(|c| c.as_str()).collect();
    assert!(chat.iter().any(|c| c.contains("said before you came")), "{report}");
    // One tile per source.
    let rex_id = grant.participant_id.clone();
    let tiles: Vec<&str> = report["tiles"].as_array().unwrap().iter().filter_map(|t| t.as_str()).collect();
    assert!(tiles.contains(&rex_id.as_str()), "rex's camera tile: {report}");
    assert!(tiles.contains(&format!("{rex_id}:screen").as_str()), "rex's screen tile: {report}");
    assert!(report["tileIcons"][&rex_id].as_str().unwrap().contains('🔇'), "rex's tile shows the mute: {report}");
    // Simulcast and Opus resilience.
    let rids: Vec<&str> = report["rids"].as_array().unwrap().iter().filter_map(|r| r.as_str()).collect();
    assert!(rids.len() >= 2 && rids.iter().all(|r| ["q", "h", "f"].contains(r)), "simulcast encodings sent: {report}");
    let fmtp = report["opusFmtp"].as_str().unwrap();
    assert!(fmtp.contains("useinbandfec=1") && fmtp.contains("usedtx=1"), "{report}");
    // The controls reached rex.
    let iris = report["me"].as_str().unwrap().to_owned();
    assert_eq!(report["micLabel"], "Unmute", "{report}");
    assert_eq!(report["handLabel"], "Lower hand", "{report}");
    let seen = rex.received();
    let from_iris = |t: &str| {
        seen.iter()
            .filter(|e| e.type_ == t)
            .any(|e| e.payload.to_string().contains(&iris) || e.from_peer_id.as_deref() == Some(iris.as_str()))
    };
    assert!(
        seen.iter().any(|e| e.type_ == types::PARTICIPANT_UPDATE
            && e.payload["id"] == iris.as_str()
            && e.payload["audioMuted"] == true),
        "rex sees iris muted"
    );
    assert!(from_iris(types::HAND_RAISE), "rex sees iris's hand");
    assert!(seen.iter().any(|e| e.type_ == types::REACTION && e.payload["emoji"] == "🎉"), "rex sees the reaction");
    assert!(
        seen.iter().any(|e| e.type_ == types::CHAT && e.payload["text"] == "hello from the browser"),
        "chat reaches rex"
    );
    assert!(
        seen.iter().any(|e| e.type_ == types::CHAT
            && e.payload["text"] == "just for rex"
            && e.payload["to"] == rex_id.as_str()),
        "the direct message reaches rex, addressed to it"
    );
    assert_eq!(report["privateLines"], serde_json::json!(["You → REX (privately): just for rex"]), "{report}");
    // Screen share: published as a ScreenShare track, unpublished when it ended.
    assert!(report["screenError"].is_null(), "{report}");
    let track = report["screenTrack"].as_str().unwrap();
    let media_events: Vec<&serde_json::Value> =
        seen.iter().filter(|e| e.type_ == types::MEDIA_EVENT).map(|e| &e.payload["event"]).collect();
    assert!(
        media_events
            .iter()
            .any(|e| e["type"] == "trackPublished" && e["track"] == track && e["source"] == "ScreenShare"),
        "rex is told of iris's screen share: {media_events:?}"
    );
    switchboard_e2e::wait_for("the screen share unpublished at the SFU", WAIT, || async {
        rex.received().iter().any(|e| {
            e.type_ == types::MEDIA_EVENT
                && e.payload["event"]["type"] == "trackUnpublished"
                && e.payload["event"]["track"] == track
        })
    })
    .await;
    assert_eq!(report["sharingLabel"], "Stop sharing", "{report}");
    assert_eq!(report["afterStopLabel"], "Share screen", "{report}");
    assert!(
        seen.iter().any(|e| e.type_ == types::PARTICIPANT_UPDATE
            && e.payload["id"] == iris.as_str()
            && e.payload["screenSharing"] == true),
        "iris shows as sharing"
    );
    // Devices listed; a camera switch swaps the track on the publisher connection.
    let devices = &report["devices"];
    assert!(devices["cameras"].as_u64().unwrap() >= 1 && devices["mics"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!((devices["swapped"].as_bool(), devices["sent"].as_bool()), (Some(true), Some(true)), "{report}");
    // Keyboard, views, the phone layout, the network indicator.
    assert_eq!(report["micAfterKey"], "Mute", "`m` toggles the microphone: {report}");
    assert!(report["speakerView"]["grid"].as_str().unwrap().contains("speaker"), "{report}");
    assert_eq!(report["speakerView"]["featured"].as_array().map(|f| f.len()), Some(1), "one featured tile: {report}");
    assert_eq!(report["phoneFits"], true, "no sideways scrolling at phone width: {report}");
    let quality = &report["quality"];
    assert!(["good", "fair", "poor"].contains(&quality["level"].as_str().unwrap_or("")), "{report}");
    assert!(quality["inKbps"].as_u64().unwrap_or(0) > 0, "{report}");
    for shot in ["client-grid.png", "client-speaker-view.png", "client-phone.png"] {
        let png = std::fs::read(switchboard_e2e::repo_root().join("target/test-artifacts").join(shot)).expect(shot);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{shot}");
    }
    // Hands: state a late joiner sees, lowered by the host.
    assert!(lowerer.await.unwrap(), "a late joiner sees iris's hand raised");
    assert_eq!(report["handLoweredByHost"], true, "the host lowered iris's hand: {report}");
    // Leave and rejoin from the same tab.
    assert_eq!(report["leftStatus"], "you left", "{report}");
    assert!(report["rejoinedAs"].as_str().is_some_and(|id| !id.is_empty()), "{report}");
    // ICE restarts: media still decoded after.
    assert!(report["iceRestarts"].as_u64().unwrap() >= 2, "{report}");
    assert!(report["decodedAfter"].as_u64().unwrap() > report["decodedBefore"].as_u64().unwrap() + 10, "{report}");
    let _ = std::fs::remove_dir_all(&dir);
    m.env.ns.delete().await;
}

/// Simulcast from Chromium to Chromium through the SFU, driven by what the viewer
/// shows: the publisher's camera goes out as simulcast encodings (the SFU's TWCC
/// feedback lets its estimate grow to all three); the viewer's tile made small receives
/// the lowest layer (the decoded `frameWidth`), and large no smaller one, frames decoding all along;
/// hidden, its video stops arriving; shown again, it resumes without renegotiation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewers_tile_size_picks_the_simulcast_layer_and_a_hidden_tile_pauses() {
    let _turn = BROWSERS.lock().await;
    let m = BrowserMeeting::start("sig-simulcast", "layers", "pia", serde_json::json!({})).await;
    let (publisher, viewer) = (m.url("pia"), m.url("vic"));
    let report = tokio::task::spawn_blocking(move || switchboard_e2e::browser::simulcast(&publisher, &viewer))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("browsers: {e}"));
    println!("simulcast report: {report}");
    // Three when the machine has the CPU (alone: f 1280, h 640, q 320 wide); Chromium
    // drops the top one when its encoder is short of CPU (tests running beside it).
    assert!(report["rids"].as_array().unwrap().len() >= 2, "the publisher sends simulcast layers: {report}");
    let width = |step: &str| report[step]["frameWidth"].as_u64().unwrap();
    let decoding = |step: &str| report[step]["decodedDuring"].as_u64().unwrap();
    // The small tile's wish caps the layer at the lowest (q, the narrowest sent). The
    // large tile gets a larger layer: the SFU's send-side estimate (TWCC feedback from
    // the viewer) probes up to what the large tile wants.
    let lowest = report["rids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.as_str()?.split(':').nth(1)?.parse::<u64>().ok())
        .filter(|w| *w > 0)
        .min()
        .unwrap();
    assert_eq!(width("small"), lowest, "a small tile receives the lowest layer: {report}");
    assert!(width("large") > width("small"), "a large tile gets a larger layer: {report}");
    for step in ["small", "large", "shown"] {
        assert!(decoding(step) > 5, "frames keep decoding ({step}): {report}");
    }
    assert_eq!(report["hidden"]["packetsDuring"], 0, "a hidden tile receives no video: {report}");
    assert!(width("shown") >= width("large"), "{report}");
    // Layer allocation: while nobody could receive more than the lowest layer the
    // publisher sent only that; shown large again, every layer is back.
    assert_eq!(report["activeWhileHidden"], serde_json::json!(["q"]), "{report}");
    assert_eq!(report["activeWhenShown"], serde_json::json!(["q", "h", "f"]), "{report}");
    m.env.ns.delete().await;
}

/// The waiting room from the host's page: four guests (Rust clients) wait and are shown;
/// the host denies one, whose connection is told it was removed and whose user cannot
/// join again, admits another, who is told so, and the last two with "Admit all".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_denies_and_admits_waiting_guests_from_the_page() {
    let _turn = BROWSERS.lock().await;
    use switchboard_signaling_proto::types;
    let m = BrowserMeeting::start("sig-waiting", "lobby", "hana", serde_json::json!({"waitingRoom": true})).await;
    let server = &m.server;
    let (gus, _, gus_joined) = connect(&rest(&server.url, "gus", None), "lobby").await;
    let (gwen, _, _) = connect(&rest(&server.url, "gwen", None), "lobby").await;
    let (gail, _, _) = connect(&rest(&server.url, "gail", None), "lobby").await;
    let (glen, _, _) = connect(&rest(&server.url, "glen", None), "lobby").await;
    assert!(!gus_joined.participant.admitted, "guests wait");
    let url = m.url("hana");
    let report = tokio::task::spawn_blocking(move || {
        switchboard_e2e::browser::waiting_room(&url, "GUS", "GWEN", &["GAIL", "GLEN"])
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("browser: {e}"));
    println!("waiting report: {report}");
    assert_eq!(report["waitingRoomShown"], true, "{report}");
    assert!(report["stillWaiting"].as_array().unwrap().is_empty(), "nobody left waiting: {report}");
    gwen.wait_for("admission", WAIT, |e| e.type_ == types::ADMITTED).await.expect("gwen admitted");
    for (who, guest) in [("gail", &gail), ("glen", &glen)] {
        guest.wait_for(who, WAIT, |e| e.type_ == types::ADMITTED).await.expect("admitted by Admit all");
    }
    gus.wait_closed(WAIT).await.expect("the denied guest's connection closes");
    let again = rest(&server.url, "gus", None).join("lobby").await;
    assert!(again.is_err(), "a denied user cannot come back: {again:?}");
    let shot =
        std::fs::read(switchboard_e2e::repo_root().join("target/test-artifacts/client-waiting-room.png")).unwrap();
    assert_eq!(&shot[..8], b"\x89PNG\r\n\x1a\n");
    m.env.ns.delete().await;
}

/// Each meeting control clicked on one page, its effect checked on the other: the
/// guest's raised hand shows at the host and survives the guest's reload; the guest's
/// screen share makes a second tile at the host with a moving picture, and stopping it
/// removes the tile; the guest's microphone button stops its audio energy arriving at
/// the host (getStats `totalAudioEnergy` of what the host plays out), and unmuting brings
/// it back; the host removes a Rust participant, who is told and disconnected; the guest
/// has no "End for all", the host has, and ends the meeting for everyone: both pages
/// show it ended and stay disconnected, the Rust participant's signaling is closed, and
/// the meeting's status says who ended it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_meeting_control_clicked_on_one_page_acts_on_the_other() {
    let _turn = BROWSERS.lock().await;
    use switchboard_signaling_proto::types;
    let m = BrowserMeeting::start("sig-controls2", "ending", "hana", serde_json::json!({})).await;
    let (rudy, _, _) = connect(&rest(&m.server.url, "rudy", None), "ending").await;
    let (host, guest) = (m.url("hana"), m.url("gil"));
    let report = tokio::task::spawn_blocking(move || switchboard_e2e::browser::meeting_controls(&host, &guest, "RUDY"))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("browsers: {e}"));
    println!("meeting controls report: {report}");
    let rate = |step: &str| report[step]["energyPerSecond"].as_f64().unwrap();
    // Hand: up at the host, and after the guest's reload on both pages; the reload
    // resumed the same participant (no second GIL in the list).
    assert_eq!(report["hand"]["guestLabel"], "Lower hand", "the reloaded page shows the hand up: {report}");
    let first = report["firstGuestId"].as_str().unwrap();
    assert_eq!(report["screen"]["key"].as_str(), Some(format!("{first}:screen").as_str()), "{report}");
    let seen = report["hand"]["hostSees"].as_array().unwrap();
    assert!(seen.len() == 1 && seen[0].as_str().unwrap().starts_with("✋ GIL"), "{report}");
    // Screen share: a tile of its own at the host, moving, removed when stopped.
    let screen = &report["screen"];
    assert!(screen["tiles"].as_array().unwrap().contains(&screen["key"]), "{report}");
    assert!(screen["width"].as_u64().unwrap() > 0 && screen["moving"] == true, "a moving picture: {report}");
    assert_eq!(screen["removed"], true, "stopping the share removes the tile: {report}");
    // The host's mute holds until the host allows unmuting; the host stops the camera.
    assert!(rate("hostMuted") < rate("speaking") / 50.0, "a host's mute is silence: {report}");
    assert_eq!(report["unmuteRefusedLabel"], "Unmute", "the guest cannot lift it: {report}");
    assert_eq!(report["allowedBack"]["label"], "Mute", "{report}");
    assert!(rate("allowedBack") > rate("speaking") / 5.0, "allowed, the guest is heard again: {report}");
    assert_eq!(report["cameraStopped"], true, "the host's page shows the guest's camera off: {report}");
    // Remove: the Rust participant is told and its connection closes.
    assert_eq!(report["removedGone"], true, "{report}");
    rudy.wait_for("removal", WAIT, |e| e.type_ == types::REMOVE).await.expect("rudy told it was removed");
    rudy.wait_closed(WAIT).await.expect("rudy's connection closes");
    // Chromium's fake microphone beeps; played out at the host it carries energy.
    assert!(rate("speaking") > 1e-4, "the guest's audio reaches the host: {report}");
    assert_eq!(report["guestMicLabel"], "Unmute", "{report}");
    assert!(rate("muted") < rate("speaking") / 50.0, "muted, no energy arrives: {report}");
    assert!(report["muted"]["playedSeconds"].as_f64().unwrap() > 1.0, "the host kept playing audio out: {report}");
    assert!(rate("unmuted") > rate("speaking") / 5.0, "unmuted, it arrives again: {report}");
    // Recording: the button says "Stop recording" while one runs, and stopping it asks
    // the RecordingJob's recorder to stop (the annotation names the host).
    assert_eq!(report["recordLabel"], "Stop recording", "{report}");
    let jobs: kube::Api<switchboard_crds::RecordingJob> = m.env.ns.api();
    let listed = jobs.list(&Default::default()).await.unwrap().items;
    let stopped_by: Vec<Option<String>> = listed
        .iter()
        .map(|j| {
            j.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(switchboard_crds::recording_job::STOP_ANNOTATION).cloned())
        })
        .collect();
    assert_eq!(stopped_by, [Some("hana".to_owned())], "one recording, stopped by the host: {report}");
    assert_eq!(report["endShown"], serde_json::json!({"host": true, "guest": false}), "{report}");
    for who in ["hostEnded", "guestEnded"] {
        assert!(report[who].as_str().unwrap().contains("hana ended the meeting"), "{who}: {report}");
    }
    for page in report["afterEnd"].as_array().unwrap() {
        assert_eq!(page["socket"], 3, "the WebSocket is closed and stays closed: {report}");
        assert_eq!(page["media"], false, "{report}");
        assert_eq!(page["status"], "the meeting has ended", "{report}");
    }
    let meetings: kube::Api<switchboard_crds::Meeting> = m.env.ns.api();
    let ended = meetings.get("ending").await.unwrap();
    assert_eq!(ended.status.and_then(|s| s.end_requested).map(|r| r.by).as_deref(), Some("hana"));
    assert!(rest(&m.server.url, "gil", None).join("ending").await.is_err(), "nobody joins an ended meeting");
    m.env.ns.delete().await;
}

/// Breakout rooms run from the host's page, with a guest's page: the host opens one
/// room with a timer, assigning the guest by hand; the guest's page moves into it (its
/// badge names the room and counts down, the session token kept for the tab is the
/// room's, the main room's chat is not shown there) and a reload resumes there. The
/// guest asks for help; the host's page shows it and the host joins the room from it:
/// each page decodes the other's video in the room, and the room's chat reaches the
/// host. The host's broadcast shows on the guest's page. The host closes the rooms with
/// a 4 s warning: both pages count down and come back to the main meeting, decoding each
/// other's video again, with the main room's chat (not the room's). The room Meeting
/// was created beside the main meeting and ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_runs_breakout_rooms_from_the_page() {
    let _turn = BROWSERS.lock().await;
    let (m, report) = breakouts_from_the_page("sig-bo-page", serde_json::json!({})).await;
    assert!(report["start"]["e2ee"] == false && report["mainMedia"]["host"]["e2ee"].is_null(), "{report}");
    m.env.ns.delete().await;
}

/// [`a_host_runs_breakout_rooms_from_the_page`] in an end-to-end encrypted meeting: the
/// room is encrypted too, and each move starts the pages' key exchange over with the
/// room's (or the main meeting's) members: in the room and back home, each page's worker
/// decrypts the other's frames, each sending under a key of a new generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakout_rooms_of_an_e2ee_meeting_are_encrypted_and_keys_follow_each_move() {
    let _turn = BROWSERS.lock().await;
    let (m, report) = breakouts_from_the_page("sig-bo-e2ee", serde_json::json!({"e2ee": true})).await;
    assert_eq!(report["start"]["e2ee"], true, "{report}");
    let room = report["opened"]["guest"]["meeting"].as_str().unwrap();
    let meetings: kube::Api<switchboard_crds::Meeting> = m.env.ns.api();
    assert!(meetings.get(room).await.unwrap().spec.e2ee, "the room is end-to-end encrypted: {report}");
    let kid = |at: &serde_json::Value| at["e2ee"]["sendKid"].as_u64().unwrap_or_else(|| panic!("{report}"));
    for page in ["host", "guest"] {
        let (main, in_room, back) =
            (&report["mainMedia"][page], &report["inRoom"][page], &report["back"]["media"][page]);
        for at in [main, in_room, back] {
            assert!(at["e2ee"]["decryptedGrew"].as_u64().unwrap() > 10, "{page} decrypts the other: {report}");
        }
        // A key's generation is its id / 256: each move starts a new one (the guest's
        // reload in the room started over with a new key pair, at generation 0).
        assert!(kid(in_room) / 256 < kid(back) / 256, "{page}: {report}");
    }
    let host_kid = |at: &serde_json::Value| kid(&at["host"]);
    assert!(host_kid(&report["mainMedia"]) / 256 < host_kid(&report["inRoom"]) / 256, "{report}");
    m.env.ns.delete().await;
}

/// Runs `breakouts.mjs` in a meeting (`extra`: its spec's other fields) hosted by hana,
/// with gia's page as the guest, and checks what every variant must show.
async fn breakouts_from_the_page(prefix: &str, extra: serde_json::Value) -> (BrowserMeeting, serde_json::Value) {
    let m = BrowserMeeting::start(prefix, "workshop", "hana", extra).await;
    let placer = m.place_rooms();
    let (host, guest) = (m.url("hana"), m.url("gia"));
    let report = tokio::task::spawn_blocking(move || switchboard_e2e::browser::breakouts(&host, &guest, "GIA"))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("browsers: {e}"));
    placer.abort();
    println!("breakouts report: {report}");
    let (host_id, guest_id) = (report["start"]["host"]["me"].clone(), report["start"]["guest"]["me"].clone());
    for page in ["host", "guest"] {
        assert_eq!(report["start"][page]["meeting"], "workshop", "{report}");
        assert!(report["start"][page]["room"].is_null(), "{report}");
    }
    assert_eq!(report["start"]["panel"], serde_json::json!({"host": true, "guest": false}), "{report}");

    // The guest is moved into the room: its badge counts down from the 5-minute timer.
    let opened = &report["opened"];
    let room_meeting = opened["guest"]["meeting"].as_str().unwrap().to_owned();
    assert_ne!(room_meeting, "workshop", "{report}");
    assert_eq!(opened["guest"]["room"], "Room 1", "{report}");
    assert_eq!(opened["guest"]["me"], guest_id, "the same participant, moved: {report}");
    assert_eq!(opened["badgeShown"], true, "{report}");
    let left = |badge: &serde_json::Value| -> u64 {
        let b = badge.as_str().unwrap_or_else(|| panic!("a badge: {report}"));
        let clock = b.strip_prefix("Room 1 · ").and_then(|r| r.strip_suffix(" left")).unwrap_or_else(|| panic!("{b}"));
        let (min, sec) = clock.split_once(':').unwrap();
        min.parse::<u64>().unwrap() * 60 + sec.parse::<u64>().unwrap()
    };
    let (first, later) = (left(&opened["badge"]), left(&opened["badgeLater"]));
    assert!((280..=300).contains(&first), "about 5 minutes left: {report}");
    assert!(later < first && first - later <= 4, "the badge counts down: {report}");
    assert_eq!(opened["askHelpShown"], true, "{report}");
    assert_eq!(opened["keptToken"], true, "a reload resumes with the room's token: {report}");
    assert!(
        !opened["guestChat"].to_string().contains("said in the main room"),
        "the main room's chat is not the room's: {report}"
    );
    assert_eq!(opened["guestTitle"].as_str().unwrap().split(" — ").nth(1), Some("Room 1"), "{report}");
    assert!(opened["hostPanelRoom"].as_str().unwrap().contains("GIA"), "{report}");
    assert!(!opened["hostPeople"].to_string().contains("GIA"), "the guest left the main room: {report}");
    assert_eq!(opened["hostLive"], true, "{report}");
    assert_eq!(opened["hostBadgeShown"], false, "the host stays in the main room: {report}");
    assert_eq!(report["reloaded"]["guest"]["meeting"], room_meeting.as_str(), "{report}");
    assert_eq!(report["reloaded"]["guest"]["room"], "Room 1", "{report}");
    assert_eq!(report["reloaded"]["guest"]["me"], guest_id, "the reload resumed the same participant: {report}");

    // Help, and the host's visit: video both ways in the room.
    assert_eq!(report["help"], "GIA asks for help in Room 1", "{report}");
    assert_eq!(report["visit"]["host"]["meeting"], room_meeting.as_str(), "{report}");
    assert_eq!(report["visit"]["host"]["room"], "Room 1", "{report}");
    assert_eq!(report["visit"]["backShown"], true, "{report}");
    for (page, me, other) in [("host", &host_id, &guest_id), ("guest", &guest_id, &host_id)] {
        let media = &report["inRoom"][page];
        assert!(media["first"].as_u64().unwrap() > 10 && media["grew"].as_u64().unwrap() > 10, "{page}: {report}");
        let tiles = media["tiles"].as_array().unwrap();
        assert!(tiles.contains(other) && tiles.contains(me), "{page}: its own tile and the other's: {report}");
    }
    assert!(report["inRoom"]["hostPeople"].to_string().contains("GIA"), "{report}");
    assert_eq!(report["broadcast"]["banner"], "📣 HANA to all rooms: Two minutes left, wrap up", "{report}");
    assert_eq!(report["broadcast"]["chat"], serde_json::json!(["HANA (to all rooms): Two minutes left, wrap up"]));

    // Closing: a countdown on both pages, then both back home with video both ways.
    for page in ["host", "guest"] {
        let banner = report["closing"][page].as_str().unwrap();
        assert!(banner.starts_with("Rooms close in "), "{page}: {report}");
    }
    assert!(report["closing"]["guestBadge"].as_str().unwrap().contains("closing in"), "{report}");
    let back_ms = report["closing"]["backAfterMs"].as_u64().unwrap();
    assert!((3000..20000).contains(&back_ms), "back after the 4 s warning: {report}");
    let back = &report["back"];
    for (page, other) in [("host", &guest_id), ("guest", &host_id)] {
        assert_eq!(back[page]["meeting"], "workshop", "{page}: {report}");
        assert!(back[page]["room"].is_null(), "{page}: {report}");
        let media = &back["media"][page];
        assert!(media["first"].as_u64().unwrap() > 10 && media["grew"].as_u64().unwrap() > 10, "{page}: {report}");
        let tiles = media["tiles"].as_array().unwrap();
        assert!(tiles.contains(other) && tiles.contains(&back[page]["me"]), "its own tile and the other's: {report}");
        let chat = back[format!("{page}Chat").as_str()].to_string();
        assert!(chat.contains("said in the main room") && !chat.contains("said in the room"), "{page}: {report}");
    }
    assert_eq!(back["badgeShown"], false, "{report}");
    assert_eq!(back["askHelpShown"], false, "{report}");
    assert_eq!(back["keptToken"], true, "{report}");
    assert_eq!(back["title"], report["start"]["title"], "{report}");

    // The room was a Meeting of its own beside the main one, and it was ended.
    let meetings: kube::Api<switchboard_crds::Meeting> = m.env.ns.api();
    let room = meetings.get(&room_meeting).await.unwrap();
    assert_eq!(room.spec.parent_ref.map(|p| p.name).as_deref(), Some("workshop"));
    assert!(room.status.and_then(|s| s.end_requested).is_some(), "the room was ended");
    for shot in ["client-breakout-host.png", "client-breakout-room.png"] {
        let png = std::fs::read(switchboard_e2e::repo_root().join("target/test-artifacts").join(shot)).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
    (m, report)
}

/// A network change: the page runs in a network namespace whose only link to signaling
/// and the SFU goes down for 6 s (the browser goes offline; video stops). Twice: first
/// the link comes back as it was, then with another address (a move to another network:
/// every path from the old address is gone). The client reconnects signaling at once
/// on `online`, resumes its session and restarts ICE on both connections. Back on the
/// same network, video decodes again within 3 s; on a new one, within 6 s (the browser
/// itself takes 1 to 3 s to gather candidates on a network it has just seen). Neither
/// freezes again once resumed. The other participant is a Rust client publishing VP8
/// and Opus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_resumes_after_the_network_path_comes_back_or_moves() {
    let _turn = BROWSERS.lock().await;
    use switchboard_sfu_client::encoded::{EncodedCodec, ToneClip, VideoClip, encode_clip};
    use switchboard_sfu_client::{JoinOptions, NetworkOptions, Publish};
    use switchboard_signaling_client::MediaSession;

    let link = switchboard_e2e::netns::Link::create().expect("a network namespace (root)");
    let m = BrowserMeeting::start_on("sig-netchange", "roaming", "ray", serde_json::json!({}), link.host_ip).await;
    let dir = std::env::temp_dir().join(format!("switchboard-netchange-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let camera = encode_clip(VideoClip::new(EncodedCodec::Vp8, "testsrc2"), 30, &dir.join("cam.ivf")).unwrap();
    let mic = encode_clip(ToneClip::new(440), 30, &dir.join("mic.ogg")).unwrap();
    let (ray, grant, _) = connect(&rest(&m.server.url, "ray", None), "roaming").await;
    let publish = vec![Publish::encoded("ray-mic", mic), Publish::encoded("ray-cam", camera)];
    let net = NetworkOptions { local_ips: vec![link.host_ip.into()], ..Default::default() };
    let _media =
        MediaSession::start(ray.clone(), &grant.participant_id, JoinOptions { publish, net, ..Default::default() })
            .await
            .unwrap();
    let url = m.url("nia");
    let link = std::sync::Arc::new(link);
    let inside = link.clone();
    let report = tokio::task::spawn_blocking(move || {
        switchboard_e2e::browser::network_change(&inside, &url, std::time::Duration::from_secs(6))
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("browser: {e}"));
    println!("network change report: {report}");
    // (step, resumed within, back for good within): after a flap the old path carries
    // media at once, and the forced restart's move to new credentials can freeze it once
    // more (webrtc-rs drops the old pair when it restarts); after a move only the
    // restart can, once Chromium uses the new address (~2 s of its debounce). A move can
    // take two restarts (the first gathered only loopback) and then, rarely, webrtc-rs's
    // agent holds media ~3.5 s after connecting (seen once in the suite: connected at
    // 3.2 s, decoding at 6.7 s): 8 s bounds that without hiding a lost resume. After a
    // flap the restart's freeze can come as late as the second restart, and a flap's
    // first restart too can gather only loopback candidates (then the second connects
    // once the network's appear, ~3 s later): 10 s bounds both.
    for (step, within_ms, stable_ms) in [("flap", 3000, 10000), ("moved", 8000, 10000)] {
        let r = &report[step];
        assert!(r["decodedDuringOutage"].as_u64().unwrap() <= 2, "{step}: the path was really gone: {report}");
        assert!(r["bannerDuringOutage"].as_str().unwrap() != "", "{step}: the page said so: {report}");
        let resumed = r["resumeMs"].as_u64().unwrap_or_else(|| panic!("{step}: media never resumed: {report}"));
        assert!(resumed <= within_ms, "{step}: video decodes again within {within_ms} ms: {report}");
        let stable = r["stableMs"].as_u64().unwrap();
        assert!(stable <= stable_ms, "{step}: no freeze of a second or more after {stable_ms} ms: {report}");
        assert!(r["iceRestarts"].as_u64().unwrap() >= 1, "{step}: through an ICE restart: {report}");
        // The publisher connection (the page's own camera and microphone) is back too.
        assert_eq!(r["bothConnected"], true, "{step}: both connections connected again: {report}");
        assert_eq!(r["banner"], "", "{step}: the banner is gone: {report}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    m.env.ns.delete().await;
}

/// A Webinar from the attendee's page: it sees the host (video, the people list) and
/// the audience counted, not listed (two more attendees, Rust clients); it raises its
/// hand, the host's page shows it and clicks "Invite to speak"; the attendee's page
/// publishes and the host hears it (audio energy, none before), its hand lowered; moved
/// back to the audience, it is silent again and its camera released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webinar_attendee_raises_a_hand_is_invited_to_speak_and_is_heard() {
    let _turn = BROWSERS.lock().await;
    let m = BrowserMeeting::start("sig-webinar-page", "keynote", "hana", serde_json::json!({"mode": "Webinar"})).await;
    let (_cy, _, cy_joined) = connect(&rest(&m.server.url, "cy", None), "keynote").await;
    let (_dee, _, _) = connect(&rest(&m.server.url, "dee", None), "keynote").await;
    assert_eq!(cy_joined.participant.role, switchboard_signaling_proto::Role::Viewer);
    let (host, attendee) = (m.url("hana"), m.url("ada"));
    let report = tokio::task::spawn_blocking(move || switchboard_e2e::browser::webinar(&host, &attendee, "ADA"))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("browsers: {e}"));
    println!("webinar report: {report}");
    assert_eq!(report["attendeeRole"], "viewer", "{report}");
    let sees: Vec<&str> = report["attendeeSees"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(sees.len(), 2, "the host and itself, not the other attendees: {report}");
    assert!(sees.iter().any(|s| s.starts_with("HANA") && s.contains("host")), "{report}");
    assert!(report["audience"].as_str().unwrap().contains("3 in the audience"), "{report}");
    assert_eq!(report["attendeeControls"], serde_json::json!({"mic": false, "cam": false}), "{report}");
    assert_eq!(report["heardBefore"].as_f64().unwrap(), 0.0, "nothing from the attendee before: {report}");
    assert_eq!(report["hostSawHand"], true);
    assert!(report["heardAfter"].as_f64().unwrap() > 0.0, "the host hears the invited attendee: {report}");
    assert_eq!(report["handAfter"], "Raise hand", "invited, its hand went down: {report}");
    assert_eq!(report["attendeeControlsAfter"], serde_json::json!({"mic": true, "cam": true}), "{report}");
    assert_eq!(report["heardMovedBack"].as_f64().unwrap(), 0.0, "moved back, silent: {report}");
    assert_eq!(report["attendeeLocalAfter"], false, "its camera and microphone released: {report}");
    m.env.ns.delete().await;
}

/// A meeting with `spec.audio: Mixed` in two Chromium pages: each plays the SFU's mix
/// from an audio element of its own (no tile for the mixer), receives no other audio
/// stream, hears the other page through it, and still sees the other's camera.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_in_a_mixed_audio_meeting_hear_each_other_through_the_mix() {
    let _turn = BROWSERS.lock().await;
    let m = BrowserMeeting::start("sig-mixed-page", "allhands", "hana", serde_json::json!({"audio": "Mixed"})).await;
    let (a, b) = (m.url("hana"), m.url("ada"));
    let report = tokio::task::spawn_blocking(move || switchboard_e2e::browser::mixed(&a, &b))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("browsers: {e}"));
    println!("mixed report: {report}");
    for page in ["a", "b"] {
        let r = &report[page];
        assert_eq!(r["mix"], true, "{page} plays the mix: {report}");
        assert_eq!(r["mixerTile"], false, "{page} shows no tile for the mixer: {report}");
        assert_eq!(r["audioStreams"], 1, "{page} receives one audio stream, the mix: {report}");
        assert!(r["heard"].as_f64().unwrap() > 0.0, "{page} hears the other through the mix: {report}");
        let me = r["me"].as_str().unwrap();
        let tiles = r["tiles"].as_array().unwrap();
        assert!(tiles.iter().any(|t| t.as_str() != Some(me)), "{page} shows the other's camera: {report}");
    }
    m.env.ns.delete().await;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// `adaptive.mjs` running: a publisher page (host `publisher`, inside `publisher_link`
/// when given) and a viewer page inside `viewer_link`, sampled until [`Watch::stop`].
struct Watch {
    script: tokio::task::JoinHandle<Result<serde_json::Value, String>>,
    dir: std::path::PathBuf,
    /// The viewer decodes video (else the script failed; `stop` says why).
    ready: bool,
}

impl Watch {
    async fn start(
        m: &BrowserMeeting,
        label: &str,
        viewer_link: &switchboard_e2e::netns::Link,
        publisher_link: Option<&switchboard_e2e::netns::Link>,
        publisher: &str,
        viewer: &str,
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("switchboard-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ready, stop) = (dir.join("ready"), dir.join("stop"));
        let _ = std::fs::remove_file(&ready);
        let _ = std::fs::remove_file(&stop);
        let (publisher, viewer, name) = (m.url(publisher), m.url(viewer), viewer_link.name.clone());
        let publisher_name = publisher_link.map(|l| l.name.clone());
        let r = ready.clone();
        let script = tokio::task::spawn_blocking(move || {
            switchboard_e2e::browser::adaptive(&name, publisher_name.as_deref(), &publisher, &viewer, &r, &stop)
        });
        let _ = tokio::time::timeout(std::time::Duration::from_secs(120), async {
            while !ready.exists() && !script.is_finished() {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
        .await;
        Self { ready: ready.exists(), script, dir }
    }

    async fn stop(self) -> serde_json::Value {
        std::fs::write(self.dir.join("stop"), "stop").unwrap();
        let report = self.script.await.unwrap().unwrap_or_else(|e| panic!("browsers: {e}"));
        let _ = std::fs::remove_dir_all(&self.dir);
        report
    }
}

/// Adaptive quality from a browser's side (issue #30): a viewer whose Chromium sits behind
/// a link shaped by tbf watches a simulcast publisher (Chromium on the host) full-size.
/// At 3 Mbps it receives the high layer; narrowed to 600 kbps it steps down, and back
/// at 3 Mbps up again (the SFU's send-side estimate probes for it), each switch on a
/// keyframe and no freeze of a second or more; at 150 kbps the video pauses and the
/// voice keeps arriving with its energy. The SFU's estimate comes from the browser's
/// transport-wide feedback alone (Chromium sends no REMB once transport-cc is agreed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_behind_a_narrowing_link_steps_down_pauses_video_keeps_audio_and_comes_back_up() {
    let _turn = BROWSERS.lock().await;
    let link = switchboard_e2e::netns::Link::create().expect("a network namespace (root)");
    link.set_downlink_bps(Some(3_000_000)).unwrap();
    let m = BrowserMeeting::start_on("sig-adaptive", "narrow", "pat", serde_json::json!({}), link.host_ip).await;
    let watch = Watch::start(&m, "adaptive", &link, None, "pat", "val").await;
    let mut changes = Vec::new();
    if watch.ready {
        for (bps, seconds) in [(3_000_000, 20), (600_000, 20), (3_000_000, 25), (150_000, 20)] {
            link.set_downlink_bps(Some(bps)).unwrap();
            changes.push(now_ms());
            tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
        }
        changes.push(now_ms());
    }
    let report = watch.stop().await;
    assert_eq!(changes.len(), 5, "the viewer never decoded video: {report}");
    let samples: Vec<Sample> = serde_json::from_value(report["samples"].clone()).unwrap();
    let phases: Vec<Phase> = changes.windows(2).map(|w| phase(&samples, w[0], w[1])).collect();
    let down = reached(&samples, changes[1], |w| w > 0 && w < phases[0].width_at_end);
    let up = reached(&samples, changes[2], |w| w >= phases[0].width_at_end);
    println!("adaptive: rids {} phases {phases:?}; adapted down after {down:?} ms, up after {up:?} ms", report["rids"]);
    let trace = |from: u64| timeline(&samples, from, 8_000);
    println!("after the narrowing (ms:width/frames): {}", trace(changes[1]));
    println!("after the widening: {}", trace(changes[2]));
    // Where each phase's longest freeze was, with what the viewer saw around it.
    for (i, p) in phases[..3].iter().enumerate() {
        let from = p.longest_freeze_from;
        let start = changes[i];
        println!(
            "phase {i}: longest freeze {} ms from {} ms: {}",
            p.longest_freeze_ms,
            from - start,
            trace(from.saturating_sub(1_000))
        );
    }
    let high = phases[0].width_at_end;
    assert!(high >= 640, "at 3 Mbps the viewer receives a high layer: {phases:?}");
    assert!(phases[1].width_at_end < high, "at 600 kbps it steps down: {phases:?}");
    assert!(down.is_some_and(|ms| ms <= 5_000), "down within 5 s: {down:?}");
    assert!(phases[2].width_at_end >= high, "back at 3 Mbps it steps up again: {phases:?}");
    assert!(up.is_some_and(|ms| ms <= 20_000), "up within 20 s: {up:?}");
    for (i, p) in phases[..3].iter().enumerate() {
        assert!(p.longest_freeze_ms < 1_000, "phase {i}: no freeze of a second or more: {phases:?}");
    }
    // Chromium can only change the decoded size on a keyframe; the SFU switches there too.
    let window: Vec<&Sample> = samples.iter().filter(|s| s.t >= changes[0] && s.t < changes[3]).collect();
    for pair in window.windows(2) {
        if pair[0].w != pair[1].w && pair[0].w > 0 && pair[1].w > 0 {
            assert!(pair[1].kf > pair[0].kf, "a switch without a keyframe decoded: {pair:?}");
        }
    }
    // 150 kbps: video pauses (after the first seconds), the voice keeps arriving.
    let quiet = phase(&samples, changes[3] + 8_000, changes[4]);
    // Paused: a probe that finds a little room may bring the lowest layer back for a
    // moment before the pause holds again (a few frames of some 300).
    assert!(quiet.frames <= 20, "at 150 kbps video pauses: {quiet:?}");
    assert!(quiet.audio_packets >= 250, "the voice keeps arriving (~50 packets/s): {quiet:?}");
    assert!(quiet.audio_energy_per_second > 1e-4, "with its energy: {quiet:?}");
    m.env.ns.delete().await;
}

/// A second namespace's client reaches the host's services on the first link's address:
/// its default route goes to the host.
fn route_to_host(link: &switchboard_e2e::netns::Link) {
    let out = std::process::Command::new("ip")
        .args(["-n", &link.name, "route", "add", "default", "via", &link.host_ip.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "ip route: {}", String::from_utf8_lossy(&out.stderr));
}

/// Issue #30's loss case: 5 % random loss on the viewer's downlink and 5 % on the
/// publisher's uplink (each browser in a namespace of its own, nftables dropping at
/// random). Video keeps decoding: the SFU NACKs the publisher's losses and answers the
/// viewer's NACKs on the RTX stream. Audio: the SFU answers the publisher with RED
/// (RFC 2198) first, so Chromium sends every Opus frame twice (in its packet and the
/// next), and forwards RED to the viewer as is. The threshold: about 9.75 % of packets
/// are lost end to end; with one redundant copy a frame is lost only when its packet and
/// the next both are (~1 %), where plain Opus would conceal ~10 %. 3 % allows for the
/// jitter buffer's own concealment while it adapts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_five_percent_loss_on_each_leg_video_keeps_decoding_and_red_covers_the_audio() {
    let _turn = BROWSERS.lock().await;
    let viewer_link = switchboard_e2e::netns::Link::create().expect("a network namespace (root)");
    let publisher_link = switchboard_e2e::netns::Link::create().expect("a second namespace");
    route_to_host(&publisher_link);
    let m = BrowserMeeting::start_on("sig-lossy", "lossy", "lea", serde_json::json!({}), viewer_link.host_ip).await;
    let watch = Watch::start(&m, "lossy", &viewer_link, Some(&publisher_link), "lea", "lou").await;
    let mut window = None;
    if watch.ready {
        viewer_link.set_loss(0.05, 0.0).unwrap();
        publisher_link.set_loss(0.0, 0.05).unwrap();
        let from = now_ms();
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        window = Some((from + 3_000, now_ms()));
    }
    let report = watch.stop().await;
    let (from, to) = window.unwrap_or_else(|| panic!("the viewer never decoded video: {report}"));
    let samples: Vec<Sample> = serde_json::from_value(report["samples"].clone()).unwrap();
    let p = phase(&samples, from, to);
    println!("lossy: {p:?}; RED: {}", report["red"]);
    println!("around the longest freeze: {}", timeline(&samples, p.longest_freeze_from.saturating_sub(1_000), 6_000));
    let answer: Vec<&str> =
        report["red"]["publisherAnswer"].as_array().unwrap().iter().filter_map(|l| l.as_str()).collect();
    let first_pt = answer.first().and_then(|m| m.split(' ').nth(3)).unwrap_or_default();
    let red_pt = answer.iter().find_map(|l| l.strip_prefix("a=rtpmap:")?.strip_suffix(" red/48000/2"));
    assert_eq!(red_pt, Some(first_pt), "the SFU answers the publisher with RED first: {report}");
    let seconds = (to - from) as f64 / 1e3;
    assert!(p.frames as f64 / seconds >= 10.0, "video keeps decoding (≥ 10 frames/s): {p:?}");
    // A video packet lost on the publisher's leg and not recovered before the viewer gives
    // up leaves Chromium waiting up to 3 s (`kMaxWaitForFrameMs`) before it asks for a
    // keyframe: seen in two runs of five, once per run (2.86–2.9 s). That wait is the
    // bound here, not a freeze on every loss; shortening it (the SFU asking for a keyframe
    // itself when a subscriber keeps NACKing a packet it never had) is an open item.
    assert!(p.longest_freeze_ms < 3_500, "no freeze beyond Chromium's keyframe wait: {p:?}");
    assert!(p.audio_lost as f64 >= 0.02 * p.audio_packets as f64, "audio packets were lost: {p:?}");
    assert!(p.audio_concealed < 0.03, "RED covers the losses (under 3 % concealed): {p:?}");
    m.env.ns.delete().await;
}

/// Issue #30's delay case: 50 ms added each way (100 ms of round trip) with ±30 ms of
/// jitter on the viewer's link (the NFQUEUE emulator). End-to-end latency is measured as
/// the viewer's clock minus the `estimatedPlayoutTimestamp` of its audio (the sender's
/// time of what plays out now, from the SFU's sender reports; everything runs on this
/// machine's one clock), first on a clean link, then on the delayed one, and reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_100_ms_of_added_round_trip_and_30_ms_of_jitter_media_flows_and_its_latency_is_measured() {
    let _turn = BROWSERS.lock().await;
    let link = switchboard_e2e::netns::Link::create().expect("a network namespace (root)");
    let m = BrowserMeeting::start_on("sig-delay", "far", "dan", serde_json::json!({}), link.host_ip).await;
    let watch = Watch::start(&m, "delay", &link, None, "dan", "dee").await;
    let mut windows = Vec::new();
    if watch.ready {
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        windows.push((now_ms() - 8_000, now_ms()));
        let ms = std::time::Duration::from_millis;
        link.set_delay(ms(50), ms(50), ms(30)).unwrap();
        let from = now_ms();
        tokio::time::sleep(std::time::Duration::from_secs(20)).await;
        windows.push((from + 5_000, now_ms()));
    }
    let report = watch.stop().await;
    assert_eq!(windows.len(), 2, "the viewer never decoded video: {report}");
    let samples: Vec<Sample> = serde_json::from_value(report["samples"].clone()).unwrap();
    let latency = |(from, to): (u64, u64)| -> Vec<f64> {
        // NTP counts from 1900: 2,208,988,800 s before the Unix epoch.
        let mut l: Vec<f64> = samples
            .iter()
            .filter(|s| s.t >= from && s.t < to && s.ept > 0.0)
            .map(|s| s.t as f64 - (s.ept - 2_208_988_800_000.0))
            .collect();
        l.sort_by(f64::total_cmp);
        l
    };
    let (clean, delayed) = (latency(windows[0]), latency(windows[1]));
    let median = |l: &[f64]| l.get(l.len() / 2).copied().unwrap_or(f64::NAN);
    let p95 = |l: &[f64]| l.get(l.len() * 95 / 100).copied().unwrap_or(f64::NAN);
    let p = phase(&samples, windows[1].0, windows[1].1);
    println!(
        "latency (ms): clean median {:.0} p95 {:.0}; 50 ms each way ±30 ms: median {:.0} p95 {:.0}; {p:?}",
        median(&clean),
        p95(&clean),
        median(&delayed),
        p95(&delayed)
    );
    assert!(clean.len() >= 20 && delayed.len() >= 40, "playout times reported: {} / {}", clean.len(), delayed.len());
    assert!(median(&delayed) >= median(&clean) + 40.0, "the added delay shows in the latency");
    assert!(median(&delayed) < 600.0, "and stays interactive");
    assert!(p.frames >= 100 && p.audio_packets >= 500, "media keeps flowing: {p:?}");
    m.env.ns.delete().await;
}

/// What a hidden subscriber on the SFU receives of each publisher: whole frames, as
/// they travel (the VP8 payload descriptor taken off, packets of one frame joined).
#[derive(Default)]
struct FrameProbe {
    frames: std::sync::Mutex<Vec<ProbedFrame>>,
    /// Per SSRC: the video frame being put together.
    partial: std::sync::Mutex<std::collections::HashMap<u32, PartialFrame>>,
}

/// A video frame's RTP timestamp, the next sequence number it needs, its bytes so far.
type PartialFrame = (u32, u16, Vec<u8>);

struct ProbedFrame {
    publisher: String,
    video: bool,
    bytes: Vec<u8>,
}

impl switchboard_sfu_client::MediaSink for FrameProbe {
    fn rtp(&self, track: &switchboard_sfu_client::SinkTrack, packet: &webrtc::rtp::packet::Packet) {
        use webrtc::rtp::packetizer::Depacketizer as _;
        let done = |bytes: Vec<u8>| {
            let frame = ProbedFrame { publisher: track.publisher.clone(), video: track.video, bytes };
            self.frames.lock().unwrap().push(frame);
        };
        if !track.video {
            done(packet.payload.to_vec());
            return;
        }
        let mut vp8 = webrtc::rtp::codecs::vp8::Vp8Packet::default();
        let Ok(payload) = vp8.depacketize(&packet.payload) else { return };
        let (ssrc, seq, ts) = (packet.header.ssrc, packet.header.sequence_number, packet.header.timestamp);
        let mut partial = self.partial.lock().unwrap();
        if vp8.s == 1 && vp8.pid == 0 {
            partial.insert(ssrc, (ts, seq.wrapping_add(1), payload.to_vec()));
        } else if let Some((at, next, bytes)) = partial.get_mut(&ssrc)
            && *at == ts
            && *next == seq
        {
            bytes.extend_from_slice(&payload);
            *next = seq.wrapping_add(1);
        } else {
            // A packet lost or out of order: the frame is not whole.
            partial.remove(&ssrc);
            return;
        }
        if packet.header.marker
            && let Some((_, _, bytes)) = partial.remove(&ssrc)
        {
            done(bytes);
        }
    }
    fn sender_report(&self, _: &switchboard_sfu_client::SinkTrack, _: u64, _: u32) {}
}

/// A frame the page logged as sent (test hooks): key id, counter, clear bytes, plaintext length and hash.
#[derive(serde::Deserialize, Debug)]
struct SentFrame {
    kid: u64,
    ctr: u64,
    clear: usize,
    len: usize,
    sha: String,
}

fn sha_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The media keys a page held for `sender` (exported through its test hooks).
fn keys_for(keys: &serde_json::Value, sender: &str) -> Vec<(u64, [u8; 32])> {
    keys[sender]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|k| {
                    let hex = k["base"].as_str().unwrap();
                    let bytes: Vec<u8> =
                        (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
                    (k["kid"].as_u64().unwrap(), bytes.try_into().unwrap())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// End-to-end encryption with three Chromium pages (docs/e2ee.md): each decodes the
/// others' video and hears their audio; a hidden subscriber on the SFU receives only
/// frames with an SFrame trailer whose bytes are not the plaintext the sender logged,
/// and which open, with a key a member held, to exactly that plaintext; the pages'
/// crypto matches crates/sframe's known answers and the pairwise safety codes agree; a
/// simulcast switch still happens (on keyframes, whose first bytes stay in clear); after
/// the third page leaves, the others' new frames open with none of the keys it held,
/// nor any ratchet of them, while a remaining member's keys open them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pages_in_an_e2ee_meeting_see_and_hear_each_other_and_the_sfu_sees_ciphertext() {
    let _turn = BROWSERS.lock().await;
    let m = BrowserMeeting::start("sig-e2ee-page", "sealed", "hana", serde_json::json!({"e2ee": true})).await;
    let probe = std::sync::Arc::new(FrameProbe::default());
    let room = switchboard_crds::meeting::room_name(&m.env.ns.name, &m.name);
    let urls = [m.url("hana"), m.url("bea"), m.url("cal")];
    let vectors = switchboard_e2e::repo_root().join("crates/sframe/tests/vectors.json");
    let browsers = tokio::task::spawn_blocking(move || {
        switchboard_e2e::browser::e2ee(&vectors, [urls[0].as_str(), urls[1].as_str(), urls[2].as_str()])
    });
    // The probe joins the SFU room as a recorder would, once the pages made it.
    let sfu = switchboard_sfu_client::SfuApi::new(m._sfu.endpoint.clone());
    let opts = || switchboard_sfu_client::JoinOptions {
        kind: switchboard_sfu_api::ParticipantKind::Hidden,
        sink: Some(probe.clone()),
        ..Default::default()
    };
    let mut hidden = None;
    for _ in 0..120 {
        match switchboard_sfu_client::Participant::join(sfu.clone(), &room, "e2ee-probe", opts()).await {
            Ok(p) => {
                hidden = Some(p);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    }
    let _hidden = hidden.expect("the probe joined the SFU room");
    let report = browsers.await.unwrap().unwrap_or_else(|e| panic!("browsers: {e}"));
    let brief = serde_json::json!({"outbound": report["outbound"], "ids": report["ids"], "before": report["before"], "after": report["after"], "simulcast": report["simulcast"], "selfTest": report["selfTest"], "codes": report["codes"]});
    println!("e2ee report: {brief}");
    let ids: Vec<String> = serde_json::from_value(report["ids"].clone()).expect("each page's participant id");
    let (a, b, c) = (ids[0].as_str(), ids[1].as_str(), ids[2].as_str());

    // Each page decrypted and showed the others, and played their audio.
    for page in report["before"].as_array().unwrap() {
        let me = page["me"].as_str().unwrap();
        for other in ids.iter().filter(|i| i.as_str() != me) {
            assert!(page["decrypted"][other].as_u64().unwrap_or(0) > 50, "{me} decrypted {other}: {brief}");
            assert!(page["tiles"][other]["frames"].as_u64().unwrap_or(0) > 10, "{me} shows {other}: {brief}");
        }
        assert!(page["audioEnergy"].as_f64().unwrap() > 0.0, "{me} hears the others: {brief}");
        let concealed = page["concealed"].as_f64().unwrap() / page["audioSamples"].as_f64().unwrap().max(1.0);
        assert!(concealed < 0.2, "{me}'s audio decodes (garbage Opus is concealed): {concealed}: {brief}");
    }
    assert_eq!(report["selfTest"]["bad"], serde_json::json!([]), "{brief}");
    assert!(report["selfTest"]["checked"].as_u64().unwrap() >= 10, "{brief}");
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        let (there, back) = (&report["codes"][format!("{i}->{j}")], &report["codes"][format!("{j}->{i}")]);
        assert!(there.as_str().is_some_and(|c| c.len() == 23), "{brief}");
        assert_eq!(there, back, "the two sides of {i}/{j} show one safety code");
    }
    assert!(report["codeShown"].as_str().unwrap().contains(report["codes"]["0->1"].as_str().unwrap()));
    assert_eq!((report["badge"].as_bool(), report["recordHidden"].as_bool()), (Some(true), Some(true)));
    let sim = &report["simulcast"];
    assert!(
        sim["large"].as_u64() > sim["small"].as_u64(),
        "a larger layer than the small tile's, before or after it (a switch on encrypted keyframes): {brief}"
    );
    assert!(sim["smallFrames"].as_u64() > Some(5) && sim["largeFrames"].as_u64() > Some(5), "{brief}");

    // The SFU's view: every frame has the shape of an encrypted one.
    let frames = std::mem::take(&mut *probe.frames.lock().unwrap());
    fn of<'a>(frames: &'a [ProbedFrame], who: &'a str, video: bool) -> impl Iterator<Item = &'a ProbedFrame> + 'a {
        frames.iter().filter(move |f| f.publisher == who && f.video == video)
    }
    let counts: Vec<(usize, usize)> =
        [a, b, c].iter().map(|who| (of(&frames, who, true).count(), of(&frames, who, false).count())).collect();
    println!("frames the probe received (video, audio) of a, b, c: {counts:?}");
    for (who, (video, audio)) in [a, b, c].iter().zip(&counts) {
        assert!(*video > 20 && *audio > 50, "the probe received {who}'s media: (video, audio) {counts:?}");
    }
    for f in frames.iter().filter(|f| !f.bytes.is_empty()) {
        switchboard_sframe::parse_trailer(&f.bytes).unwrap_or_else(|e| {
            panic!(
                "a frame of {} without an SFrame trailer ({e}): {:02x?}",
                f.publisher,
                &f.bytes[..f.bytes.len().min(24)]
            )
        });
    }
    // Frames the pages logged: not their plaintext, and a member's key opens them to it.
    let (keys_b, keys_c) = (&report["keysOfB"], &report["keysOfC"]);
    let mut matched = 0;
    for (who, sent_by) in [(a, "sentByA"), (b, "sentByB")] {
        let sent: Vec<SentFrame> = serde_json::from_value(report[sent_by].clone()).unwrap();
        let logged: std::collections::HashMap<(u64, u64), &SentFrame> =
            sent.iter().map(|s| ((s.kid, s.ctr), s)).collect();
        let holder = if who == a { keys_b } else { &report["keysOfC"] };
        let keys = keys_for(holder, who);
        for f in of(&frames, who, true).chain(of(&frames, who, false)) {
            let t = switchboard_sframe::parse_trailer(&f.bytes).unwrap();
            // A frame no longer than its clear bytes (a 1-byte Opus TOC in silence) has nothing to hide.
            let Some(s) = logged.get(&(t.kid, t.ctr)).filter(|s| s.len > s.clear) else { continue };
            assert_eq!(
                f.bytes.len(),
                s.len + 16 + t.header_len + 2,
                "ciphertext, tag and trailer around {} bytes",
                s.len
            );
            assert_eq!(t.clear, s.clear);
            assert_ne!(sha_hex(&f.bytes), s.sha, "the SFU saw the plaintext");
            assert_ne!(sha_hex(&f.bytes[..s.len]), s.sha, "the SFU saw the plaintext");
            if let Some(p) =
                keys.iter().find_map(|(_, k)| switchboard_sframe::decrypt_with_ratchets(k, &f.bytes, 255).ok())
            {
                assert_eq!(sha_hex(&p.plaintext), s.sha, "a member's key opens the frame to what was sent");
                matched += 1;
            }
        }
    }
    assert!(matched > 50, "frames matched to the senders' logs and opened: {matched}");

    // After cal left: a's new generation opens with none of cal's keys (nor their
    // ratchets), and with bea's; a's older frames did open with cal's keys.
    let cal_had = keys_for(keys_c, a);
    assert!(!cal_had.is_empty(), "cal held a's key while in the meeting");
    let cal_gen = cal_had.iter().map(|(kid, _)| kid >> 8).max().unwrap();
    let (mut old_opened, mut new_frames, mut new_opened_by_bea) = (0, 0, 0);
    let bea_has = keys_for(keys_b, a);
    for f in of(&frames, a, true).chain(of(&frames, a, false)) {
        let t = switchboard_sframe::parse_trailer(&f.bytes).unwrap();
        let opens_for_cal =
            cal_had.iter().any(|(_, k)| switchboard_sframe::decrypt_with_ratchets(k, &f.bytes, 255).is_ok());
        if t.kid >> 8 <= cal_gen {
            old_opened += usize::from(opens_for_cal);
            continue;
        }
        new_frames += 1;
        assert!(!opens_for_cal, "a frame of a's generation {} opened with the key of one who left", t.kid >> 8);
        if bea_has.iter().any(|(_, k)| switchboard_sframe::decrypt_with_ratchets(k, &f.bytes, 255).is_ok()) {
            new_opened_by_bea += 1;
        }
    }
    assert!(old_opened > 20, "before leaving, cal's keys opened a's frames: {old_opened}");
    assert!(
        new_frames > 50 && new_opened_by_bea * 10 >= new_frames * 9,
        "{new_frames} new frames, {new_opened_by_bea} opened by bea"
    );
    // And a and b still see each other after the rekey.
    for (i, page) in report["after"].as_array().unwrap().iter().enumerate() {
        let other = ids[1 - i].as_str();
        let before = report["before"][i]["tiles"][other]["frames"].as_u64().unwrap();
        assert!(page["tiles"][other]["frames"].as_u64().unwrap() > before + 30, "video after the rekey: {brief}");
    }
    m.env.ns.delete().await;
}
