//! Per-VM opt-out of guest-agent polling. A tenant's guest is not trusted, and some must never
//! be talked to at all: a VM opts out either
//! - on any host, by matching one of `qga.exclude`'s globs on `namespace/name`
//!   (`"tenant-a/*"`, `"*/db-*"`), or
//! - on a plain libvirt host, by carrying vmbridge's element in its domain metadata:
//!   `<vmbridge:agent xmlns:vmbridge="urn:vmbridge:1" poll="off"/>`, set with
//!   `virsh metadata DOMAIN urn:vmbridge:1 --key vmbridge --set '<agent poll="off"/>' --live --config`.
//!
//! A VM that opts out gets no agent call of any kind, not even `guest-ping`: its guest source
//! fails every poll with [`ErrorKind::AgentDisabled`] (a state, not a fault: the breaker stays
//! closed) and `/debug` shows why. The metadata is read (read-only, `virDomainGetMetadata`)
//! before the first agent call and again every [`METADATA_RECHECK`]; until it has been read,
//! no agent call is made (an opt-out is never missed because libvirt was slow to say it).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::model::{ErrorKind, PollError};
use crate::source::libvirt::blocking::{BlockingSlot, SlotError};
use crate::source::libvirt::endpoint::Endpoint;
use crate::vm::VmId;

/// The XML namespace of vmbridge's domain metadata element.
pub const METADATA_NS: &str = "urn:vmbridge:1";

/// How often a VM's metadata is read again (an opt-out set on a running VM takes effect within
/// this; one read-only call per VM per period).
pub const METADATA_RECHECK: Duration = Duration::from_secs(300);

/// Longest metadata element parsed (vmbridge's element is a few dozen bytes).
const MAX_METADATA: usize = 4096;

/// `qga.exclude`: globs on `namespace/name`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exclude(Vec<(String, glob::Pattern)>);

impl Exclude {
    /// The validated globs; an error gives the entry's field name and the problem.
    pub fn new(globs: &[String]) -> Result<Exclude, (String, String)> {
        let mut out = Vec::with_capacity(globs.len());
        for (i, g) in globs.iter().enumerate() {
            let field = format!("qga.exclude[{i}]");
            if !g.contains('/') {
                return Err((
                    field,
                    format!("{g:?} is not a glob on namespace/name (e.g. \"tenant-a/*\" or \"*/db-*\")"),
                ));
            }
            let p = glob::Pattern::new(g).map_err(|e| (field, format!("{g:?} is not a valid glob: {e}")))?;
            out.push((g.clone(), p));
        }
        Ok(Exclude(out))
    }

    /// The first glob matching the VM, if any.
    pub fn matching(&self, id: &VmId) -> Option<&str> {
        let key = format!("{}/{}", id.namespace, id.name);
        self.0.iter().find(|(_, p)| p.matches(&key)).map(|(g, _)| g.as_str())
    }
}

/// Whether vmbridge's metadata element (as `virDomainGetMetadata` returns it) opts the VM out:
/// an element named `agent` with `poll="off"`. Anything else, including XML that does not parse,
/// does not.
pub fn metadata_opts_out(xml: &str) -> bool {
    if xml.len() > MAX_METADATA {
        return false;
    }
    let Ok(doc) = roxmltree::Document::parse(xml) else { return false };
    let root = doc.root_element();
    root.tag_name().name() == "agent" && root.attribute("poll").is_some_and(|v| v.trim() == "off")
}

type MetaCall = Result<Option<String>, virt::error::Error>;

/// What stands before every agent call of one VM.
pub struct Gate {
    /// The `qga.exclude` glob that matched.
    excluded_by: Option<String>,
    /// Where the metadata is read from (a VM found through libvirt).
    metadata: Option<Metadata>,
}

struct Metadata {
    endpoint: Arc<Endpoint>,
    uuid: String,
    slot: BlockingSlot<MetaCall>,
    /// The last read: when, and whether it opted out.
    read: Option<(Instant, bool)>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("excluded_by", &self.excluded_by)
            .field("metadata_opt_out", &self.metadata.as_ref().map(|m| m.read))
            .finish()
    }
}

impl Gate {
    /// A gate for VM `id`: excluded by config, or (found through libvirt) by its metadata.
    pub fn new(
        id: &VmId,
        exclude: &Exclude,
        endpoint: Option<&Arc<Endpoint>>,
        uuid: &str,
        limiter: &Arc<Semaphore>,
    ) -> Gate {
        Gate {
            excluded_by: exclude.matching(id).map(str::to_owned),
            metadata: endpoint.map(|e| Metadata {
                endpoint: e.clone(),
                uuid: uuid.to_owned(),
                slot: BlockingSlot::new(limiter.clone()),
                read: None,
            }),
        }
    }

    /// A gate that never says no (tests, and VMs with neither).
    pub fn open() -> Gate {
        Gate { excluded_by: None, metadata: None }
    }

    /// `Ok` when agent calls may be made now; [`ErrorKind::AgentDisabled`] when the VM opted
    /// out; another error when its metadata could not be read (then no agent call is made).
    pub async fn admit(&mut self, deadline: Duration) -> Result<(), PollError> {
        if let Some(g) = &self.excluded_by {
            return Err(PollError::new(
                ErrorKind::AgentDisabled,
                format!("agent polling disabled for this VM by qga.exclude {g:?}"),
            ));
        }
        let Some(m) = &mut self.metadata else { return Ok(()) };
        let due = m.read.is_none_or(|(at, _)| at.elapsed() >= METADATA_RECHECK);
        if due {
            let off = m.read_opt_out(deadline).await?;
            m.read = Some((Instant::now(), off));
        }
        match m.read {
            Some((_, true)) => Err(PollError::new(
                ErrorKind::AgentDisabled,
                format!("agent polling disabled for this VM by its domain metadata ({METADATA_NS} agent poll=\"off\")"),
            )),
            _ => Ok(()),
        }
    }
}

impl Metadata {
    async fn read_opt_out(&mut self, deadline: Duration) -> Result<bool, PollError> {
        let Some(conn) = self.endpoint.current() else {
            return Err(PollError::new(ErrorKind::Connection, "domain metadata: not connected to libvirt yet"));
        };
        let uuid = self.uuid.clone();
        let call = move || -> MetaCall {
            let dom = conn.connect.lookup_domain_by_uuid_string(&uuid)?;
            match dom.metadata(virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32, Some(METADATA_NS), 0) {
                Ok(xml) => Ok(Some(xml)),
                Err(e) if no_metadata(&e) => Ok(None),
                Err(e) => Err(e),
            }
        };
        match self.slot.run(deadline, call).await {
            Ok(Ok(xml)) => Ok(xml.is_some_and(|x| metadata_opts_out(&x))),
            Ok(Err(e)) => {
                let (kind, _) = crate::source::libvirt::errors::classify(&e);
                Err(PollError::new(kind, format!("domain metadata: {}", e.message())))
            }
            Err(SlotError::Timeout { running_for }) => Err(PollError::new(
                ErrorKind::Timeout,
                format!("domain metadata: no answer for {:.1}s", running_for.as_secs_f64()),
            )),
            Err(e) => Err(PollError::new(ErrorKind::PoolSaturated, format!("domain metadata: {e}"))),
        }
    }
}

fn no_metadata(e: &virt::error::Error) -> bool {
    use virt::enumutil::Enum;
    matches!(e.code(), Enum::Known(virt::error::ErrorNumber::NoDomainMetadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ns: &str, name: &str) -> VmId {
        VmId { namespace: ns.into(), name: name.into() }
    }

    #[test]
    fn exclude_globs_match_namespace_slash_name() {
        let x = Exclude::new(&["tenant-a/*".into(), "*/db-*".into()]).expect("valid");
        assert_eq!(x.matching(&id("tenant-a", "web")), Some("tenant-a/*"));
        assert_eq!(x.matching(&id("prod", "db-1")), Some("*/db-*"));
        assert_eq!(x.matching(&id("prod", "web-db-1")), None);
        assert_eq!(x.matching(&id("tenant-ab", "web")), None);
        assert_eq!(Exclude::default().matching(&id("a", "b")), None);
    }

    #[test]
    fn a_bad_glob_names_its_entry_and_the_problem() {
        let (field, problem) = Exclude::new(&["ok/*".into(), "[".into()]).expect_err("no slash");
        assert_eq!(field, "qga.exclude[1]");
        assert!(problem.contains("namespace/name"), "{problem}");
        let (field, problem) = Exclude::new(&["ns/[a".into()]).expect_err("unclosed class");
        assert_eq!(field, "qga.exclude[0]");
        assert!(problem.starts_with("\"ns/[a\" is not a valid glob: "), "{problem}");
    }

    #[test]
    fn only_vmbridges_agent_element_with_poll_off_opts_out() {
        assert!(metadata_opts_out(r#"<vmbridge:agent xmlns:vmbridge="urn:vmbridge:1" poll="off"/>"#));
        assert!(metadata_opts_out(r#"<agent poll=" off "/>"#));
        for no in
            [r#"<agent poll="on"/>"#, r#"<agent/>"#, r#"<metrics poll="off"/>"#, "<agent poll='off'", "", "garbage"]
        {
            assert!(!metadata_opts_out(no), "{no}");
        }
        let huge = format!(r#"<agent poll="off" pad="{}"/>"#, "x".repeat(MAX_METADATA));
        assert!(!metadata_opts_out(&huge));
    }

    #[tokio::test]
    async fn a_config_exclusion_refuses_before_anything_else() {
        let x = Exclude::new(&["ns/*".into()]).expect("valid");
        let limiter = Arc::new(Semaphore::new(1));
        let mut g = Gate::new(&id("ns", "vm"), &x, None, "u", &limiter);
        let e = g.admit(Duration::from_secs(1)).await.expect_err("excluded");
        assert_eq!(e.kind, ErrorKind::AgentDisabled);
        assert!(e.message.contains("qga.exclude \"ns/*\""), "{}", e.message);
        let mut g = Gate::new(&id("other", "vm"), &x, None, "u", &limiter);
        assert!(g.admit(Duration::from_secs(1)).await.is_ok());
        assert!(Gate::open().admit(Duration::from_secs(1)).await.is_ok());
    }
}
