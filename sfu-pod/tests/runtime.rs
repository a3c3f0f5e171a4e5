//! The sfu-pod process under `SWITCHBOARD_WORKER_THREADS`: one worker runs a
//! single-threaded tokio runtime, the setting the forwarding benchmark recommends.

mod common;

use std::time::Duration;

use common::*;
use switchboard_sfu_client::{Participant, Publish};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_threaded_sfu_forwards_media_and_drains_on_sigterm() {
    let _slot = media_slot().await;
    let mut sfu = SfuProcess::start_with("sfu-one-thread", &[("SWITCHBOARD_WORKER_THREADS", "1")]);
    let mut people = Vec::new();
    for p in ["alice", "bob", "carol"] {
        people.push(
            join(
                &sfu.api,
                "one-thread",
                p,
                vec![Publish::audio(&format!("{p}-mic")), Publish::video(&format!("{p}-cam"))],
            )
            .await,
        );
    }
    for me in &people {
        let others: Vec<String> = ["alice", "bob", "carol"]
            .iter()
            .filter(|p| **p != me.id)
            .flat_map(|p| [format!("{p}-mic"), format!("{p}-cam")])
            .collect();
        me.wait_until("the others' audio and video", WAIT, |rx| {
            others.iter().all(|t| rx.get(t).is_some_and(|r| r.packets >= 20))
        })
        .await
        .unwrap();
    }
    // A drain on this runtime too: SIGTERM refuses newcomers, and the process exits once
    // the last participant has left.
    sfu.sigterm();
    people[0]
        .wait_event("the drain notice", WAIT, |e| matches!(e, switchboard_sfu_api::Event::Draining))
        .await
        .unwrap();
    let refused = Participant::join(sfu.api.clone(), "one-thread", "late", publishing(vec![])).await;
    assert!(refused.is_err(), "a draining SFU refuses new participants");
    for p in people {
        p.leave().await.unwrap();
    }
    let status = sfu.wait_exit(Duration::from_secs(20)).expect("the drained SFU exits");
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_bad_worker_count_stops_the_sfu_with_the_variable_named() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sfu-pod"))
        .env("SWITCHBOARD_API_ADDR", "127.0.0.1:0")
        .env("SWITCHBOARD_MEDIA_ADDR", "127.0.0.1:0")
        .env("SWITCHBOARD_WORKER_THREADS", "two")
        .output()
        .expect("sfu-pod runs");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing listens: {}", String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SWITCHBOARD_WORKER_THREADS must be a whole number, not \"two\""), "{stderr}");
}
