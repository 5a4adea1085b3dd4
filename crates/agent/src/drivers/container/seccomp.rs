//! Tessera's default seccomp profile for instances.
//!
//! Instances are system containers: an image's own init (systemd, say) as
//! PID 1, sshd, services that mount, reboot and trace. They run in their own
//! user namespace, which already takes away every power over the host: the
//! kernel checks capabilities such as `CAP_SYS_MODULE` or `CAP_SYS_TIME`
//! against the initial user namespace, where an instance holds none. So this
//! profile is not an allow list in the style of Docker's (which has to stand
//! in for a user namespace it usually does not have) but a short deny list
//! over a default of "allow": it takes away the system calls whose mere
//! reachability is risk (a large, often buggy kernel surface, or host-wide
//! state the user namespace does not cover), as defence in depth should a
//! kernel bug let a process past the namespace's checks.
//!
//! What it deliberately leaves allowed, and why:
//!
//! - `mount`, `umount2`, `fsopen` and the rest of the new mount API: they
//!   act inside the instance's own mount namespace, and the kernel refuses
//!   what a user namespace may not mount; systemd mounts at boot.
//! - `reboot`: in a PID namespace it only ends the instance (its init gets
//!   the signal), which is what `systemctl reboot` inside it should do.
//! - `ptrace`, `process_vm_readv`, `process_vm_writev`: they only reach the
//!   instance's own processes; debuggers and `strace` want them.
//! - `pivot_root`: runc itself and systemd (for its services' private root
//!   directories) need it.
//! - `name_to_handle_at`, `get_mempolicy`, `personality`: harmless reads or
//!   per-process settings.
//!
//! Two rules are more than a name: `clone3` answers `ENOSYS` (its flags sit
//! in a structure in memory, out of reach of a filter, so glibc is made to
//! fall back to `clone`, as under Docker), and `unshare` and `clone` refuse
//! `CLONE_NEWUSER`: a nested user namespace hands its creator a full set of
//! capabilities over new namespaces, and that is how most kernel privilege
//! escalations from inside a container begin.
//!
//! And `ioctl` refuses the loop device's requests (`0x4C00`-`0x4CFF`: the
//! request's low 32 bits, which is all the kernel reads). A volume is a
//! loop device on the host that the instance sees as `/dev/vdb`, and
//! `LOOP_CLR_FD` needs no capability: an instance could release its own
//! device while keeping it open, and read and write whatever the host
//! bound to that device next (another tenant's volume). `LOOP_GET_STATUS`
//! would show the host path of its file.
//!
//! Names are those libseccomp 2.5.4 knows; runc skips a name that does not
//! exist on one of the architectures listed (`stime`, `vm86` and the `*64`
//! time calls exist only on 32-bit ones).

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use tessera_agent_api::AgentError;

/// `EPERM`: what a denied call answers, as if the kernel had refused it.
const EPERM: u32 = 1;

/// `ENOSYS`: what `clone3` answers, so that callers fall back to `clone`.
const ENOSYS: u32 = 38;

/// `CLONE_NEWUSER`, in the flags of `clone` and `unshare`.
const CLONE_NEWUSER: u64 = 0x1000_0000;

/// Loading code into the running kernel, or replacing the kernel: kernel
/// modules (the last three are the obsolete module calls), `kexec`, and eBPF
/// programs (the verifier has been the source of many escalations).
const KERNEL_CODE: &[&str] = &[
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "query_module",
    "get_kernel_syms",
    "kexec_load",
    "kexec_file_load",
    "bpf",
];

/// The kernel keyrings, which the user namespace does not separate well and
/// which hold other tenants' and the host's secrets (Docker denies them for
/// the same reason).
const KEYRING: &[&str] = &["keyctl", "add_key", "request_key"];

/// Opening a file by its handle bypasses the mount namespace: given a guessed
/// handle it reaches any file on a host filesystem (the "shocker" escape).
/// `name_to_handle_at`, which only makes handles, stays allowed.
const FILE_HANDLES: &[&str] = &["open_by_handle_at"];

/// Large kernel surfaces an instance has no need for, each the start of past
/// escalations: performance counters, `userfaultfd` (a tool for winning
/// kernel races), `io_uring`, and oprofile's `lookup_dcookie`.
const KERNEL_SURFACE: &[&str] = &[
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "lookup_dcookie",
];

/// Host-wide state no instance should touch: process accounting, swap,
/// disk quotas, the kernel log, filesystem-wide notification, and direct
/// access to I/O ports.
const HOST_STATE: &[&str] = &[
    "acct",
    "swapon",
    "swapoff",
    "quotactl",
    "quotactl_fd",
    "syslog",
    "fanotify_init",
    "iopl",
    "ioperm",
];

/// The system clock is the host's: no namespace separates it.
const CLOCK: &[&str] = &[
    "settimeofday",
    "stime",
    "clock_settime",
    "clock_settime64",
    "adjtimex",
    "clock_adjtime",
    "clock_adjtime64",
];

/// NUMA placement: it would move memory across the host's nodes, outside the
/// CPUs and memory the instance was given. (`get_mempolicy` stays allowed.)
const NUMA: &[&str] = &["mbind", "set_mempolicy", "move_pages"];

/// Obsolete calls nothing current uses, kept only as attack surface.
const OBSOLETE: &[&str] = &[
    "nfsservctl",
    "_sysctl",
    "sysfs",
    "uselib",
    "vm86",
    "vm86old",
];

/// Every group denied with `EPERM`, by name alone.
const DENIED: &[&[&str]] = &[
    KERNEL_CODE,
    KEYRING,
    FILE_HANDLES,
    KERNEL_SURFACE,
    HOST_STATE,
    CLOCK,
    NUMA,
    OBSOLETE,
];

/// The calls that would make a user namespace, refused when their flags
/// (argument 0 of both on x86_64 and aarch64) carry `CLONE_NEWUSER`.
const NEW_USER_NAMESPACE: &[&str] = &["unshare", "clone"];

/// The loop device's `ioctl` requests (`LOOP_SET_FD` = `0x4C00` to
/// `LOOP_CONFIGURE` = `0x4C0A`, `LOOP_CTL_*` from `0x4C80`): the request
/// (argument 1) under this mask is this value. The mask keeps the high 32
/// bits out: the kernel ignores them, so setting them cannot step around it.
const LOOP_IOCTL_MASK: u64 = 0xFFFF_FF00;
const LOOP_IOCTL: u64 = 0x4C00;

/// Calls that answer `ENOSYS`: `clone3` passes its flags in memory, where a
/// filter cannot see `CLONE_NEWUSER`, so callers must fall back to `clone`.
const NOT_IMPLEMENTED: &[&str] = &["clone3"];

/// The architectures the filter covers on the architecture the agent was
/// built for: the native one and the 32-bit ones its kernel also runs, so a
/// 32-bit binary cannot step around the filter. Empty (runc's default, the
/// native one alone) elsewhere.
fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        Vec::new()
    }
}

fn err(e: impl std::fmt::Display) -> AgentError {
    AgentError::Failed(format!("building the seccomp profile: {e}"))
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Tessera's default seccomp profile for instances, in the spirit of Docker's default.
pub(super) fn default_profile() -> Result<LinuxSeccomp, AgentError> {
    let denied = LinuxSyscallBuilder::default()
        .names(names(&DENIED.concat()))
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(EPERM)
        .build()
        .map_err(err)?;
    let not_implemented = LinuxSyscallBuilder::default()
        .names(names(NOT_IMPLEMENTED))
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(ENOSYS)
        .build()
        .map_err(err)?;
    let new_user = LinuxSeccompArgBuilder::default()
        .index(0usize)
        .value(CLONE_NEWUSER)
        .value_two(CLONE_NEWUSER)
        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
        .build()
        .map_err(err)?;
    let new_user_namespace = LinuxSyscallBuilder::default()
        .names(names(NEW_USER_NAMESPACE))
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(EPERM)
        .args(vec![new_user])
        .build()
        .map_err(err)?;
    // For a masked comparison, `value` is the mask and `valueTwo` what the
    // masked argument must equal (runc's and libseccomp's order).
    let loop_request = LinuxSeccompArgBuilder::default()
        .index(1usize)
        .value(LOOP_IOCTL_MASK)
        .value_two(LOOP_IOCTL)
        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
        .build()
        .map_err(err)?;
    let loop_ioctls = LinuxSyscallBuilder::default()
        .names(names(&["ioctl"]))
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(EPERM)
        .args(vec![loop_request])
        .build()
        .map_err(err)?;
    let syscalls: Vec<LinuxSyscall> =
        vec![denied, not_implemented, new_user_namespace, loop_ioctls];

    let mut builder = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .syscalls(syscalls);
    let architectures = architectures();
    if !architectures.is_empty() {
        builder = builder.architectures(architectures);
    }
    builder.build().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn profile() -> LinuxSeccomp {
        default_profile().expect("the default profile builds")
    }

    /// The rule that names `syscall`, if any.
    fn rule_for(profile: &LinuxSeccomp, syscall: &str) -> Option<LinuxSyscall> {
        profile
            .syscalls()
            .as_ref()?
            .iter()
            .find(|rule| rule.names().iter().any(|n| n == syscall))
            .cloned()
    }

    #[test]
    fn serializes_with_default_allow() {
        let json = serde_json::to_string(&profile()).expect("serializes");
        assert!(
            json.contains(r#""defaultAction":"SCMP_ACT_ALLOW""#),
            "{json}"
        );
        assert!(json.contains(r#""errnoRet":1"#), "{json}");
        // And it reads back as the same profile, as runc will read it.
        let back: LinuxSeccomp = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, profile());
    }

    #[test]
    fn denies_dangerous_syscalls_with_eperm() {
        let profile = profile();
        for syscall in [
            "keyctl",
            "bpf",
            "kexec_load",
            "open_by_handle_at",
            "init_module",
            "finit_module",
        ] {
            let rule = rule_for(&profile, syscall).unwrap_or_else(|| panic!("{syscall} denied"));
            assert_eq!(rule.action(), LinuxSeccompAction::ScmpActErrno, "{syscall}");
            assert_eq!(rule.errno_ret(), Some(EPERM), "{syscall}");
            assert!(rule.args().is_none(), "{syscall} is denied outright");
        }
    }

    #[test]
    fn leaves_system_container_needs_allowed() {
        let profile = profile();
        for syscall in [
            "mount",
            "reboot",
            "ptrace",
            "pivot_root",
            "name_to_handle_at",
            "get_mempolicy",
            "process_vm_readv",
        ] {
            assert!(rule_for(&profile, syscall).is_none(), "{syscall} allowed");
        }
    }

    #[test]
    fn clone3_answers_enosys() {
        let rule = rule_for(&profile(), "clone3").expect("a rule for clone3");
        assert_eq!(rule.action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(rule.errno_ret(), Some(ENOSYS));
        assert!(rule.args().is_none());
    }

    #[test]
    fn unshare_and_clone_refuse_new_user_namespaces() {
        let profile = profile();
        for syscall in ["unshare", "clone"] {
            let rule = rule_for(&profile, syscall).expect("a rule");
            assert_eq!(rule.action(), LinuxSeccompAction::ScmpActErrno, "{syscall}");
            assert_eq!(rule.errno_ret(), Some(EPERM), "{syscall}");
            let args = rule.args().as_ref().expect("conditional on the flags");
            assert_eq!(args.len(), 1, "{syscall}");
            let arg = args[0];
            assert_eq!(arg.index(), 0, "{syscall}");
            assert_eq!(arg.value(), 0x1000_0000, "{syscall}");
            assert_eq!(arg.value_two(), Some(0x1000_0000), "{syscall}");
            assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq, "{syscall}");
        }
        let json = serde_json::to_string(&profile).expect("serializes");
        assert!(
            json.contains(
                r#""args":[{"index":0,"value":268435456,"valueTwo":268435456,"op":"SCMP_CMP_MASKED_EQ"}]"#
            ),
            "{json}"
        );
    }

    #[test]
    fn ioctl_refuses_the_loop_devices_requests_only() {
        let rule = rule_for(&profile(), "ioctl").expect("a rule for ioctl");
        assert_eq!(rule.action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(rule.errno_ret(), Some(EPERM));
        let args = rule.args().as_ref().expect("conditional on the request");
        assert_eq!(args.len(), 1);
        let arg = args[0];
        assert_eq!(arg.index(), 1);
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        let refused = |request: u64| request & arg.value() == arg.value_two().expect("a value");
        // LOOP_SET_FD, LOOP_CLR_FD, LOOP_GET_STATUS64, LOOP_CONFIGURE,
        // LOOP_CTL_GET_FREE, and LOOP_CLR_FD with the high bits set.
        for request in [
            0x4C00,
            0x4C01,
            0x4C05,
            0x4C0A,
            0x4C82,
            0xFFFF_FFFF_0000_4C01,
        ] {
            assert!(refused(request), "{request:#x}");
        }
        // TCGETS, FIONREAD, BLKGETSIZE64, BLKDISCARD: a disk's own requests stay.
        for request in [0x5401, 0x541B, 0x8008_1272, 0x1277] {
            assert!(!refused(request), "{request:#x}");
        }
    }

    #[test]
    fn each_syscall_has_one_rule() {
        let profile = profile();
        let mut seen = HashSet::new();
        for rule in profile.syscalls().as_ref().expect("rules") {
            for name in rule.names() {
                assert!(seen.insert(name.clone()), "{name} listed twice");
            }
        }
    }

    #[test]
    fn covers_the_targets_architectures() {
        let profile = profile();
        let archs = profile.architectures().clone().unwrap_or_default();
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                archs,
                [Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
            );
        } else if cfg!(target_arch = "aarch64") {
            assert_eq!(archs, [Arch::ScmpArchAarch64, Arch::ScmpArchArm]);
        }
    }
}
