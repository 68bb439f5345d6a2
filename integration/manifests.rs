//! The Kubernetes deployment in `deploy/`, without a cluster: every manifest parses into a typed
//! object with no unknown field, the objects agree with each other (ports, labels, selectors,
//! probes, kustomization), the PrometheusRule equals the plain rule file, the dashboard ConfigMap
//! embeds the dashboard, every metric used exists in docs/METRICS.md, every alert has its
//! runbook and KubeVirt's alert labels, and promtool checks and unit-tests the rules.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is the report
#![allow(clippy::disallowed_methods)] // runs promtool

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
const NAMESPACE: &str = "vmbridge";

// ------------------------------------------------------------------ loading, strictly ----

fn deploy(rel: &str) -> PathBuf {
    Path::new(DEPLOY).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(deploy(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

/// One YAML document as a generic value (a file with several documents is an error).
fn yaml(rel: &str) -> Value {
    serde_norway::from_str(&read(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: not one YAML document: {e}"))
}

/// Parses `raw` as `T`, then rejects every key of `raw` that the typed value does not keep when
/// serialized again (k8s-openapi's types ignore unknown fields; this finds them) and every scalar
/// that changed on the way (a mistyped value).
fn strict<T: DeserializeOwned + Serialize>(what: &str, raw: &Value) -> T {
    let typed: T = serde_json::from_value(raw.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = serde_json::to_value(&typed).expect("serialize");
    let mut lost = Vec::new();
    lost_keys(raw, &back, "", &mut lost);
    assert!(lost.is_empty(), "{what}: unknown or mistyped fields:\n  {}", lost.join("\n  "));
    typed
}

fn lost_keys(orig: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (orig, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (k, v) in o {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(bv) => lost_keys(v, bv, &p, out),
                    None => out.push(format!("{p} (unknown field)")),
                }
            }
        }
        (Value::Array(o), Value::Array(b)) if o.len() == b.len() => {
            for (i, (x, y)) in o.iter().zip(b).enumerate() {
                lost_keys(x, y, &format!("{path}[{i}]"), out);
            }
        }
        (x, y) if x == y => {}
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        (x, y) => out.push(format!("{path}: {x} became {y}")),
    }
}

fn labels(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

// ------------------------------------------------ the CRDs k8s-openapi does not have ----

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    namespace: String,
    resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    images: Vec<KustomizeImage>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KustomizeImage {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_tag: Option<String>,
}

/// `monitoring.coreos.com/v1` ServiceMonitor: the fields deploy/ uses.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: ServiceMonitorSpec,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    job_label: Option<String>,
    selector: LabelSelector,
    namespace_selector: NamespaceSelector,
    endpoints: Vec<SmEndpoint>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NamespaceSelector {
    #[serde(skip_serializing_if = "Option::is_none")]
    any: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    match_names: Vec<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SmEndpoint {
    port: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    scheme: String,
    interval: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    scrape_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    honor_labels: Option<bool>,
    tls_config: SmTlsConfig,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    relabelings: Vec<Relabeling>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SmTlsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    insecure_skip_verify: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_name: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Relabeling {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    source_labels: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replacement: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<String>,
}

/// `monitoring.coreos.com/v1` PrometheusRule.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PrometheusRule {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: RuleFile,
}

/// A Prometheus rule file; also the PrometheusRule's spec.
#[derive(Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    rules: Vec<Rule>,
}

#[derive(Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alert: Option<String>,
    expr: String,
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    for_: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

// ------------------------------------------------------------------------ the objects ----

struct Manifests {
    kustomization: Kustomization,
    namespace: Namespace,
    service_account: ServiceAccount,
    config: ConfigMap,
    daemonset: DaemonSet,
    service: Service,
    service_monitor: ServiceMonitor,
    prometheus_rule: PrometheusRule,
    dashboard: ConfigMap,
}

/// Every resource of kustomization.yaml, each parsed strictly by its kind; each kind once.
fn manifests() -> Manifests {
    let kustomization: Kustomization = strict("deploy/kustomization.yaml", &yaml("kustomization.yaml"));
    assert_eq!(kustomization.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(kustomization.kind, "Kustomization");
    assert_eq!(kustomization.namespace, NAMESPACE);
    let mut by_kind: BTreeMap<String, (String, Value)> = BTreeMap::new();
    let mut config_maps = Vec::new();
    for rel in &kustomization.resources {
        let raw = yaml(rel);
        let what = format!("deploy/{rel}");
        let kind = raw["kind"].as_str().unwrap_or_else(|| panic!("{what}: no kind")).to_owned();
        // The kustomization sets the namespace; a different one in a file would be overridden.
        if let Some(ns) = raw["metadata"]["namespace"].as_str() {
            assert_eq!(ns, NAMESPACE, "{what}: metadata.namespace");
        }
        if kind == "ConfigMap" {
            config_maps.push((what, raw));
        } else {
            assert!(by_kind.insert(kind.clone(), (what, raw)).is_none(), "two {kind} objects");
        }
    }
    let mut take = |kind: &str| by_kind.remove(kind).unwrap_or_else(|| panic!("no {kind} in kustomization.yaml"));
    let (w, r) = take("Namespace");
    let namespace: Namespace = strict(&w, &r);
    let (w, r) = take("ServiceAccount");
    let service_account: ServiceAccount = strict(&w, &r);
    let (w, r) = take("DaemonSet");
    let daemonset: DaemonSet = strict(&w, &r);
    let (w, r) = take("Service");
    let service: Service = strict(&w, &r);
    let (w, r) = take("ServiceMonitor");
    let service_monitor: ServiceMonitor = strict(&w, &r);
    let (w, r) = take("PrometheusRule");
    let prometheus_rule: PrometheusRule = strict(&w, &r);
    assert!(by_kind.is_empty(), "unexpected kinds: {:?}", by_kind.keys().collect::<Vec<_>>());
    for (kind, api) in
        [(&service_monitor.kind, &service_monitor.api_version), (&prometheus_rule.kind, &prometheus_rule.api_version)]
    {
        assert_eq!(api, "monitoring.coreos.com/v1", "{kind}");
    }
    assert_eq!(service_monitor.kind, "ServiceMonitor");
    assert_eq!(prometheus_rule.kind, "PrometheusRule");

    let (mut config, mut dashboard) = (None, None);
    for (what, raw) in config_maps {
        let cm: ConfigMap = strict(&what, &raw);
        if labels(&cm.metadata).contains_key("grafana_dashboard") {
            assert!(dashboard.replace(cm).is_none(), "two dashboard ConfigMaps");
        } else {
            assert!(config.replace(cm).is_none(), "two config ConfigMaps");
        }
    }
    Manifests {
        kustomization,
        namespace,
        service_account,
        config: config.expect("the vmbridge config ConfigMap"),
        daemonset,
        service,
        service_monitor,
        prometheus_rule,
        dashboard: dashboard.expect("the dashboard ConfigMap"),
    }
}

fn container(m: &Manifests) -> Container {
    let pod = m.daemonset.spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.containers.len(), 1, "one container");
    pod.containers[0].clone()
}

fn pod_labels(m: &Manifests) -> BTreeMap<String, String> {
    labels(m.daemonset.spec.template.metadata.as_ref().expect("template metadata"))
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn is_subset(sub: &BTreeMap<String, String>, sup: &BTreeMap<String, String>) -> bool {
    sub.iter().all(|(k, v)| sup.get(k) == Some(v))
}

// ---------------------------------------------------------------------- consistency ----

#[test]
fn kustomization_lists_exactly_the_manifest_files() {
    let listed: BTreeSet<String> = manifests().kustomization.resources.into_iter().collect();
    let mut on_disk = BTreeSet::new();
    for entry in std::fs::read_dir(DEPLOY).expect("deploy/") {
        let name = entry.expect("entry").file_name().into_string().expect("utf-8 name");
        if (name.ends_with(".yaml") || name.ends_with(".yml")) && name != "kustomization.yaml" {
            on_disk.insert(name);
        }
    }
    assert_eq!(listed, on_disk, "kustomization.yaml resources vs the YAML files in deploy/");
}

/// `images:` in kustomization.yaml names the DaemonSet's image (else kustomize replaces nothing
/// and every node pulls `vmbridge:…`, which exists nowhere) and sets the tag of this version.
#[test]
fn kustomization_sets_the_daemonset_image() {
    let m = manifests();
    let image = container(&m).image.expect("container image");
    let (name, tag) = image.rsplit_once(':').expect("daemonset image as NAME:TAG");
    assert_eq!(tag, env!("CARGO_PKG_VERSION"), "daemonset image tag vs Cargo.toml");
    let [entry] = &m.kustomization.images[..] else {
        panic!("exactly one images: entry in kustomization.yaml, got {:?}", m.kustomization.images)
    };
    assert_eq!(entry.name, name, "images[].name must be the daemonset's image name");
    assert_eq!(entry.new_tag.as_deref(), Some(env!("CARGO_PKG_VERSION")), "images[].newTag vs Cargo.toml");
    let new_name = entry.new_name.as_deref().expect("images[].newName: where the user pushed the image");
    assert!(new_name.ends_with("/vmbridge"), "newName is REGISTRY/vmbridge, got {new_name}");
}

#[test]
fn namespace_and_service_account() {
    let m = manifests();
    assert_eq!(m.namespace.metadata.name.as_deref(), Some(NAMESPACE));
    let ns = labels(&m.namespace.metadata);
    // The Prometheus Operator's serviceMonitorNamespaceSelector in the KubeVirt docs, and
    // OpenShift cluster monitoring.
    assert!(
        is_subset(&map(&[("prometheus.kubevirt.io", ""), ("openshift.io/cluster-monitoring", "true")]), &ns),
        "{ns:?}"
    );
    assert_eq!(ns.get("pod-security.kubernetes.io/enforce").map(String::as_str), Some("privileged"));

    assert_eq!(m.service_account.automount_service_account_token, Some(false));
    let pod = m.daemonset.spec.template.spec.clone().unwrap();
    assert_eq!(pod.service_account_name, m.service_account.metadata.name);
    assert_eq!(pod.automount_service_account_token, Some(false));
}

#[test]
fn daemonset_pod_runs_vmbridge_as_specified() {
    let m = manifests();
    let ds = &m.daemonset.spec;
    let pod = ds.template.spec.as_ref().unwrap();
    let tl = pod_labels(&m);
    assert!(is_subset(&map(&[("app.kubernetes.io/name", "vmbridge"), ("prometheus.kubevirt.io", "")]), &tl), "{tl:?}");
    assert!(is_subset(ds.selector.match_labels.as_ref().expect("matchLabels"), &tl), "selector vs pod labels");
    assert_eq!(pod.host_pid, Some(true));
    assert_ne!(pod.host_network, Some(true));
    let tol = pod.tolerations.as_ref().expect("tolerations");
    assert!(tol.iter().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()));

    let c = container(&m);
    let args = c.args.clone().unwrap_or_default();
    let cmdline: Vec<String> = c.command.clone().unwrap_or_default().into_iter().chain(args.clone()).collect();
    assert_eq!(
        cmdline.join(" "),
        "vmbridge --discovery kubevirt --listen 0.0.0.0:8443 --tls-cert /etc/vmbridge/tls/tls.crt \
         --tls-key /etc/vmbridge/tls/tls.key --debug-listen 127.0.0.1:9978 --config /etc/vmbridge/vmbridge.toml"
    );
    let env = c.env.clone().unwrap_or_default();
    let node = env.iter().find(|e| e.name == "NODE_NAME").expect("NODE_NAME env");
    let field = node.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).expect("NODE_NAME from fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");

    let ports = c.ports.clone().unwrap_or_default();
    assert_eq!(ports.len(), 1);
    assert_eq!((ports[0].name.as_deref(), ports[0].container_port), (Some("metrics"), 8443));
    for (probe, path) in [(&c.liveness_probe, "/healthz"), (&c.readiness_probe, "/readyz")] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("{path} probe"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.scheme.as_deref(), Some("HTTPS"), "{path}");
        assert_eq!(get.port, IntOrString::String("metrics".into()), "{path}");
    }

    let res = c.resources.as_ref().expect("resources");
    let q = |m: &Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>, k: &str| {
        m.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone()).unwrap_or_default()
    };
    assert_eq!((q(&res.requests, "cpu"), q(&res.requests, "memory")), ("50m".into(), "64Mi".into()));
    assert_eq!((q(&res.limits, "cpu"), q(&res.limits, "memory")), ("200m".into(), "128Mi".into()));

    // Root with exactly the capabilities to reach other containers' sockets, nothing else.
    let sc = c.security_context.as_ref().expect("container securityContext");
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    // The two integration/least_privilege.rs measures as needed (DAC_READ_SEARCH is not).
    assert_eq!(added, BTreeSet::from(["SYS_PTRACE", "DAC_OVERRIDE"]));

    // Nothing writable, no host paths; the mounts are where the flags point.
    let volumes = pod.volumes.clone().unwrap_or_default();
    assert!(volumes.iter().all(|v| v.host_path.is_none()), "no hostPath volumes");
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    assert!(mounts.iter().all(|v| v.read_only == Some(true)), "every mount read-only");
    let mount_of = |vol: &str| mounts.iter().find(|v| v.name == vol).unwrap_or_else(|| panic!("mount {vol}")).clone();
    let volume = |vol: &str| volumes.iter().find(|v| v.name == vol).unwrap_or_else(|| panic!("volume {vol}")).clone();
    let tls = volume("tls").secret.expect("tls from a secret");
    assert_eq!(tls.optional, Some(true), "the TLS secret is optional (self-signed without it)");
    assert_eq!(mount_of("tls").mount_path, "/etc/vmbridge/tls");
    let config = mount_of("config");
    assert_eq!(config.mount_path, "/etc/vmbridge/vmbridge.toml");
    let cm = volume("config").config_map.expect("config from a ConfigMap");
    assert_eq!(Some(cm.name), m.config.metadata.name);
    let key = config.sub_path.expect("subPath");
    assert!(m.config.data.as_ref().is_some_and(|d| d.contains_key(&key)), "ConfigMap key {key}");
}

#[test]
fn the_config_file_is_valid_against_the_schema() {
    let m = manifests();
    let text = m.config.data.as_ref().and_then(|d| d.get("vmbridge.toml")).expect("vmbridge.toml");
    let file: Value = toml::from_str(text).expect("vmbridge.toml is TOML");
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/config.schema.json")).expect("schema"),
    )
    .expect("schema JSON");
    let validator = jsonschema::validator_for(&schema).expect("valid schema");
    let errors: Vec<String> = validator.iter_errors(&file).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "vmbridge.toml: {errors:?}");
    assert!(file["poll"]["interval"].is_string());
}

#[test]
fn service_and_servicemonitor_find_the_pods() {
    let m = manifests();
    let c = container(&m);
    let cport = &c.ports.as_ref().unwrap()[0];
    let spec = m.service.spec.as_ref().expect("service spec");
    let ports = spec.ports.clone().unwrap_or_default();
    assert_eq!(ports.len(), 1);
    let p = &ports[0];
    assert_eq!(p.name, cport.name);
    assert_eq!(p.port, cport.container_port);
    assert_eq!(p.target_port, Some(IntOrString::String(cport.name.clone().unwrap())));
    assert_eq!(spec.selector.as_ref(), Some(&pod_labels(&m)), "Service selector = pod template labels");
    let svc_labels = labels(&m.service.metadata);
    assert_eq!(svc_labels.get("prometheus.kubevirt.io").map(String::as_str), Some(""));

    let sm = &m.service_monitor;
    let sel = sm.spec.selector.match_labels.as_ref().expect("matchLabels");
    assert!(sm.spec.selector.match_expressions.is_none());
    assert!(!sel.is_empty() && is_subset(sel, &svc_labels), "ServiceMonitor selector {sel:?} vs Service labels");
    // Picked up by a Prometheus selecting on the KubeVirt label, as in the KubeVirt docs.
    assert_eq!(labels(&sm.metadata).get("prometheus.kubevirt.io").map(String::as_str), Some(""));
    assert_eq!(sm.spec.namespace_selector.match_names, [NAMESPACE]);
    let [ep] = &sm.spec.endpoints[..] else { panic!("one endpoint") };
    assert_eq!(Some(&ep.port), p.name.as_ref());
    assert_eq!(ep.scheme, "https");
    assert_eq!(ep.interval, "30s");
    assert_eq!(ep.tls_config.insecure_skip_verify, Some(true));
    assert_eq!(ep.honor_labels, Some(true), "keep the VMs' own namespace label");
}

// ------------------------------------------------------------- rules and dashboard ----

fn rule_file() -> RuleFile {
    strict("deploy/rules/vmbridge.rules.yaml", &yaml("rules/vmbridge.rules.yaml"))
}

#[test]
fn prometheusrule_equals_the_plain_rule_file() {
    let m = manifests();
    let (generated, plain) = (&m.prometheus_rule.spec, rule_file());
    let hint = "prometheusrule.yaml differs from rules/vmbridge.rules.yaml: run `bash deploy/gen-prometheusrule.sh`";
    for (g, p) in generated.groups.iter().zip(&plain.groups) {
        assert_eq!(g.name, p.name, "{hint}");
        for (a, b) in g.rules.iter().zip(&p.rules) {
            assert_eq!(a, b, "{hint}");
        }
    }
    assert_eq!(*generated, plain, "{hint}");
    assert_eq!(yaml("prometheusrule.yaml")["spec"], yaml("rules/vmbridge.rules.yaml"));
}

#[test]
fn alerts_are_labelled_annotated_and_unit_tested() {
    let rules = rule_file();
    let alerts: Vec<&Rule> = rules.groups.iter().flat_map(|g| &g.rules).filter(|r| r.alert.is_some()).collect();
    let names: BTreeSet<&str> = alerts.iter().map(|r| r.alert.as_deref().unwrap()).collect();
    assert_eq!(names.len(), alerts.len(), "alert names are unique");
    for want in [
        "VMIGuestFilesystemAlmostFull",
        "VMIGuestFilesystemFillingUp",
        "VMIGuestAgentDown",
        "VMBridgeBreakerOpen",
        "VMBridgeEndpointDown",
        "VMBridgeLibvirtSaturated",
        "VMBridgeDown",
        "VMBridgeAbsent",
        "VMIGuestPanicked",
    ] {
        assert!(names.contains(want), "alert {want}");
    }
    for r in &alerts {
        let name = r.alert.as_deref().unwrap();
        assert!(
            ["critical", "warning", "info"].contains(&r.labels.get("severity").map_or("", String::as_str)),
            "{name}: severity"
        );
        let summary = r.annotations.get("summary").unwrap_or_else(|| panic!("{name}: summary"));
        let description = r.annotations.get("description").unwrap_or_else(|| panic!("{name}: description"));
        if r.expr.starts_with("absent(") {
            assert!(description.contains(&format!("namespace {NAMESPACE}")), "{name}: description names where to look");
        } else if r.expr.starts_with("vmbridge_endpoint_") {
            // A libvirt endpoint, not a VM: the node and the URI name it.
            assert!(
                description.contains("{{ $labels.node }}") && description.contains("{{ $labels.uri }}"),
                "{name}: description names the node and the endpoint"
            );
        } else {
            assert!(
                description.contains("{{ $labels.namespace }}/{{ $labels."),
                "{name}: description names namespace/name"
            );
            assert!(summary.contains("{{ $labels."), "{name}: summary names the object");
        }
    }

    // Every alert fires in some promtool case, and some case asserts that one does not.
    let test = yaml("rules/vmbridge.rules.test.yaml");
    let mut fired = BTreeSet::new();
    let mut silent = 0;
    for case in test["tests"].as_array().expect("tests") {
        for a in case["alert_rule_test"].as_array().into_iter().flatten() {
            let name = a["alertname"].as_str().expect("alertname");
            assert!(names.contains(name), "test of unknown alert {name}");
            match a["exp_alerts"].as_array() {
                Some(v) if !v.is_empty() => _ = fired.insert(name.to_owned()),
                _ => silent += 1,
            }
        }
    }
    let untested: Vec<&&str> = names.iter().filter(|n| !fired.contains(**n)).collect();
    assert!(untested.is_empty(), "alerts no promtool case fires: {untested:?}");
    assert!(silent > 0, "no promtool case checks that an alert stays silent");
}

/// The runbook_url base in the rule file and the committed PrometheusRule: the runbooks' path in
/// this repository (deploy/gen-prometheusrule.sh replaces it when RUNBOOK_BASE_URL is set).
const RUNBOOK_BASE: &str = "docs/runbooks";
/// The sections of a runbook, in order, as KubeVirt's runbooks (kubevirt/monitoring) have them.
const RUNBOOK_SECTIONS: [&str; 4] = ["## Meaning", "## Impact", "## Diagnosis", "## Mitigation"];

/// What an alert lacks of KubeVirt's conventions: its runbook (a `runbook_url` to an existing
/// `docs/runbooks/<alert>.md` with the four sections) and KubeVirt's alert labels.
fn alert_convention_faults(file: &str, rule: &Rule) -> Vec<String> {
    let Some(name) = rule.alert.as_deref() else { return Vec::new() };
    let mut faults = Vec::new();
    let mut fault = |what: String| faults.push(format!("{file}: alert {name}: {what}"));
    for (label, allowed) in [
        ("severity", &["critical", "warning", "info"][..]),
        ("operator_health_impact", &["none", "warning", "critical"][..]),
        ("kubernetes_operator_part_of", &["kubevirt"][..]),
        ("kubernetes_operator_component", &["vmbridge"][..]),
    ] {
        match rule.labels.get(label) {
            None => fault(format!("label {label} is missing (allowed: {allowed:?})")),
            Some(v) if !allowed.contains(&v.as_str()) => {
                fault(format!("label {label}={v:?} is not one of {allowed:?}"))
            }
            Some(_) => {}
        }
    }
    let want = format!("{RUNBOOK_BASE}/{name}.md");
    match rule.annotations.get("runbook_url") {
        None => fault(format!("annotation runbook_url is missing (want {want:?})")),
        Some(url) if *url != want => fault(format!("runbook_url is {url:?}, want {want:?}")),
        Some(_) => {}
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(&want);
    match std::fs::read_to_string(&path) {
        Err(e) => fault(format!("runbook {want}: {e}")),
        Ok(text) => {
            if text.lines().next() != Some(format!("# {name}").as_str()) {
                fault(format!("runbook {want} does not start with the line \"# {name}\""));
            }
            // Each section once, as a line of its own, in order, with something under it.
            let headings: Vec<(usize, &str)> = text
                .lines()
                .enumerate()
                .filter(|(_, l)| l.starts_with("## "))
                .map(|(i, l)| (i, l.trim_end()))
                .collect();
            let found: Vec<&str> = headings.iter().map(|(_, h)| *h).filter(|h| RUNBOOK_SECTIONS.contains(h)).collect();
            if found != RUNBOOK_SECTIONS {
                fault(format!("runbook {want} has the sections {found:?}, want {RUNBOOK_SECTIONS:?} in this order"));
            }
            let lines: Vec<&str> = text.lines().collect();
            for (k, (at, heading)) in headings.iter().enumerate() {
                let end = headings.get(k + 1).map_or(lines.len(), |(next, _)| *next);
                if lines[at + 1..end].iter().all(|l| l.trim().is_empty()) {
                    fault(format!("runbook {want}: section {heading:?} is empty"));
                }
            }
        }
    }
    faults
}

/// Every alert, in the rule file and in the PrometheusRule alike, links a runbook that exists and
/// has KubeVirt's four sections, and carries KubeVirt's alert labels with allowed values; every
/// runbook belongs to an alert.
#[test]
fn every_alert_has_a_runbook_and_kubevirts_alert_labels() {
    let m = manifests();
    let plain = rule_file();
    let mut faults = Vec::new();
    let mut alerts = BTreeSet::new();
    for (file, rules) in
        [("deploy/rules/vmbridge.rules.yaml", &plain), ("deploy/prometheusrule.yaml", &m.prometheus_rule.spec)]
    {
        for rule in rules.groups.iter().flat_map(|g| &g.rules) {
            faults.extend(alert_convention_faults(file, rule));
            alerts.extend(rule.alert.clone());
        }
    }
    assert!(alerts.len() >= 9, "alerts found: {alerts:?}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(RUNBOOK_BASE);
    match std::fs::read_dir(&dir) {
        Err(e) => faults.push(format!("{RUNBOOK_BASE}: {e}")),
        Ok(entries) => {
            for entry in entries {
                let file = entry.expect("dir entry").file_name().to_string_lossy().into_owned();
                if !file.strip_suffix(".md").is_some_and(|a| alerts.contains(a)) {
                    faults.push(format!("{RUNBOOK_BASE}/{file}: no alert of that name"));
                }
            }
        }
    }
    assert!(faults.is_empty(), "alerts short of KubeVirt's conventions:\n  {}", faults.join("\n  "));
}

/// The generator reproduces the committed PrometheusRule byte for byte, RUNBOOK_BASE_URL
/// moves every runbook_url (and nothing else) to another base, and VM_LABELS sets the labels the
/// vm_labels joins copy (and nothing else).
#[test]
fn the_rule_generator_reproduces_the_prometheusrule_and_takes_a_runbook_base_and_vm_labels() {
    let dir = std::env::temp_dir().join(format!("vmbridge-gen-prometheusrule-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let run_with = |base: Option<&str>, vm_labels: Option<&str>, out: &Path| {
        let mut cmd = Command::new("bash");
        cmd.arg(deploy("gen-prometheusrule.sh")).arg(out).env_remove("RUNBOOK_BASE_URL").env_remove("VM_LABELS");
        if let Some(b) = base {
            cmd.env("RUNBOOK_BASE_URL", b);
        }
        if let Some(l) = vm_labels {
            cmd.env("VM_LABELS", l);
        }
        let o = cmd.output().expect("run bash");
        assert!(o.status.success(), "gen-prometheusrule.sh: {}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(out).expect("generated file")
    };
    let run = |base: Option<&str>, out: &Path| run_with(base, None, out);
    let default = run(None, &dir.join("default.yaml"));
    assert!(
        default == read("prometheusrule.yaml"),
        "deploy/prometheusrule.yaml is not what `bash deploy/gen-prometheusrule.sh` writes: rerun it"
    );
    let base = "https://example.org/vmbridge/blob/main/docs/runbooks";
    let moved = run(Some(&format!("{base}/")), &dir.join("moved.yaml"));
    let moved: Value = serde_norway::from_str(&moved).expect("generated YAML");
    let moved: PrometheusRule = strict("generated with RUNBOOK_BASE_URL", &moved);
    let mut plain = rule_file();
    for rule in plain.groups.iter_mut().flat_map(|g| &mut g.rules) {
        if let Some(name) = &rule.alert {
            rule.annotations.insert("runbook_url".into(), format!("{base}/{name}.md"));
        }
    }
    assert_eq!(moved.spec, plain);

    // VM_LABELS rewrites the group_left list of every vm_labels join, and nothing else.
    let relabelled = run_with(None, Some("label_app,label_team"), &dir.join("labels.yaml"));
    let relabelled: Value = serde_norway::from_str(&relabelled).expect("generated YAML");
    let relabelled: PrometheusRule = strict("generated with VM_LABELS", &relabelled);
    let mut plain = rule_file();
    let mut joins = 0;
    for rule in plain.groups.iter_mut().flat_map(|g| &mut g.rules) {
        if rule.expr.contains("group_left (label_app) vmbridge:vm_labels") {
            rule.expr = rule.expr.replace("group_left (label_app)", "group_left (label_app, label_team)");
            joins += 1;
        }
    }
    assert_eq!(joins, 4, "the four vm_labels joins (filesystem, heartbeat, breaker, source up)");
    assert_eq!(relabelled.spec, plain);
    // A list PromQL would not take is refused, with a message.
    let o = Command::new("bash")
        .arg(deploy("gen-prometheusrule.sh"))
        .arg(dir.join("bad.yaml"))
        .env_remove("RUNBOOK_BASE_URL")
        .env("VM_LABELS", "app.kubernetes.io/name")
        .output()
        .expect("run bash");
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("VM_LABELS must be"));
    std::fs::remove_dir_all(&dir).ok();
}

/// The dashboard's VM-label variable lists the values of one allow-listed label from the joined
/// series, and every panel query filters on it through the join (a panel without it would show
/// every VM whatever the selection).
#[test]
fn every_dashboard_query_filters_by_the_vm_label_variable() {
    let dash: Value = serde_json::from_str(&read("grafana-dashboard.json")).expect("dashboard JSON");
    let vars = dash["templating"]["list"].as_array().expect("templating.list");
    let app = vars.iter().find(|v| v["name"].as_str() == Some("app")).expect("variable app");
    assert_eq!(
        app["query"]["query"].as_str(),
        Some(r#"label_values(vmbridge:vm_labels{namespace=~"$namespace"}, label_app)"#)
    );
    assert_eq!(app["allValue"].as_str(), Some(".*"), "All must keep the VMs without the label");
    let rules = rule_file();
    let recorded: BTreeSet<String> =
        rules.groups.iter().flat_map(|g| &g.rules).filter_map(|r| r.record.clone()).collect();
    let mut queries = 0;
    let mut unfiltered = vec![];
    walk(&dash, &mut |k, v| {
        if let ("expr", Value::String(e)) = (k, v) {
            queries += 1;
            let joined = e.contains(r#"and on (namespace, name) vmbridge:vm_labels{label_app=~"$app"}"#)
                || metric_names(e).iter().any(|n| n.ends_with(":vm_labels") && recorded.contains(n))
                    && e.contains(r#"label_app=~"$app""#);
            if !joined {
                unfiltered.push(e.clone());
            }
        }
    });
    assert!(queries > 10, "parsed {queries} panel queries");
    assert!(unfiltered.is_empty(), "panel queries not filtered by $app:\n  {}", unfiltered.join("\n  "));
}

#[test]
fn dashboard_configmap_embeds_the_dashboard() {
    let m = manifests();
    let json = read("grafana-dashboard.json");
    assert_eq!(labels(&m.dashboard.metadata).get("grafana_dashboard").map(String::as_str), Some("1"));
    let data = m.dashboard.data.as_ref().expect("data");
    assert_eq!(data.len(), 1);
    let (key, embedded) = data.iter().next().unwrap();
    assert!(key.ends_with(".json"), "{key}");
    assert!(
        *embedded == json,
        "the ConfigMap's {key} differs from grafana-dashboard.json: run `bash deploy/gen-dashboard-configmap.sh`"
    );

    let dash: Value = serde_json::from_str(&json).expect("dashboard JSON");
    let vars = dash["templating"]["list"].as_array().expect("templating");
    let var = |n: &str| vars.iter().find(|v| v["name"] == n).unwrap_or_else(|| panic!("variable {n}"));
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    let q = |n: &str| var(n)["query"]["query"].as_str().unwrap().to_owned();
    assert_eq!(q("node"), "label_values(kubevirt_vmi_cpu_usage_seconds_total, node)");
    assert!(q("namespace").starts_with("label_values(kubevirt_vmi_cpu_usage_seconds_total{node=~\"$node\"}"));
    assert!(q("vm").contains("namespace=~\"$namespace\"") && q("vm").ends_with(", name)"));
    // Every query goes to the chosen data source and filters on the three variables.
    let mut targets = Vec::new();
    walk(&dash["panels"], &mut |k, v| {
        if k == "targets" {
            targets.extend(v.as_array().unwrap().iter().cloned());
        }
    });
    assert!(targets.len() >= 10, "{} targets", targets.len());
    for t in &targets {
        assert_eq!(t["datasource"]["uid"], "${datasource}", "{t}");
        let e = t["expr"].as_str().expect("expr");
        // KubeVirt's panic counter has no `node` label, so its panel filters on the other two.
        let filter = if e.contains("kubevirt_vmi_guest_os_panic_total") {
            "{namespace=~\"$namespace\",name=~\"$vm\"}"
        } else {
            "node=~\"$node\",namespace=~\"$namespace\",name=~\"$vm\""
        };
        assert!(e.contains(filter), "{e}");
    }
}

fn walk(v: &Value, f: &mut dyn FnMut(&str, &Value)) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                f(k, x);
                walk(x, f);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk(x, f)),
        _ => {}
    }
}

/// Metric names in a PromQL expression (or a Grafana `label_values(expr, label)` query):
/// identifiers outside strings, `{…}` and `[…]`, not called as functions, not keywords and
/// not the label lists of `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan", // operators, modifiers, literals
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio", // aggregations, before `by (…)`
    ];
    let expr = match expr.trim().strip_prefix("label_values(").and_then(|s| s.strip_suffix(')')) {
        Some(args) => args.rsplit_once(',').map_or(args, |(e, _)| e),
        None => expr,
    };
    // Blank out strings, selectors and ranges.
    let mut flat = String::new();
    let (mut depth, mut quote) = (0, None::<char>);
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        let outside = depth == 0 && quote.is_none();
        match (quote, c) {
            (Some(_), '\\') => _ = chars.next(),
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '{' | '[') => depth += 1,
            (None, '}' | ']') => depth -= 1,
            _ => {}
        }
        flat.push(if outside && depth == 0 && quote.is_none() { c } else { ' ' });
    }
    let flat: Vec<char> = flat.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < flat.len() {
        let c = flat[i];
        if c == '$' || c.is_ascii_digit() || c == '.' {
            // A Grafana variable, a number or a duration.
            i += 1;
            while i < flat.len() && (flat[i].is_ascii_alphanumeric() || matches!(flat[i], '_' | '.' | ':')) {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < flat.len() && (flat[i].is_ascii_alphanumeric() || matches!(flat[i], '_' | ':')) {
                i += 1;
            }
            let word: String = flat[start..i].iter().collect();
            let mut j = i;
            while j < flat.len() && flat[j].is_whitespace() {
                j += 1;
            }
            let called = flat.get(j) == Some(&'(');
            if ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&word.as_str()) {
                if called {
                    i = j + flat[j..].iter().position(|&c| c == ')').expect("closing )") + 1;
                }
            } else if !called && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_name_parser() {
    assert_eq!(
        metric_names(
            r#"count by (s) (x == 1) + sum by (namespace, name) (rate(a_total{x="b_c",y=~"$v"}[$__rate_interval])) / on(n) group_left(m) b:c > 0.9 and bool d offset 5m * 3600"#
        ),
        BTreeSet::from(["a_total".into(), "b:c".into(), "d".into(), "x".into()])
    );
    assert_eq!(metric_names("label_values(m{node=~\"$node\"}, name)"), BTreeSet::from(["m".into()]));
}

#[test]
fn every_metric_used_is_documented_or_recorded() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/METRICS.md")).expect("METRICS.md");
    let mut known: BTreeSet<String> =
        docs.lines().filter_map(|l| l.strip_prefix("| `")?.split_once('`').map(|(n, _)| n.to_owned())).collect();
    assert!(
        known.len() > 50 && known.contains("vmbridge_breaker_state"),
        "parsed {} names from METRICS.md",
        known.len()
    );
    let rules = rule_file();
    known.extend(rules.groups.iter().flat_map(|g| &g.rules).filter_map(|r| r.record.clone()));
    known.insert("up".into());
    // Series other components export, which the VM-label join reads: KubeVirt's virt-controller
    // (kubevirt_vm_labels, see the comment of group vmbridge.vm_labels in the rule file).
    known.insert("kubevirt_vm_labels".into());
    // The guest heartbeat, joined by vmbridge:guest_heartbeat:vm_labels: the branch that adds the
    // family adds it to METRICS.md. Drop this line once METRICS.md lists it.
    known.insert("vmbridge_guest_heartbeat".into());

    let mut used: BTreeMap<String, String> = BTreeMap::new();
    for r in rules.groups.iter().flat_map(|g| &g.rules) {
        let at = r.alert.clone().or_else(|| r.record.clone()).unwrap();
        for n in metric_names(&r.expr) {
            used.insert(n, format!("rule {at}"));
        }
    }
    let dash: Value = serde_json::from_str(&read("grafana-dashboard.json")).expect("dashboard JSON");
    walk(&dash, &mut |k, v| {
        let exprs = match (k, v) {
            ("expr" | "definition", Value::String(s)) => vec![s.clone()],
            ("query", Value::Object(o)) => {
                o.get("query").and_then(Value::as_str).map(str::to_owned).into_iter().collect()
            }
            _ => vec![],
        };
        for e in exprs {
            for n in metric_names(&e) {
                used.insert(n, format!("dashboard: {e}"));
            }
        }
    });
    for must in [
        "kubevirt_vmi_cpu_usage_seconds_total",
        "kubevirt_vmi_guest_interface_address_info",
        "vmbridge_breaker_state",
        "up",
    ] {
        assert!(used.contains_key(must), "{must} not used; parser broken? {used:?}");
    }
    let unknown: Vec<String> =
        used.iter().filter(|(n, _)| !known.contains(*n)).map(|(n, at)| format!("{n} ({at})")).collect();
    assert!(unknown.is_empty(), "metric names not in docs/METRICS.md nor recorded:\n  {}", unknown.join("\n  "));
}

// ----------------------------------------------------------------------------- promtool ----

fn promtool(args: &[&str]) {
    let Some(bin) = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("promtool")).find(|p| p.is_file()))
    else {
        panic!(
            "promtool is not on PATH: run `bash integration/lab.sh install` (it installs Debian's \
             `prometheus` package, which ships promtool)"
        );
    };
    let out = Command::new(&bin).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_checks_the_rules() {
    promtool(&["check", "rules", "deploy/rules/vmbridge.rules.yaml"]);
}

#[test]
fn promtool_unit_tests_the_rules() {
    promtool(&["test", "rules", "deploy/rules/vmbridge.rules.test.yaml"]);
}

/// The optional NetworkPolicy selects vmbridge's pods and admits only their metrics port, from
/// the monitoring namespace.
#[test]
fn the_optional_network_policy_admits_only_the_metrics_port() {
    let np: k8s_openapi::api::networking::v1::NetworkPolicy =
        serde_norway::from_str(&read("optional/networkpolicy.yaml")).expect("a NetworkPolicy");
    let m = manifests();
    let pod_labels = m.daemonset.spec.template.metadata.as_ref().and_then(|m| m.labels.clone());
    let spec = np.spec.expect("spec");
    let selector = spec.pod_selector.and_then(|s| s.match_labels).expect("pod selector labels");
    for (k, v) in &selector {
        assert_eq!(
            pod_labels.as_ref().and_then(|l| l.get(k)),
            Some(v),
            "the policy selects {k}={v}, the pods do not carry it"
        );
    }
    assert_eq!(spec.policy_types.as_deref(), Some(&["Ingress".to_owned()][..]));
    let rules = spec.ingress.expect("ingress rules");
    assert_eq!(rules.len(), 1);
    let ports: Vec<IntOrString> = rules[0].ports.iter().flatten().filter_map(|p| p.port.clone()).collect();
    let metrics =
        container(&m).ports.iter().flatten().find(|p| p.name.as_deref() == Some("metrics")).map(|p| p.container_port);
    assert_eq!(ports, [IntOrString::Int(metrics.expect("a metrics port"))]);
    let from = rules[0].from.as_ref().expect("from");
    assert!(from.iter().all(|f| f.namespace_selector.is_some() && f.ip_block.is_none()), "{from:?}");
}
