//! Who and what the guest is: logged-in users (counted), OS, time zone, host name.

#[allow(clippy::wildcard_imports)]
use super::*;

// ---------------------------------------------------------------------------------------------
// guest-get-users: logged-in users, counted (never named: names are personal data).

allow_list!(qga::guest_get_users);

family!(
    GUEST_USERS,
    "kubevirt_vmi_guest_users",
    Gauge,
    N,
    [],
    Guest,
    "qga guest-get-users",
    Vm,
    "Users logged in to the guest (counted; names are not exported)."
);

pub(super) const USERS: Command = Command {
    key: "users",
    about: "logged-in users",
    request: || AgentRequest::new(qga::guest_get_users {}),
    period: secs(30),
    parse: |g, reply, _, _, _| {
        let users: Vec<qga::GuestUser> = typed(reply)?;
        g.users = Some(users.len() as u64);
        Ok(())
    },
    families: &[&GUEST_USERS],
    encode: |enc, vms| per_vm(&mut start(enc, &GUEST_USERS)?, vms, |g| num(g.users)),
    private: &["user", "domain"],
};

// ---------------------------------------------------------------------------------------------
// guest-get-osinfo: the OS (its pretty name, version id and kernel version stay in `/debug`).

allow_list!(qga::guest_get_osinfo);

family!(
    GUEST_OS_INFO,
    "kubevirt_vmi_guest_os",
    Info,
    N,
    ["os_name", "os_version", "os_id", "kernel_release", "machine"],
    Guest,
    "qga guest-get-osinfo name, version, id, kernel-release, machine",
    Vm,
    "The guest's operating system, with the labels of KubeVirt's own family of this name; the value is always 1."
);

pub(super) const OSINFO: Command = Command {
    key: "osinfo",
    about: "operating system",
    request: || AgentRequest::new(qga::guest_get_osinfo {}),
    period: secs(300),
    parse: |g, reply, lim, _, _| {
        let o: qga::GuestOSInfo = typed(reply)?;
        let max = lim.label_bytes;
        g.os = Some(OsInfo {
            id: opt_label(o.id, max),
            name: opt_label(o.name, max),
            pretty_name: opt_label(o.pretty_name, max),
            version: opt_label(o.version, max),
            version_id: opt_label(o.version_id, max),
            kernel_release: opt_label(o.kernel_release, max),
            kernel_version: opt_label(o.kernel_version, max),
            machine: opt_label(o.machine, max),
        });
        Ok(())
    },
    families: &[&GUEST_OS_INFO],
    encode: |enc, vms| {
        let mut f = start(enc, &GUEST_OS_INFO)?;
        for vm in vms {
            let Some(os) = data(vm).and_then(|g| g.os.as_ref()) else { continue };
            let s = |v: &Option<String>| v.clone().unwrap_or_default();
            let values = [s(&os.name), s(&os.version), s(&os.id), s(&os.kernel_release), s(&os.machine)];
            let labels: Vec<(&str, &str)> =
                GUEST_OS_INFO.labels.iter().copied().zip(values.iter().map(String::as_str)).collect();
            f.vm_sample(vm, &labels, Some(1.0))?;
        }
        Ok(())
    },
    private: &[],
};

// ---------------------------------------------------------------------------------------------
// guest-get-timezone: offset from UTC.

allow_list!(qga::guest_get_timezone);

family!(
    GUEST_TIMEZONE,
    "kubevirt_vmi_guest_timezone_offset",
    Gauge,
    S,
    [],
    Guest,
    "qga guest-get-timezone offset",
    Vm,
    "The guest's offset from UTC."
);

pub(super) const TIMEZONE: Command = Command {
    key: "timezone",
    about: "time zone offset",
    request: || AgentRequest::new(qga::guest_get_timezone {}),
    period: secs(300),
    parse: |g, reply, _, _, _| {
        let tz: qga::GuestTimezone = typed(reply)?;
        g.timezone_offset_seconds = Some(tz.offset);
        Ok(())
    },
    families: &[&GUEST_TIMEZONE],
    encode: |enc, vms| per_vm(&mut start(enc, &GUEST_TIMEZONE)?, vms, |g| g.timezone_offset_seconds.map(|v| v as f64)),
    private: &[],
};

// ---------------------------------------------------------------------------------------------
// guest-get-host-name: the guest's own host name.

allow_list!(qga::guest_get_host_name);

family!(
    GUEST_HOSTNAME,
    "kubevirt_vmi_guest_hostname",
    Info,
    N,
    ["hostname"],
    Guest,
    "qga guest-get-host-name",
    Vm,
    "The host name the guest gives itself; the value is always 1."
);

pub(super) const HOSTNAME: Command = Command {
    key: "hostname",
    about: "host name",
    request: || AgentRequest::new(qga::guest_get_host_name {}),
    period: secs(300),
    parse: |g, reply, lim, _, _| {
        let h: qga::GuestHostName = typed(reply)?;
        g.hostname = Some(label(&h.host_name, lim.label_bytes));
        Ok(())
    },
    families: &[&GUEST_HOSTNAME],
    encode: |enc, vms| {
        let mut f = start(enc, &GUEST_HOSTNAME)?;
        for vm in vms {
            if let Some(h) = data(vm).and_then(|g| g.hostname.as_deref()) {
                f.vm_sample(vm, &[("hostname", h)], Some(1.0))?;
            }
        }
        Ok(())
    },
    private: &[],
};

