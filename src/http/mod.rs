//! HTTP endpoints, routed in one place. Public (the metrics port, plain HTTP or HTTPS):
//! `/metrics` (Prometheus text or OpenMetrics, by `Accept`), `/healthz`, `/readyz`. Debug (a
//! separate listener, loopback by default, since guest IPs and users are sensitive; or the
//! public port with a bearer token): `/debug/vms`, `/debug/vms/{namespace}/{name}`.
//! Every handler reads the snapshot store only; none waits on a VM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use warp::Filter;
use warp::http::{Response, StatusCode, header::CONTENT_TYPE};

pub mod budget;
pub mod limits;

use crate::collector::VmCollector;
use crate::debug;
use crate::model::text::Format;
use crate::store::Store;
use crate::tls::ReloadingAcceptor;
use crate::vm::VmId;

/// What the handlers share.
#[derive(Debug)]
pub struct App {
    /// The snapshot store.
    pub store: Arc<Store>,
    /// The scrape path: pre-encoded series of the snapshot store.
    pub collector: Arc<VmCollector>,
    /// `node` label value.
    pub node: String,
    /// When set, `/debug` is also served on the public port to requests bearing this token.
    pub debug_token: Option<String>,
}

type Reply = Response<bytes::Bytes>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<bytes::Bytes>) -> Reply {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

/// A reply whose body is charged to the reply budget ([`budget`]); 503 when it has no room.
fn charged(app: &App, status: StatusCode, content_type: &str, body: Vec<u8>) -> Reply {
    match app.collector.reply_budget().charge(body) {
        Ok(body) => reply(status, content_type, body),
        Err(budget::OverBudget) => over_budget(),
    }
}

/// `503` with `Retry-After`: the reply budget has no room for this body now.
fn over_budget() -> Reply {
    let mut r = reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "reply budget exhausted, retry shortly\n");
    r.headers_mut().insert(warp::http::header::RETRY_AFTER, warp::http::HeaderValue::from(budget::RETRY_AFTER_SECONDS));
    r
}

fn json<T: serde::Serialize>(app: &App, status: StatusCode, v: &T) -> Reply {
    match serde_json::to_vec_pretty(v) {
        Ok(body) => charged(app, status, "application/json", body),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("cannot serialise: {e}\n")),
    }
}

/// The gzip level of `/metrics`: level 1 of zlib's scale, chosen by `cargo bench --bench
/// scrape_path` (docs/benchmarks.md): at 100 VMs it compresses the exposition about as well as
/// level 6 (the default) in a fraction of the CPU.
pub const GZIP_LEVEL: u32 = 1;

/// Whether an `Accept-Encoding` header accepts gzip (`gzip` or `x-gzip`, or `*`, with a
/// quality above zero).
pub fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    let Some(h) = accept_encoding else { return false };
    h.split(',').any(|part| {
        let mut params = part.split(';').map(str::trim);
        let coding = params.next().unwrap_or_default().to_ascii_lowercase();
        let q = params.filter_map(|p| p.strip_prefix("q=")).find_map(|q| q.parse::<f32>().ok()).unwrap_or(1.0);
        matches!(coding.as_str(), "gzip" | "x-gzip" | "*") && q > 0.0
    })
}

/// `/metrics`: the pre-encoded exposition in the format `accept` asks for, gzip-compressed
/// when `accept_encoding` allows it. Concurrent scrapes of an unchanged exposition share one
/// body; a new body that does not fit in the reply budget gets a 503 with `Retry-After`.
pub fn metrics(app: &App, accept: Option<&str>, accept_encoding: Option<&str>) -> Reply {
    let format = Format::negotiate(accept);
    let gzip = accepts_gzip(accept_encoding);
    let body = if gzip { app.collector.render_gzip(format, GZIP_LEVEL) } else { app.collector.render_shared(format) };
    let Ok(body) = body else { return over_budget() };
    let mut r = reply(StatusCode::OK, format.content_type(), body);
    if gzip {
        r.headers_mut().insert(warp::http::header::CONTENT_ENCODING, warp::http::HeaderValue::from_static("gzip"));
    }
    r.headers_mut().insert(warp::http::header::VARY, warp::http::HeaderValue::from_static("Accept-Encoding"));
    r
}

/// `/readyz`.
pub fn readyz(app: &App) -> Reply {
    match app.store.ready() {
        Ok(()) => reply(StatusCode::OK, "text/plain", "ready\n"),
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
        return json(app, StatusCode::BAD_REQUEST, &serde_json::json!({"error": "path is not UTF-8"}));
    };
    match debug::vm(&app.store, &app.node, &VmId { namespace, name }) {
        Some(doc) => json(app, StatusCode::OK, &doc),
        None => json(app, StatusCode::NOT_FOUND, &serde_json::json!({"error": "no such VM"})),
    }
}

/// `/metrics` off the async workers: encoding is pure CPU (milliseconds at hundreds of VMs,
/// tens of milliseconds in a debug build) and several scrapers at once would otherwise hold
/// both workers of a 2-core node, delaying the accept loop and every poll's timers behind them.
async fn metrics_off_worker(
    app: Arc<App>,
    accept: Option<String>,
    accept_encoding: Option<String>,
) -> Result<Reply, std::convert::Infallible> {
    Ok(tokio::task::spawn_blocking(move || metrics(&app, accept.as_deref(), accept_encoding.as_deref()))
        .await
        .unwrap_or_else(|_| reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "encoding panicked\n")))
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
        .map(|app: Arc<App>| json(&app, StatusCode::OK, &debug::index(&app.store, &app.node)));
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
        charged(&app, StatusCode::OK, "text/html; charset=utf-8", html.into_bytes())
    });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_app(app.clone()))
        .and(warp::header::optional::<String>("accept"))
        .and(warp::header::optional::<String>("accept-encoding"))
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
        .and(warp::header::optional::<String>("accept-encoding"))
        .and_then(metrics_off_worker);
    let healthz = warp::path!("healthz").and(warp::get()).map(|| reply(StatusCode::OK, "text/plain", "ok\n"));
    let readyz = warp::path!("readyz").and(warp::get()).and(with_app(app.clone())).map(|app: Arc<App>| readyz(&app));
    let token = app.debug_token.clone();
    let authorized = warp::header::optional::<String>("authorization")
        .and_then(move |auth: Option<String>| {
            let ok = match (&token, auth) {
                (Some(t), Some(a)) => {
                    a.strip_prefix("Bearer ").is_some_and(|given| bool::from(given.as_bytes().ct_eq(t.as_bytes())))
                }
                _ => false,
            };
            async move { if ok { Ok(()) } else { Err(warp::reject::not_found()) } }
        })
        .untuple_one();
    let debug = authorized.and(debug_routes(app));
    metrics.or(healthz).unify().or(readyz).unify().or(debug).unify()
}

/// Binds a listen address (warp's own bind panics on failure).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// How long open connections may finish their requests once `stop` fires. A client that
/// holds a connection open (a half-sent request, an idle keep-alive) must not delay the exit:
/// the pod's grace period is 30 s, and a SIGKILL loses the last log lines.
pub const DRAIN: Duration = Duration::from_secs(2);

/// One listener: its name (the `listener` label), its limits and counters, and TLS if any.
pub struct Listener {
    /// The socket.
    pub socket: tokio::net::TcpListener,
    /// `public` or `debug`.
    pub name: &'static str,
    /// Admission and deadlines.
    pub tracker: Arc<limits::Tracker>,
    /// Its counters (the same the tracker counts into).
    pub stats: Arc<limits::ListenerStats>,
    /// HTTPS, when set.
    pub tls: Option<ReloadingAcceptor>,
}

/// Logs connection errors at debug, plus at most one summary a minute at info: a client that
/// resets or abandons connections must not flood the log.
#[derive(Debug)]
struct ErrorSummary {
    state: std::sync::Mutex<(tokio::time::Instant, u64)>,
    listener: &'static str,
}

impl ErrorSummary {
    const EVERY: Duration = Duration::from_secs(60);

    fn record(&self, e: &dyn std::fmt::Display) {
        tracing::debug!(listener = self.listener, error = %e, "client connection ended with an error");
        let Ok(mut s) = self.state.lock() else { return };
        s.1 += 1;
        if s.0.elapsed() >= Self::EVERY {
            tracing::info!(listener = self.listener, errors = s.1, last = %e, "client connections ended with errors since the last summary");
            *s = (tokio::time::Instant::now(), 0);
        }
    }
}

/// Whether an I/O error is one of ours (a deadline or an eviction, already counted).
fn ours(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(io.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::ConnectionAborted) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// HTTP/2 streams open at once per connection (hyper's default is 200). A scraper uses one;
/// each stream may hold a reply its peer has not read yet.
pub const H2_MAX_STREAMS: u32 = 4;

/// HTTP/2 receive windows (stream, connection): vmbridge serves GETs, so a request body is
/// never read, and what a client may push before it is refused stays small (hyper's
/// defaults: 1 MiB each).
pub const H2_WINDOWS: (u32, u32) = (16 << 10, 64 << 10);

/// HTTP/2 reply data buffered per stream (hyper's default: 400 KiB).
pub const H2_MAX_SEND_BUF: usize = 64 << 10;

/// HTTP/2 request header list, bytes at most (hyper's default, made explicit).
pub const H2_MAX_HEADER_LIST: u32 = 16 << 10;

/// The connection builder: HTTP/1.1 and HTTP/2 under the bounds above.
fn builder() -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.http2()
        .max_concurrent_streams(H2_MAX_STREAMS)
        .initial_stream_window_size(H2_WINDOWS.0)
        .initial_connection_window_size(H2_WINDOWS.1)
        .max_send_buf_size(H2_MAX_SEND_BUF)
        .max_header_list_size(H2_MAX_HEADER_LIST);
    b
}

/// A connection's service: every reply's body data carries a guard of the connection's
/// write deadline ([`limits::ConnReplies`]) until the last of it has been handed to the
/// socket, however the protocol buffers it (an HTTP/2 stream without window keeps it).
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    replies: limits::ConnReplies,
}

impl<S, R, B> hyper::service::Service<R> for Tracked<S>
where
    S: hyper::service::Service<R, Response = warp::http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    type Response = warp::http::Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn call(&self, req: R) -> Self::Future {
        let fut = self.inner.call(req);
        let replies = self.replies.clone();
        Box::pin(async move {
            let resp = fut.await?;
            let guard = Arc::new(replies.start());
            Ok(resp.map(|inner| TrackedBody { inner, guard: Some(guard) }))
        })
    }
}

/// A reply body whose data holds its reply's write-deadline guard.
struct TrackedBody<B> {
    inner: B,
    guard: Option<Arc<limits::ReplyGuard>>,
}

/// Body data and the guard it keeps alive.
struct Held {
    data: bytes::Bytes,
    _guard: Arc<limits::ReplyGuard>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl<B: http_body::Body<Data = bytes::Bytes> + Unpin> http_body::Body for TrackedBody<B> {
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                let guard = this.guard.clone();
                std::task::Poll::Ready(Some(Ok(frame.map_data(|data| match guard {
                    Some(g) if !data.is_empty() => bytes::Bytes::from_owner(Held { data, _guard: g }),
                    _ => data,
                }))))
            }
            std::task::Poll::Ready(None) => {
                // The data already sent keeps the guard for as long as it is buffered.
                this.guard = None;
                std::task::Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Refused connections answered at once (each holds its descriptor up to 250 ms).
pub const REFUSING: usize = 64;

/// The reply to a connection over the cap (plain HTTP only; a TLS one is just closed).
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\
Retry-After: 1\r\nConnection: close\r\n\r\ntoo many connections\n";

/// Serves `routes` on `listener` until `stop` fires, under the listener's limits; open
/// connections then get at most [`DRAIN`] to finish.
pub async fn serve<F>(listener: Listener, routes: F, stop: CancellationToken)
where
    F: Filter<Extract = (Reply,), Error = warp::Rejection> + Clone + Send + Sync + 'static,
{
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    use tokio::io::AsyncWriteExt;
    let svc = warp::service(routes);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let summary = Arc::new(ErrorSummary {
        state: std::sync::Mutex::new((tokio::time::Instant::now(), 0)),
        listener: listener.name,
    });
    let Listener { socket, tracker, stats, tls, .. } = listener;
    let refusing = Arc::new(tokio::sync::Semaphore::new(REFUSING));
    let builder = builder();
    loop {
        let (tcp, _peer) = tokio::select! {
            res = socket.accept() => match res {
                Ok(x) => x,
                // Out of file descriptors, or a connection reset before accept: retry shortly.
                Err(_) => { tokio::time::sleep(Duration::from_millis(100)).await; continue }
            },
            _ = stop.cancelled() => break,
        };
        let slot = match tracker.admit() {
            limits::Admission::Admitted(slot) => slot,
            limits::Admission::Refused => {
                // At most REFUSING refusals are answered at once, each within 250 ms; past
                // that a refused connection is just closed, so refusing costs no more fds.
                if let (None, Ok(permit)) = (&tls, refusing.clone().try_acquire_owned()) {
                    tokio::spawn(async move {
                        let _permit = permit;
                        // Reply, then read what the client sent before closing, so the close
                        // is a FIN and not a reset that would hide the 503 from the client.
                        let mut tcp = tcp;
                        let polite = async {
                            tcp.write_all(REFUSED).await?;
                            tcp.shutdown().await?;
                            let mut sink = [0u8; 4096];
                            while tokio::io::AsyncReadExt::read(&mut tcp, &mut sink).await? > 0 {}
                            Ok::<(), std::io::Error>(())
                        };
                        let _ = tokio::time::timeout(Duration::from_millis(250), polite).await;
                    });
                }
                continue;
            }
        };
        let svc = Tracked { inner: TowerToHyperService::new(svc.clone()), replies: slot.replies() };
        let io = limits::Limited::new(tcp, slot);
        let (acceptor, watcher, builder) =
            (tls.as_ref().map(ReloadingAcceptor::current), graceful.watcher(), builder.clone());
        let (stats, summary) = (stats.clone(), summary.clone());
        let handshake = tracker.limits().header_timeout;
        tokio::spawn(async move {
            let result = match acceptor {
                // The whole handshake within the header timeout: the socket's own deadline turns
                // idle once the server's first handshake bytes are written.
                Some(acceptor) => match tokio::time::timeout(handshake, acceptor.accept(io)).await {
                    Err(_) => {
                        stats.header_timeout.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                    Ok(Ok(stream)) => {
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                        watcher.watch(conn.into_owned()).await
                    }
                    Ok(Err(e)) => Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
                },
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = result {
                if !ours(e.as_ref()) {
                    stats.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    summary.record(&e);
                }
            }
        });
    }
    drop(socket);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::info!(drain = ?DRAIN, "connections still open after the drain deadline; closing them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(budget: usize) -> App {
        let store = Arc::new(Store::new(["qemu:///system"]));
        let http = Arc::new(limits::HttpStats {
            budget: Arc::new(budget::ReplyBudget::new(budget)),
            ..limits::HttpStats::default()
        });
        let collector =
            VmCollector::new(store.clone(), "node-1".into(), Duration::from_secs(60)).with_http(http).observing();
        App { store, collector, node: "node-1".into(), debug_token: None }
    }

    #[test]
    fn metrics_is_shed_with_retry_after_while_the_reply_budget_is_full_and_served_once_it_frees() {
        let app = app(1 << 20);
        let size = app.collector.render_bytes(Format::Prometheus).len();
        assert!(size >= budget::UNCHARGED_BELOW, "{size} bytes: too small to be charged");
        // Something else holds all but a few bytes of the budget.
        let other = app.collector.reply_budget().charge(vec![0u8; (1 << 20) - 16]).expect("fits");
        let r = metrics(&app, None, None);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers().get(warp::http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("1"));
        let r = metrics(&app, None, Some("gzip"));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "gzip bodies are charged too");
        drop(other);
        let r = metrics(&app, None, None);
        assert_eq!(r.status(), StatusCode::OK);
        // The shed requests are exported (and the body, made after, shows them).
        assert!(String::from_utf8_lossy(r.body()).contains("vmbridge_http_replies_shed_total{node=\"node-1\"} 2"));
        assert_eq!(app.collector.reply_budget().shed(), 2);
    }
}
