//! The operator's client for the API server: kube's stack (base URI, auth,
//! extra headers, retries), but on HTTP/2.
//!
//! kube's own stack speaks HTTP/1.1 only, so each request in flight takes its own
//! connection: a Meeting storm with 256 reconciles at a time opened about 270
//! connections, each a TLS handshake on an API server that was already the
//! bottleneck. client-go multiplexes one HTTP/2 connection; the API server
//! allows 100 streams on one (since CVE-2023-44487), fewer than the operator has
//! in flight, so requests take turns over a few.
//! `SWITCHBOARD_API_HTTP2=false` falls back to kube's HTTP/1.1 client (for a
//! proxy in front of the API server that does not speak HTTP/2).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt;
use kube::client::retry::RetryPolicy;
use tower::ServiceBuilder;
use tower::retry::RetryLayer;

/// How often an idle connection is pinged, and how long a ping may go unanswered
/// before the connection is dropped (client-go's `ReadIdleTimeout`/`PingTimeout`).
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(15);
/// HTTP/2 connections: at 100 streams each, room for the 256 reconciles of
/// a storm, the ledger writes and the watches.
const CONNECTIONS: usize = 4;

/// A client for the inferred configuration (kubeconfig or in-cluster). A proxy
/// or a TLS server name in the kubeconfig takes kube's own client, which
/// handles both.
pub async fn connect() -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer().await?;
    let http2 = std::env::var("SWITCHBOARD_API_HTTP2").map_or(true, |v| v != "false");
    let plain = config.proxy_url.is_none() && config.tls_server_name.is_none();
    Ok(if http2 && plain { http2_client(config)? } else { kube::Client::try_from(config)? })
}

/// kube's client stack over an HTTP/2-only connector.
pub fn http2_client(config: kube::Config) -> kube::Result<kube::Client> {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(config.connect_timeout);
    // ALPN offers h2 alone: every API server since Kubernetes 1.6 accepts it.
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http()
        .enable_http2()
        .wrap_connector(tcp);
    // `http2_only`: a pool shares its connection among all requests once it is
    // up, with no HTTP/1.1 fallback to decide between (a burst that arrives before
    // the first handshake completes can still open a few). Pings find a dead
    // connection that no request is waiting on, e.g. under a long watch.
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .http2_only(true)
                .timer(TokioTimer::new())
                .http2_keep_alive_interval(PING_INTERVAL)
                .http2_keep_alive_timeout(PING_TIMEOUT)
                .http2_keep_alive_while_idle(true)
                .build::<_, kube::client::Body>(connector.clone())
        })
        .collect();
    let client = RoundRobin { clients: clients.into(), next: Arc::default() };
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.default_retry.then(|| RetryLayer::new(RetryPolicy::server_retry())))
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .service(client);
    Ok(kube::Client::new(service, config.default_namespace))
}

/// Requests in turn over several clients, each with its own connection pool.
#[derive(Clone)]
struct RoundRobin<S> {
    clients: Arc<[S]>,
    next: Arc<AtomicUsize>,
}

impl<S, R> tower::Service<R> for RoundRobin<S>
where
    S: tower::Service<R> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    // hyper's client is always ready: a request waits for its connection (or a
    // free stream on it) inside the future it returns.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.clients[i].clone().call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Service, ServiceExt};

    #[tokio::test]
    async fn requests_take_the_clients_in_turn() {
        let clients: Vec<_> =
            (0..3usize).map(|i| tower::service_fn(move |_: ()| async move { Ok::<_, ()>(i) })).collect();
        let mut client = RoundRobin { clients: clients.into(), next: Arc::default() };
        let mut served = Vec::new();
        for _ in 0..7 {
            served.push(client.ready().await.unwrap().call(()).await.unwrap());
        }
        assert_eq!(served, [0, 1, 2, 0, 1, 2, 0]);
    }
}
