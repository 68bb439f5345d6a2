//! Configuration: a typed TOML file (`--config`), overridden by command-line flags, validated
//! once at start-up with every problem reported together, each naming its field.
//!
//! The file's JSON Schema is generated into `schemas/config.schema.json` from [`FileConfig`].

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::breaker::BreakerConfig;
use crate::source::PollSettings;
pub use crate::source::qga::config::{QgaFileConfig, QgaLimitsFile, QgaPeriodsFile, QgaRuntime, QgaTransportKind};
pub use crate::source::qmp::config::{QmpFileConfig, QmpRuntime};
use crate::source::{Sources, StaticVm};
use crate::vm::DomainNaming;

pub mod validate;

pub use validate::{Check, FieldError, MAX_DURATION, expand_socket_pattern};

/// The default listen address; 9977 is vmbridge's plain-HTTP port.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9977";

/// The default libvirt URI.
pub const DEFAULT_URI: &str = "qemu:///system";

/// The configuration file, as written. Durations are strings such as `"5s"`, `"250ms"`, `"2m"`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address for `/metrics`, `/healthz`, `/readyz` and `/debug`. Default `0.0.0.0:9977`.
    pub listen: Option<String>,
    /// Value of the `node` label. Default: `$NODE_NAME`, else the host name.
    pub node_name: Option<String>,
    /// Address for `/debug` (plain HTTP); `"off"` disables it. Default `127.0.0.1:9978`:
    /// guest IPs and users are sensitive, so debug data stays off the public port.
    pub debug_listen: Option<String>,
    /// A file holding a bearer token; when set, `/debug` is also served on the public port to
    /// requests with `Authorization: Bearer <token>`.
    pub debug_token_file: Option<String>,
    /// HTTPS on the public port.
    #[serde(default)]
    pub tls: TlsFileConfig,
    /// Namespace for domains whose name carries none. Default `default`.
    pub default_namespace: Option<String>,
    /// How domain names map to namespace/name. Default `auto`.
    pub domain_naming: Option<DomainNaming>,
    /// Where libvirt daemons come from: `uris` (the configured URIs) or `kubevirt` (every
    /// virt-launcher's daemon, found through /proc; needs hostPID). Default `uris`.
    pub discovery: Option<DiscoveryMode>,
    /// KubeVirt discovery settings.
    #[serde(default)]
    pub kubevirt: KubevirtFileConfig,
    /// The libvirt source.
    #[serde(default)]
    pub libvirt: LibvirtFileConfig,
    /// Polling.
    #[serde(default)]
    pub poll: PollFileConfig,
    /// Limits on HTTP clients, per listener.
    #[serde(default)]
    pub http: HttpFileConfig,
    /// Circuit breakers.
    #[serde(default)]
    pub breaker: BreakerFileConfig,
    /// The guest-agent source.
    #[serde(default)]
    pub qga: QgaFileConfig,
    /// The direct QMP source.
    #[serde(default)]
    pub qmp: QmpFileConfig,
    /// Export every known family for every VM even before data exists; absent values are
    /// exported as NaN, never as a fake zero. Default false.
    pub export_all_known: Option<bool>,
    /// Keep the last migration values after the job ends, with
    /// `kubevirt_vmi_migration_last_completed_timestamp_seconds`. Default false.
    pub keep_ephemeral: Option<bool>,
    /// Export every bridge-health series: each breaker state, error kind and transition
    /// reason at zero too, and poll counts and durations. Default false: at most three
    /// series per VM and source while it is well (`vmbridge_source_up`,
    /// `vmbridge_source_last_success_timestamp_seconds`, the breaker's current state), plus
    /// counters of the error kinds and transitions that occurred. `/debug` always has it all.
    pub health_detail: Option<bool>,
    /// Export CPU and memory of each VM's QEMU and launcher-side processes (from /proc).
    /// Default true.
    pub process_metrics: Option<bool>,
    /// VMs without libvirt (plain QEMU), reached through their sockets only.
    #[serde(default)]
    pub vms: Vec<StaticVmFile>,
    /// Which families to export: `full` (all) or `kubevirt-complement` (none that KubeVirt's
    /// virt-handler exports too, to run beside it). Default `full`.
    pub metrics_profile: Option<crate::model::metric::Profile>,
    /// Groups to export (`core`, `hypervisor`, `guest`, `qmp`, `process`, `bridge`). Default
    /// all.
    pub metrics_groups: Option<Vec<crate::model::metric::Group>>,
}

/// `[[vms]]`: a VM without libvirt.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticVmFile {
    /// Namespace label. Default: `default_namespace`.
    pub namespace: Option<String>,
    /// Name label.
    pub name: String,
    /// The guest agent's Unix socket.
    pub qga_socket: Option<String>,
    /// A QMP monitor Unix socket.
    pub qmp_socket: Option<String>,
}

/// Where libvirt daemons come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryMode {
    /// The configured `libvirt.uris`.
    #[default]
    Uris,
    /// Launcher daemons found through /proc.
    Kubevirt,
}

/// `[kubevirt]`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubevirtFileConfig {
    /// Daemon process names. Default `["virtqemud", "libvirtd"]`.
    pub process_names: Option<Vec<String>>,
    /// Socket paths relative to the daemon's root, read-only ones (ending `-ro`) preferred.
    /// Default the `virtqemud-sock[-ro]` and `libvirt-sock[-ro]` under `var/run/libvirt/`.
    pub socket_paths: Option<Vec<String>>,
    /// The proc filesystem. Default `/proc`.
    pub proc_root: Option<String>,
    /// Which daemons count as launchers: `launcher` (below a `virt-launcher` process of its own
    /// container, with KubeVirt's launcher socket layout) or `any` (any daemon of those names in
    /// another mount namespace; for test rigs). Default `launcher`.
    pub trust: Option<crate::source::libvirt::launchers::Trust>,
    /// Launchers polled at most; more are counted (`over_cap`) and ignored. Default 512.
    pub max_launchers: Option<usize>,
}

/// `[tls]`: HTTPS on the public port, as KubeVirt components serve metrics. With `cert` and
/// `key`, the files are reloaded when they change (a rotated Secret); if neither file exists
/// yet, a self-signed certificate is used until they appear after a restart. With
/// `self_signed`, a certificate is generated at start. Otherwise plain HTTP.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsFileConfig {
    /// PEM certificate chain.
    pub cert: Option<String>,
    /// PEM private key.
    pub key: Option<String>,
    /// Generate a self-signed certificate at start.
    pub self_signed: Option<bool>,
}

/// `[libvirt]`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LibvirtFileConfig {
    /// libvirt URIs, one connection each. Default `["qemu:///system"]`.
    pub uris: Option<Vec<String>>,
    /// Most libvirt calls running at once across all VMs (calls abandoned at their deadline
    /// do not count). Default 16.
    pub max_concurrent_calls: Option<usize>,
    /// Most read-only connections per libvirt daemon for the pollers' calls. A connection with
    /// a call running long (a hung VM's) takes no new calls and another one carries them, so
    /// hung VMs never hold up healthy VMs' calls. Default 24 (above libvirtd's 20 workers).
    pub max_connections: Option<usize>,
    /// Most calls running at once on one connection: the daemon's `max_client_requests`
    /// (libvirtd's default 5); set it when the daemon's setting differs. Default 5.
    pub calls_per_connection: Option<usize>,
    /// Polls of one daemon's VMs that start within this window take their statistics from
    /// one bulk call (`virDomainListGetStats`, at most 32 domains a call) instead of a call each;
    /// a VM whose answer does not come back in time, or whose last poll failed, is polled
    /// alone. `0s` polls every VM alone. Default `250ms`.
    pub batch_window: Option<String>,
    /// `drive` and `interface` label values: `auto` uses a device's user alias without its
    /// `ua-` prefix when it has one, as KubeVirt does (`rootdisk`, `default`), else the target
    /// name; `target` always uses the target name (`vda`, the tap device). Default `auto`.
    pub device_labels: Option<crate::source::libvirt::aliases::DeviceLabels>,
}

/// `[http]`: limits on HTTP clients, per listener (public and debug alike).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpFileConfig {
    /// From a request's first byte (or the accept, or the TLS handshake's start) to its complete
    /// head; a slower client is disconnected. Default `10s`.
    pub header_timeout: Option<String>,
    /// A keep-alive connection without a new request this long is closed; keep it above the
    /// scrape interval. Default `2m`.
    pub idle_timeout: Option<String>,
    /// Open connections at most; past it the longest-parked connection (at least 1 s in its
    /// state) makes room, else the new one gets a 503. Default 256.
    pub max_connections: Option<usize>,
    /// A reply not handed to the socket this long after it was ready (a peer that does not
    /// read: its HTTP/2 window or its socket stays full) closes its connection. Default `30s`.
    pub write_timeout: Option<String>,
    /// Bytes of reply bodies held at once over both listeners (a body shared by concurrent
    /// scrapes counts once); a request whose new body does not fit gets a 503 with
    /// `Retry-After`. Default 33554432 (32 MiB).
    pub reply_budget_bytes: Option<usize>,
}

/// `[poll]`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PollFileConfig {
    /// Time between polls of each VM, and between domain listings. Default `5s`.
    pub interval: Option<String>,
    /// Deadline of one poll. Default `4s`.
    pub timeout: Option<String>,
    /// A call still running after this opens the breaker at once. Default `20s`.
    pub hard_timeout: Option<String>,
    /// Pause before re-polling a source that just failed. Default `200ms`.
    pub retry_delay: Option<String>,
    /// Failures kept per VM and source for `/debug`. Default 8.
    pub errors_kept: Option<usize>,
}

/// `[breaker]`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BreakerFileConfig {
    /// Consecutive failures that open a breaker. Default 3.
    pub failure_threshold: Option<u32>,
    /// First re-probe delay after opening. Default `1s`.
    pub backoff_min: Option<String>,
    /// Longest re-probe delay, jitter included. Default `60s`.
    pub backoff_max: Option<String>,
    /// How long the last good values of a failing source stay exported. Default `2m`.
    pub staleness: Option<String>,
    /// Transitions kept per breaker for `/debug`. Default 16.
    pub history: Option<usize>,
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message names the field).
    #[error("config file {path}: {message}")]
    Parse {
        /// The path.
        path: String,
        /// toml's message, with line, column and key.
        message: String,
    },
    /// Values are out of range or inconsistent.
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  - {}: {}", e.field, e.problem)).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<FieldError>),
}

/// The validated settings vmbridge runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Debug listen address; `None` when off.
    pub debug_listen: Option<SocketAddr>,
    /// Bearer token for `/debug` on the public port.
    pub debug_token: Option<String>,
    /// HTTPS, when enabled.
    pub tls: Option<crate::tls::CertSource>,
    /// `node` label.
    pub node_name: String,
    /// Namespace for plain domain names.
    pub default_namespace: String,
    /// Name mapping rule.
    pub domain_naming: DomainNaming,
    /// libvirt URIs (`uris` discovery).
    pub uris: Vec<String>,
    /// KubeVirt launcher discovery, when enabled.
    pub launchers: Option<crate::source::libvirt::launchers::LauncherScan>,
    /// Pool-wide bound on running libvirt calls.
    pub max_concurrent_calls: usize,
    /// Bounds of each endpoint's connections for the pollers.
    pub lanes: crate::source::libvirt::endpoint::LaneLimits,
    /// Per-source polling, including the breaker.
    pub poll: PollSettings,
    /// Staleness window.
    pub staleness: Duration,
    /// VMs without libvirt.
    pub static_vms: Vec<StaticVm>,
    /// Every source's settings.
    pub sources: Sources,
    /// HTTP client limits.
    pub http: crate::http::limits::Limits,
    /// Bytes of reply bodies held at once, both listeners together.
    pub reply_budget_bytes: usize,
    /// The families exported.
    pub selection: crate::model::metric::Selection,
    /// Every family for every VM, NaN where absent.
    pub export_all_known: bool,
    /// Keep the last migration values after the job ends.
    pub keep_ephemeral: bool,
    /// Every bridge-health series, at zero too.
    pub health_detail: bool,
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse { path: path.display().to_string(), message })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// Validates and fills defaults; `fallback_node` is used when no node name is configured.
    pub fn validate(&self, fallback_node: &str) -> Result<Settings, ConfigError> {
        let mut check = Check::default();
        let interval = check.duration("poll.interval", &self.poll.interval, Duration::from_secs(5));
        let timeout = check.duration("poll.timeout", &self.poll.timeout, Duration::from_secs(4));
        let hard_timeout = check.duration("poll.hard_timeout", &self.poll.hard_timeout, Duration::from_secs(20));
        let retry_delay = check.duration("poll.retry_delay", &self.poll.retry_delay, Duration::from_millis(200));
        let backoff_min = check.duration("breaker.backoff_min", &self.breaker.backoff_min, Duration::from_secs(1));
        let backoff_max = check.duration("breaker.backoff_max", &self.breaker.backoff_max, Duration::from_secs(60));
        let staleness = check.duration("breaker.staleness", &self.breaker.staleness, Duration::from_secs(120));

        let listen_s = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_s.parse::<SocketAddr>().unwrap_or_else(|_| {
            check.err("listen", format!("{listen_s:?} is not an address like \"0.0.0.0:9977\" or \"[::1]:9977\""));
            SocketAddr::from(([0, 0, 0, 0], 9977))
        });
        let debug_listen = match self.debug_listen.as_deref().unwrap_or("127.0.0.1:9978") {
            "off" => None,
            a => match a.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    check.err("debug_listen", format!("{a:?} is not an address like \"127.0.0.1:9978\" (or \"off\")"));
                    None
                }
            },
        };
        let debug_token = match &self.debug_token_file {
            None => None,
            Some(p) => match std::fs::read_to_string(p) {
                Ok(t) if t.trim().len() >= 16 => Some(t.trim().to_owned()),
                Ok(_) => {
                    check.err("debug_token_file", format!("{p}: the token must be at least 16 characters"));
                    None
                }
                Err(e) => {
                    check.err("debug_token_file", format!("cannot read {p}: {e}"));
                    None
                }
            },
        };
        let tls = match (&self.tls.cert, &self.tls.key, self.tls.self_signed.unwrap_or(false)) {
            (None, None, false) => None,
            (None, None, true) => Some(crate::tls::CertSource::SelfSigned),
            (Some(c), Some(k), _) => {
                let (ce, ke) = (std::path::Path::new(c).exists(), std::path::Path::new(k).exists());
                match (ce, ke) {
                    (true, true) => Some(crate::tls::CertSource::Files { cert: c.into(), key: k.into() }),
                    // The optional Secret is not mounted (yet): serve HTTPS with a generated one.
                    (false, false) => Some(crate::tls::CertSource::SelfSigned),
                    (false, true) => {
                        check.err("tls.cert", format!("{c} does not exist but the key does"));
                        None
                    }
                    (true, false) => {
                        check.err("tls.key", format!("{k} does not exist but the certificate does"));
                        None
                    }
                }
            }
            (Some(_), None, _) => {
                check.err("tls.key", "is required with tls.cert");
                None
            }
            (None, Some(_), _) => {
                check.err("tls.cert", "is required with tls.key");
                None
            }
        };
        if hard_timeout < timeout {
            check.err("poll.hard_timeout", format!("must be at least poll.timeout ({timeout:?})"));
        }
        if backoff_max < backoff_min {
            check.err("breaker.backoff_max", format!("must be at least breaker.backoff_min ({backoff_min:?})"));
        }
        if staleness < interval {
            check.err("breaker.staleness", format!("must be at least poll.interval ({interval:?})"));
        }
        let failure_threshold = self.breaker.failure_threshold.unwrap_or(3);
        if failure_threshold == 0 {
            check.err("breaker.failure_threshold", "must be at least 1");
        }
        let history = self.breaker.history.unwrap_or(16);
        if history > 1000 {
            check.err("breaker.history", "must be at most 1000");
        }
        let errors_kept = self.poll.errors_kept.unwrap_or(8);
        if errors_kept > 1000 {
            check.err("poll.errors_kept", "must be at most 1000");
        }
        let max_concurrent_calls = self.libvirt.max_concurrent_calls.unwrap_or(16);
        if max_concurrent_calls == 0 {
            check.err("libvirt.max_concurrent_calls", "must be at least 1");
        }
        let mut lanes = crate::source::libvirt::endpoint::LaneLimits::default();
        lanes.max_connections = self.libvirt.max_connections.unwrap_or(lanes.max_connections);
        if !(1..=1000).contains(&lanes.max_connections) {
            check.err("libvirt.max_connections", "must be from 1 to 1000");
        }
        lanes.calls_per_connection = self.libvirt.calls_per_connection.unwrap_or(lanes.calls_per_connection);
        if !(1..=1000).contains(&lanes.calls_per_connection) {
            check.err("libvirt.calls_per_connection", "must be from 1 to 1000");
        }
        // Zero is allowed here: it turns batching off.
        let off = self.libvirt.batch_window.as_deref().and_then(|s| humantime::parse_duration(s).ok())
            == Some(Duration::ZERO);
        lanes.batch_window = if off {
            Duration::ZERO
        } else if self.libvirt.batch_window.is_none() {
            // Unset: the default, but never more than a quarter of a short poll timeout.
            lanes.batch_window.min(timeout / 4)
        } else {
            check.duration("libvirt.batch_window", &self.libvirt.batch_window, lanes.batch_window)
        };
        if lanes.batch_window >= timeout {
            check.err("libvirt.batch_window", "must be shorter than poll.timeout");
        }
        let uris = self.libvirt.uris.clone().unwrap_or_else(|| vec![DEFAULT_URI.to_owned()]);
        if uris.is_empty() && self.vms.is_empty() {
            check.err("libvirt.uris", "needs at least one URI (or VMs under [[vms]])");
        }
        for (i, u) in uris.iter().enumerate() {
            if !u.contains(":/") {
                check.err(&format!("libvirt.uris[{i}]"), format!("{u:?} is not a libvirt URI like \"qemu:///system\""));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for u in &uris {
            if !seen.insert(u) {
                check.err("libvirt.uris", format!("{u:?} is listed twice"));
            }
        }
        let default_namespace = self.default_namespace.clone().unwrap_or_else(|| "default".to_owned());
        if crate::vm::VmId::from_domain(&format!("{default_namespace}_x"), DomainNaming::Auto, "").namespace
            != default_namespace
        {
            check.err(
                "default_namespace",
                format!("{default_namespace:?} is not a valid Kubernetes namespace (lowercase letters, digits, '-')"),
            );
        }
        let node_name = self.node_name.clone().unwrap_or_else(|| fallback_node.to_owned());
        if node_name.is_empty() {
            check.err("node_name", "must not be empty");
        }
        let launchers = match self.discovery.unwrap_or_default() {
            DiscoveryMode::Uris => None,
            DiscoveryMode::Kubevirt => {
                let d = crate::source::libvirt::launchers::LauncherScan::default();
                let k = &self.kubevirt;
                if k.process_names.as_ref().is_some_and(Vec::is_empty) {
                    check.err("kubevirt.process_names", "must not be empty");
                }
                if k.socket_paths.as_ref().is_some_and(|p| p.is_empty() || p.iter().any(|x| x.starts_with('/'))) {
                    check.err(
                        "kubevirt.socket_paths",
                        "must be a non-empty list of paths relative to the daemon's root (no leading /)",
                    );
                }
                let max_launchers = k.max_launchers.unwrap_or(d.max_launchers);
                if !(1..=100_000).contains(&max_launchers) {
                    check.err("kubevirt.max_launchers", "must be between 1 and 100000");
                }
                Some(crate::source::libvirt::launchers::LauncherScan {
                    proc_root: k.proc_root.clone().map(Into::into).unwrap_or(d.proc_root),
                    process_names: k.process_names.clone().unwrap_or(d.process_names),
                    socket_paths: k.socket_paths.clone().unwrap_or(d.socket_paths),
                    trust: k.trust.unwrap_or(d.trust),
                    max_launchers,
                })
            }
        };
        let groups = self.metrics_groups.clone().unwrap_or_else(|| crate::model::metric::Group::ALL.to_vec());
        if groups.is_empty() {
            check.err("metrics_groups", "must name at least one group (or be left out for all)");
        }
        let http_defaults = crate::http::limits::Limits::default();
        let http = crate::http::limits::Limits {
            header_timeout: check.duration(
                "http.header_timeout",
                &self.http.header_timeout,
                http_defaults.header_timeout,
            ),
            idle_timeout: check.duration("http.idle_timeout", &self.http.idle_timeout, http_defaults.idle_timeout),
            max_connections: self.http.max_connections.unwrap_or(http_defaults.max_connections),
            write_timeout: check.duration("http.write_timeout", &self.http.write_timeout, http_defaults.write_timeout),
        };
        if !(1..=100_000).contains(&http.max_connections) {
            check.err("http.max_connections", "must be between 1 and 100000");
        }
        let reply_budget_bytes = self.http.reply_budget_bytes.unwrap_or(crate::http::budget::DEFAULT_BUDGET);
        if !(1 << 20..=1 << 31).contains(&reply_budget_bytes) {
            check.err("http.reply_budget_bytes", "must be between 1048576 and 2147483648");
        }
        let selection = crate::model::metric::Selection { profile: self.metrics_profile.unwrap_or_default(), groups };
        let qga = crate::source::qga::config::validate(&self.qga, &mut check, interval, &selection);
        let qmp = crate::source::qmp::config::validate(&self.qmp, &mut check);
        let mut static_vms = Vec::new();
        for (i, v) in self.vms.iter().enumerate() {
            let namespace = v.namespace.clone().unwrap_or_else(|| default_namespace.clone());
            if v.name.is_empty() {
                check.err(&format!("vms[{i}].name"), "must not be empty");
            }
            if crate::vm::VmId::from_domain(&format!("{namespace}_x"), DomainNaming::Auto, "").namespace != namespace {
                check.err(&format!("vms[{i}].namespace"), format!("{namespace:?} is not a valid Kubernetes namespace"));
            }
            if v.qga_socket.is_none() && v.qmp_socket.is_none() {
                check.err(&format!("vms[{i}]"), "needs at least one socket (qga_socket or qmp_socket)");
            }
            static_vms.push(StaticVm {
                id: crate::vm::VmId { namespace, name: v.name.clone() },
                qga_socket: v.qga_socket.clone().map(Into::into),
                qmp_socket: v.qmp_socket.clone().map(Into::into),
            });
        }
        if !check.errors.is_empty() {
            return Err(ConfigError::Invalid(check.errors));
        }
        Ok(Settings {
            listen,
            debug_listen,
            debug_token,
            tls,
            node_name,
            default_namespace,
            domain_naming: self.domain_naming.unwrap_or_default(),
            uris: if launchers.is_some() { Vec::new() } else { uris },
            launchers,
            max_concurrent_calls,
            lanes,
            poll: PollSettings {
                interval,
                timeout,
                hard_timeout,
                retry_delay,
                errors_kept,
                carry_window: staleness,
                breaker: BreakerConfig { failure_threshold, backoff_min, backoff_max, history },
            },
            staleness,
            static_vms,
            export_all_known: self.export_all_known.unwrap_or(false),
            keep_ephemeral: self.keep_ephemeral.unwrap_or(false),
            health_detail: self.health_detail.unwrap_or(false),
            selection,
            http,
            reply_budget_bytes,
            sources: Sources {
                libvirt: crate::source::libvirt::LibvirtSettings {
                    device_labels: self.libvirt.device_labels.unwrap_or_default(),
                },
                qga,
                qmp,
                process: crate::source::process::ProcessSettings {
                    root: self
                        .process_metrics
                        .unwrap_or(true)
                        .then(|| self.kubevirt.proc_root.clone().unwrap_or_else(|| "/proc".to_owned()).into()),
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let s = FileConfig::default().validate("n1").expect("defaults validate");
        assert_eq!(s.uris, vec!["qemu:///system"]);
        assert_eq!(s.listen.port(), 9977);
        assert_eq!(s.node_name, "n1");
        assert_eq!(s.poll.breaker.failure_threshold, 3);
    }

    #[test]
    fn batch_window_zero_turns_batching_off_and_must_stay_under_the_timeout() {
        let lanes = |toml: &str| FileConfig::parse(toml).expect("parses").validate("n").map(|s| s.lanes.batch_window);
        assert_eq!(lanes("").ok(), Some(crate::source::libvirt::endpoint::batch::DEFAULT_WINDOW));
        assert_eq!(lanes("[libvirt]\nbatch_window = \"0s\"\n").ok(), Some(Duration::ZERO));
        assert_eq!(lanes("[libvirt]\nbatch_window = \"100ms\"\n").ok(), Some(Duration::from_millis(100)));
        // Unset with a short poll timeout: a quarter of it, so such a configuration stays valid.
        assert_eq!(lanes("[poll]\ntimeout = \"200ms\"\n").ok(), Some(Duration::from_millis(50)));
        let Err(ConfigError::Invalid(errs)) = lanes("[libvirt]\nbatch_window = \"5s\"\n") else {
            panic!("a window as long as the poll timeout must be refused")
        };
        assert_eq!(errs[0].field, "libvirt.batch_window");
        assert!(errs[0].problem.contains("poll.timeout"), "{}", errs[0].problem);
        let Err(ConfigError::Invalid(errs)) = lanes("[libvirt]\nbatch_window = \"soon\"\n") else {
            panic!("not a duration")
        };
        assert_eq!(errs[0].field, "libvirt.batch_window");
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        let e = FileConfig::parse("[poll]\nintervall = \"5s\"\n").expect_err("typo must fail");
        assert!(e.contains("intervall"), "{e}");
        let e = FileConfig::parse("[breaker]\nfailure_threshold = \"x\"\n").expect_err("wrong type must fail");
        assert!(e.contains("failure_threshold"), "{e}");
    }

    #[test]
    fn absurd_durations_are_rejected_not_left_to_overflow_later() {
        let cfg = FileConfig::parse("[qmp]\ntimeout = \"500000000000y\"\n").expect("parses");
        let Err(ConfigError::Invalid(errs)) = cfg.validate("n") else { panic!("must be invalid") };
        assert_eq!(errs[0].field, "qmp.timeout");
        assert!(errs[0].problem.contains("maximum of 7 days"), "{}", errs[0].problem);
    }

    #[test]
    fn every_problem_is_reported_together_with_its_field() {
        let cfg = FileConfig::parse(
            "listen = \"nope\"\ndefault_namespace = \"Bad_NS\"\n[libvirt]\nuris = [\"qemu:///system\", \"nonsense\", \"qemu:///system\"]\n\
             [poll]\ninterval = \"5 parsecs\"\ntimeout = \"10s\"\nhard_timeout = \"1s\"\n[breaker]\nfailure_threshold = 0\nbackoff_min = \"10s\"\nbackoff_max = \"1s\"\n",
        )
        .expect("parses");
        let Err(ConfigError::Invalid(errs)) = cfg.validate("n") else { panic!("must be invalid") };
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "listen",
            "default_namespace",
            "libvirt.uris[1]",
            "libvirt.uris",
            "poll.interval",
            "poll.hard_timeout",
            "breaker.failure_threshold",
            "breaker.backoff_max",
        ] {
            assert!(fields.contains(&f), "missing {f} in {fields:?}");
        }
        let text = ConfigError::Invalid(errs).to_string();
        assert!(text.contains("poll.interval: \"5 parsecs\" is not a duration"), "{text}");
    }
}
