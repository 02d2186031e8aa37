//! `linux.seccomp` → a libseccomp filter, compiled before the container's
//! process forks and loaded by it as late as it can (see
//! `executor::process`).
//!
//! Semantics follow runc's (`libcontainer/seccomp/seccomp_linux.go`): a
//! syscall name libseccomp does not know is skipped, so a profile naming
//! new syscalls still loads on an older kernel or library; a rule whose
//! action is the default one is skipped (libseccomp refuses it); when
//! two conditions test the same argument they are separate rules (either
//! may match), else one rule needing all of them.

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("seccomp: {context}: {source}")]
    Lib {
        context: String,
        source: libseccomp::error::SeccompError,
    },
    #[error("seccomp: {0}")]
    Unsupported(String),
}

fn lib(context: impl Into<String>) -> impl FnOnce(libseccomp::error::SeccompError) -> FilterError {
    let context = context.into();
    move |source| FilterError::Lib { context, source }
}

/// The libseccomp action of an OCI one; ERRNO and TRACE return `ret`,
/// EPERM when the profile gives none.
fn action(a: LinuxSeccompAction, ret: Option<u32>) -> Result<ScmpAction, FilterError> {
    let ret = ret.unwrap_or(libc::EPERM as u32);
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(ret as i32),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(ret as u16),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(FilterError::Unsupported(
                "SCMP_ACT_NOTIFY needs a seccomp agent, which this runtime does not run".into(),
            ));
        }
    })
}

fn compare(arg: &LinuxSeccompArg) -> ScmpArgCompare {
    let index = arg.index() as u32;
    let op = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        // The OCI spec's `value` is the mask, `valueTwo` the expected value.
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            return ScmpArgCompare::new(
                index,
                ScmpCompareOp::MaskedEqual(arg.value()),
                arg.value_two().unwrap_or(0),
            );
        }
    };
    ScmpArgCompare::new(index, op, arg.value())
}

/// The condition sets of one rule: all together, or one each when two
/// test the same argument.
pub fn condition_sets(args: &[LinuxSeccompArg]) -> Vec<Vec<ScmpArgCompare>> {
    let mut seen = std::collections::HashSet::new();
    let repeated = args.iter().any(|a| !seen.insert(a.index()));
    if repeated {
        args.iter().map(|a| vec![compare(a)]).collect()
    } else {
        vec![args.iter().map(compare).collect()]
    }
}

/// Compiles `spec` into a filter that does not set no_new_privs itself:
/// the process spec decides that.
pub fn compile(spec: &LinuxSeccomp) -> Result<ScmpFilterContext, FilterError> {
    let default = action(spec.default_action(), spec.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(lib("create the filter"))?;
    ctx.set_ctl_nnp(false)
        .map_err(lib("leave no_new_privs alone"))?;
    for arch in spec.architectures().as_deref().unwrap_or_default() {
        let name = serde_json::to_value(arch)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let arch: ScmpArch = name.parse().map_err(lib(format!("architecture {name}")))?;
        if arch == ScmpArch::Native {
            continue;
        }
        if !ctx
            .is_arch_present(arch)
            .map_err(lib(format!("architecture {name}")))?
        {
            ctx.add_arch(arch)
                .map_err(lib(format!("add architecture {name}")))?;
        }
    }
    for flag in spec.flags().as_deref().unwrap_or_default() {
        match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => ctx.set_ctl_log(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => ctx.set_ctl_ssb(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => ctx.set_ctl_tsync(true),
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => ctx.set_ctl_waitkill(true),
        }
        .map_err(lib(format!("flag {flag}")))?;
    }
    for rule in spec.syscalls().as_deref().unwrap_or_default() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        let sets = condition_sets(rule.args().as_deref().unwrap_or_default());
        for name in rule.names() {
            let Ok(syscall) = ScmpSyscall::from_name(name) else {
                continue;
            };
            for conditions in &sets {
                ctx.add_rule_conditional(act, syscall, conditions)
                    .map_err(lib(format!("rule for {name}")))?;
            }
        }
    }
    Ok(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seccomp::{Choice, for_container};
    use oci_spec::runtime::Capability;

    fn arg(index: usize, op: LinuxSeccompOperator) -> LinuxSeccompArg {
        oci_spec::runtime::LinuxSeccompArgBuilder::default()
            .index(index)
            .op(op)
            .build()
            .unwrap()
    }

    #[test]
    fn repeated_arguments_make_separate_rules() {
        let same = [
            arg(0, LinuxSeccompOperator::ScmpCmpEq),
            arg(0, LinuxSeccompOperator::ScmpCmpEq),
        ];
        assert_eq!(condition_sets(&same).len(), 2);
        let different = [
            arg(0, LinuxSeccompOperator::ScmpCmpEq),
            arg(1, LinuxSeccompOperator::ScmpCmpNe),
        ];
        let sets = condition_sets(&different);
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].len(), 2);
        assert_eq!(condition_sets(&[]), vec![Vec::new()]);
    }

    #[test]
    fn the_default_profile_compiles_with_and_without_capabilities() {
        for caps in [
            std::collections::HashSet::new(),
            [Capability::SysAdmin, Capability::SysPtrace].into(),
        ] {
            let spec = for_container(&Choice::RuntimeDefault, &caps)
                .unwrap()
                .unwrap();
            let ctx = compile(&spec).unwrap();
            assert!(!ctx.get_ctl_nnp().unwrap());
            assert!(ctx.is_arch_present(ScmpArch::X86).unwrap() || !cfg!(target_arch = "x86_64"));
        }
    }

    #[test]
    fn notify_is_refused_and_unknown_names_are_skipped() {
        let mut spec = LinuxSeccomp::default();
        spec.set_default_action(LinuxSeccompAction::ScmpActNotify);
        assert!(matches!(compile(&spec), Err(FilterError::Unsupported(_))));
        let mut rule = oci_spec::runtime::LinuxSyscall::default();
        rule.set_names(vec!["no_such_syscall".into(), "getpid".into()]);
        rule.set_action(LinuxSeccompAction::ScmpActErrno);
        spec.set_default_action(LinuxSeccompAction::ScmpActAllow);
        spec.set_syscalls(Some(vec![rule]));
        compile(&spec).unwrap();
    }
}
