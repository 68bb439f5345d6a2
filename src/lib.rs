//! vmbridge turns what each VM's libvirt daemon knows into Prometheus metrics, so that one
//! hung VM never darkens the node.
//!
//! # Layout
//!
//! Data flows one way, and the modules follow it:
//!
//! ```text
//! discovery ──VmEvent(Added/Removed, endpoint + UUID)──▶ supervisor
//!   (source::libvirt::discovery;                           one task per (VM, source), each
//!    KubeVirt: one per launcher)                           behind its own breaker and deadline
//!        │ endpoint status                                        │ polls (Poller)
//!        ▼                                                        ▼
//!    store: VMs keyed by endpoint + domain UUID (namespace/name are labels), each with the
//!           last good snapshot per source; endpoint status for readiness
//!        │  read only
//!        ├──────────────────────────────┬──────────────────────────────┐
//!  collector (pure, sync; Source::encode) → /metrics   debug → /debug/vms/…   status → /
//! ```
//!
//! The modules form layers, leaf first; every `use` points down (or from a child to its
//! parent), never up or sideways into another source. `cargo test --test structure` fails on
//! a cycle among `src/`'s modules or a hand-written file over 600 lines, and prints the order.
//!
//! 1. [`model`]: the words every module speaks: metric definitions, selection and profiles,
//!    the exposition writer ([`model::exposition`]), formats, error kinds, source kinds,
//!    labels. Imports nothing of the crate.
//! 2. [`clock`], [`vm`], [`breaker`], [`log_summary`], [`tls`], [`source::wire`],
//!    `http::budget`: utilities. Import `model` at most.
//! 3. The shared libvirt connection: `source::libvirt::{ffi, blocking, errors, endpoint}`
//!    (lanes and batches are children of `endpoint`). Knows no source; may import
//!    [`source::events`], the vocabulary libvirt's and QMP's event counts share.
//! 4. [`source`], the registry (one line per source makes [`source::SourceKind`],
//!    [`source::SourceSample`] and [`source::visit`]), with what the store and supervisor need
//!    of the sources as data ([`source::Poller`], every source's settings), and [`store`]:
//!    import the layers above (a parent may name its children).
//! 5. [`source::api`]: the [`source::api::Source`] trait and [`source::api::VmView`], what an
//!    encoder sees. Imports `store` and the layers above.
//! 6. The sources, one folder (or file) each: [`source::libvirt`], [`source::qga`] (each
//!    guest-agent command in its family's file under `qga::commands`), [`source::qmp`],
//!    [`source::process`]. Each declares its settings, families, poller and encoder, and
//!    imports only the layers above and the libvirt connection; the sideways imports are
//!    QMP naming disks by libvirt's labels (`source::libvirt::drive_label`) and the guest
//!    source joining its filesystems to libvirt's disks (`source::qga::drives` reads
//!    `source::libvirt::stats::BlockSample`); libvirt imports neither.
//! 7. Judges over several sources' samples: [`stall`] (why a VM is stuck) and [`heartbeat`]
//!    (whether its guest is alive). Import the sources' samples, never their internals.
//! 8. [`collector`]: `events` and `bridge` (the event, migration and vmbridge families), then
//!    [`catalogue`], derived from what each registered source declares (no hand-kept list);
//!    then `collector::expo`, which encodes. [`supervisor`] starts each source's poller
//!    through the registry.
//! 9. [`config`] composes every source's section (shared validation in `config::validate`);
//!    [`cli`], [`http`], [`debug`], [`status`], [`check`], [`schema`] and this file come last.
//!
//! vmbridge is read-only: it opens libvirt read-only (the guest-agent transport through
//! libvirt needs a read-write connection and sends only allow-listed queries), never execs,
//! never writes to a guest.

pub mod breaker;
pub mod catalogue;
pub mod check;
pub mod cli;
pub mod clock;
pub mod collector;
pub mod config;
pub mod debug;
pub mod heartbeat;
pub mod http;
pub mod log_summary;
#[cfg(test)]
mod manpage;
pub mod model;
pub mod schema;
pub mod source;
pub mod stall;
pub mod status;
pub mod store;
pub mod supervisor;
pub mod tls;
pub mod vm;

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::collector::{ExportOptions, VmCollector};
use crate::config::Settings;
use crate::source::libvirt::{discovery, endpoint::Endpoint};
use crate::store::Store;
use crate::supervisor::Naming;

/// Why vmbridge could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The TLS certificate could not be loaded or generated.
    #[error("TLS setup failed")]
    Tls(#[source] tls::TlsError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Runs vmbridge until `stop` fires: discovery per endpoint, the supervisor, and the HTTP
/// server.
pub async fn run(settings: Settings, stop: CancellationToken) -> Result<(), RunError> {
    discovery::init();
    let store = Arc::new(match settings.launchers {
        Some(_) => Store::for_launchers(),
        None => Store::new(settings.uris.iter().map(String::as_str)),
    });
    let limiter = Arc::new(Semaphore::new(settings.max_concurrent_calls));
    let (tx, rx) = mpsc::channel(1024);
    let listener =
        http::bind(settings.listen).await.map_err(|source| RunError::Bind { addr: settings.listen, source })?;
    let local = listener.local_addr().unwrap_or(settings.listen);
    tracing::info!(addr = %local, tls = settings.tls.is_some(), node = %settings.node_name, uris = ?settings.uris, "vmbridge listening");

    for uri in &settings.uris {
        tokio::spawn(discovery::run(
            Endpoint::with_limits(uri.clone(), uri.clone(), settings.lanes),
            settings.poll.interval,
            settings.poll.timeout,
            store.clone(),
            tx.clone(),
            stop.child_token(),
        ));
    }
    if let Some(scan) = settings.launchers.clone() {
        tokio::spawn(discovery::run_launchers(
            discovery::Launchers { scan, lanes: settings.lanes },
            settings.poll.interval,
            settings.poll.timeout,
            store.clone(),
            tx.clone(),
            stop.child_token(),
        ));
    }
    drop(tx);
    let plan = supervisor::Plan {
        naming: Naming { naming: settings.domain_naming, default_namespace: settings.default_namespace.clone() },
        poll: settings.poll.clone(),
        sources: settings.sources.clone(),
        static_vms: settings.static_vms.clone(),
    };
    tokio::spawn(supervisor::run(rx, store.clone(), plan, limiter, stop.child_token()));

    let options = ExportOptions {
        export_all_known: settings.export_all_known,
        keep_ephemeral: settings.keep_ephemeral,
        health_detail: settings.health_detail,
    };
    let http_stats = Arc::new(http::limits::HttpStats {
        budget: Arc::new(http::budget::ReplyBudget::new(settings.reply_budget_bytes)),
        ..http::limits::HttpStats::default()
    });
    let collector = VmCollector::new(store.clone(), settings.node_name.clone(), settings.staleness)
        .with_options(options)
        .with_selection(settings.selection.clone())
        .with_http(http_stats.clone())
        .observing();
    let app = Arc::new(http::App {
        store,
        collector,
        node: settings.node_name.clone(),
        debug_token: settings.debug_token.clone(),
    });
    let listener_of = |socket, name, stats: &Arc<http::limits::ListenerStats>, tls| http::Listener {
        socket,
        name,
        tracker: http::limits::Tracker::new(settings.http, stats.clone()),
        stats: stats.clone(),
        tls,
    };
    if let Some(addr) = settings.debug_listen {
        let socket = http::bind(addr).await.map_err(|source| RunError::Bind { addr, source })?;
        let local = socket.local_addr().unwrap_or(addr);
        tracing::info!(addr = %local, "vmbridge debug listening");
        let debug = listener_of(socket, "debug", &http_stats.debug, None);
        tokio::spawn(http::serve(debug, http::debug_listener_routes(app.clone()), stop.clone()));
    }
    let tls = match &settings.tls {
        Some(source) => Some(
            tls::ReloadingAcceptor::start(
                source,
                &settings.node_name,
                std::time::Duration::from_secs(10),
                stop.clone(),
            )
            .map_err(RunError::Tls)?,
        ),
        None => None,
    };
    let public = listener_of(listener, "public", &http_stats.public, tls);
    http::serve(public, http::public_routes(app), stop).await;
    tracing::info!("vmbridge stopped");
    Ok(())
}
