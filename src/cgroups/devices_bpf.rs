//! Device access rules on cgroup v2: an eBPF program of type
//! `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the container's cgroup.
//!
//! cgroup v2 has no `devices.allow`/`devices.deny` files; the kernel asks
//! the programs attached to a task's cgroup (and its ancestors) on every
//! open and mknod of a device node (`devcgroup_check_permission`, see
//! Documentation/admin-guide/cgroup-v2.rst, "Device controller"). The
//! program sees `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major;
//! u32 minor; }`, where `access_type` is the device type in its low 16
//! bits (`BPF_DEVCG_DEV_BLOCK` 1, `BPF_DEVCG_DEV_CHAR` 2) and the access
//! asked for in its high 16 (`BPF_DEVCG_ACC_MKNOD` 1, `READ` 2, `WRITE` 4),
//! and returns 1 to allow, 0 to deny.
//!
//! # The rules as a program
//! The rules keep their v1 meaning (`tests::allows` states it plainly; the
//! programs are tested against it): a new cgroup allows everything; each rule,
//! in order, allows or denies what it matches; the last matching rule
//! wins. So the program tests the rules from last to first and returns at
//! the first match, and allows when none matches. An allow rule matches
//! when the access asked for is within its access (an `r` rule does not
//! allow `rw`); a deny rule when the two share a bit (an `w` deny refuses
//! `rw`), as the v1 controller's exception lists do. Type `a` matches
//! every device and every access.
//!
//! # Why hand-written
//! runc (`libcontainer/cgroups/devices/devicefilter.go`) and crun
//! (`ebpf.c`) emit the same kind of program instruction by instruction.
//! The Rust eBPF crates (aya, libbpf-rs) load ELF objects compiled by a
//! BPF toolchain: a fixed object cannot hold per-container rules, and
//! they would bring that toolchain into the build. The program is a
//! straight line of a few instructions per rule; the encoding is that of
//! `struct bpf_insn` (linux/bpf.h), and `tests` run every program through
//! a small interpreter against [`allows`].
//!
//! # Attaching
//! With `BPF_F_ALLOW_MULTI`, so that programs of parent cgroups (systemd's
//! on a pod slice) still run: access needs every program's consent. A
//! cgroup's rules are replaced by attaching the new program first and then
//! detaching the ones attached before (for a moment both apply: stricter,
//! never looser). The attachment holds the program; no descriptor or pin
//! is kept, and removing the cgroup detaches it.

use std::os::fd::AsFd;
use std::path::Path;

use super::error::{CgroupError, Result};
use super::resources::{DeviceKind, DeviceRule};
use crate::sys;

const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;
const ACC_ALL: i32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// One `struct bpf_insn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insn {
    code: u8,
    dst: u8,
    src: u8,
    off: i16,
    imm: i32,
}

// Opcodes (linux/bpf_common.h, linux/bpf.h): class | operation | source.
const LDX_MEM_W: u8 = 0x01 | 0x60; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x04 | 0x50; // BPF_ALU | BPF_AND | BPF_K
const ALU32_RSH_K: u8 = 0x04 | 0x70; // BPF_ALU | BPF_RSH | BPF_K
const ALU32_MOV_K: u8 = 0x04 | 0xb0; // BPF_ALU | BPF_MOV | BPF_K
const ALU32_MOV_X: u8 = 0x04 | 0xb0 | 0x08; // BPF_ALU | BPF_MOV | BPF_X
// 32-bit compares (BPF_JMP32, Linux 5.1): major and minor are u32, and a
// 64-bit compare would sign-extend an immediate above 2^31.
const JMP32_JEQ_K: u8 = 0x06 | 0x10; // BPF_JMP32 | BPF_JEQ | BPF_K
const JMP32_JNE_K: u8 = 0x06 | 0x50; // BPF_JMP32 | BPF_JNE | BPF_K
const EXIT: u8 = 0x05 | 0x90; // BPF_JMP | BPF_EXIT

// Registers: R1 holds the context on entry; R0 the result.
const R0: u8 = 0;
const R1: u8 = 1;
const TYPE: u8 = 2;
const ACCESS: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;

impl Insn {
    fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        Self {
            code,
            dst,
            src,
            off,
            imm,
        }
    }

    /// The kernel's 8-byte encoding: `dst_reg` in the low nibble of the
    /// second byte (on little-endian hosts, where the bitfield starts).
    pub(crate) fn encode(&self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[0] = self.code;
        out[1] = if cfg!(target_endian = "little") {
            (self.src << 4) | (self.dst & 0x0f)
        } else {
            (self.dst << 4) | (self.src & 0x0f)
        };
        out[2..4].copy_from_slice(&self.off.to_ne_bytes());
        out[4..8].copy_from_slice(&self.imm.to_ne_bytes());
        out
    }
}

fn access_bits(access: &str) -> i32 {
    access.chars().fold(0, |bits, c| {
        bits | match c {
            'm' => ACC_MKNOD,
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            _ => 0,
        }
    })
}

/// The instructions of one rule's test, jumping past its own end when it
/// does not match and returning its verdict when it does.
fn rule_block(rule: &DeviceRule) -> Vec<Insn> {
    // The tests that can fail, each a jump to the block's end; the verdict
    // (two instructions) follows them.
    let mut tests: Vec<Vec<Insn>> = Vec::new();
    if let Some(dev_type) = match rule.kind {
        DeviceKind::All => None,
        DeviceKind::Char => Some(DEV_CHAR),
        DeviceKind::Block => Some(DEV_BLOCK),
    } {
        tests.push(vec![Insn::new(JMP32_JNE_K, TYPE, 0, 0, dev_type)]);
        let bits = access_bits(&rule.access);
        if rule.allow && bits != ACC_ALL {
            // Asked-for bits outside the rule's: not this rule.
            tests.push(vec![
                Insn::new(ALU32_MOV_X, R1, ACCESS, 0, 0),
                Insn::new(ALU32_AND_K, R1, 0, 0, !bits & ACC_ALL),
                Insn::new(JMP32_JNE_K, R1, 0, 0, 0),
            ]);
        } else if !rule.allow && bits != ACC_ALL {
            // No asked-for bit in the rule's: not this rule.
            tests.push(vec![
                Insn::new(ALU32_MOV_X, R1, ACCESS, 0, 0),
                Insn::new(ALU32_AND_K, R1, 0, 0, bits),
                Insn::new(JMP32_JEQ_K, R1, 0, 0, 0),
            ]);
        }
        for (reg, number) in [(MAJOR, rule.major), (MINOR, rule.minor)] {
            if let Some(n) = number {
                // Validated non-negative; the kernel's numbers are u32.
                let n = u32::try_from(n).unwrap_or(u32::MAX);
                tests.push(vec![Insn::new(JMP32_JNE_K, reg, 0, 0, n as i32)]);
            }
        }
    }
    let verdict = [
        Insn::new(ALU32_MOV_K, R0, 0, 0, i32::from(rule.allow)),
        Insn::new(EXIT, 0, 0, 0, 0),
    ];
    let mut block: Vec<Insn> = tests.into_iter().flatten().collect();
    let len = block.len() + verdict.len();
    for (i, insn) in block.iter_mut().enumerate() {
        if insn.code == JMP32_JNE_K || insn.code == JMP32_JEQ_K {
            // A jump's offset counts from the instruction after it.
            insn.off = i16::try_from(len - i - 1).unwrap_or(i16::MAX);
        }
    }
    block.extend(verdict);
    block
}

/// The whole program for `rules` (see the module doc).
pub(crate) fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut insns = vec![
        Insn::new(LDX_MEM_W, TYPE, R1, 0, 0),
        Insn::new(ALU32_AND_K, TYPE, 0, 0, 0xffff),
        Insn::new(LDX_MEM_W, ACCESS, R1, 0, 0),
        Insn::new(ALU32_RSH_K, ACCESS, 0, 0, 16),
        Insn::new(LDX_MEM_W, MAJOR, R1, 4, 0),
        Insn::new(LDX_MEM_W, MINOR, R1, 8, 0),
    ];
    for rule in rules.iter().rev() {
        insns.extend(rule_block(rule));
        if rule.kind == DeviceKind::All {
            // Matches everything: the rules before it can never decide.
            return insns;
        }
    }
    insns.push(Insn::new(ALU32_MOV_K, R0, 0, 0, 1));
    insns.push(Insn::new(EXIT, 0, 0, 0, 0));
    insns
}

/// Loads the program for `rules` and makes it the cgroup's only device
/// program of ours at `dir`, replacing any attached before.
pub(crate) fn attach(dir: &Path, rules: &[DeviceRule]) -> Result<()> {
    let io = |op: &'static str, e: std::io::Error| CgroupError::io(op, dir, e);
    let code: Vec<[u8; 8]> = program(rules).iter().map(Insn::encode).collect();
    let cgroup = std::fs::File::open(dir).map_err(|e| io("open cgroup dir", e))?;
    let before = sys::bpf_attached_device_programs(cgroup.as_fd())
        .map_err(|e| io("query the device programs of", e))?;
    let prog = sys::bpf_load_device_program(&code)
        .map_err(|e| io("load the eBPF device program for", e))?;
    sys::bpf_attach_device_program(cgroup.as_fd(), prog.as_fd())
        .map_err(|e| io("attach the eBPF device program to", e))?;
    for id in before {
        // A program that went away meanwhile is detached already.
        let Ok(old) = sys::bpf_program_by_id(id) else {
            continue;
        };
        sys::bpf_detach_device_program(cgroup.as_fd(), old.as_fd())
            .map_err(|e| io("detach the previous eBPF device program from", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `rule` decides a request for `access` (bits) to a device of
    /// `dev_type` with these numbers.
    fn matches(rule: &DeviceRule, dev_type: i32, major: u32, minor: u32, access: i32) -> bool {
        let wanted_type = match rule.kind {
            DeviceKind::All => return true,
            DeviceKind::Char => DEV_CHAR,
            DeviceKind::Block => DEV_BLOCK,
        };
        let number_matches = |n: Option<i64>, actual: u32| n.is_none_or(|n| n == i64::from(actual));
        let bits = access_bits(&rule.access);
        let access_matches = if rule.allow {
            access & !bits == 0
        } else {
            access & bits != 0
        };
        dev_type == wanted_type
            && access_matches
            && number_matches(rule.major, major)
            && number_matches(rule.minor, minor)
    }

    /// The rules' verdict on one request: the last matching rule's, allowed
    /// when none matches.
    fn allows(rules: &[DeviceRule], dev_type: i32, major: u32, minor: u32, access: i32) -> bool {
        rules
            .iter()
            .rev()
            .find(|r| matches(r, dev_type, major, minor, access))
            .is_none_or(|r| r.allow)
    }

    /// Runs a program over one context with the instructions it uses,
    /// with the kernel's semantics for them (32-bit ALU ops zero the upper
    /// half; jumps count from the next instruction).
    fn run(prog: &[Insn], access_type: u32, major: u32, minor: u32) -> u32 {
        let ctx = [access_type, major, minor];
        let mut regs = [0u64; 11];
        let mut pc = 0usize;
        for _ in 0..10_000 {
            let i = prog[pc];
            let (d, s) = (usize::from(i.dst), usize::from(i.src));
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(s, usize::from(R1), "loads only from the context");
                    regs[d] = u64::from(ctx[usize::try_from(i.off).expect("offset") / 4]);
                }
                ALU32_AND_K => regs[d] = u64::from((regs[d] as u32) & (i.imm as u32)),
                ALU32_RSH_K => regs[d] = u64::from((regs[d] as u32) >> i.imm),
                ALU32_MOV_K => regs[d] = u64::from(i.imm as u32),
                ALU32_MOV_X => regs[d] = u64::from(regs[s] as u32),
                JMP32_JEQ_K | JMP32_JNE_K => {
                    let equal = regs[d] as u32 == i.imm as u32;
                    if equal == (i.code == JMP32_JEQ_K) {
                        pc += usize::try_from(i.off).expect("forward jump");
                    }
                }
                EXIT => return regs[0] as u32,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
        panic!("program did not exit");
    }

    fn rule(
        allow: bool,
        kind: DeviceKind,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> DeviceRule {
        DeviceRule {
            allow,
            kind,
            major,
            minor,
            access: access.into(),
        }
    }

    fn deny_all() -> DeviceRule {
        rule(false, DeviceKind::All, None, None, "rwm")
    }

    /// The rule lists containers get and some edge cases.
    fn rule_sets() -> Vec<Vec<DeviceRule>> {
        let mut default = vec![deny_all()];
        default.extend(DeviceRule::default_allowed());
        let mut with_read_only_disk = default.clone();
        with_read_only_disk.push(rule(true, DeviceKind::Block, Some(8), Some(0), "r"));
        let mut denied_write = default.clone();
        denied_write.push(rule(true, DeviceKind::Char, Some(10), None, "rwm"));
        denied_write.push(rule(false, DeviceKind::Char, Some(10), Some(229), "w"));
        vec![
            Vec::new(),
            vec![rule(true, DeviceKind::All, None, None, "rwm")],
            vec![deny_all()],
            default,
            with_read_only_disk,
            denied_write,
            vec![rule(false, DeviceKind::Char, Some(1), Some(5), "r")],
            vec![
                deny_all(),
                rule(true, DeviceKind::Char, Some(4_000_000_000), Some(3), "rw"),
            ],
        ]
    }

    #[test]
    fn programs_decide_as_the_rules_do() {
        let majors = [0u32, 1, 4, 5, 8, 10, 136, 4_000_000_000];
        let minors = [0u32, 1, 3, 5, 7, 200, 229];
        for rules in rule_sets() {
            let prog = program(&rules);
            for dev_type in [DEV_BLOCK, DEV_CHAR] {
                for access in 1..=ACC_ALL {
                    for &major in &majors {
                        for &minor in &minors {
                            let access_type = ((access as u32) << 16) | dev_type as u32;
                            let got = run(&prog, access_type, major, minor) == 1;
                            let want = allows(&rules, dev_type, major, minor, access);
                            assert_eq!(
                                got, want,
                                "type {dev_type} {major}:{minor} access {access} under {rules:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn reference_semantics() {
        let mut rules = vec![deny_all()];
        rules.extend(DeviceRule::default_allowed());
        let read = ACC_READ;
        let rw = ACC_READ | ACC_WRITE;
        assert!(allows(&rules, DEV_CHAR, 1, 3, rw), "/dev/null");
        assert!(!allows(&rules, DEV_CHAR, 1, 11, read), "/dev/kmsg");
        assert!(allows(&rules, DEV_BLOCK, 8, 0, ACC_MKNOD), "mknod of any");
        assert!(!allows(&rules, DEV_BLOCK, 8, 0, read));
        rules.push(rule(true, DeviceKind::Block, Some(8), Some(0), "r"));
        assert!(allows(&rules, DEV_BLOCK, 8, 0, read));
        assert!(!allows(&rules, DEV_BLOCK, 8, 0, rw), "r does not allow rw");
        rules.push(rule(false, DeviceKind::Char, Some(1), Some(3), "w"));
        assert!(!allows(&rules, DEV_CHAR, 1, 3, rw), "a w deny refuses rw");
        assert!(allows(&rules, DEV_CHAR, 1, 3, read));
        assert!(allows(&[], DEV_CHAR, 1, 11, rw), "no rules: all allowed");
    }

    #[test]
    fn an_all_rule_ends_the_program() {
        let rules = vec![
            rule(true, DeviceKind::Char, Some(1), Some(3), "rwm"),
            deny_all(),
        ];
        let prog = program(&rules);
        // Prologue (6) and the deny-all's verdict (2): the allow before it
        // can never decide, so it is not emitted.
        assert_eq!(prog.len(), 8);
        assert_eq!(prog.last().map(|i| i.code), Some(EXIT));
    }

    #[test]
    fn encoding_is_the_kernels() {
        // r2 = *(u32 *)(r1 + 4): code 0x61, dst 2, src 1, off 4.
        let insn = Insn::new(LDX_MEM_W, 2, 1, 4, 0);
        let bytes = insn.encode();
        assert_eq!(bytes[0], 0x61);
        if cfg!(target_endian = "little") {
            assert_eq!(bytes[1], 0x12);
        }
        assert_eq!(i16::from_ne_bytes([bytes[2], bytes[3]]), 4);
    }
}
