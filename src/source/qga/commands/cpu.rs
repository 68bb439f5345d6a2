//! The guest's CPUs: vCPUs online, load averages, CPU time per mode.

#[allow(clippy::wildcard_imports)]
use super::*;

// ---------------------------------------------------------------------------------------------
// guest-get-vcpus: logical CPUs the guest knows, and how many are online.

allow_list!(qga::guest_get_vcpus);

family!(
    GUEST_VCPUS,
    "kubevirt_vmi_guest_vcpus",
    Gauge,
    N,
    [],
    Guest,
    "qga guest-get-vcpus",
    Vm,
    "Logical CPUs the guest OS knows."
);
family!(
    GUEST_VCPUS_ONLINE,
    "kubevirt_vmi_guest_vcpus_online",
    Gauge,
    N,
    [],
    Guest,
    "qga guest-get-vcpus online",
    Vm,
    "Logical CPUs the guest OS has online."
);

pub(super) const VCPUS: Command = Command {
    key: "vcpus",
    about: "vCPUs online",
    request: || AgentRequest::new(qga::guest_get_vcpus {}),
    period: secs(30),
    parse: |g, reply, _, _, rejected| {
        let cpus: Vec<qga::GuestLogicalProcessor> = typed(reply)?;
        let total = cpus.len() as u64;
        let online = cpus.iter().filter(|c| c.online).count() as u64;
        let ok = |def, n: u64, rejected: &mut Vec<Rejected>| {
            reject::check(&super::RULES, def, &Value::from(n), 1.0, Context::default(), None, rejected).map(|_| n)
        };
        g.vcpus_total = ok(&GUEST_VCPUS, total, rejected);
        g.vcpus_online = ok(&GUEST_VCPUS_ONLINE, online, rejected);
        Ok(())
    },
    families: &[&GUEST_VCPUS, &GUEST_VCPUS_ONLINE],
    encode: |enc, vms| {
        per_vm(&mut start(enc, &GUEST_VCPUS)?, vms, |g| num(g.vcpus_total))?;
        per_vm(&mut start(enc, &GUEST_VCPUS_ONLINE)?, vms, |g| num(g.vcpus_online))
    },
    private: &[],
};

// ---------------------------------------------------------------------------------------------
// guest-get-load (QEMU >= 10.0, newer than the `qapi-qga` schema): load averages.

/// `guest-get-load`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GuestGetLoad {}

/// Its reply (each average absent when missing or rejected).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
pub struct GuestLoadInfo {
    /// 1-minute load average.
    #[serde(default)]
    pub load1: Option<f64>,
    /// 5-minute load average.
    #[serde(default)]
    pub load5: Option<f64>,
    /// 15-minute load average.
    #[serde(default)]
    pub load15: Option<f64>,
}

impl qapi::Command for GuestGetLoad {
    type Ok = GuestLoadInfo;
    const NAME: &'static str = "guest-get-load";
    const ALLOW_OOB: bool = false;
}

allow_list!(GuestGetLoad);

family!(
    GUEST_LOAD_1M,
    "kubevirt_vmi_guest_load_1m",
    Gauge,
    N,
    [],
    Guest,
    "qga guest-get-load load1",
    Vm,
    "Guest load average over 1 minute."
);
family!(
    GUEST_LOAD_5M,
    "kubevirt_vmi_guest_load_5m",
    Gauge,
    N,
    [],
    Guest,
    "qga guest-get-load load5",
    Vm,
    "Guest load average over 5 minutes."
);
family!(
    GUEST_LOAD_15M,
    "kubevirt_vmi_guest_load_15m",
    Gauge,
    N,
    [],
    Guest,
    "qga guest-get-load load15",
    Vm,
    "Guest load average over 15 minutes."
);

pub(super) const LOAD: Command = Command {
    key: "load",
    about: "load averages",
    request: || AgentRequest::new(GuestGetLoad {}),
    period: secs(15),
    // Read leniently, one average at a time: a NaN, negative or absurd one is left out, the
    // others stay.
    parse: |g, reply, _, _, rejected| {
        let Value::Object(map) = reply else { return Err("load reply is not an object".into()) };
        let mut load = |def, key: &str| {
            reject::check(&super::RULES, def, map.get(key).unwrap_or(&Value::Null), 1.0, Context::default(), None, rejected)
        };
        g.load = Some(GuestLoadInfo {
            load1: load(&GUEST_LOAD_1M, "load1"),
            load5: load(&GUEST_LOAD_5M, "load5"),
            load15: load(&GUEST_LOAD_15M, "load15"),
        });
        Ok(())
    },
    families: &[&GUEST_LOAD_1M, &GUEST_LOAD_5M, &GUEST_LOAD_15M],
    encode: |enc, vms| {
        per_vm(&mut start(enc, &GUEST_LOAD_1M)?, vms, |g| g.load.and_then(|l| l.load1))?;
        per_vm(&mut start(enc, &GUEST_LOAD_5M)?, vms, |g| g.load.and_then(|l| l.load5))?;
        per_vm(&mut start(enc, &GUEST_LOAD_15M)?, vms, |g| g.load.and_then(|l| l.load15))
    },
    private: &[],
};

// ---------------------------------------------------------------------------------------------
// guest-get-cpustats: CPU time per guest CPU and mode.

allow_list!(qga::guest_get_cpustats);

family!(
    GUEST_CPU,
    "kubevirt_vmi_guest_cpu",
    Counter,
    S,
    ["cpu", "mode"],
    Guest,
    "qga guest-get-cpustats (ms)",
    Vm,
    "Time each guest CPU spent in each mode, as the guest counts it."
);

/// Linux CPU modes, as `guest-get-cpustats` names them.
const CPU_MODES: [&str; 10] =
    ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guestnice"];

pub(super) const CPUSTATS: Command = Command {
    key: "cpustats",
    about: "guest CPU time",
    request: || AgentRequest::new(qga::guest_get_cpustats {}),
    period: secs(15),
    // Read leniently: only the Linux shape is known; other OS types are skipped, not fatal.
    parse: |g, reply, lim, dropped, _| {
        let Value::Array(items) = reply else { return Err("cpustats reply is not a list".into()) };
        let mut out: Vec<CpuStats> = Vec::new();
        let mut left_out = 0;
        for (i, item) in items.iter().enumerate() {
            if i >= lim.cpus {
                left_out += 1;
                continue;
            }
            let Value::Object(map) = item else { return Err("cpustats entry is not an object".into()) };
            if map.get("type").and_then(Value::as_str) != Some("linux") {
                continue;
            }
            let cpu = map.get("cpu").and_then(Value::as_i64).ok_or("cpustats entry lacks cpu")?;
            // A CPU reported twice would repeat its series' labels: the first is kept.
            if out.iter().any(|c| c.cpu == cpu) {
                left_out += 1;
                continue;
            }
            let modes = CPU_MODES
                .iter()
                .filter_map(|m| map.get(*m).and_then(Value::as_u64).map(|v| ((*m).to_owned(), v)))
                .collect();
            out.push(CpuStats { cpu, modes });
        }
        count_drop(dropped, "cpu", left_out);
        g.cpus = Some(out);
        Ok(())
    },
    families: &[&GUEST_CPU],
    encode: |enc, vms| {
        let mut f = start(enc, &GUEST_CPU)?;
        for vm in vms {
            for cpu in data(vm).and_then(|g| g.cpus.as_deref()).unwrap_or_default() {
                let id = cpu.cpu.to_string();
                for (mode, v) in &cpu.modes {
                    f.vm_sample(vm, &[("cpu", &id), ("mode", mode)], ms(Some(*v)))?;
                }
            }
        }
        Ok(())
    },
    private: &[],
};

