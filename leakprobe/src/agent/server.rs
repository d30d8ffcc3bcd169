//! The agent's HTTP endpoint: `/metrics` (OpenMetrics text of the latest snapshot) and
//! `/healthz` (200 while the main loop keeps ticking).
//!
//! It listens on every address of a node by default, so anything on the network can connect:
//! connections are capped (the ones past the cap are closed at once), a request's head must arrive
//! within a few seconds (a client that trickles bytes is cut off), and no connection lives longer
//! than a minute. The deployment's NetworkPolicy (`deploy/kubernetes/`) admits only Prometheus.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::sync::Semaphore;

use super::metrics::{self, Snapshot};

#[derive(Default)]
pub struct Shared {
    pub snapshot: Snapshot,
    pub last_tick: Option<Instant>,
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Mutex<Shared>>,
    interval: Duration,
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What one client may take of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at once; more are closed as they come.
    pub connections: usize,
    /// From a connection's start (or its last response) to the end of a request's head.
    pub header_read: Duration,
    /// Longest life of one connection, keep-alive included.
    pub lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        // A scrape is one short request every few seconds from one or two Prometheus servers.
        Limits { connections: 64, header_read: Duration::from_secs(5), lifetime: Duration::from_secs(60) }
    }
}

pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Mutex<Shared>>, interval: Duration) {
    serve_with(listener, router(shared, interval), Limits::default()).await
}

fn router(shared: Arc<Mutex<Shared>>, interval: Duration) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(health_handler))
        .with_state(AppState { shared, interval })
}

async fn serve_with(listener: tokio::net::TcpListener, app: Router, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                eprintln!("leakprobe agent: the metrics server cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(limits.header_read);
            let connection = http.serve_connection(TokioIo::new(stream), service);
            // Past its lifetime the connection is dropped, and its socket closed, mid-request or not.
            let _ = tokio::time::timeout(limits.lifetime, connection).await;
            drop(slot);
        });
    }
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    let text = {
        let shared = state.shared.lock().unwrap_or_else(|e| e.into_inner());
        metrics::render(&shared.snapshot)
    };
    ([(axum::http::header::CONTENT_TYPE, OPENMETRICS)], text)
}

async fn health_handler(State(state): State<AppState>) -> impl IntoResponse {
    let last = state.shared.lock().unwrap_or_else(|e| e.into_inner()).last_tick;
    // Healthy until the first tick is due, then while ticks keep coming.
    let stale_after = state.interval * 3 + Duration::from_secs(5);
    match last {
        Some(t) if t.elapsed() > stale_after => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("stalled: no sample for {:.0}s\n", t.elapsed().as_secs_f64()))
        }
        _ => (StatusCode::OK, "ok\n".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;

    async fn server(limits: Limits) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shared = Arc::new(Mutex::new(Shared::default()));
        tokio::spawn(serve_with(listener, router(shared, Duration::from_secs(10)), limits));
        address
    }

    /// Reads until the server closes the connection (or `within` passes): what it sent.
    async fn until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
        let mut got = Vec::new();
        match tokio::time::timeout(within, stream.read_to_end(&mut got)).await {
            Ok(_) => Some(String::from_utf8_lossy(&got).into_owned()),
            Err(_) => None,
        }
    }

    async fn get(address: std::net::SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        until_closed(&mut stream, Duration::from_secs(5)).await.expect("the server answers")
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_and_the_server_still_answers() {
        let limits = Limits { connections: 2, header_read: Duration::from_secs(30), lifetime: Duration::from_secs(30) };
        let address = server(limits).await;
        let mut idle = Vec::new();
        for _ in 0..2 {
            idle.push(TcpStream::connect(address).await.unwrap());
        }
        // The third is closed at once, with nothing sent.
        let mut third = TcpStream::connect(address).await.unwrap();
        assert_eq!(until_closed(&mut third, Duration::from_secs(5)).await.as_deref(), Some(""));
        drop(idle);
        // Their slots come back once they are gone.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let answer = get(address, "/healthz").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn a_client_that_trickles_its_request_is_cut_off() {
        let limits =
            Limits { connections: 4, header_read: Duration::from_millis(300), lifetime: Duration::from_secs(30) };
        let address = server(limits).await;
        let mut slow = TcpStream::connect(address).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost:").await.unwrap();
        let started = Instant::now();
        let got = until_closed(&mut slow, Duration::from_secs(5)).await;
        assert!(got.is_some(), "the slow client was never cut off");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        // A whole request still gets its metrics.
        let answer = get(address, "/metrics").await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("# EOF"), "{answer}");
    }

    #[tokio::test]
    async fn no_connection_outlives_its_lifetime() {
        let limits =
            Limits { connections: 4, header_read: Duration::from_secs(30), lifetime: Duration::from_millis(300) };
        let address = server(limits).await;
        // An idle keep-alive client that never sends anything.
        let mut idle = TcpStream::connect(address).await.unwrap();
        assert!(until_closed(&mut idle, Duration::from_secs(5)).await.is_some());
    }
}
