//! Seccomp profiles as files give them, in the OCI runtime spec's form
//! (`architectures`, `syscalls[].names`) or Docker's (`archMap`,
//! `syscalls[].name`, `includes`/`excludes` by capability, architecture
//! and kernel), and their resolution into the OCI spec's `linux.seccomp`
//! for one container.

use std::collections::HashSet;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// A profile file. Unknown keys (`comment`...) are ignored, as moby and
/// containerd do.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Profile {
    pub default_action: String,
    pub default_errno_ret: Option<u32>,
    pub architectures: Vec<String>,
    pub arch_map: Vec<ArchMap>,
    pub flags: Vec<String>,
    pub syscalls: Vec<Rule>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ArchMap {
    pub architecture: String,
    pub sub_architectures: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Rule {
    pub names: Vec<String>,
    /// Docker's older single-name form.
    pub name: String,
    pub action: String,
    pub errno_ret: Option<u32>,
    pub args: Vec<Arg>,
    pub includes: Condition,
    pub excludes: Condition,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Arg {
    pub index: u32,
    pub value: u64,
    pub value_two: u64,
    pub op: String,
}

/// When a rule applies (`includes`: all of it holds) or not (`excludes`:
/// any of it holds).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Condition {
    /// `CAP_*` names.
    pub caps: Vec<String>,
    /// Go's architecture names (`amd64`, `arm64`...), as Docker writes them.
    pub arches: Vec<String>,
    /// `major.minor`.
    pub min_kernel: String,
}

/// What a profile is resolved for.
#[derive(Debug, Clone)]
pub struct Target {
    /// The container's capabilities, as `CAP_*` names.
    pub caps: HashSet<String>,
    /// Go's name of this machine's architecture.
    pub arch: String,
    /// The running kernel's (major, minor).
    pub kernel: (u32, u32),
}

impl Target {
    /// This machine, for a container with `caps`.
    pub fn host(caps: HashSet<String>) -> Self {
        Self {
            caps,
            arch: go_arch(std::env::consts::ARCH).to_owned(),
            kernel: nix::sys::utsname::uname()
                .ok()
                .and_then(|u| parse_kernel(&u.release().to_string_lossy()))
                .unwrap_or((0, 0)),
        }
    }
}

/// Go's `GOARCH` for Rust's `target_arch`.
pub fn go_arch(rust: &str) -> &str {
    match rust {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// The seccomp architecture of Go's `arch` and the ones its processes may
/// also run (32-bit x86 and x32 on x86_64...), as moby's profile maps them.
pub fn default_arch_map() -> Vec<ArchMap> {
    let map: &[(&str, &[&str])] = &[
        ("SCMP_ARCH_X86_64", &["SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        ("SCMP_ARCH_AARCH64", &["SCMP_ARCH_ARM"]),
        (
            "SCMP_ARCH_MIPS64",
            &["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"],
        ),
        (
            "SCMP_ARCH_MIPS64N32",
            &["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64"],
        ),
        (
            "SCMP_ARCH_MIPSEL64",
            &["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32"],
        ),
        (
            "SCMP_ARCH_MIPSEL64N32",
            &["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64"],
        ),
        ("SCMP_ARCH_S390X", &["SCMP_ARCH_S390"]),
        ("SCMP_ARCH_RISCV64", &[]),
    ];
    map.iter()
        .map(|(arch, subs)| ArchMap {
            architecture: arch.to_string(),
            sub_architectures: Some(subs.iter().map(|s| s.to_string()).collect()),
        })
        .collect()
}

/// The seccomp name of Go's architecture name.
fn seccomp_arch(go: &str) -> Option<&'static str> {
    Some(match go {
        "amd64" => "SCMP_ARCH_X86_64",
        "386" => "SCMP_ARCH_X86",
        "arm64" => "SCMP_ARCH_AARCH64",
        "arm" => "SCMP_ARCH_ARM",
        "mips64" => "SCMP_ARCH_MIPS64",
        "mips64le" => "SCMP_ARCH_MIPSEL64",
        "ppc64le" => "SCMP_ARCH_PPC64LE",
        "s390x" => "SCMP_ARCH_S390X",
        "riscv64" => "SCMP_ARCH_RISCV64",
        "loong64" => "SCMP_ARCH_LOONGARCH64",
        _ => return None,
    })
}

fn parse_kernel(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Parses an SCMP_* name the way the OCI spec spells it.
fn named<T: DeserializeOwned>(what: &str, name: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|_| format!("unknown {what} {name:?}"))
}

fn action(name: &str) -> Result<LinuxSeccompAction, String> {
    match named("action", name)? {
        // Needs a seccomp agent on `listenerPath`, which this runtime
        // does not run: refused rather than hanging the process.
        LinuxSeccompAction::ScmpActNotify => Err(format!(
            "action {name} is not supported: it needs a seccomp agent"
        )),
        a => Ok(a),
    }
}

impl Condition {
    fn holds_all(&self, t: &Target) -> Result<bool, String> {
        Ok(self.caps.iter().all(|c| t.caps.contains(c))
            && (self.arches.is_empty() || self.arches.contains(&t.arch))
            && (self.min_kernel.is_empty() || t.kernel >= self.kernel()?))
    }

    fn holds_any(&self, t: &Target) -> Result<bool, String> {
        Ok(self.caps.iter().any(|c| t.caps.contains(c))
            || self.arches.contains(&t.arch)
            || (!self.min_kernel.is_empty() && t.kernel >= self.kernel()?))
    }

    fn kernel(&self) -> Result<(u32, u32), String> {
        parse_kernel(&self.min_kernel)
            .ok_or_else(|| format!("invalid minKernel {:?}", self.min_kernel))
    }
}

impl Profile {
    /// Parses a profile file's content.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(json).map_err(|e| format!("invalid JSON: {e}"))
    }

    /// The OCI form of this profile for `target`: the rules whose
    /// conditions hold, every name, action, operator and flag checked.
    /// Syscall names are kept even when this kernel lacks them; the
    /// filter skips those, as runc does.
    pub fn resolve(&self, target: &Target) -> Result<LinuxSeccomp, String> {
        if self.default_action.is_empty() {
            return Err("defaultAction is missing".into());
        }
        let default_action = action(&self.default_action)?;
        let arch_names: Vec<String> = if !self.architectures.is_empty() {
            self.architectures.clone()
        } else {
            let native = seccomp_arch(&target.arch);
            self.arch_map
                .iter()
                .filter(|m| Some(m.architecture.as_str()) == native)
                .flat_map(|m| {
                    std::iter::once(m.architecture.clone())
                        .chain(m.sub_architectures.clone().unwrap_or_default())
                })
                .collect()
        };
        let architectures = arch_names
            .iter()
            .map(|a| named::<Arch>("architecture", a))
            .collect::<Result<Vec<_>, _>>()?;
        let flags = self
            .flags
            .iter()
            .map(|f| named::<LinuxSeccompFilterFlag>("flag", f))
            .collect::<Result<Vec<_>, _>>()?;

        let mut syscalls = Vec::new();
        for (i, rule) in self.syscalls.iter().enumerate() {
            let at = |m: String| format!("syscalls[{i}]: {m}");
            let mut names = rule.names.clone();
            if !rule.name.is_empty() {
                names.push(rule.name.clone());
            }
            if names.is_empty() || names.iter().any(|n| n.is_empty()) {
                return Err(at("no syscall name".into()));
            }
            let act = action(&rule.action).map_err(at)?;
            let args = rule
                .args
                .iter()
                .map(|a| {
                    if a.index > 5 {
                        return Err(format!("argument index {} is past the sixth", a.index));
                    }
                    let op: LinuxSeccompOperator = named("operator", &a.op)?;
                    let mut arg = LinuxSeccompArgBuilder::default()
                        .index(a.index as usize)
                        .value(a.value)
                        .op(op);
                    if a.value_two != 0 {
                        arg = arg.value_two(a.value_two);
                    }
                    arg.build().map_err(|e| e.to_string())
                })
                .collect::<Result<Vec<_>, String>>()
                .map_err(at)?;
            if !rule.includes.holds_all(target).map_err(at)?
                || rule.excludes.holds_any(target).map_err(at)?
            {
                continue;
            }
            let mut syscall = LinuxSyscall::default();
            syscall.set_names(names);
            syscall.set_action(act);
            syscall.set_errno_ret(rule.errno_ret);
            syscall.set_args((!args.is_empty()).then_some(args));
            syscalls.push(syscall);
        }

        let mut seccomp = LinuxSeccomp::default();
        seccomp.set_default_action(default_action);
        seccomp.set_default_errno_ret(self.default_errno_ret);
        seccomp.set_architectures((!architectures.is_empty()).then_some(architectures));
        seccomp.set_flags((!flags.is_empty()).then_some(flags));
        seccomp.set_syscalls(Some(syscalls));
        Ok(seccomp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(caps: &[&str]) -> Target {
        Target {
            caps: caps.iter().map(|s| s.to_string()).collect(),
            arch: "amd64".into(),
            kernel: (6, 1),
        }
    }

    #[test]
    fn an_oci_profile_resolves_as_written() {
        let p = Profile::parse(
            br#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
                "flags":["SECCOMP_FILTER_FLAG_LOG"],
                "syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO","errnoRet":1,
                "args":[{"index":0,"value":1,"op":"SCMP_CMP_NE"}]}]}"#,
        )
        .unwrap();
        let s = p.resolve(&target(&[])).unwrap();
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert_eq!(
            s.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64][..])
        );
        let rule = &s.syscalls().as_ref().unwrap()[0];
        assert_eq!(rule.names(), &["sethostname"]);
        assert_eq!(rule.action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(rule.errno_ret(), Some(1));
        let arg = rule.args().as_ref().unwrap()[0];
        assert_eq!(
            (arg.index(), arg.value(), arg.op()),
            (0, 1, LinuxSeccompOperator::ScmpCmpNe)
        );
    }

    #[test]
    fn a_docker_profile_takes_the_native_arch_map_and_its_conditions() {
        let p = Profile::parse(
            br#"{"defaultAction":"SCMP_ACT_ERRNO",
                "archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86"]},
                           {"architecture":"SCMP_ARCH_AARCH64","subArchitectures":["SCMP_ARCH_ARM"]}],
                "syscalls":[{"name":"read","action":"SCMP_ACT_ALLOW","comment":"kept"},
                  {"names":["mount"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}},
                  {"names":["new_one"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"7.0"}},
                  {"names":["arm_only"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["arm64"]}},
                  {"names":["no_admin"],"action":"SCMP_ACT_ALLOW","excludes":{"caps":["CAP_SYS_ADMIN"]}}]}"#,
        )
        .unwrap();
        let names = |s: &LinuxSeccomp| -> Vec<String> {
            s.syscalls()
                .as_ref()
                .unwrap()
                .iter()
                .flat_map(|r| r.names().clone())
                .collect()
        };
        let plain = p.resolve(&target(&[])).unwrap();
        assert_eq!(names(&plain), ["read", "no_admin"]);
        assert_eq!(
            plain.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86][..])
        );
        let admin = p.resolve(&target(&["CAP_SYS_ADMIN"])).unwrap();
        assert_eq!(names(&admin), ["read", "mount"]);
    }

    #[test]
    fn bad_profiles_say_what_is_wrong() {
        let err = |json: &str| {
            Profile::parse(json.as_bytes())
                .and_then(|p| p.resolve(&target(&[])))
                .unwrap_err()
        };
        assert!(err("{").starts_with("invalid JSON"), "{}", err("{"));
        assert_eq!(err("{}"), "defaultAction is missing");
        assert_eq!(
            err(r#"{"defaultAction":"SCMP_ACT_NOPE"}"#),
            "unknown action \"SCMP_ACT_NOPE\""
        );
        assert_eq!(
            err(
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["x"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"op":"SCMP_CMP_ABOUT"}]}]}"#
            ),
            "syscalls[0]: unknown operator \"SCMP_CMP_ABOUT\""
        );
        assert_eq!(
            err(
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["x"],"action":"SCMP_ACT_ERRNO","args":[{"index":6,"op":"SCMP_CMP_EQ"}]}]}"#
            ),
            "syscalls[0]: argument index 6 is past the sixth"
        );
        assert_eq!(
            err(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"action":"SCMP_ACT_ERRNO"}]}"#),
            "syscalls[0]: no syscall name"
        );
        assert_eq!(
            err(r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_PDP11"]}"#),
            "unknown architecture \"SCMP_ARCH_PDP11\""
        );
        assert!(err(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#).contains("seccomp agent"));
    }

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_kernel("6.18.0-rc1+"), Some((6, 18)));
        assert_eq!(parse_kernel("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel("x"), None);
    }
}
