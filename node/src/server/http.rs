//! The metrics port: `/metrics` (Prometheus text), `/healthz` (the node
//! runs and its storage works) and `/readyz` (it sees a leader and has
//! applied what it knows is committed, so it can serve). Does network I/O.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::driver::Shared;

fn health(shared: &Shared) -> (StatusCode, String) {
    let st = shared.status();
    match st.fatal {
        Some(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {e}\n")),
        None if st.removed => (
            StatusCode::SERVICE_UNAVAILABLE,
            "removed from the cluster\n".into(),
        ),
        None => (StatusCode::OK, "ok\n".into()),
    }
}

fn ready(shared: &Shared) -> (StatusCode, String) {
    let (code, text) = health(shared);
    if code != StatusCode::OK {
        return (code, text);
    }
    let st = shared.status();
    if st.leader == 0 {
        return (StatusCode::SERVICE_UNAVAILABLE, "no leader\n".into());
    }
    if st.applied < st.commit {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("applying: {} of {}\n", st.applied, st.commit),
        );
    }
    (StatusCode::OK, "ok\n".into())
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let (m, h, r) = (shared.clone(), shared.clone(), shared);
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    m.metrics.db_size.set(m.store().db_size());
                    m.metrics.leases.set(m.store().leases().len() as i64);
                    m.metrics.render()
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let h = h.clone();
                async move { health(&h) }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let r = r.clone();
                async move { ready(&r) }
            }),
        );
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "metrics server failed");
    }
}

/// What `/readyz` answers, as a flag (gossip carries it).
pub fn is_ready(shared: &Shared) -> bool {
    ready(shared).0 == StatusCode::OK
}
