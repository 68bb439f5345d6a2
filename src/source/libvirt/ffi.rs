//! The only `unsafe` in vmbridge: libvirt's bulk-stats call for one domain, copied into owned
//! Rust values and freed with `virDomainStatsRecordListFree`.
//!
//! Why not `virt::Connect::all_domain_stats`: in `virt` 0.5 it frees only the array and leaks
//! every record (RSS grew 19 → 105 MB over 50k calls). Why `virDomainListGetStats`
//! for a single domain rather than `virConnectGetAllDomainStats`: a bulk call over every domain
//! blocks on the slowest one, which is exactly the failure vmbridge exists to contain.

use std::ffi::CStr;
use std::time::Duration;

use serde::Serialize;
use virt::domain::Domain;
use virt::sys;

/// One typed parameter value as libvirt returned it. libvirt does not promise a type per field
/// (`state.state` is INT, `iothread.N.poll-max-ns` ULLONG), so consumers convert in one place.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum ParamValue {
    /// Signed integer (`INT`, `LLONG`).
    Int(i64),
    /// Unsigned integer (`UINT`, `ULLONG`).
    UInt(u64),
    /// Floating point (`DOUBLE`).
    Double(f64),
    /// Boolean (`BOOLEAN`).
    Bool(bool),
    /// String (`STRING`).
    Str(String),
}

impl ParamValue {
    /// The value as a float when it is numeric (booleans count as 0/1); `None` for strings.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            ParamValue::Int(v) => Some(*v as f64),
            ParamValue::UInt(v) => Some(*v as f64),
            ParamValue::Double(v) => Some(*v),
            ParamValue::Bool(v) => Some(f64::from(u8::from(*v))),
            ParamValue::Str(_) => None,
        }
    }

    /// The value as an unsigned integer when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            ParamValue::Int(v) => u64::try_from(*v).ok(),
            ParamValue::UInt(v) => Some(*v),
            ParamValue::Bool(v) => Some(u64::from(*v)),
            ParamValue::Double(_) | ParamValue::Str(_) => None,
        }
    }

    /// The value as a string slice when it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            ParamValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Copies `nparams` typed parameters into owned values. Unknown parameter types are skipped.
///
/// # Safety
/// `params` must point to `nparams` initialised `virTypedParameter`s that stay alive for the
/// duration of the call (libvirt's stats record guarantees this until it is freed).
unsafe fn copy_params(params: sys::virTypedParameterPtr, nparams: i32) -> Vec<(String, ParamValue)> {
    let n = usize::try_from(nparams).unwrap_or(0);
    let mut out = Vec::with_capacity(n);
    if params.is_null() {
        return out;
    }
    for i in 0..n {
        // SAFETY: i < nparams and the caller guarantees `params` holds nparams entries.
        let p = unsafe { &*params.add(i) };
        // SAFETY: `field` is a NUL-terminated fixed-size array filled by libvirt.
        let field = unsafe { CStr::from_ptr(p.field.as_ptr()) }.to_string_lossy().into_owned();
        // SAFETY: `type_` tells which union member libvirt initialised; we read only that one,
        // and a STRING's pointer is checked for NULL before it is read as a C string.
        let value = unsafe {
            match p.type_ as u32 {
                sys::VIR_TYPED_PARAM_INT => ParamValue::Int(i64::from(p.value.i)),
                sys::VIR_TYPED_PARAM_UINT => ParamValue::UInt(u64::from(p.value.ui)),
                sys::VIR_TYPED_PARAM_LLONG => ParamValue::Int(p.value.l),
                sys::VIR_TYPED_PARAM_ULLONG => ParamValue::UInt(p.value.ul),
                sys::VIR_TYPED_PARAM_DOUBLE => ParamValue::Double(p.value.d),
                sys::VIR_TYPED_PARAM_BOOLEAN => ParamValue::Bool(p.value.b != 0),
                sys::VIR_TYPED_PARAM_STRING if !p.value.s.is_null() => {
                    ParamValue::Str(CStr::from_ptr(p.value.s).to_string_lossy().into_owned())
                }
                _ => continue,
            }
        };
        out.push((field, value));
    }
    out
}

/// Bulk stats (`virDomainListGetStats`) for one domain: every typed parameter of the requested
/// groups, owned. Blocking: call it from the blocking pool.
pub fn domain_stats(dom: &Domain, stats: u32, flags: u32) -> Result<Vec<(String, ParamValue)>, virt::error::Error> {
    Ok(list_stats(&[dom], stats, flags)?.into_iter().flat_map(|(_, p)| p).collect())
}

/// One domain's typed parameters, owned.
pub type Params = Vec<(String, ParamValue)>;

/// Bulk stats (`virDomainListGetStats`) for several domains of one connection in one call:
/// per domain libvirt answered for, its UUID and its parameters, owned. Domains that no longer
/// exist are left out by libvirt. Blocking: call it from the blocking pool.
pub fn list_stats(doms: &[&Domain], stats: u32, flags: u32) -> Result<Vec<(String, Params)>, virt::error::Error> {
    let mut recs: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: the pointers are only passed to libvirt while `doms` borrows the domains.
    let mut list: Vec<sys::virDomainPtr> = doms.iter().map(|d| unsafe { d.as_ptr() }).collect();
    list.push(std::ptr::null_mut());
    // SAFETY: every domain is a live reference for the whole call (borrowed from `doms`); the
    // list is NULL-terminated as the API requires; `recs` is an out-pointer libvirt fills on
    // success.
    let n = unsafe { sys::virDomainListGetStats(list.as_mut_ptr(), stats, &mut recs, flags) };
    if n < 0 {
        // Read on the same thread as the failed call: libvirt's last error is thread-local.
        return Err(virt::error::Error::last_error());
    }
    let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for i in 0..usize::try_from(n).unwrap_or(0) {
        // SAFETY: libvirt returned n valid record pointers in `recs`; each record's domain is a
        // reference libvirt holds until the list is freed, and `buf` has the length
        // virDomainGetUUIDString writes (VIR_UUID_STRING_BUFLEN, NUL included).
        unsafe {
            let rec = *recs.add(i);
            if rec.is_null() {
                continue;
            }
            let mut buf = [0 as std::os::raw::c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
            let uuid = if sys::virDomainGetUUIDString((*rec).dom, buf.as_mut_ptr()) == 0 {
                CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
            } else {
                String::new()
            };
            out.push((uuid, copy_params((*rec).params, (*rec).nparams)));
        }
    }
    if !recs.is_null() {
        // SAFETY: `recs` came from virDomainListGetStats and is freed exactly once, here; this
        // releases the params, the domain references and the array itself.
        unsafe { sys::virDomainStatsRecordListFree(recs) };
    }
    Ok(out)
}

/// `virDomainGetJobStats`: the job type and its typed parameters, owned. Blocking.
pub fn job_stats(dom: &Domain, flags: u32) -> Result<(i32, Vec<(String, ParamValue)>), virt::error::Error> {
    let mut job_type: std::os::raw::c_int = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut nparams: std::os::raw::c_int = 0;
    // SAFETY: `dom` is a live domain reference; the out-pointers are valid for writes.
    let r = unsafe { sys::virDomainGetJobStats(dom.as_ptr(), &mut job_type, &mut params, &mut nparams, flags) };
    if r < 0 {
        return Err(virt::error::Error::last_error());
    }
    // SAFETY: on success libvirt filled `params` with `nparams` entries.
    let out = unsafe { copy_params(params, nparams) };
    if !params.is_null() {
        // SAFETY: allocated by libvirt for this call, freed exactly once, here.
        unsafe { sys::virTypedParamsFree(params, nparams) };
    }
    Ok((job_type, out))
}

/// `virDomainGetControlInfo`: the state of the domain's monitor (`VIR_DOMAIN_CONTROL_*`) and
/// how long it has been in it. Needs no job and never waits for QEMU, so it answers also while
/// another client's monitor command hangs. Blocking (one round trip to libvirtd).
pub fn control_info(dom: &Domain) -> Result<(u32, Duration), virt::error::Error> {
    let mut info = sys::virDomainControlInfo { state: 0, details: 0, stateTime: 0 };
    // SAFETY: `dom` is a live domain reference; `info` is valid for writes.
    let r = unsafe { sys::virDomainGetControlInfo(dom.as_ptr(), &mut info, 0) };
    if r < 0 {
        return Err(virt::error::Error::last_error());
    }
    Ok((info.state, Duration::from_millis(info.stateTime)))
}

/// `virDomainGetVcpuPinInfo`: how many (vCPU, host CPU) pairs the domain's current pinning
/// map allows, for its first `vcpus` vCPUs (KubeVirt's `node_cpu_affinity`). Read-only: libvirt
/// answers from the domain definition, without QEMU. Blocking (two round trips to libvirtd).
pub fn vcpu_affinity(dom: &Domain, vcpus: u32) -> Result<u64, virt::error::Error> {
    // SAFETY: `dom` is a live domain reference; the connection pointer it returns is borrowed
    // (no reference taken) and lives as long as the domain.
    let conn = unsafe { sys::virDomainGetConnect(dom.as_ptr()) };
    if conn.is_null() {
        return Err(virt::error::Error::last_error());
    }
    // SAFETY: with null map and online pointers libvirt only returns the host's CPU count.
    let host = unsafe { sys::virNodeGetCPUMap(conn, std::ptr::null_mut(), std::ptr::null_mut(), 0) };
    let Ok(host) = usize::try_from(host) else { return Err(virt::error::Error::last_error()) };
    let maplen = host.div_ceil(8).max(1);
    let n = usize::try_from(vcpus.min(4096)).unwrap_or(0);
    if n == 0 {
        return Ok(0);
    }
    let mut maps = vec![0u8; n * maplen];
    let (n_i, maplen_i) = (i32::try_from(n).unwrap_or(0), i32::try_from(maplen).unwrap_or(0));
    // SAFETY: `maps` holds `n` maps of `maplen` bytes each, as the call is told.
    let r = unsafe {
        sys::virDomainGetVcpuPinInfo(dom.as_ptr(), n_i, maps.as_mut_ptr(), maplen_i, sys::VIR_DOMAIN_AFFECT_CURRENT)
    };
    let Ok(filled) = usize::try_from(r) else { return Err(virt::error::Error::last_error()) };
    Ok(affinity_count(&maps, maplen, filled.min(n), host))
}

/// Set bits below `host` in the first `filled` maps of `maplen` bytes.
fn affinity_count(maps: &[u8], maplen: usize, filled: usize, host: usize) -> u64 {
    maps.chunks(maplen)
        .take(filled)
        .map(|m| (0..host).filter(|cpu| m.get(cpu / 8).is_some_and(|b| b & (1 << (cpu % 8)) != 0)).count() as u64)
        .sum()
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of `/proc/<pid>/stat` times.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a configuration value.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(v).ok().filter(|v| *v > 0).unwrap_or(100)
}

/// The page size in bytes (`sysconf(_SC_PAGESIZE)`), the unit of `/proc/<pid>/statm`.
pub fn page_size() -> u64 {
    // SAFETY: as above.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).ok().filter(|v| *v > 0).unwrap_or(4096)
}

/// Caps glibc's malloc arenas at `n`, unless `MALLOC_ARENA_MAX` is set (the operator's word
/// wins). glibc gives each thread that allocates under contention an arena of its own, up to
/// 8 per core, and an arena keeps the pages it once held: with libvirt's RPCs running on up
/// to `max_concurrent_calls` blocking threads, that was 15 arenas of about 400 KiB each at
/// 100 VMs, the largest share of vmbridge's anonymous memory. Call before threads start.
/// Returns whether the cap was set.
pub fn limit_malloc_arenas(n: i32) -> bool {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX takes any positive
        // count, and no allocation is in progress on another thread (called at start).
        unsafe { libc::mallopt(libc::M_ARENA_MAX, n) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = n;
        false
    }
}

/// A domain event, as vmbridge counts them (libvirt's domain event API, for VMs without a
/// direct QMP monitor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainEvent {
    /// `VIR_DOMAIN_EVENT_ID_LIFECYCLE`: `virDomainEventType` and its detail code.
    Lifecycle {
        /// Event type (STARTED, SUSPENDED, RESUMED, STOPPED, CRASHED, …).
        event: i32,
        /// Detail code, per event type.
        detail: i32,
    },
    /// `VIR_DOMAIN_EVENT_ID_REBOOT`.
    Reboot,
    /// `VIR_DOMAIN_EVENT_ID_IO_ERROR` on a device alias.
    IoError {
        /// Device alias (`virtio-disk0`).
        device: String,
    },
    /// `VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE`.
    Agent {
        /// Connected (true) or disconnected.
        connected: bool,
    },
}

/// Where events go: called with the domain's UUID, on libvirt's event-loop thread.
pub type EventSink = Arc<dyn Fn(&str, DomainEvent) + Send + Sync>;

use std::os::raw::{c_char, c_int, c_void};
use std::sync::Arc;

/// Hands an event to the sink behind `opaque`; never lets a panic cross into C.
///
/// # Safety
/// `opaque` must be the `Box<EventSink>` pointer registered with the callback, and `dom` a
/// domain pointer libvirt passes to the callback (valid for its duration).
unsafe fn deliver(dom: sys::virDomainPtr, opaque: *mut c_void, ev: DomainEvent) {
    if opaque.is_null() || dom.is_null() {
        return;
    }
    let mut buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    // SAFETY: `dom` is valid during the callback; the buffer has the documented size.
    if unsafe { sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) } < 0 {
        return;
    }
    // SAFETY: libvirt wrote a NUL-terminated UUID string into `buf`.
    let uuid = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
    // SAFETY: `opaque` is the Box<EventSink> leaked at registration, alive until `free_sink`.
    let sink = unsafe { &*(opaque as *const EventSink) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(&uuid, ev)));
}

unsafe extern "C" fn on_lifecycle(
    _c: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: called by libvirt with the pointers `deliver` requires.
    unsafe { deliver(dom, opaque, DomainEvent::Lifecycle { event, detail }) };
    0
}

unsafe extern "C" fn on_reboot(_c: sys::virConnectPtr, dom: sys::virDomainPtr, opaque: *mut c_void) {
    // SAFETY: as above.
    unsafe { deliver(dom, opaque, DomainEvent::Reboot) };
}

unsafe extern "C" fn on_io_error(
    _c: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _src: *const c_char,
    alias: *const c_char,
    _action: c_int,
    opaque: *mut c_void,
) {
    let device = if alias.is_null() {
        "unknown".to_owned()
    } else {
        // SAFETY: libvirt passes a NUL-terminated alias, valid for the callback.
        unsafe { CStr::from_ptr(alias) }.to_string_lossy().into_owned()
    };
    // SAFETY: as above.
    unsafe { deliver(dom, opaque, DomainEvent::IoError { device }) };
}

unsafe extern "C" fn on_agent(
    _c: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    state: c_int,
    _reason: c_int,
    opaque: *mut c_void,
) {
    // VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED = 1.
    // SAFETY: as above.
    unsafe { deliver(dom, opaque, DomainEvent::Agent { connected: state == 1 }) };
}

unsafe extern "C" fn free_sink(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: `opaque` came from Box::into_raw at registration; libvirt calls this once.
        drop(unsafe { Box::from_raw(opaque as *mut EventSink) });
    }
}

/// Registers for lifecycle, reboot, I/O-error and agent events of every domain on `conn`;
/// returns the callback ids for [`deregister_events`]. Needs libvirt's event loop running.
pub fn register_events(conn: &virt::connect::Connect, sink: EventSink) -> Result<Vec<i32>, virt::error::Error> {
    // libvirt takes every callback as the generic type and calls it with the signature of the
    // event id (its VIR_DOMAIN_EVENT_CALLBACK cast); these transmutes are that cast.
    // SAFETY: each function matches the C signature libvirt uses for its event id.
    let callbacks: [(u32, sys::virConnectDomainEventGenericCallback); 4] = unsafe {
        [
            (
                sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                Some(std::mem::transmute::<
                    *const (),
                    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
                >(on_lifecycle as *const ())),
            ),
            (
                sys::VIR_DOMAIN_EVENT_ID_REBOOT,
                Some(on_reboot as unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void)),
            ),
            (
                sys::VIR_DOMAIN_EVENT_ID_IO_ERROR,
                Some(std::mem::transmute::<
                    *const (),
                    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
                >(on_io_error as *const ())),
            ),
            (
                sys::VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE,
                Some(std::mem::transmute::<
                    *const (),
                    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
                >(on_agent as *const ())),
            ),
        ]
    };
    let mut ids = Vec::new();
    for (id, cb) in callbacks {
        let opaque = Box::into_raw(Box::new(sink.clone())) as *mut c_void;
        // SAFETY: `conn` is live; `opaque` is freed by libvirt through `free_sink` once the
        // callback is deregistered (or the connection closes).
        let r = unsafe {
            sys::virConnectDomainEventRegisterAny(
                conn.as_ptr(),
                std::ptr::null_mut(),
                id as c_int,
                cb,
                opaque,
                Some(free_sink),
            )
        };
        if r < 0 {
            let err = virt::error::Error::last_error();
            // SAFETY: registration failed, so libvirt did not take ownership of `opaque`.
            unsafe { free_sink(opaque) };
            deregister_events(conn, &ids);
            return Err(err);
        }
        ids.push(r);
    }
    Ok(ids)
}

/// Removes callbacks registered by [`register_events`].
pub fn deregister_events(conn: &virt::connect::Connect, ids: &[i32]) {
    for id in ids {
        // SAFETY: `conn` is live and `id` came from virConnectDomainEventRegisterAny on it.
        unsafe { sys::virConnectDomainEventDeregisterAny(conn.as_ptr(), *id) };
    }
}

#[cfg(test)]
mod affinity_tests {
    use super::affinity_count;

    #[test]
    fn affinity_counts_allowed_pairs_below_the_host_cpu_count() {
        // 2 vCPUs on a 10-CPU host (2-byte maps): vCPU 0 on CPUs 0-9, vCPU 1 on CPUs 1 and 3.
        let maps = [0xff, 0x03, 0b0000_1010, 0x00];
        assert_eq!(affinity_count(&maps, 2, 2, 10), 12);
        // Bits past the host count (a wider map) and maps past `filled` are ignored.
        assert_eq!(affinity_count(&[0xff, 0xff, 0xff, 0xff], 2, 1, 10), 10);
        assert_eq!(affinity_count(&maps, 2, 0, 10), 0);
    }
}
