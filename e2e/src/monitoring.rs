//! The monitoring tools, `promtool` and `prometheus`, built from the pinned Prometheus
//! module by `e2e/monitoring/build` (cached outside the repo like the cluster's
//! binaries; `./test` builds them before the tests run).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, bail};

use crate::repo_root;

/// The directory holding `promtool` and `prometheus` (built once per machine, looked up
/// once per process).
pub fn bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build().unwrap_or_else(|e| panic!("monitoring tools: {e:#}")))
}

fn build() -> anyhow::Result<PathBuf> {
    let script = repo_root().join("e2e/monitoring/build");
    let output = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!("{} failed with {}", script.display(), output.status);
    }
    let stdout = String::from_utf8(output.stdout)?;
    let dir = PathBuf::from(stdout.lines().last().unwrap_or_default());
    if !dir.join("promtool").is_file() {
        bail!("{} printed {stdout:?}, which holds no promtool", script.display());
    }
    Ok(dir)
}

/// Runs `promtool check metrics` (parse and lint) on `text` in the classic Prometheus
/// text format: `Ok` if it passes, otherwise its exit status and what it printed.
pub fn check_metrics(text: &str) -> anyhow::Result<()> {
    let mut child = Command::new(bin().join("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("promtool runs")?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = text.to_owned();
    // Written from a thread, so a promtool that answers before reading all cannot block us.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().context("promtool finishes")?;
    let _ = writer.join();
    if !output.status.success() {
        bail!(
            "promtool check metrics exited with {}:\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
