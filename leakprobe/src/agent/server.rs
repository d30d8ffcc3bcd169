//! The agent's HTTP endpoint: `/metrics` (OpenMetrics text of the latest snapshot) and
//! `/healthz` (200 while the main loop keeps ticking).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};

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

pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Mutex<Shared>>, interval: Duration) {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(health_handler))
        .with_state(AppState { shared, interval });
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("leakprobe agent: the metrics server stopped: {e}");
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
