//! Who a VM is to the people reading the metrics: `namespace` and `name`.
//!
//! KubeVirt names each libvirt domain `<namespace>_<vmi-name>`; neither part can contain `_`
//! (both are DNS labels), so the first `_` splits them. Plain libvirt domains get the
//! configured default namespace.

use serde::{Deserialize, Serialize};

/// How domain names map to `namespace`/`name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DomainNaming {
    /// Split `<namespace>_<name>` when the prefix is a valid Kubernetes namespace (a DNS
    /// label); otherwise use the default namespace and the whole domain name.
    #[default]
    Auto,
    /// Always split at the first `_` (KubeVirt nodes); names without `_` get the default namespace.
    Kubevirt,
    /// Never split: the default namespace and the whole domain name.
    Plain,
}

/// A VM's identity in labels and in `/debug/vms/{namespace}/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, schemars::JsonSchema)]
pub struct VmId {
    /// Kubernetes namespace, or the configured default.
    pub namespace: String,
    /// VM name.
    pub name: String,
}

/// True for a valid DNS-1123 label, which is what a Kubernetes namespace must be.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl VmId {
    /// Maps a libvirt domain name to a VM identity.
    pub fn from_domain(domain: &str, naming: DomainNaming, default_namespace: &str) -> VmId {
        let plain = || VmId { namespace: default_namespace.to_owned(), name: domain.to_owned() };
        match (naming, domain.split_once('_')) {
            (DomainNaming::Plain, _) | (_, None) => plain(),
            (DomainNaming::Auto, Some((ns, _))) if !is_dns_label(ns) => plain(),
            (_, Some((ns, name))) if ns.is_empty() || name.is_empty() => plain(),
            (_, Some((ns, name))) => VmId { namespace: ns.to_owned(), name: name.to_owned() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(d: &str, n: DomainNaming) -> (String, String) {
        let v = VmId::from_domain(d, n, "libvirt");
        (v.namespace, v.name)
    }

    #[test]
    fn kubevirt_names_split_at_the_first_underscore() {
        assert_eq!(id("prod_web-1", DomainNaming::Auto), ("prod".into(), "web-1".into()));
        assert_eq!(id("prod_web_1", DomainNaming::Kubevirt), ("prod".into(), "web_1".into()));
    }

    #[test]
    fn plain_names_get_the_default_namespace() {
        assert_eq!(id("vmblab-01", DomainNaming::Auto), ("libvirt".into(), "vmblab-01".into()));
        assert_eq!(id("My_VM", DomainNaming::Auto), ("libvirt".into(), "My_VM".into()));
        assert_eq!(id("prod_web", DomainNaming::Plain), ("libvirt".into(), "prod_web".into()));
        assert_eq!(id("_x", DomainNaming::Kubevirt), ("libvirt".into(), "_x".into()));
    }
}
