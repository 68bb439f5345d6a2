//! Configuration: a typed TOML file (`--config`), overridden by command-line flags, validated
//! once at start-up with every problem reported together, each naming its field.
//!
//! The file's JSON Schema is generated into `schemas/config.schema.json` from [`FileConfig`].

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::breaker::BreakerConfig;
use crate::supervisor::PollSettings;
use crate::vm::DomainNaming;

/// The default listen address; 9977 is vmbridge's plain-HTTP port.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9977";
/// The longest duration any setting accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

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
    /// Export CPU and memory of each VM's QEMU and launcher-side processes (from /proc).
    /// Default true.
    pub process_metrics: Option<bool>,
    /// VMs without libvirt (plain QEMU), reached through their sockets only.
    #[serde(default)]
    pub vms: Vec<StaticVmFile>,
}

/// `[qmp]`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QmpFileConfig {
    /// A second monitor socket per VM, with `{domain}`, `{namespace}` and `{name}` replaced,
    /// e.g. `/run/vms/{domain}.qmp`. Unset: no QMP source (libvirt supplies job stats).
    pub socket_pattern: Option<String>,
    /// Deadline per QMP command. Default `3s`.
    pub timeout: Option<String>,
    /// Largest QMP message accepted, in bytes. Default 1048576.
    pub max_message_bytes: Option<usize>,
}

/// How the guest agent is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QgaTransportKind {
    /// `virDomainQemuAgentCommand` on a read-write libvirt connection (libvirt owns the channel).
    Libvirt,
    /// A direct Unix socket per VM, from `qga.socket_pattern`.
    Socket,
}

/// `[qga]`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QgaFileConfig {
    /// Poll guest agents at all. Default true.
    pub enabled: Option<bool>,
    /// Default `socket` when `socket_pattern` is set, else `libvirt`.
    pub transport: Option<QgaTransportKind>,
    /// Socket path per VM, with `{domain}`, `{namespace}` and `{name}` replaced, e.g.
    /// `/run/vms/{domain}.qga`.
    pub socket_pattern: Option<String>,
    /// Deadline per agent command. Default `5s`.
    pub timeout: Option<String>,
    /// Largest agent reply accepted, in bytes; a larger one fails the poll. Default 1048576.
    pub max_reply_bytes: Option<usize>,
    /// Poll period per command.
    #[serde(default)]
    pub periods: QgaPeriodsFile,
    /// Per-VM caps on what a guest can make vmbridge export.
    #[serde(default)]
    pub limits: QgaLimitsFile,
}

/// `[qga.periods]`: durations per command.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QgaPeriodsFile {
    /// `guest-info` (capabilities). Default `5m`.
    pub info: Option<String>,
    /// `guest-get-fsinfo`. Default `30s`.
    pub fsinfo: Option<String>,
    /// `guest-network-get-interfaces`. Default `30s`.
    pub network: Option<String>,
    /// `guest-get-users`. Default `30s`.
    pub users: Option<String>,
    /// `guest-get-osinfo`. Default `5m`.
    pub osinfo: Option<String>,
    /// `guest-get-vcpus`. Default `30s`.
    pub vcpus: Option<String>,
    /// `guest-get-load`. Default `15s`.
    pub load: Option<String>,
    /// `guest-get-diskstats`. Default `15s`.
    pub diskstats: Option<String>,
    /// `guest-get-cpustats`. Default `15s`.
    pub cpustats: Option<String>,
    /// `guest-get-timezone`. Default `5m`.
    pub timezone: Option<String>,
    /// `guest-get-host-name`. Default `5m`.
    pub hostname: Option<String>,
    /// `guest-get-memory-block-info`. Default `5m`.
    pub memory_block_info: Option<String>,
}

impl QgaPeriodsFile {
    fn entries(&self) -> [(&'static str, &Option<String>); 12] {
        [
            ("info", &self.info),
            ("fsinfo", &self.fsinfo),
            ("network", &self.network),
            ("users", &self.users),
            ("osinfo", &self.osinfo),
            ("vcpus", &self.vcpus),
            ("load", &self.load),
            ("diskstats", &self.diskstats),
            ("cpustats", &self.cpustats),
            ("timezone", &self.timezone),
            ("hostname", &self.hostname),
            ("memory_block_info", &self.memory_block_info),
        ]
    }
}

/// `[qga.limits]`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QgaLimitsFile {
    /// Filesystems per VM. Default 64.
    pub filesystems: Option<usize>,
    /// Network interfaces per VM. Default 32.
    pub interfaces: Option<usize>,
    /// IP addresses per VM. Default 64.
    pub addresses: Option<usize>,
    /// Disks per VM. Default 64.
    pub disks: Option<usize>,
    /// CPUs per VM. Default 512.
    pub cpus: Option<usize>,
    /// Longest label value from a guest, in bytes. Default 128.
    pub label_bytes: Option<usize>,
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

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted field path, e.g. `poll.interval`.
    pub field: String,
    /// What is wrong.
    pub problem: String,
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
    /// Per-source polling, including the breaker.
    pub poll: PollSettings,
    /// Staleness window.
    pub staleness: Duration,
    /// The guest-agent source.
    pub qga: QgaRuntime,
    /// VMs without libvirt.
    pub static_vms: Vec<StaticVm>,
    /// The direct QMP source.
    pub qmp: QmpRuntime,
    /// Seed 003 normalisation: every family for every VM, NaN where absent.
    pub export_all_known: bool,
    /// Seed 003 normalisation: keep the last migration values.
    pub keep_ephemeral: bool,
    /// Infra process metrics from this proc root, when enabled.
    pub process_root: Option<std::path::PathBuf>,
}

/// Validated QMP settings.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpRuntime {
    /// Socket pattern; `None` disables the source for discovered VMs.
    pub socket_pattern: Option<String>,
    /// Deadline per command.
    pub timeout: Duration,
    /// Largest message.
    pub max_message_bytes: usize,
}

impl QmpRuntime {
    /// The monitor socket of a VM, from the pattern.
    pub fn socket_for(&self, domain: &str, id: &crate::vm::VmId) -> Option<std::path::PathBuf> {
        self.socket_pattern.as_ref().map(|p| {
            p.replace("{domain}", domain).replace("{namespace}", &id.namespace).replace("{name}", &id.name).into()
        })
    }
}

/// Validated guest-agent settings.
#[derive(Debug, Clone, PartialEq)]
pub struct QgaRuntime {
    /// Poll agents at all.
    pub enabled: bool,
    /// Transport for libvirt-discovered VMs.
    pub transport: QgaTransportKind,
    /// Socket pattern for the socket transport.
    pub socket_pattern: Option<String>,
    /// Per-command settings.
    pub poll: crate::source::qga::poller::QgaSettings,
}

impl QgaRuntime {
    /// The socket path of a VM, from the pattern.
    pub fn socket_for(&self, domain: &str, id: &crate::vm::VmId) -> Option<std::path::PathBuf> {
        self.socket_pattern.as_ref().map(|p| {
            p.replace("{domain}", domain).replace("{namespace}", &id.namespace).replace("{name}", &id.name).into()
        })
    }
}

/// A validated static VM.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticVm {
    /// Its identity.
    pub id: crate::vm::VmId,
    /// Its agent socket.
    pub qga_socket: Option<std::path::PathBuf>,
    /// Its QMP monitor socket.
    pub qmp_socket: Option<std::path::PathBuf>,
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
        let mut errs = Vec::new();
        let mut err = |field: &str, problem: String| errs.push(FieldError { field: field.to_owned(), problem });
        let dur = |field: &str, v: &Option<String>, default: Duration, err: &mut dyn FnMut(&str, String)| match v {
            None => default,
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) if d.is_zero() => {
                    err(field, "must be greater than zero".into());
                    default
                }
                // Far beyond any sensible setting, and small enough that `Instant + d` cannot
                // overflow (found by fuzz/fuzz_targets/config_file.rs).
                Ok(d) if d > MAX_DURATION => {
                    err(field, format!("{s:?} is longer than the maximum of 7 days"));
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    err(field, format!("{s:?} is not a duration like \"5s\" or \"250ms\" ({e})"));
                    default
                }
            },
        };
        let interval = dur("poll.interval", &self.poll.interval, Duration::from_secs(5), &mut err);
        let timeout = dur("poll.timeout", &self.poll.timeout, Duration::from_secs(4), &mut err);
        let hard_timeout = dur("poll.hard_timeout", &self.poll.hard_timeout, Duration::from_secs(20), &mut err);
        let retry_delay = dur("poll.retry_delay", &self.poll.retry_delay, Duration::from_millis(200), &mut err);
        let backoff_min = dur("breaker.backoff_min", &self.breaker.backoff_min, Duration::from_secs(1), &mut err);
        let backoff_max = dur("breaker.backoff_max", &self.breaker.backoff_max, Duration::from_secs(60), &mut err);
        let staleness = dur("breaker.staleness", &self.breaker.staleness, Duration::from_secs(120), &mut err);

        let listen_s = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_s.parse::<SocketAddr>().unwrap_or_else(|_| {
            err("listen", format!("{listen_s:?} is not an address like \"0.0.0.0:9977\" or \"[::1]:9977\""));
            SocketAddr::from(([0, 0, 0, 0], 9977))
        });
        let debug_listen = match self.debug_listen.as_deref().unwrap_or("127.0.0.1:9978") {
            "off" => None,
            a => match a.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    err("debug_listen", format!("{a:?} is not an address like \"127.0.0.1:9978\" (or \"off\")"));
                    None
                }
            },
        };
        let debug_token = match &self.debug_token_file {
            None => None,
            Some(p) => match std::fs::read_to_string(p) {
                Ok(t) if t.trim().len() >= 16 => Some(t.trim().to_owned()),
                Ok(_) => {
                    err("debug_token_file", format!("{p}: the token must be at least 16 characters"));
                    None
                }
                Err(e) => {
                    err("debug_token_file", format!("cannot read {p}: {e}"));
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
                        err("tls.cert", format!("{c} does not exist but the key does"));
                        None
                    }
                    (true, false) => {
                        err("tls.key", format!("{k} does not exist but the certificate does"));
                        None
                    }
                }
            }
            (Some(_), None, _) => {
                err("tls.key", "is required with tls.cert".into());
                None
            }
            (None, Some(_), _) => {
                err("tls.cert", "is required with tls.key".into());
                None
            }
        };
        if hard_timeout < timeout {
            err("poll.hard_timeout", format!("must be at least poll.timeout ({timeout:?})"));
        }
        if backoff_max < backoff_min {
            err("breaker.backoff_max", format!("must be at least breaker.backoff_min ({backoff_min:?})"));
        }
        if staleness < interval {
            err("breaker.staleness", format!("must be at least poll.interval ({interval:?})"));
        }
        let failure_threshold = self.breaker.failure_threshold.unwrap_or(3);
        if failure_threshold == 0 {
            err("breaker.failure_threshold", "must be at least 1".into());
        }
        let history = self.breaker.history.unwrap_or(16);
        if history > 1000 {
            err("breaker.history", "must be at most 1000".into());
        }
        let errors_kept = self.poll.errors_kept.unwrap_or(8);
        if errors_kept > 1000 {
            err("poll.errors_kept", "must be at most 1000".into());
        }
        let max_concurrent_calls = self.libvirt.max_concurrent_calls.unwrap_or(16);
        if max_concurrent_calls == 0 {
            err("libvirt.max_concurrent_calls", "must be at least 1".into());
        }
        let uris = self.libvirt.uris.clone().unwrap_or_else(|| vec![DEFAULT_URI.to_owned()]);
        if uris.is_empty() && self.vms.is_empty() {
            err("libvirt.uris", "needs at least one URI (or VMs under [[vms]])".into());
        }
        for (i, u) in uris.iter().enumerate() {
            if !u.contains(":/") {
                err(&format!("libvirt.uris[{i}]"), format!("{u:?} is not a libvirt URI like \"qemu:///system\""));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for u in &uris {
            if !seen.insert(u) {
                err("libvirt.uris", format!("{u:?} is listed twice"));
            }
        }
        let default_namespace = self.default_namespace.clone().unwrap_or_else(|| "default".to_owned());
        if crate::vm::VmId::from_domain(&format!("{default_namespace}_x"), DomainNaming::Auto, "").namespace
            != default_namespace
        {
            err(
                "default_namespace",
                format!("{default_namespace:?} is not a valid Kubernetes namespace (lowercase letters, digits, '-')"),
            );
        }
        let node_name = self.node_name.clone().unwrap_or_else(|| fallback_node.to_owned());
        if node_name.is_empty() {
            err("node_name", "must not be empty".into());
        }
        let launchers = match self.discovery.unwrap_or_default() {
            DiscoveryMode::Uris => None,
            DiscoveryMode::Kubevirt => {
                let d = crate::source::libvirt::launchers::LauncherScan::default();
                let k = &self.kubevirt;
                if k.process_names.as_ref().is_some_and(Vec::is_empty) {
                    err("kubevirt.process_names", "must not be empty".into());
                }
                if k.socket_paths.as_ref().is_some_and(|p| p.is_empty() || p.iter().any(|x| x.starts_with('/'))) {
                    err(
                        "kubevirt.socket_paths",
                        "must be a non-empty list of paths relative to the daemon's root (no leading /)".into(),
                    );
                }
                Some(crate::source::libvirt::launchers::LauncherScan {
                    proc_root: k.proc_root.clone().map(Into::into).unwrap_or(d.proc_root),
                    process_names: k.process_names.clone().unwrap_or(d.process_names),
                    socket_paths: k.socket_paths.clone().unwrap_or(d.socket_paths),
                })
            }
        };
        let q = &self.qga;
        let qga_timeout = dur("qga.timeout", &q.timeout, Duration::from_secs(5), &mut err);
        let mut periods = std::collections::BTreeMap::new();
        for (key, v) in q.periods.entries() {
            let d = dur(&format!("qga.periods.{key}"), v, crate::source::qga::poller::default_period(key), &mut err);
            periods.insert(key.to_owned(), d);
        }
        let max_reply_bytes = q.max_reply_bytes.unwrap_or(1 << 20);
        if !(4096..=64 << 20).contains(&max_reply_bytes) {
            err("qga.max_reply_bytes", "must be between 4096 and 67108864".into());
        }
        let defaults = crate::source::qga::GuestLimits::default();
        let mut limit = |field: &str, v: Option<usize>, default: usize, min: usize| {
            let v = v.unwrap_or(default);
            if v < min || v > 100_000 {
                err(&format!("qga.limits.{field}"), format!("must be between {min} and 100000"));
            }
            v
        };
        let limits = crate::source::qga::GuestLimits {
            filesystems: limit("filesystems", q.limits.filesystems, defaults.filesystems, 1),
            interfaces: limit("interfaces", q.limits.interfaces, defaults.interfaces, 1),
            addresses: limit("addresses", q.limits.addresses, defaults.addresses, 1),
            disks: limit("disks", q.limits.disks, defaults.disks, 1),
            cpus: limit("cpus", q.limits.cpus, defaults.cpus, 1),
            label_bytes: limit("label_bytes", q.limits.label_bytes, defaults.label_bytes, 16),
        };
        let transport = q.transport.unwrap_or(if q.socket_pattern.is_some() {
            QgaTransportKind::Socket
        } else {
            QgaTransportKind::Libvirt
        });
        if transport == QgaTransportKind::Socket && q.socket_pattern.is_none() {
            err("qga.socket_pattern", "is required when qga.transport is \"socket\"".into());
        }
        if let Some(p) = &q.socket_pattern {
            if !["{domain}", "{name}"].iter().any(|ph| p.contains(ph)) {
                err(
                    "qga.socket_pattern",
                    format!("{p:?} must contain {{domain}} or {{name}} so each VM gets its own socket"),
                );
            }
        }
        let mut static_vms = Vec::new();
        for (i, v) in self.vms.iter().enumerate() {
            let namespace = v.namespace.clone().unwrap_or_else(|| default_namespace.clone());
            if v.name.is_empty() {
                err(&format!("vms[{i}].name"), "must not be empty".into());
            }
            if crate::vm::VmId::from_domain(&format!("{namespace}_x"), DomainNaming::Auto, "").namespace != namespace {
                err(&format!("vms[{i}].namespace"), format!("{namespace:?} is not a valid Kubernetes namespace"));
            }
            if v.qga_socket.is_none() && v.qmp_socket.is_none() {
                err(&format!("vms[{i}]"), "needs at least one socket (qga_socket or qmp_socket)".into());
            }
            static_vms.push(StaticVm {
                id: crate::vm::VmId { namespace, name: v.name.clone() },
                qga_socket: v.qga_socket.clone().map(Into::into),
                qmp_socket: v.qmp_socket.clone().map(Into::into),
            });
        }
        let qmp_timeout = dur("qmp.timeout", &self.qmp.timeout, Duration::from_secs(3), &mut err);
        let max_message_bytes = self.qmp.max_message_bytes.unwrap_or(1 << 20);
        if !(4096..=64 << 20).contains(&max_message_bytes) {
            err("qmp.max_message_bytes", "must be between 4096 and 67108864".into());
        }
        if let Some(p) = &self.qmp.socket_pattern {
            if !["{domain}", "{name}"].iter().any(|ph| p.contains(ph)) {
                err(
                    "qmp.socket_pattern",
                    format!("{p:?} must contain {{domain}} or {{name}} so each VM gets its own socket"),
                );
            }
        }
        if !errs.is_empty() {
            return Err(ConfigError::Invalid(errs));
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
            qga: QgaRuntime {
                enabled: q.enabled.unwrap_or(true),
                transport,
                socket_pattern: q.socket_pattern.clone(),
                poll: crate::source::qga::poller::QgaSettings {
                    timeout: qga_timeout,
                    max_reply_bytes,
                    periods,
                    limits,
                },
            },
            static_vms,
            qmp: QmpRuntime {
                socket_pattern: self.qmp.socket_pattern.clone(),
                timeout: qmp_timeout,
                max_message_bytes,
            },
            export_all_known: self.export_all_known.unwrap_or(false),
            keep_ephemeral: self.keep_ephemeral.unwrap_or(false),
            process_root: self
                .process_metrics
                .unwrap_or(true)
                .then(|| self.kubevirt.proc_root.clone().unwrap_or_else(|| "/proc".to_owned()).into()),
        })
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
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
