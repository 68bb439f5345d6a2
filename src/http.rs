//! HTTP endpoints, routed in one place: `/metrics` (Prometheus text or OpenMetrics, by
//! `Accept`), `/healthz`, `/readyz`, `/debug/vms` and `/debug/vms/{namespace}/{name}`.
//! Every handler reads the snapshot store only; none waits on a VM.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use warp::Filter;
use warp::http::{Response, StatusCode, header::CONTENT_TYPE};

use crate::collector::text::{Format, openmetrics_to_prometheus};
use crate::debug;
use crate::store::Store;
use crate::vm::VmId;

/// What the handlers share.
#[derive(Debug)]
pub struct App {
    /// The snapshot store.
    pub store: Arc<Store>,
    /// The registry holding the snapshot collector.
    pub registry: Registry,
    /// `node` label value.
    pub node: String,
}

type Reply = Response<String>;

fn reply(status: StatusCode, content_type: &str, body: String) -> Reply {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Reply {
    match serde_json::to_string_pretty(v) {
        Ok(body) => reply(status, "application/json", body),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("cannot serialise: {e}\n")),
    }
}

/// `/metrics`.
pub fn metrics(app: &App, accept: Option<&str>) -> Reply {
    let format = Format::negotiate(accept);
    let mut body = String::with_capacity(64 * 1024);
    if prometheus_client::encoding::text::encode(&mut body, &app.registry).is_err() {
        return reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "encoding failed\n".into());
    }
    if format == Format::Prometheus {
        body = openmetrics_to_prometheus(&body);
    }
    reply(StatusCode::OK, format.content_type(), body)
}

/// `/readyz`.
pub fn readyz(app: &App) -> Reply {
    match app.store.ready() {
        Ok(()) => reply(StatusCode::OK, "text/plain", "ready\n".into()),
        Err(missing) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("not ready: not yet listed or down: {}\n", missing.join(", ")),
        ),
    }
}

/// `/debug/vms/{namespace}/{name}`.
pub fn debug_vm(app: &App, namespace: &str, name: &str) -> Reply {
    let (Some(namespace), Some(name)) = (debug::decode_segment(namespace), debug::decode_segment(name)) else {
        return json(StatusCode::BAD_REQUEST, &serde_json::json!({"error": "path is not UTF-8"}));
    };
    match debug::vm(&app.store, &app.node, &VmId { namespace, name }) {
        Some(doc) => json(StatusCode::OK, &doc),
        None => json(StatusCode::NOT_FOUND, &serde_json::json!({"error": "no such VM"})),
    }
}

/// Every route.
pub fn routes(
    app: Arc<App>,
) -> impl Filter<Extract = (Reply,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let with_app = warp::any().map(move || app.clone());
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_app.clone())
        .and(warp::header::optional::<String>("accept"))
        .map(|app: Arc<App>, accept: Option<String>| metrics(&app, accept.as_deref()));
    let healthz = warp::path!("healthz").and(warp::get()).map(|| reply(StatusCode::OK, "text/plain", "ok\n".into()));
    let readyz = warp::path!("readyz").and(warp::get()).and(with_app.clone()).map(|app: Arc<App>| readyz(&app));
    let index = warp::path!("debug" / "vms")
        .and(warp::get())
        .and(with_app.clone())
        .map(|app: Arc<App>| json(StatusCode::OK, &debug::index(&app.store, &app.node)));
    let vm = warp::path!("debug" / "vms" / String / String)
        .and(warp::get())
        .and(with_app)
        .map(|ns: String, name: String, app: Arc<App>| debug_vm(&app, &ns, &name));
    metrics.or(healthz).unify().or(readyz).unify().or(index).unify().or(vm).unify()
}

/// Serves plain HTTP on `listener` until `stop` fires.
pub async fn serve(listener: tokio::net::TcpListener, app: Arc<App>, stop: CancellationToken) {
    warp::serve(routes(app)).incoming(listener).graceful(async move { stop.cancelled().await }).run().await;
}

/// Binds the listen address, with an error that names it (warp's own bind panics).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
