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

/// A host page and a guest page (`breakouts.mjs`) running breakout rooms from the
/// host's panel: the guest (`guest_name`) moved into a room, its badge and a reload
/// there, help asked and the host's visit (video both ways in the room), a broadcast,
/// and the rooms closed with everyone back in the main meeting (video both ways again).
pub fn breakouts(host: &str, guest: &str, guest_name: &str) -> Result<serde_json::Value, String> {
    let artifacts = crate::repo_root().join("target/test-artifacts");
    let _ = std::fs::create_dir_all(&artifacts);
    run_for(None, "breakouts.mjs", &[host, guest, guest_name], &[("ARTIFACTS", artifacts.display().to_string())], 300)
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

/// Three pages in an end-to-end encrypted meeting (`e2ee.mjs`): each decrypts and
/// decodes the others, the page's crypto replays `vectors` (crates/sframe's known
/// answers), a simulcast switch, then the third page leaves. Reports the frames the first
/// two sent and the keys each held (test hooks).
pub fn e2ee(vectors: &std::path::Path, urls: [&str; 3]) -> Result<serde_json::Value, String> {
    let vectors = vectors.display().to_string();
    run_for(None, "e2ee.mjs", &[vectors.as_str(), urls[0], urls[1], urls[2]], &[], 200)
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
    // The pages' console, kept for a look after a run that passed too.
    let artifacts = repo_root().join("target/test-artifacts");
    if std::fs::create_dir_all(&artifacts).is_ok() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let _ = std::fs::write(artifacts.join(format!("{name}.log")), format!("{stdout}\n{stderr}"));
    }
    if !out.status.success() {
        return Err(format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    let line =
        stdout.lines().find_map(|l| l.strip_prefix("RESULT ")).ok_or_else(|| format!("no result line: {stdout}"))?;
    serde_json::from_str(line).map_err(|e| format!("{e}: {stdout}"))
}

/// One getStats sample of the viewer in `adaptive.mjs`.
#[derive(serde::Deserialize, Clone, Copy, Debug)]
pub struct Sample {
    /// Milliseconds since the epoch.
    pub t: u64,
    pub w: u64,
    pub fd: u64,
    pub kf: u64,
    /// Video packets lost, NACKs and PLIs sent, retransmitted packets received (for the report).
    #[serde(default)]
    pub vl: i64,
    #[serde(default)]
    pub nk: u64,
    #[serde(default)]
    pub pl: u64,
    #[serde(default)]
    pub rx: u64,
    pub ae: f64,
    pub ad: f64,
    pub ap: u64,
    /// Audio: concealed and received samples, packets lost, the playout's NTP time (ms).
    #[serde(default)]
    pub ac: u64,
    #[serde(rename = "as", default)]
    pub samples: u64,
    #[serde(default)]
    pub al: i64,
    #[serde(default)]
    pub ept: f64,
}

/// What the viewer saw between two instants (ms since the epoch).
#[derive(Debug)]
pub struct Phase {
    /// The decoded width at the end (the widest of the last 2 s).
    pub width_at_end: u64,
    /// Longest stretch without a newly decoded frame, in ms, and when it began (ms since the epoch).
    pub longest_freeze_ms: u64,
    pub longest_freeze_from: u64,
    pub frames: u64,
    pub audio_packets: u64,
    pub audio_energy_per_second: f64,
    /// Share of the audio samples played out that were concealed (lost, not recovered).
    pub audio_concealed: f64,
    pub audio_lost: i64,
}

pub fn phase(samples: &[Sample], from: u64, to: u64) -> Phase {
    let s: Vec<&Sample> = samples.iter().filter(|s| s.t >= from && s.t < to).collect();
    let (first, last) = (s[0], s[s.len() - 1]);
    let (mut longest, mut longest_from) = (0, first.t);
    let mut last_new = first.t;
    for pair in s.windows(2) {
        if pair[1].fd > pair[0].fd {
            last_new = pair[1].t;
        }
        if pair[1].t - last_new > longest {
            (longest, longest_from) = (pair[1].t - last_new, last_new);
        }
    }
    Phase {
        width_at_end: s.iter().filter(|x| x.t + 2000 >= last.t).map(|x| x.w).max().unwrap_or(0),
        longest_freeze_ms: longest,
        longest_freeze_from: longest_from,
        frames: last.fd - first.fd,
        audio_packets: last.ap - first.ap,
        audio_energy_per_second: (last.ae - first.ae) / (last.ad - first.ad).max(0.001),
        audio_concealed: (last.ac - first.ac) as f64 / (last.samples - first.samples).max(1) as f64,
        audio_lost: last.al - first.al,
    }
}

/// The first instant from `from` on when the decoded width satisfies `ok`, in ms after `from`.
pub fn reached(samples: &[Sample], from: u64, ok: impl Fn(u64) -> bool) -> Option<u64> {
    samples.iter().find(|s| s.t >= from && ok(s.w)).map(|s| s.t - from)
}

/// The freezes between two instants (ms since the epoch): each stretch of at least
/// `min_ms` without a newly decoded frame, in ms.
pub fn freezes(samples: &[Sample], from: u64, to: u64, min_ms: u64) -> Vec<u64> {
    let s: Vec<&Sample> = samples.iter().filter(|s| s.t >= from && s.t < to).collect();
    let mut out = Vec::new();
    let Some(first) = s.first() else { return out };
    let mut last_new = first.t;
    let mut longest_open = 0;
    for pair in s.windows(2) {
        if pair[1].fd > pair[0].fd {
            if longest_open >= min_ms {
                out.push(longest_open);
            }
            last_new = pair[1].t;
            longest_open = 0;
        } else {
            longest_open = pair[1].t - last_new;
        }
    }
    if longest_open >= min_ms {
        out.push(longest_open);
    }
    out
}

/// What the viewer saw from `from` (ms since the epoch) for `span_ms`, sample by sample:
/// `ms:width/frames decoded` since the one before, with the video packets lost, NACKs,
/// PLIs and retransmissions received where there were any.
pub fn timeline(samples: &[Sample], from: u64, span_ms: u64) -> String {
    let s: Vec<&Sample> = samples.iter().filter(|s| s.t >= from && s.t < from + span_ms).collect();
    s.windows(2)
        .map(|p| {
            let (a, b) = (p[0], p[1]);
            let counts = [
                ("lost", b.vl - a.vl),
                ("nack", b.nk as i64 - a.nk as i64),
                ("pli", b.pl as i64 - a.pl as i64),
                ("rtx", b.rx as i64 - a.rx as i64),
            ];
            let extra: String = counts.iter().filter(|(_, n)| *n != 0).map(|(k, n)| format!(",{k}{n}")).collect();
            format!("{}:{}/{}{extra}", b.t - from, b.w, b.fd - a.fd)
        })
        .collect::<Vec<_>>()
        .join(" ")
}
