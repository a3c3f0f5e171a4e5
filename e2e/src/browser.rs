//! Headless Chromium (Debian's, driven by playwright-core from npm) joining a meeting:
//! `signaling-pod/tests/browser/two_peers.mjs` opens two pages that must each decode
//! the other's video.

use std::process::Command;

use crate::repo_root;

/// Runs two pages on `first` and `second`, saving a screenshot of the first at `shot`.
/// Returns the script's report (one object per page: frames, tiles, status), or its
/// output when it failed.
pub fn two_peers(first: &str, second: &str, shot: &std::path::Path) -> Result<serde_json::Value, String> {
    let dir = repo_root().join("signaling-pod/tests/browser");
    if !dir.join("node_modules/playwright-core").exists() {
        let out = Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir).output().expect("npm runs (Debian package npm)");
        assert!(out.status.success(), "npm ci: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = Command::new("timeout")
        .args(["150", "node", "two_peers.mjs", first, second, &shot.display().to_string()])
        .current_dir(&dir)
        .output()
        .expect("node runs (Debian package nodejs)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    let line = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")).ok_or_else(|| format!("no result line: {stdout}"))?;
    serde_json::from_str(line).map_err(|e| e.to_string())
}
