//! The agent itself: memory hot-plug granularity, its version and enabled commands, and the protocol's own commands.

#[allow(clippy::wildcard_imports)]
use super::*;

// ---------------------------------------------------------------------------------------------
// guest-get-memory-block-info: the memory hot-plug granularity.

allow_list!(qga::guest_get_memory_block_info);

family!(
    GUEST_MEMORY_BLOCK,
    "kubevirt_vmi_guest_memory_block_size",
    Gauge,
    B,
    [],
    Guest,
    "qga guest-get-memory-block-info",
    Vm,
    "Size of the guest's memory blocks (the hotplug granularity)."
);

pub(super) const MEMORY_BLOCK_INFO: Command = Command {
    key: "memory_block_info",
    about: "memory block size",
    request: || AgentRequest::new(qga::guest_get_memory_block_info {}),
    period: secs(300),
    parse: |g, reply, _, _, _| {
        let m: qga::GuestMemoryBlockInfo = typed(reply)?;
        g.memory_block_size_bytes = Some(m.size);
        Ok(())
    },
    families: &[&GUEST_MEMORY_BLOCK],
    encode: |enc, vms| per_vm(&mut start(enc, &GUEST_MEMORY_BLOCK)?, vms, |g| num(g.memory_block_size_bytes)),
    private: &[],
};

// ---------------------------------------------------------------------------------------------
// guest-info: the agent's version and which commands it has enabled (capabilities).

allow_list!(qga::guest_info);

family!(
    GUEST_AGENT_INFO,
    "kubevirt_vmi_guest_agent",
    Info,
    N,
    ["version"],
    Guest,
    "qga guest-info",
    Vm,
    "The guest agent's version; the value is always 1."
);

pub(super) const INFO: Command = Command {
    key: "info",
    about: "capabilities",
    request: || AgentRequest::new(qga::guest_info {}),
    period: secs(300),
    parse: |g, reply, lim, _, _| {
        let info: qga::GuestAgentInfo = typed(reply)?;
        g.agent_version = Some(label(&info.version, lim.label_bytes));
        Ok(())
    },
    families: &[&GUEST_AGENT_INFO],
    encode: |enc, vms| {
        let mut f = start(enc, &GUEST_AGENT_INFO)?;
        for vm in vms {
            if let Some(v) = data(vm).and_then(|g| g.agent_version.as_deref()) {
                f.vm_sample(vm, &[("version", v)], Some(1.0))?;
            }
        }
        Ok(())
    },
    private: &[],
};

// The protocol's own commands: no data, no period.
allow_list!(qga::guest_sync, qga::guest_ping);

