//! `guest-network-get-interfaces`: the guest's view of its NICs and their addresses.

#[allow(clippy::wildcard_imports)]
use super::*;

// ---------------------------------------------------------------------------------------------
// guest-network-get-interfaces: the guest's view of its NICs and their addresses.

allow_list!(qga::guest_network_get_interfaces);

family!(
    GUEST_NET_RX_BYTES,
    "kubevirt_vmi_guest_network_receive",
    Counter,
    B,
    ["interface"],
    Guest,
    "qga guest-network-get-interfaces rx-bytes",
    Vm,
    "Bytes received, as the guest counts them."
);
family!(
    GUEST_NET_TX_BYTES,
    "kubevirt_vmi_guest_network_transmit",
    Counter,
    B,
    ["interface"],
    Guest,
    "qga guest-network-get-interfaces tx-bytes",
    Vm,
    "Bytes transmitted, as the guest counts them."
);
family!(
    GUEST_NET_RX_PACKETS,
    "kubevirt_vmi_guest_network_receive_packets",
    Counter,
    N,
    ["interface"],
    Guest,
    "qga guest-network-get-interfaces rx-packets",
    Vm,
    "Packets received, as the guest counts them."
);
family!(
    GUEST_NET_TX_PACKETS,
    "kubevirt_vmi_guest_network_transmit_packets",
    Counter,
    N,
    ["interface"],
    Guest,
    "qga guest-network-get-interfaces tx-packets",
    Vm,
    "Packets transmitted, as the guest counts them."
);
family!(
    GUEST_NET_RX_ERRORS,
    "kubevirt_vmi_guest_network_receive_errors",
    Counter,
    N,
    ["interface"],
    Guest,
    "qga guest-network-get-interfaces rx-errs",
    Vm,
    "Receive errors, as the guest counts them."
);
family!(
    GUEST_NET_TX_ERRORS,
    "kubevirt_vmi_guest_network_transmit_errors",
    Counter,
    N,
    ["interface"],
    Guest,
    "qga guest-network-get-interfaces tx-errs",
    Vm,
    "Transmit errors, as the guest counts them."
);
family!(
    GUEST_NET_RX_DROPPED,
    "kubevirt_vmi_guest_network_receive_packets_dropped",
    Counter,
    N,
    ["interface"],
    Guest,
    "qga guest-network-get-interfaces rx-dropped",
    Vm,
    "Received packets dropped, as the guest counts them."
);
family!(
    GUEST_NET_TX_DROPPED,
    "kubevirt_vmi_guest_network_transmit_packets_dropped",
    Counter,
    N,
    ["interface"],
    Guest,
    "qga guest-network-get-interfaces tx-dropped",
    Vm,
    "Transmitted packets dropped, as the guest counts them."
);
family!(
    GUEST_ADDRESS_INFO,
    "kubevirt_vmi_guest_interface_address",
    Info,
    N,
    ["interface", "address", "family", "prefix", "mac"],
    Guest,
    "qga guest-network-get-interfaces",
    Vm,
    "One series per IP address the guest reports; the value is always 1."
);

type NetField = fn(&InterfaceStats) -> u64;
pub(super) const NET: [(&MetricDef, NetField); 8] = [
    (&GUEST_NET_RX_BYTES, |s| s.rx_bytes),
    (&GUEST_NET_TX_BYTES, |s| s.tx_bytes),
    (&GUEST_NET_RX_PACKETS, |s| s.rx_packets),
    (&GUEST_NET_TX_PACKETS, |s| s.tx_packets),
    (&GUEST_NET_RX_ERRORS, |s| s.rx_errs),
    (&GUEST_NET_TX_ERRORS, |s| s.tx_errs),
    (&GUEST_NET_RX_DROPPED, |s| s.rx_dropped),
    (&GUEST_NET_TX_DROPPED, |s| s.tx_dropped),
];

pub(super) const NETWORK: Command = Command {
    key: "network",
    about: "interfaces and IP addresses",
    request: || AgentRequest::new(qga::guest_network_get_interfaces {}),
    period: secs(30),
    parse: |g, reply, lim, dropped, _| {
        let ifaces: Vec<qga::GuestNetworkInterface> = typed(reply)?;
        let max = lim.label_bytes;
        let mut budget = lim.addresses;
        let mut out: Vec<Interface> = Vec::new();
        let mut left_out = 0;
        for i in ifaces {
            let name = label(&i.name, max);
            // Past the cap, or a name already seen (its series would repeat the labels).
            if out.len() == lim.interfaces || out.iter().any(|o| o.name == name) {
                left_out += 1;
                continue;
            }
            let mut addresses: Vec<Address> = Vec::new();
            for a in i.ip_addresses.unwrap_or_default() {
                let a = Address {
                    address: label(&a.ip_address, max),
                    family: match a.ip_address_type {
                        qga::GuestIpAddressType::ipv4 => "ipv4".into(),
                        qga::GuestIpAddressType::ipv6 => "ipv6".into(),
                    },
                    prefix: a.prefix,
                };
                if budget == 0 || addresses.contains(&a) {
                    count_drop(dropped, "address", 1);
                    continue;
                }
                budget -= 1;
                addresses.push(a);
            }
            let stats = i.statistics.map(|s| InterfaceStats {
                rx_bytes: s.rx_bytes,
                rx_packets: s.rx_packets,
                rx_errs: s.rx_errs,
                rx_dropped: s.rx_dropped,
                tx_bytes: s.tx_bytes,
                tx_packets: s.tx_packets,
                tx_errs: s.tx_errs,
                tx_dropped: s.tx_dropped,
            });
            out.push(Interface { name, mac: opt_label(i.hardware_address, max), addresses, stats });
        }
        count_drop(dropped, "interface", left_out);
        g.interfaces = Some(out);
        Ok(())
    },
    families: &[
        &GUEST_NET_RX_BYTES,
        &GUEST_NET_TX_BYTES,
        &GUEST_NET_RX_PACKETS,
        &GUEST_NET_TX_PACKETS,
        &GUEST_NET_RX_ERRORS,
        &GUEST_NET_TX_ERRORS,
        &GUEST_NET_RX_DROPPED,
        &GUEST_NET_TX_DROPPED,
        &GUEST_ADDRESS_INFO,
    ],
    encode: |enc, vms| {
        let interfaces = |vm| data(vm).and_then(|g| g.interfaces.as_deref()).unwrap_or_default();
        for (def, get) in NET {
            let mut f = start(enc, def)?;
            for vm in vms {
                for i in interfaces(vm) {
                    if let Some(s) = &i.stats {
                        f.vm_sample(vm, &[("interface", &i.name)], Some(get(s) as f64))?;
                    }
                }
            }
        }
        let mut f = start(enc, &GUEST_ADDRESS_INFO)?;
        for vm in vms {
            for i in interfaces(vm) {
                for a in &i.addresses {
                    let prefix = a.prefix.to_string();
                    let labels = [
                        ("interface", i.name.as_str()),
                        ("address", &a.address),
                        ("family", &a.family),
                        ("prefix", &prefix),
                        ("mac", i.mac.as_deref().unwrap_or_default()),
                    ];
                    f.vm_sample(vm, &labels, Some(1.0))?;
                }
            }
        }
        Ok(())
    },
    private: &[],
};

