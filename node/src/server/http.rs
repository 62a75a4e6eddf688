//! The metrics port: `/metrics` (Prometheus text), `/healthz` (the node
//! runs and its storage works), `/readyz` (it sees a leader and has
//! applied what it knows is committed, so it can serve) and the web
//! console under `/ui` (`crate::console`, unless `--console=false`).
//! Does network I/O.
//!
//! The port serves from process start, before the node knows its cluster:
//! an empty node may wait minutes for its peers, and a liveness probe that
//! fails meanwhile gets it killed. Until the node runs, `/healthz` answers
//! ok ("starting") and `/readyz` not ready.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::{Path, Request};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::driver::Shared;
use crate::console;
use crate::metrics::{IndexMetric, Metrics};
use crate::storage::kv_store::IndexState;
use crate::tls::{incoming, Conn, ServerTls};
use tonic::transport::server::Connected;

/// What the metrics port answers from: the registry from the start, the
/// running node once there is one.
#[derive(Clone)]
pub struct HttpState {
    metrics: Metrics,
    node: Arc<OnceLock<Arc<Shared>>>,
    /// The web console (`/ui`): the client port's router and the member's
    /// name, once clients are served; None: turned off.
    console: Option<Arc<OnceLock<(axum::Router, String)>>>,
}

impl HttpState {
    pub fn new(metrics: Metrics, console: bool) -> HttpState {
        HttpState {
            metrics,
            node: Arc::new(OnceLock::new()),
            console: console.then(|| Arc::new(OnceLock::new())),
        }
    }

    /// The node runs: answer from its state from now on.
    pub fn serving(&self, shared: Arc<Shared>) {
        let _ = self.node.set(shared);
    }

    /// Clients are served: the console's calls go to them from now on.
    pub fn console_serving(&self, gateway: axum::Router, name: String) {
        if let Some(c) = &self.console {
            let _ = c.set((gateway, name));
        }
    }

    fn console_backend(&self) -> Option<console::Backend> {
        let (gateway, name) = self.console.as_ref()?.get()?.clone();
        Some(console::Backend {
            shared: self.node.get()?.clone(),
            gateway,
            name,
        })
    }

    fn health(&self) -> (StatusCode, String) {
        match self.node.get() {
            None => (
                StatusCode::OK,
                "ok: starting (finding the cluster)\n".into(),
            ),
            Some(shared) => health(shared),
        }
    }

    fn ready(&self) -> (StatusCode, String) {
        match self.node.get() {
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                "starting: not serving yet (finding the cluster)\n".into(),
            ),
            Some(shared) => ready(shared),
        }
    }

    fn render_metrics(&self) -> String {
        match self.node.get() {
            Some(shared) => metrics_text(shared),
            None => self.metrics.render(),
        }
    }
}

/// The Prometheus text of a serving node, its store's gauges read now
/// (the metrics port's `/metrics`, and the client port's as etcd's).
pub fn metrics_text(shared: &Shared) -> String {
    let store = shared.store();
    shared.metrics.db_size.set(store.db_size());
    shared.metrics.db_size_in_use.set(store.db_size_in_use());
    let indexes: Vec<IndexMetric<'_>> = store
        .indexes()
        .iter()
        .map(|d| {
            let counts = store.index_counts(d.id);
            IndexMetric {
                name: &d.spec.name,
                ready: d.ready_since().is_some(),
                failed: matches!(d.state, IndexState::Failed { .. }),
                backfill_remaining: match &d.state {
                    IndexState::Building {
                        keys_done,
                        keys_total,
                        ..
                    } => keys_total.saturating_sub(*keys_done),
                    _ => 0,
                },
                skipped: counts.skipped,
                refused: counts.refused,
            }
        })
        .collect();
    shared.metrics.set_indexes(&indexes);
    drop(indexes);
    drop(store);
    shared
        .metrics
        .leases
        .set(shared.store().leases().len() as i64);
    shared.metrics.render()
}

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
    let published = shared
        .store()
        .member(shared.member_id)
        .is_some_and(|m| !m.client_ur_ls.is_empty());
    if !published {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "publishing this member's name and client URLs\n".into(),
        );
    }
    (StatusCode::OK, "ok\n".into())
}

/// The metrics port's connections when it serves `https://`.
struct TlsListener {
    conns: std::pin::Pin<Box<dyn futures::Stream<Item = std::io::Result<Conn>> + Send>>,
    addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        use futures::StreamExt;
        loop {
            match self.conns.next().await {
                Some(Ok(c)) => {
                    let addr = c.connect_info().remote.unwrap_or(self.addr);
                    return (c, addr);
                }
                // As axum's own listener: wait out a failed accept (no
                // file descriptors) and go on.
                Some(Err(_)) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    state: HttpState,
    mut stop: watch::Receiver<bool>,
) {
    let (m, h, r) = (state.clone(), state.clone(), state.clone());
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move { m.render_metrics() }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let h = h.clone();
                async move { h.health() }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let r = r.clone();
                async move { r.ready() }
            }),
        );
    let app = if state.console.is_some() {
        let (e, c) = (state.clone(), state);
        app.route("/ui", get(|| async { console::page() }))
            .route("/ui/", get(|| async { console::page() }))
            .route("/ui/app.js", get(|| async { console::script() }))
            .route("/ui/app.css", get(|| async { console::style() }))
            .route(
                "/ui/api/events",
                get(move || {
                    let e = e.clone();
                    async move { console::events(e.console_backend()) }
                }),
            )
            .route(
                "/ui/api/v3/{*call}",
                post(move |call: Path<String>, req: Request| {
                    let c = c.clone();
                    async move { console::call(c.console_backend(), call, req).await }
                }),
            )
    } else {
        app
    };
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let r = match tls {
        Some(tls) => {
            let addr = match listener.local_addr() {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "metrics server failed");
                    return;
                }
            };
            let conns = Box::pin(incoming(Arc::new(listener), Some(tls), "metrics"));
            axum::serve(TlsListener { conns, addr }, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    if let Err(e) = r {
        tracing::error!(error = %e, "metrics server failed");
    }
}

/// What `/readyz` answers, as a flag (gossip carries it).
pub fn is_ready(shared: &Shared) -> bool {
    ready(shared).0 == StatusCode::OK
}
