//! Validation's vocabulary, shared by the global config and each source's section: [`Check`]
//! collects every problem, each naming its field.

use std::fmt;
use std::time::Duration;

/// The longest duration any setting accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Collects every problem while validating, each naming its field.
#[derive(Debug, Default)]
pub struct Check {
    /// The problems so far.
    pub errors: Vec<FieldError>,
}

impl Check {
    /// Records a problem with `field`.
    pub fn err(&mut self, field: &str, problem: impl Into<String>) {
        self.errors.push(FieldError { field: field.to_owned(), problem: problem.into() });
    }

    /// A duration setting such as `"5s"`, or `default` when unset (or invalid, with the
    /// problem recorded).
    pub fn duration(&mut self, field: &str, v: &Option<String>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) if d.is_zero() => {
                    self.err(field, "must be greater than zero");
                    default
                }
                // Far beyond any sensible setting, and small enough that `Instant + d` cannot
                // overflow (found by fuzz/fuzz_targets/config_file.rs).
                Ok(d) if d > MAX_DURATION => {
                    self.err(field, format!("{s:?} is longer than the maximum of 7 days"));
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    self.err(field, format!("{s:?} is not a duration like \"5s\" or \"250ms\" ({e})"));
                    default
                }
            },
        }
    }

    /// A socket pattern must give each VM its own socket.
    pub fn socket_pattern(&mut self, field: &str, pattern: &Option<String>) {
        if let Some(p) = pattern {
            if !["{domain}", "{name}"].iter().any(|ph| p.contains(ph)) {
                self.err(field, format!("{p:?} must contain {{domain}} or {{name}} so each VM gets its own socket"));
            }
        }
    }
}

/// A VM's socket from a `*.socket_pattern` (`{domain}`, `{namespace}`, `{name}` replaced).
pub fn expand_socket_pattern(pattern: &str, domain: &str, id: &crate::vm::VmId) -> std::path::PathBuf {
    pattern.replace("{domain}", domain).replace("{namespace}", &id.namespace).replace("{name}", &id.name).into()
}

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted field path, e.g. `poll.interval`.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}
