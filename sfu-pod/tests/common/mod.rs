//! Starts real sfu-pod processes on loopback for media tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::Duration;

use switchboard_sfu_client::auth::{INSECURE_ENV, TOKEN_ENV, TOKEN_FILE_ENV};
use switchboard_sfu_client::{ApiToken, JoinOptions, NetworkOptions, Participant, Publish, SfuApi};

/// The credential of this test binary's SFUs: one, as a pool's SFUs share theirs.
pub static TOKEN: LazyLock<ApiToken> = LazyLock::new(ApiToken::generate);

pub struct SfuProcess {
    child: Child,
    /// Presents [`TOKEN`].
    pub api: SfuApi,
    pub media: String,
}

impl SfuProcess {
    pub fn start(name: &str) -> Self {
        Self::start_with(name, &[])
    }

    pub fn start_with(name: &str, env: &[(&str, &str)]) -> Self {
        if std::env::var("SFU_TEST_LOG").is_ok() {
            let _ =
                tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sfu-pod"));
        // An SFU of a pool whose credential is TOKEN; its origins are the other SFUs of
        // the test, on loopback (an `env` entry overrides any of these).
        cmd.env("SWITCHBOARD_API_ADDR", "127.0.0.1:0")
            .env("SWITCHBOARD_MEDIA_ADDR", "127.0.0.1:0")
            .env("SWITCHBOARD_NAME", name)
            .env(TOKEN_ENV, TOKEN.expose())
            .env("SWITCHBOARD_RELAY_ALLOWED_CIDRS", "127.0.0.0/8")
            .env_remove(TOKEN_FILE_ENV)
            .env_remove(INSECURE_ENV)
            .env_remove("SWITCHBOARD_API_PORT")
            .env_remove("SWITCHBOARD_POOL")
            .stdout(Stdio::piped())
            .stderr(if std::env::var("SFU_TEST_LOG").is_ok() { Stdio::inherit() } else { Stdio::null() });
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("sfu-pod starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("sfu-pod prints its addresses");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad first line {line:?}: {e}"));
        let api = SfuApi::new(v["api"].as_str().unwrap()).with_token(Some(&TOKEN));
        Self { child, api, media: v["media"].as_str().unwrap().to_owned() }
    }

    pub fn sigterm(&self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc_kill(self.child.id() as i32, 15) };
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

impl Drop for SfuProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn loopback() -> NetworkOptions {
    NetworkOptions { loopback_only: true, ..Default::default() }
}

pub fn publishing(publish: Vec<Publish>) -> JoinOptions {
    JoinOptions { publish, net: loopback(), ..Default::default() }
}

pub async fn join(sfu: &SfuApi, room: &str, id: &str, publish: Vec<Publish>) -> Participant {
    Participant::join(sfu.clone(), room, id, publishing(publish)).await.unwrap_or_else(|e| panic!("{id} joins: {e:#}"))
}

pub const WAIT: Duration = Duration::from_secs(20);

/// Media tests running at once. Each runs an SFU and several webrtc-rs peers; on two
/// cores, all of them at once starve the media clocks the tests measure.
static MEDIA_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(3);

/// Held for the length of a media test.
pub async fn media_slot() -> tokio::sync::SemaphorePermit<'static> {
    MEDIA_SLOTS.acquire().await.expect("never closed")
}
