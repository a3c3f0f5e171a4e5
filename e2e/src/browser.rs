//! Headless Chromium (Debian's, driven by playwright-core from npm) joining a meeting:
//! `signaling-pod/tests/browser/peers.mjs` opens one page per URL, and each must
//! decode video from the others; `controls.mjs` clicks through one page's controls.

use std::process::Command;
use std::time::Duration;

use crate::repo_root;

/// Runs two pages on `first` and `second`, saving a screenshot of the first at `shot`.
/// Returns the script's report (one object per page: frames, tiles, status), or its
/// output when it failed.
pub fn two_peers(first: &str, second: &str, shot: &std::path::Path) -> Result<serde_json::Value, String> {
    peers(&[first, second], shot, Duration::ZERO)
}

/// Runs one page per URL; each must decode video of another participant (a page or
/// any other client). The pages stay in the meeting `hold` longer after that.
pub fn peers(urls: &[&str], shot: &std::path::Path, hold: Duration) -> Result<serde_json::Value, String> {
    let shot = shot.display().to_string();
    let mut args = vec![shot.as_str()];
    args.extend_from_slice(urls);
    script("peers.mjs", &args, &[("PEERS_HOLD_MS", hold.as_millis().to_string())])
}

/// One page on `url` uses the client's controls (`controls.mjs`: chat, mute, hand,
/// screen share started and stopped by the browser's own button, an ICE restart) and
/// reports what it saw.
pub fn controls(url: &str) -> Result<serde_json::Value, String> {
    let artifacts = crate::repo_root().join("target/test-artifacts");
    let _ = std::fs::create_dir_all(&artifacts);
    script("controls.mjs", &[url], &[("ARTIFACTS", artifacts.display().to_string())])
}

/// A simulcast publisher page and a viewer page (`simulcast.mjs`): the viewer shows the
/// publisher's tile small, large, hidden and shown again, reporting the decoded width
/// and frames at each step.
pub fn simulcast(publisher: &str, viewer: &str) -> Result<serde_json::Value, String> {
    script("simulcast.mjs", &[publisher, viewer], &[])
}

/// The host's page of a meeting with a waiting room (`waiting.mjs`): it shows the
/// guests waiting, keeps a screenshot, denies `denied`, admits `admitted`, and admits
/// `others` with "Admit all".
pub fn waiting_room(
    host_url: &str,
    denied: &str,
    admitted: &str,
    others: &[&str],
) -> Result<serde_json::Value, String> {
    let artifacts = crate::repo_root().join("target/test-artifacts");
    let _ = std::fs::create_dir_all(&artifacts);
    let mut args = vec![host_url, denied, admitted];
    args.extend_from_slice(others);
    script("waiting.mjs", &args, &[("ARTIFACTS", artifacts.display().to_string())])
}

/// A Webinar's host page and an attendee's page (`webinar.mjs`): what the attendee
/// sees, its raised hand, its invitation to speak and its move back to the audience.
pub fn webinar(host: &str, attendee: &str, attendee_name: &str) -> Result<serde_json::Value, String> {
    script("webinar.mjs", &[host, attendee, attendee_name], &[])
}

/// Two pages in a meeting with mixed audio (`mixed.mjs`): the mix each plays, the
/// audio streams each receives, and what each hears of the other.
pub fn mixed(a: &str, b: &str) -> Result<serde_json::Value, String> {
    script("mixed.mjs", &[a, b], &[])
}

/// A host page and a guest page (`meeting_controls.mjs`), with a participant named
/// `other` the caller runs: the guest's hand (through a reload), screen share and mute
/// seen from the host's page; the host removes `other`, then ends the meeting for all.
pub fn meeting_controls(host: &str, guest: &str, other: &str) -> Result<serde_json::Value, String> {
    let artifacts = crate::repo_root().join("target/test-artifacts");
    let _ = std::fs::create_dir_all(&artifacts);
    script("meeting_controls.mjs", &[host, guest, other], &[("ARTIFACTS", artifacts.display().to_string())])
}

/// One page inside `link`'s namespace (`network_change.mjs`): once it decodes video, the
/// link goes down for `outage` and comes back with the namespace's other address (the
/// old one, and every path from it, gone); reports how long media took to resume.
pub fn network_change(link: &crate::netns::Link, url: &str, outage: Duration) -> Result<serde_json::Value, String> {
    let outage = outage.as_millis().to_string();
    let moved = format!("{}/{}", link.ns_ip_moved, link.prefix);
    run(Some(link), "network_change.mjs", &[url, &link.ns_if, &outage, &moved], &[])
}

/// A publisher page on the host (or inside `publisher_link`'s namespace) and a viewer
/// page whose Chromium runs inside `link`'s namespace (`adaptive.mjs`): once the viewer decodes, `ready` is created; the viewer's
/// inbound video and audio are sampled every 200 ms until `stop` exists. Blocks until
/// then: run it beside whatever changes the link.
pub fn adaptive(
    link_name: &str,
    publisher_link: Option<&str>,
    publisher: &str,
    viewer: &str,
    ready: &std::path::Path,
    stop: &std::path::Path,
) -> Result<serde_json::Value, String> {
    let env = [("READY_FILE", ready.display().to_string()), ("STOP_FILE", stop.display().to_string())];
    let mut args = vec![publisher, viewer, link_name];
    args.extend(publisher_link);
    run_for(None, "adaptive.mjs", &args, &env, 400)
}

/// Runs a playwright-core script of `signaling-pod/tests/browser` (installing its npm
/// dependencies once) and returns its `RESULT` line, or its output when it failed.
fn script(name: &str, args: &[&str], env: &[(&str, String)]) -> Result<serde_json::Value, String> {
    run(None, name, args, env)
}

/// [`script`], inside `netns` when given.
fn run(
    netns: Option<&crate::netns::Link>,
    name: &str,
    args: &[&str],
    env: &[(&str, String)],
) -> Result<serde_json::Value, String> {
    run_for(netns, name, args, env, 150)
}

/// [`run`], killed after `seconds`.
fn run_for(
    netns: Option<&crate::netns::Link>,
    name: &str,
    args: &[&str],
    env: &[(&str, String)],
    seconds: u32,
) -> Result<serde_json::Value, String> {
    let dir = repo_root().join("signaling-pod/tests/browser");
    if !dir.join("node_modules/playwright-core").exists() {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .expect("npm runs (Debian package npm)");
        assert!(out.status.success(), "npm ci: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut command = match netns {
        Some(link) => link.command("timeout"),
        None => Command::new("timeout"),
    };
    let out = command
        .args([seconds.to_string().as_str(), "node", name])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&dir)
        .output()
        .expect("node runs (Debian package nodejs)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    let line =
        stdout.lines().find_map(|l| l.strip_prefix("RESULT ")).ok_or_else(|| format!("no result line: {stdout}"))?;
    serde_json::from_str(line).map_err(|e| format!("{e}: {stdout}"))
}
