//! signaling-pod: Switchboard's signaling server.
//!
//! Prints one JSON line on stdout once listening — `{"url": "http://…"}` — so
//! harnesses that start it on an ephemeral port can find it.
//!
//! `signaling-pod token <user> [<seconds>]` prints a user token signed with
//! `SIGNALING_JWT_KEY`, as an identity provider would issue it (the demo uses it), with
//! `iss` and `aud` from `SIGNALING_USER_ISSUER` and `SIGNALING_USER_AUDIENCE` when set.
//!
//! A bad configuration (a key under 32 bytes among them) ends it at start-up with a
//! message naming the variable and a non-zero exit.
//!
//! SIGTERM (or Ctrl-C) drains it: see `limits::drain`; it exits 0 within
//! `SIGNALING_DRAIN_SECONDS`.

use signaling_pod::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("SWITCHBOARD_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("token") {
        return print_user_token(&args[1..]);
    }
    let cfg = Config::from_env()?;
    let kube = kube::Client::try_default().await?;
    let running = signaling_pod::start(cfg, kube).await?;
    println!("{}", serde_json::json!({ "url": running.url }));
    tracing::info!(url = %running.url, "signaling listening");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = running.serve => return Ok(()),
    }
    // Readiness fails and upgrades are refused at once, clients are told to reconnect
    // elsewhere, the rest are closed with 1001; within SIGNALING_DRAIN_SECONDS.
    signaling_pod::limits::drain(&running.app).await;
    // Whatever is still running (a REST call, a background task) does not hold the exit.
    std::process::exit(0)
}

fn print_user_token(args: &[String]) -> anyhow::Result<()> {
    let (Some(user), valid_for) = (args.first(), args.get(1)) else {
        anyhow::bail!("usage: signaling-pod token <user> [<seconds valid, default 86400>]");
    };
    let valid_for: u64 = valid_for.map(|s| s.parse()).transpose()?.unwrap_or(86_400);
    let key = std::env::var("SIGNALING_JWT_KEY").map_err(|_| anyhow::anyhow!("SIGNALING_JWT_KEY is required"))?;
    let mut claims = serde_json::json!({
        "sub": user,
        "name": user,
        "exp": signaling_pod::auth::now_unix() + valid_for,
    });
    for (claim, var) in [("iss", "SIGNALING_USER_ISSUER"), ("aud", "SIGNALING_USER_AUDIENCE")] {
        if let Some(v) = std::env::var(var).ok().filter(|v| !v.is_empty()) {
            claims[claim] = v.into();
        }
    }
    println!("{}", signaling_pod::auth::Keys::new(key.as_bytes()).sign(&claims));
    Ok(())
}
