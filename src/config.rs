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
    /// Namespace for domains whose name carries none. Default `default`.
    pub default_namespace: Option<String>,
    /// How domain names map to namespace/name. Default `auto`.
    pub domain_naming: Option<DomainNaming>,
    /// The libvirt source.
    #[serde(default)]
    pub libvirt: LibvirtFileConfig,
    /// Polling.
    #[serde(default)]
    pub poll: PollFileConfig,
    /// Circuit breakers.
    #[serde(default)]
    pub breaker: BreakerFileConfig,
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
    /// `node` label.
    pub node_name: String,
    /// Namespace for plain domain names.
    pub default_namespace: String,
    /// Name mapping rule.
    pub domain_naming: DomainNaming,
    /// libvirt URIs.
    pub uris: Vec<String>,
    /// Pool-wide bound on running libvirt calls.
    pub max_concurrent_calls: usize,
    /// Per-source polling, including the breaker.
    pub poll: PollSettings,
    /// Staleness window.
    pub staleness: Duration,
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// Validates and fills defaults; `fallback_node` is used when no node name is configured.
    pub fn validate(&self, fallback_node: &str) -> Result<Settings, ConfigError> {
        let mut errs = Vec::new();
        let mut err = |field: &str, problem: String| {
            errs.push(FieldError {
                field: field.to_owned(),
                problem,
            })
        };
        let dur = |field: &str,
                   v: &Option<String>,
                   default: Duration,
                   err: &mut dyn FnMut(&str, String)| match v {
            None => default,
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) if d.is_zero() => {
                    err(field, "must be greater than zero".into());
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    err(
                        field,
                        format!("{s:?} is not a duration like \"5s\" or \"250ms\" ({e})"),
                    );
                    default
                }
            },
        };
        let interval = dur(
            "poll.interval",
            &self.poll.interval,
            Duration::from_secs(5),
            &mut err,
        );
        let timeout = dur(
            "poll.timeout",
            &self.poll.timeout,
            Duration::from_secs(4),
            &mut err,
        );
        let hard_timeout = dur(
            "poll.hard_timeout",
            &self.poll.hard_timeout,
            Duration::from_secs(20),
            &mut err,
        );
        let retry_delay = dur(
            "poll.retry_delay",
            &self.poll.retry_delay,
            Duration::from_millis(200),
            &mut err,
        );
        let backoff_min = dur(
            "breaker.backoff_min",
            &self.breaker.backoff_min,
            Duration::from_secs(1),
            &mut err,
        );
        let backoff_max = dur(
            "breaker.backoff_max",
            &self.breaker.backoff_max,
            Duration::from_secs(60),
            &mut err,
        );
        let staleness = dur(
            "breaker.staleness",
            &self.breaker.staleness,
            Duration::from_secs(120),
            &mut err,
        );

        let listen_s = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_s.parse::<SocketAddr>().unwrap_or_else(|_| {
            err(
                "listen",
                format!("{listen_s:?} is not an address like \"0.0.0.0:9977\" or \"[::1]:9977\""),
            );
            SocketAddr::from(([0, 0, 0, 0], 9977))
        });
        if hard_timeout < timeout {
            err(
                "poll.hard_timeout",
                format!("must be at least poll.timeout ({timeout:?})"),
            );
        }
        if backoff_max < backoff_min {
            err(
                "breaker.backoff_max",
                format!("must be at least breaker.backoff_min ({backoff_min:?})"),
            );
        }
        if staleness < interval {
            err(
                "breaker.staleness",
                format!("must be at least poll.interval ({interval:?})"),
            );
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
        let uris = self
            .libvirt
            .uris
            .clone()
            .unwrap_or_else(|| vec![DEFAULT_URI.to_owned()]);
        if uris.is_empty() {
            err("libvirt.uris", "needs at least one URI".into());
        }
        for (i, u) in uris.iter().enumerate() {
            if !u.contains(":/") {
                err(
                    &format!("libvirt.uris[{i}]"),
                    format!("{u:?} is not a libvirt URI like \"qemu:///system\""),
                );
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for u in &uris {
            if !seen.insert(u) {
                err("libvirt.uris", format!("{u:?} is listed twice"));
            }
        }
        let default_namespace = self
            .default_namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        if crate::vm::VmId::from_domain(&format!("{default_namespace}_x"), DomainNaming::Auto, "")
            .namespace
            != default_namespace
        {
            err(
                "default_namespace",
                format!(
                    "{default_namespace:?} is not a valid Kubernetes namespace (lowercase letters, digits, '-')"
                ),
            );
        }
        let node_name = self
            .node_name
            .clone()
            .unwrap_or_else(|| fallback_node.to_owned());
        if node_name.is_empty() {
            err("node_name", "must not be empty".into());
        }
        if !errs.is_empty() {
            return Err(ConfigError::Invalid(errs));
        }
        Ok(Settings {
            listen,
            node_name,
            default_namespace,
            domain_naming: self.domain_naming.unwrap_or_default(),
            uris,
            max_concurrent_calls,
            poll: PollSettings {
                interval,
                timeout,
                hard_timeout,
                retry_delay,
                errors_kept,
                breaker: BreakerConfig {
                    failure_threshold,
                    backoff_min,
                    backoff_max,
                    history,
                },
            },
            staleness,
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
        let s = FileConfig::default()
            .validate("n1")
            .expect("defaults validate");
        assert_eq!(s.uris, vec!["qemu:///system"]);
        assert_eq!(s.listen.port(), 9977);
        assert_eq!(s.node_name, "n1");
        assert_eq!(s.poll.breaker.failure_threshold, 3);
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        let e = FileConfig::parse("[poll]\nintervall = \"5s\"\n").expect_err("typo must fail");
        assert!(e.contains("intervall"), "{e}");
        let e = FileConfig::parse("[breaker]\nfailure_threshold = \"x\"\n")
            .expect_err("wrong type must fail");
        assert!(e.contains("failure_threshold"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_together_with_its_field() {
        let cfg = FileConfig::parse(
            "listen = \"nope\"\ndefault_namespace = \"Bad_NS\"\n[libvirt]\nuris = [\"qemu:///system\", \"nonsense\", \"qemu:///system\"]\n\
             [poll]\ninterval = \"5 parsecs\"\ntimeout = \"10s\"\nhard_timeout = \"1s\"\n[breaker]\nfailure_threshold = 0\nbackoff_min = \"10s\"\nbackoff_max = \"1s\"\n",
        )
        .expect("parses");
        let Err(ConfigError::Invalid(errs)) = cfg.validate("n") else {
            panic!("must be invalid")
        };
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
        assert!(
            text.contains("poll.interval: \"5 parsecs\" is not a duration"),
            "{text}"
        );
    }
}
