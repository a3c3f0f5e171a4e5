//! Two headless Chromium instances (Debian's chromium, driven by playwright-core) join
//! one meeting through signaling and a real SFU with fake camera and microphone, and
//! each decodes the other's video. The meeting is being recorded, and both pages show
//! the "Recording" indicator. The screenshot is kept in
//! `target/test-artifacts/browser-meeting.png`.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chromium_browsers_see_each_other_through_signaling_and_the_sfu() {
    let env = env("sig-browser").await;
    let sfu = sfu_pod::local::start("sfu-browser").await.unwrap();
    meeting(&env, "browsers", "hugo", serde_json::json!({})).await;
    assign(&env, "browsers", &[("sfu-browser", &sfu.endpoint)], &[]).await;
    let server = env.in_process(env.config()).await;
    let (status, body) = rest(&server.url, "hugo", None)
        .call(reqwest::Method::POST, "/api/v1/meetings/browsers/recordings", None)
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let url = |user: &str| format!("{}/j/browsers?token={}", server.url, user_token(user, None, 3600));
    let artifacts = switchboard_e2e::repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("browser-meeting.png");
    let _ = std::fs::remove_file(&shot);

    // The SFU and signaling run in this runtime: the browsers wait on a blocking thread.
    let (host, guest, path) = (url("hugo"), url("iris"), shot.clone());
    let report = tokio::task::spawn_blocking(move || switchboard_e2e::browser::two_peers(&host, &guest, &path))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("browsers: {e}"));
    for page in report.as_array().unwrap() {
        assert!(page["frames"].as_u64().unwrap() > 10, "{report}");
        assert!(page["tiles"].as_u64().unwrap() >= 2, "own tile and the other's: {report}");
        assert_eq!(page["recording"], true, "the Recording indicator shows: {report}");
    }
    let png = std::fs::read(&shot).expect("screenshot saved");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    env.ns.delete().await;
}
