//! The supervisor: one task per (VM, source), each behind its own breaker, started and
//! stopped as discovery reports domains appearing and going away. Only these tasks write
//! the snapshot store.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::breaker::{Admission, Breaker, BreakerConfig, BreakerState};
use crate::clock::now_unix;
use crate::config::{QgaRuntime, QgaTransportKind, QmpRuntime, StaticVm};
use crate::source::libvirt::discovery::VmEvent;
use crate::source::libvirt::poller::LibvirtPoller;
use crate::source::process::ProcessPoller;
use crate::source::qga::poller::QgaPoller;
use crate::source::qga::transport::{LibvirtAgent, SocketAgent, Transport};
use crate::source::qmp::poller::QmpPoller;
use crate::source::{Poller, SourceKind};
use crate::store::{ErrorRecord, SourceSnapshot, Store, VmSnapshot};
use crate::vm::{DomainNaming, VmId};

/// How each (VM, source) task polls.
#[derive(Debug, Clone, PartialEq)]
pub struct PollSettings {
    /// Time between successful polls.
    pub interval: Duration,
    /// Deadline of one poll; missing it counts a failure.
    pub timeout: Duration,
    /// A call running this long opens the breaker at once.
    pub hard_timeout: Duration,
    /// Pause before re-polling after a failure while the breaker is still closed, so a
    /// failing source is confirmed (and flagged) quickly instead of one interval per failure.
    pub retry_delay: Duration,
    /// Failures kept for the debug endpoint.
    pub errors_kept: usize,
    /// How long a value libvirt left out of a partial answer is carried from its last
    /// observation (`breaker.staleness`): see `source::libvirt::merge`.
    pub carry_window: Duration,
    /// The breaker.
    pub breaker: BreakerConfig,
}

/// Runs one source of one VM until `cancel` fires.
pub async fn run_source<P: Poller>(
    id: VmId,
    uuid: String,
    mut poller: P,
    store: Arc<Store>,
    settings: PollSettings,
    cancel: CancellationToken,
) {
    let kind = poller.kind();
    let mut breaker = Breaker::new(settings.breaker.clone());
    let mut snap = SourceSnapshot {
        sample: None,
        last_success_at: None,
        last_attempt_at: None,
        last_poll_duration_seconds: None,
        polls_total: 0,
        errors_total: BTreeMap::new(),
        last_errors: VecDeque::new(),
        breaker: breaker.view(Instant::now()),
        stuck_calls: poller.stuck_calls(),
    };
    store.publish(&id, &uuid, kind, Arc::new(snap.clone()));
    loop {
        if let Admission::WaitUntil(until) = breaker.admit(Instant::now()) {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => continue,
                _ = cancel.cancelled() => return,
            }
        }
        let started = Instant::now();
        snap.last_attempt_at = Some(now_unix());
        snap.polls_total += 1;
        let result = tokio::select! {
            r = poller.poll() => r,
            _ = cancel.cancelled() => return,
        };
        snap.last_poll_duration_seconds = Some(started.elapsed().as_secs_f64());
        let transition = match result {
            Ok(sample) => {
                snap.sample = Some(Arc::new(sample));
                snap.last_success_at = Some(now_unix());
                breaker.on_success()
            }
            Err(e) => {
                tracing::debug!(namespace = %id.namespace, name = %id.name, source = kind.as_str(), error = %e, "poll failed");
                *snap.errors_total.entry(e.kind).or_default() += 1;
                if settings.errors_kept > 0 {
                    if snap.last_errors.len() >= settings.errors_kept {
                        snap.last_errors.pop_front();
                    }
                    snap.last_errors.push_back(ErrorRecord { at: now_unix(), kind: e.kind, message: e.message });
                }
                breaker.on_failure(Instant::now(), e.hard)
            }
        };
        if let Some(t) = &transition {
            tracing::info!(
                namespace = %id.namespace, name = %id.name, source = kind.as_str(),
                from = t.from.as_str(), to = t.to.as_str(), reason = t.reason.as_str(),
                "breaker changed state"
            );
        }
        snap.breaker = breaker.view(Instant::now());
        store.publish(&id, &uuid, kind, Arc::new(snap.clone()));
        let failing_but_closed = breaker.state() == BreakerState::Closed && snap.breaker.consecutive_failures > 0;
        let next = if failing_but_closed { Instant::now() + settings.retry_delay } else { started + settings.interval };
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// How domains become VMs.
#[derive(Debug, Clone)]
pub struct Naming {
    /// Name-splitting rule.
    pub naming: DomainNaming,
    /// Namespace for names that carry none.
    pub default_namespace: String,
}

/// Which sources run for each VM, besides libvirt's.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The guest agent.
    pub qga: QgaRuntime,
    /// VMs without libvirt.
    pub static_vms: Vec<StaticVm>,
    /// The direct QMP monitor.
    pub qmp: QmpRuntime,
    /// Infra process metrics from this proc root.
    pub process_root: Option<std::path::PathBuf>,
}

/// Starts one (VM, source) task under the VM's cancel token.
fn spawn_source<P: Poller>(id: &VmId, uuid: &str, poller: P, ctx: &Ctx, token: &CancellationToken) {
    tokio::spawn(run_source(
        id.clone(),
        uuid.to_owned(),
        poller,
        ctx.store.clone(),
        ctx.settings.clone(),
        token.clone(),
    ));
}

/// Starts the QMP task of a VM when it has a monitor socket.
fn spawn_qmp(id: &VmId, uuid: &str, socket: Option<std::path::PathBuf>, ctx: &Ctx, token: &CancellationToken) {
    if let Some(path) = socket {
        let q = &ctx.sources.qmp;
        let poller = QmpPoller::new(path, q.timeout, q.max_message_bytes);
        spawn_source(id, uuid, poller, ctx, token);
    }
}

/// Starts the guest-agent task of a VM, if one applies.
fn spawn_qga(id: &VmId, uuid: &str, transport: Option<Transport>, ctx: &Ctx, token: &CancellationToken) {
    if !ctx.sources.qga.enabled {
        return;
    }
    if let Some(t) = transport {
        let poller = QgaPoller::new(t, ctx.sources.qga.poll.clone());
        spawn_source(id, uuid, poller, ctx, token);
    }
}

struct Ctx {
    store: Arc<Store>,
    settings: PollSettings,
    sources: Sources,
}

/// Starts and stops per-VM tasks as discovery reports domains.
pub async fn run(
    mut events: mpsc::Receiver<VmEvent>,
    store: Arc<Store>,
    naming: Naming,
    settings: PollSettings,
    sources: Sources,
    limiter: Arc<Semaphore>,
    cancel: CancellationToken,
) {
    let ctx = Ctx { store: store.clone(), settings: settings.clone(), sources };
    for vm in &ctx.sources.static_vms {
        let uuid = format!("static:{}/{}", vm.id.namespace, vm.id.name);
        tracing::info!(namespace = %vm.id.namespace, name = %vm.id.name, "static VM added");
        store.insert_vm(VmSnapshot {
            id: vm.id.clone(),
            domain: vm.id.name.clone(),
            uuid: uuid.clone(),
            endpoint: "static".into(),
            discovered_at: now_unix(),
            sources: BTreeMap::new(),
        });
        let transport =
            vm.qga_socket.clone().map(|p| Transport::Socket(SocketAgent::new(p, ctx.sources.qga.poll.max_reply_bytes)));
        spawn_qga(&vm.id, &uuid, transport, &ctx, &cancel);
        spawn_qmp(&vm.id, &uuid, vm.qmp_socket.clone(), &ctx, &cancel);
    }
    // (endpoint uri, uuid) → the VM and its tasks' cancel token.
    let mut running: BTreeMap<(String, String), (VmId, CancellationToken)> = BTreeMap::new();
    loop {
        let event = tokio::select! {
            e = events.recv() => match e { Some(e) => e, None => break },
            _ = cancel.cancelled() => break,
        };
        match event {
            VmEvent::Added(found) => {
                let id = VmId::from_domain(&found.name, naming.naming, &naming.default_namespace);
                let key = (found.endpoint.uri.clone(), found.uuid.clone());
                if let Some((old, token)) = running.remove(&key) {
                    token.cancel();
                    store.remove_vm(&old, &found.uuid);
                }
                tracing::info!(namespace = %id.namespace, name = %id.name, domain = %found.name, uri = %found.endpoint.uri, "VM added");
                store.insert_vm(VmSnapshot {
                    id: id.clone(),
                    domain: found.name.clone(),
                    uuid: found.uuid.clone(),
                    endpoint: found.endpoint.uri.clone(),
                    discovered_at: now_unix(),
                    sources: BTreeMap::new(),
                });
                let token = cancel.child_token();
                let poller = LibvirtPoller::new(
                    found.endpoint.clone(),
                    found.uuid.clone(),
                    limiter.clone(),
                    settings.timeout,
                    settings.hard_timeout,
                    settings.carry_window,
                );
                debug_assert_eq!(poller.kind(), SourceKind::Libvirt);
                spawn_source(&id, &found.uuid, poller, &ctx, &token);
                let qga = &ctx.sources.qga;
                let transport = match qga.transport {
                    QgaTransportKind::Socket => qga
                        .socket_for(&found.name, &id)
                        .map(|p| Transport::Socket(SocketAgent::new(p, qga.poll.max_reply_bytes))),
                    QgaTransportKind::Libvirt => Some(Transport::Libvirt(LibvirtAgent::new(
                        found.endpoint.clone(),
                        found.uuid.clone(),
                        limiter.clone(),
                        qga.poll.max_reply_bytes,
                    ))),
                };
                spawn_qga(&id, &found.uuid, transport, &ctx, &token);
                spawn_qmp(&id, &found.uuid, ctx.sources.qmp.socket_for(&found.name, &id), &ctx, &token);
                if let Some(root) = &ctx.sources.process_root {
                    let poller = ProcessPoller::new(found.name.clone(), root.clone());
                    spawn_source(&id, &found.uuid, poller, &ctx, &token);
                }
                running.insert(key, (id, token));
            }
            VmEvent::Removed { uri, uuid } => {
                if let Some((id, token)) = running.remove(&(uri, uuid.clone())) {
                    tracing::info!(namespace = %id.namespace, name = %id.name, "VM removed");
                    token.cancel();
                    store.remove_vm(&id, &uuid);
                }
            }
        }
    }
    for (_, (_, token)) in running {
        token.cancel();
    }
}
