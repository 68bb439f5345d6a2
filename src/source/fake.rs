//! A source that exists only in the unit tests (issue 26, point 2): this file and its one line in
//! the registry (`source/mod.rs`) are all it took. It counts its own polls, has no settings,
//! applies to VMs whose domain name starts with `fake-`, and exports one family. Nothing
//! outside this file names it, and the collector, the catalogue, the supervisor's poll loop
//! and `/metrics` take it in as they take the real sources.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::api::{Source, VmView};
use super::{Poller, SourceKind, SourceSample, Sources, VmStart};
use crate::model::PollError;
use crate::model::exposition::{Out, family as start};
use crate::model::metric::{MetricDef, N, family};

family!(
    FAKE_POLLS,
    "vmbridge_test_fake_polls",
    Gauge,
    N,
    [],
    Hypervisor,
    "test source",
    Vm,
    "Polls the test source has made of this VM."
);

/// The test source.
#[derive(Debug)]
pub enum Fake {}

/// What it knows of a VM: how often it was polled.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct FakeSample {
    /// Polls so far.
    pub polls: u64,
}

/// Its poller: no I/O, a count.
#[derive(Debug, Default)]
pub struct FakePoller {
    polls: u64,
    stuck: Arc<AtomicU64>,
}

impl Poller for FakePoller {
    fn kind(&self) -> SourceKind {
        SourceKind::Fake
    }

    fn deadline(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }

    async fn poll(&mut self) -> Result<SourceSample, PollError> {
        self.polls += 1;
        Ok(SourceSample::Fake(FakeSample { polls: self.polls }))
    }

    fn stuck_calls(&self) -> Arc<AtomicU64> {
        self.stuck.clone()
    }
}

impl Source for Fake {
    const KIND: SourceKind = SourceKind::Fake;
    type Sample = FakeSample;
    type Settings = ();
    type Poller = FakePoller;

    fn settings(_: &Sources) -> &() {
        &()
    }

    fn sample(sample: &SourceSample) -> Option<&FakeSample> {
        match sample {
            SourceSample::Fake(f) => Some(f),
            _ => None,
        }
    }

    fn poller(vm: &VmStart<'_>, _: &()) -> Option<FakePoller> {
        vm.domain.starts_with("fake-").then(FakePoller::default)
    }

    fn families() -> Vec<&'static MetricDef> {
        vec![&FAKE_POLLS]
    }

    fn encode(enc: &mut Out<'_>, vms: &[VmView<'_>]) -> std::fmt::Result {
        let mut f = start(enc, &FAKE_POLLS)?;
        // Only VMs it polls: no NaN for the others under `export_all_known`.
        for vm in vms {
            if let Some(s) = vm.sample::<Fake>() {
                f.vm_sample(vm, &[], Some(s.polls as f64))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::breaker::{Breaker, BreakerConfig};
    use crate::collector::VmCollector;
    use crate::model::text::Format;
    use crate::store::{SourceSnapshot, Store, VmKey, VmSnapshot};
    use crate::vm::VmId;

    #[test]
    fn one_line_registers_it_everywhere() {
        assert_eq!(SourceKind::ALL.last(), Some(&SourceKind::Fake), "exposed after the real sources");
        assert_eq!(SourceKind::Fake.as_str(), "fake");
        assert!(crate::catalogue::all().iter().any(|d| d.name == FAKE_POLLS.name), "in the catalogue");
        assert!(
            !crate::catalogue::documented().iter().any(|d| d.name == FAKE_POLLS.name),
            "a source registered only in tests stays out of docs/METRICS.md"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn it_polls_publishes_and_exports() {
        let store = Arc::new(Store::new(["qemu:///system"]));
        let id = VmId { namespace: "ns".into(), name: "fake-a".into() };
        let key = VmKey::new("qemu:///system", "uuid-fake");
        store.insert_vm(VmSnapshot {
            id: id.clone(),
            domain: "fake-a".into(),
            uuid: "uuid-fake".into(),
            endpoint: "qemu:///system".into(),
            discovered_at: 0.0,
            sources: BTreeMap::new(),
            revision: 0,
        });
        // Polled twice, through the `Poller` the supervisor would drive.
        let mut poller = FakePoller::default();
        poller.poll().await.expect("first poll");
        let sample = poller.poll().await.expect("second poll");
        let mut snap = SourceSnapshot::fresh(
            Breaker::new(BreakerConfig::default()).view(tokio::time::Instant::now()),
            poller.stuck_calls(),
        );
        snap.sample = Some(Arc::new(sample));
        (snap.last_success_at, snap.polls_total) = (Some(crate::clock::now_unix()), 2);
        let collector =
            VmCollector::new(store.clone(), "node-1".into(), Duration::from_secs(3600)).observing();
        store.publish(&key, SourceKind::Fake, Arc::new(snap));
        let text = collector.render(Format::OpenMetrics);
        assert!(
            text.contains("vmbridge_test_fake_polls{namespace=\"ns\",name=\"fake-a\",node=\"node-1\"} 2.0\n"),
            "{text}"
        );
        // Its health is vmbridge's like any source's.
        assert!(text.contains("vmbridge_source_up{namespace=\"ns\",name=\"fake-a\",node=\"node-1\",source=\"fake\"} 1.0\n"), "{text}");
    }
}
