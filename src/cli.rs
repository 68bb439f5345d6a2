//! Command-line flags. Every flag also exists in the config file; a flag given on the command
//! line wins over the file.

use std::path::PathBuf;

use clap::Parser;

use crate::config::FileConfig;
use crate::vm::DomainNaming;

/// libvirt, QEMU and guest-agent facts as Prometheus metrics, one breaker per VM
/// and source, scrapes served from memory.
#[derive(Debug, Clone, Parser)]
#[command(name = "vmbridge", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("VMBRIDGE_GIT_REVISION"), ")"))]
pub struct Cli {
    /// Listen address for /metrics, /healthz, /readyz and /debug [default: 0.0.0.0:9977].
    #[arg(global = true, long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Listen address for /debug (plain HTTP), or "off" [default: 127.0.0.1:9978].
    #[arg(global = true, long, value_name = "ADDR")]
    pub debug_listen: Option<String>,
    /// Also serve /debug on the public port to requests bearing the token in this file.
    #[arg(global = true, long, value_name = "FILE")]
    pub debug_token_file: Option<String>,
    /// Serve the public port over HTTPS with this PEM certificate (reloaded on change).
    #[arg(global = true, long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<String>,
    /// The PEM private key for --tls-cert.
    #[arg(global = true, long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<String>,
    /// Serve the public port over HTTPS with a certificate generated at start.
    #[arg(global = true, long)]
    pub tls_self_signed: bool,
    /// libvirt URI to connect to (read-only); repeat for several daemons [default: qemu:///system].
    #[arg(global = true, long = "libvirt-uri", value_name = "URI")]
    pub libvirt_uris: Vec<String>,
    /// TOML configuration file (schema: schemas/config.schema.json).
    #[arg(global = true, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Time between polls of each VM, e.g. 5s [default: 5s].
    #[arg(global = true, long, value_name = "DURATION")]
    pub poll_interval: Option<String>,
    /// Deadline of one poll, e.g. 4s [default: 4s].
    #[arg(global = true, long, value_name = "DURATION")]
    pub poll_timeout: Option<String>,
    /// Reach each VM's guest agent through this socket instead of libvirt; `{domain}`,
    /// `{namespace}` and `{name}` are replaced, e.g. '/run/vms/{domain}.qga'.
    #[arg(global = true, long, value_name = "PATTERN")]
    pub qga_socket: Option<String>,
    /// Poll each VM's extra QMP monitor at this socket; `{domain}`, `{namespace}` and `{name}`
    /// are replaced, e.g. '/run/vms/{domain}.qmp'.
    #[arg(global = true, long, value_name = "PATTERN")]
    pub qmp_socket: Option<String>,
    /// Export every known family for every VM before data exists (absent values are NaN).
    #[arg(global = true, long)]
    pub export_all_known: bool,
    /// Keep the last migration values after the job ends.
    #[arg(global = true, long)]
    pub keep_ephemeral: bool,
    /// Export every bridge-health series (each breaker state, error kind and transition
    /// reason at zero too, poll counts and durations), not only the ones that say something.
    #[arg(long)]
    pub health_detail: bool,
    /// Where libvirt daemons come from: the --libvirt-uri list, or every KubeVirt
    /// virt-launcher's daemon found through /proc (needs hostPID) [default: uris].
    #[arg(global = true, long, value_enum, value_name = "MODE")]
    pub discovery: Option<DiscoveryArg>,
    /// Do not poll guest agents.
    #[arg(global = true, long)]
    pub no_qga: bool,
    /// Value of the `node` label [default: $NODE_NAME, else the host name].
    #[arg(global = true, long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Namespace for domains whose name carries none [default: default].
    #[arg(global = true, long, value_name = "NAMESPACE")]
    pub default_namespace: Option<String>,
    /// How domain names map to namespace/name [default: auto].
    #[arg(global = true, long, value_enum, value_name = "RULE")]
    pub domain_naming: Option<NamingArg>,
    /// Log filter (tracing env-filter syntax), e.g. info or vmbridge=debug.
    #[arg(global = true, long, env = "VMBRIDGE_LOG", default_value = "info")]
    pub log: String,
    /// Log as JSON lines instead of text.
    #[arg(global = true, long)]
    pub log_json: bool,
    /// Which families to export: all, or none that KubeVirt's virt-handler exports too (to run
    /// beside it) [default: full].
    #[arg(global = true, long, value_enum, value_name = "PROFILE")]
    pub metrics_profile: Option<crate::model::metric::Profile>,
    /// Export only these groups, comma-separated (core, hypervisor, guest, qmp, process,
    /// bridge) [default: all].
    #[arg(global = true, long, value_enum, value_name = "GROUPS", value_delimiter = ',')]
    pub metrics_groups: Option<Vec<crate::model::metric::Group>>,
    /// Print the metric catalogue and exit, without connecting anywhere.
    #[arg(global = true, long)]
    pub list_metrics: bool,
    /// Without a subcommand, vmbridge runs the exporter.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Probe every libvirt endpoint, VM and source once and print what works
    ///
    /// Every libvirt endpoint, VM and source is probed once, with the same configuration and
    /// flags and the normal timeouts; for what does not work, it prints why and the fix. Exits 0
    /// when at least one source of one VM works, 1 when none does, 2 when the configuration is
    /// invalid.
    Check {
        /// `table` for people, `json` for scripts (schema: schemas/check.schema.json).
        #[arg(long, value_enum, default_value = "table")]
        output: CheckOutput,
    },
}

/// `check --output` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckOutput {
    /// A table.
    Table,
    /// JSON.
    Json,
}

/// `--discovery` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiscoveryArg {
    /// The configured libvirt URIs.
    Uris,
    /// KubeVirt launchers.
    Kubevirt,
}

/// `--domain-naming` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NamingArg {
    /// Split `<namespace>_<name>` when the prefix is a valid namespace.
    Auto,
    /// Always split at the first `_`.
    Kubevirt,
    /// Never split.
    Plain,
}

impl Cli {
    /// Applies the flags given on the command line over the file configuration.
    pub fn overlay(&self, mut file: FileConfig) -> FileConfig {
        if let Some(v) = &self.listen {
            file.listen = Some(v.clone());
        }
        if !self.libvirt_uris.is_empty() {
            file.libvirt.uris = Some(self.libvirt_uris.clone());
        }
        if let Some(v) = &self.poll_interval {
            file.poll.interval = Some(v.clone());
        }
        if let Some(v) = &self.poll_timeout {
            file.poll.timeout = Some(v.clone());
        }
        if let Some(v) = &self.debug_listen {
            file.debug_listen = Some(v.clone());
        }
        if let Some(v) = &self.debug_token_file {
            file.debug_token_file = Some(v.clone());
        }
        if let (Some(c), Some(k)) = (&self.tls_cert, &self.tls_key) {
            file.tls.cert = Some(c.clone());
            file.tls.key = Some(k.clone());
        }
        if self.tls_self_signed {
            file.tls.self_signed = Some(true);
        }
        if let Some(v) = &self.qga_socket {
            file.qga.socket_pattern = Some(v.clone());
            file.qga.transport = Some(crate::config::QgaTransportKind::Socket);
        }
        if let Some(v) = &self.qmp_socket {
            file.qmp.socket_pattern = Some(v.clone());
        }
        if self.export_all_known {
            file.export_all_known = Some(true);
        }
        if self.keep_ephemeral {
            file.keep_ephemeral = Some(true);
        }
        if self.health_detail {
            file.health_detail = Some(true);
        }
        if let Some(d) = self.discovery {
            file.discovery = Some(match d {
                DiscoveryArg::Uris => crate::config::DiscoveryMode::Uris,
                DiscoveryArg::Kubevirt => crate::config::DiscoveryMode::Kubevirt,
            });
        }
        if self.no_qga {
            file.qga.enabled = Some(false);
        }
        if let Some(v) = &self.node_name {
            file.node_name = Some(v.clone());
        }
        if let Some(v) = &self.default_namespace {
            file.default_namespace = Some(v.clone());
        }
        if let Some(p) = self.metrics_profile {
            file.metrics_profile = Some(p);
        }
        if let Some(g) = &self.metrics_groups {
            file.metrics_groups = Some(g.clone());
        }
        if let Some(v) = self.domain_naming {
            file.domain_naming = Some(match v {
                NamingArg::Auto => DomainNaming::Auto,
                NamingArg::Kubevirt => DomainNaming::Kubevirt,
                NamingArg::Plain => DomainNaming::Plain,
            });
        }
        file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_absent_flags_keep_it() {
        let file = FileConfig::parse("listen = \"127.0.0.1:1\"\nnode_name = \"from-file\"\n[libvirt]\nuris = [\"test:///default\"]\n[poll]\ninterval = \"9s\"\n")
            .expect("parses");
        let cli = Cli::parse_from([
            "vmbridge",
            "--listen",
            "127.0.0.1:2",
            "--libvirt-uri",
            "qemu:///a",
            "--libvirt-uri",
            "qemu:///b",
        ]);
        let merged = cli.overlay(file);
        let s = merged.validate("fallback").expect("valid");
        assert_eq!(s.listen.port(), 2);
        assert_eq!(s.uris, vec!["qemu:///a", "qemu:///b"]);
        assert_eq!(s.poll.interval, std::time::Duration::from_secs(9));
    }

    #[test]
    fn the_metrics_profile_and_groups_come_from_flags_or_the_file() {
        use crate::model::metric::{Group, Profile};
        let file =
            FileConfig::parse("metrics_profile = \"kubevirt-complement\"\nmetrics_groups = [\"guest\", \"bridge\"]\n")
                .expect("parses");
        let s = Cli::parse_from(["vmbridge"]).overlay(file.clone()).validate("n").expect("valid");
        assert_eq!(s.selection.profile, Profile::KubevirtComplement);
        assert_eq!(s.selection.groups, [Group::Guest, Group::Bridge]);
        let s = Cli::parse_from(["vmbridge", "--metrics-profile", "full", "--metrics-groups", "core,qmp"])
            .overlay(file)
            .validate("n")
            .expect("valid");
        assert_eq!(s.selection.profile, Profile::Full);
        assert_eq!(s.selection.groups, [Group::Core, Group::Qmp]);
        let e = FileConfig::parse("metrics_profile = \"partial\"\n").expect_err("unknown profile");
        assert!(e.contains("metrics_profile") || e.contains("partial"), "{e}");
        let e = FileConfig::parse("metrics_groups = [\"disks\"]\n").expect_err("unknown group");
        assert!(e.contains("disks"), "{e}");
        let Err(crate::config::ConfigError::Invalid(errs)) =
            FileConfig::parse("metrics_groups = []\n").expect("parses").validate("n")
        else {
            panic!("an empty group list must be invalid")
        };
        assert_eq!(errs[0].field, "metrics_groups");
    }

    /// The Debian package's conffile (`/etc/vmbridge/vmbridge.toml`) parses and validates, and
    /// the values it sets are the defaults it claims.
    #[test]
    fn the_packaged_config_file_is_valid() {
        let file = FileConfig::parse(include_str!("../debian/vmbridge.toml")).expect("debian/vmbridge.toml parses");
        let s = Cli::parse_from(["vmbridge"]).overlay(file).validate("host").expect("debian/vmbridge.toml is valid");
        let default = Cli::parse_from(["vmbridge"]).overlay(FileConfig::default()).validate("host").expect("valid");
        assert_eq!(s.listen, default.listen);
        assert_eq!(s.uris, default.uris);
        assert_eq!(s.uris, vec![crate::config::DEFAULT_URI]);
    }
}
