//! HTTP endpoints, routed in one place. Public (the metrics port, plain HTTP or HTTPS):
//! `/metrics` (Prometheus text or OpenMetrics, by `Accept`), `/healthz`, `/readyz`. Debug (a
//! separate listener, loopback by default, since guest IPs and users are sensitive; or the
//! public port with a bearer token): `/debug/vms`, `/debug/vms/{namespace}/{name}`.
//! Every handler reads the snapshot store only; none waits on a VM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use warp::Filter;
use warp::http::{Response, StatusCode, header::CONTENT_TYPE};

use crate::collector::text::{Format, openmetrics_to_prometheus};
use crate::debug;
use crate::store::Store;
use crate::tls::ReloadingAcceptor;
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
    /// When set, `/debug` is also served on the public port to requests bearing this token.
    pub debug_token: Option<String>,
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
            format!("not ready: first discovery pass still running for: {}\n", missing.join(", ")),
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

/// `/metrics` off the async workers: encoding is pure CPU (milliseconds at hundreds of VMs,
/// tens of milliseconds in a debug build) and several scrapers at once would otherwise hold
/// both workers of a 2-core node, delaying the accept loop and every poll's timers behind them.
async fn metrics_off_worker(app: Arc<App>, accept: Option<String>) -> Result<Reply, std::convert::Infallible> {
    Ok(tokio::task::spawn_blocking(move || metrics(&app, accept.as_deref()))
        .await
        .unwrap_or_else(|_| reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "encoding panicked\n".into())))
}

fn with_app(app: Arc<App>) -> impl Filter<Extract = (Arc<App>,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || app.clone())
}

/// The debug routes.
pub fn debug_routes(
    app: Arc<App>,
) -> impl Filter<Extract = (Reply,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let index = warp::path!("debug" / "vms")
        .and(warp::get())
        .and(with_app(app.clone()))
        .map(|app: Arc<App>| json(StatusCode::OK, &debug::index(&app.store, &app.node)));
    let vm = warp::path!("debug" / "vms" / String / String)
        .and(warp::get())
        .and(with_app(app))
        .map(|ns: String, name: String, app: Arc<App>| debug_vm(&app, &ns, &name));
    index.or(vm).unify()
}

/// The debug listener: the debug routes, the status page at `/`, and `/metrics` (so the
/// page's links work on this port too).
pub fn debug_listener_routes(
    app: Arc<App>,
) -> impl Filter<Extract = (Reply,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let page = warp::path::end().and(warp::get()).and(with_app(app.clone())).map(|app: Arc<App>| {
        let html = crate::status::render(&debug::index(&app.store, &app.node));
        reply(StatusCode::OK, "text/html; charset=utf-8", html)
    });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_app(app.clone()))
        .and(warp::header::optional::<String>("accept"))
        .and_then(metrics_off_worker);
    page.or(metrics).unify().or(debug_routes(app)).unify()
}

/// The public routes; `/debug` joins them only behind the bearer token, when one is set.
pub fn public_routes(
    app: Arc<App>,
) -> impl Filter<Extract = (Reply,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_app(app.clone()))
        .and(warp::header::optional::<String>("accept"))
        .and_then(metrics_off_worker);
    let healthz = warp::path!("healthz").and(warp::get()).map(|| reply(StatusCode::OK, "text/plain", "ok\n".into()));
    let readyz = warp::path!("readyz").and(warp::get()).and(with_app(app.clone())).map(|app: Arc<App>| readyz(&app));
    let token = app.debug_token.clone();
    let authorized = warp::header::optional::<String>("authorization")
        .and_then(move |auth: Option<String>| {
            let ok = match (&token, auth) {
                (Some(t), Some(a)) => {
                    a.strip_prefix("Bearer ").is_some_and(|given| constant_time_eq(given.as_bytes(), t.as_bytes()))
                }
                _ => false,
            };
            async move { if ok { Ok(()) } else { Err(warp::reject::not_found()) } }
        })
        .untuple_one();
    let debug = authorized.and(debug_routes(app));
    metrics.or(healthz).unify().or(readyz).unify().or(debug).unify()
}

/// Compares secrets without an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Binds a listen address (warp's own bind panics on failure).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// How long open connections may finish their requests once `stop` fires. A client that
/// holds a connection open (a half-sent request, an idle keep-alive) must not delay the exit:
/// the pod's grace period is 30 s, and a SIGKILL loses the last log lines.
pub const DRAIN: Duration = Duration::from_secs(2);

/// Runs `server` (which begins its graceful drain when `stop` fires) and gives that drain at
/// most [`DRAIN`].
async fn with_drain_deadline(server: impl std::future::Future<Output = ()>, stop: &CancellationToken) {
    tokio::pin!(server);
    tokio::select! {
        _ = &mut server => return,
        _ = stop.cancelled() => {}
    }
    if tokio::time::timeout(DRAIN, server).await.is_err() {
        tracing::info!(drain = ?DRAIN, "connections still open after the drain deadline; closing them");
    }
}

/// Serves the public routes over plain HTTP until `stop` fires.
pub async fn serve_public(listener: tokio::net::TcpListener, app: Arc<App>, stop: CancellationToken) {
    let s = stop.clone();
    let server = warp::serve(public_routes(app)).incoming(listener).graceful(async move { s.cancelled().await }).run();
    with_drain_deadline(server, &stop).await;
}

/// Serves the debug listener's routes over plain HTTP until `stop` fires.
pub async fn serve_debug(listener: tokio::net::TcpListener, app: Arc<App>, stop: CancellationToken) {
    let s = stop.clone();
    let server =
        warp::serve(debug_listener_routes(app)).incoming(listener).graceful(async move { s.cancelled().await }).run();
    with_drain_deadline(server, &stop).await;
}

/// Serves the public routes over HTTPS until `stop` fires; drains for at most [`DRAIN`].
pub async fn serve_public_tls(
    listener: tokio::net::TcpListener,
    tls: ReloadingAcceptor,
    app: Arc<App>,
    stop: CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    let svc = warp::service(public_routes(app));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, _peer) = tokio::select! {
            res = listener.accept() => match res {
                Ok(x) => x,
                Err(_) => { tokio::time::sleep(Duration::from_millis(100)).await; continue }
            },
            _ = stop.cancelled() => break,
        };
        let (acceptor, svc, watcher) = (tls.current(), svc.clone(), graceful.watcher());
        tokio::spawn(async move {
            // A client that never finishes the handshake is dropped after 10 s.
            let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await else {
                return;
            };
            let builder = Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(svc));
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::info!(drain = ?DRAIN, "connections still open after the drain deadline; closing them");
    }
}
