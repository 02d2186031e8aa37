//! The seccomp filter as the kernel takes it: a classic BPF program,
//! compiled once per distinct profile in the daemon and loaded by the
//! container's process with `seccomp(SECCOMP_SET_MODE_FILTER)`.
//!
//! libseccomp builds a filter rule by rule for every architecture the
//! profile covers (x86_64, x86 and x32 for the default profile) and then
//! generates the program: about 60 ms for `RuntimeDefault`, which was
//! spent on every container start and every exec. The daemon now compiles
//! a profile once ([`cached`]: keyed by the SHA-256 of the resolved
//! `linux.seccomp`, so `RuntimeDefault` once per set of capabilities and a
//! `Localhost` file once per content; bounded, least recently used out) and
//! writes the program into the bundle at CreateContainer ([`write`]); an
//! exec gets it in its request. The start path then only reads and loads
//! it.
//!
//! The bundle's file names the profile it was compiled from and carries a
//! digest of the program, so a torn, stale or foreign file is ignored
//! ([`read`] returns `None`) and the profile is compiled where it is used,
//! as before: that is also the path of a container created by an older
//! ketch. The file is therefore written without fsync.

use std::collections::VecDeque;
use std::io::{Read, Seek};
use std::path::Path;
use std::sync::{Arc, Mutex};

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompFilterFlag};
use sha2::{Digest, Sha256};

use super::filter::{self, FilterError};

/// The program's file in a bundle.
pub const FILE: &str = "seccomp.bpf";
/// How many distinct profiles the daemon keeps compiled.
pub const CACHE_SIZE: usize = 32;

const MAGIC: &[u8; 8] = b"KSECBPF1";
const HEADER: usize = MAGIC.len() + 32 + 32;
/// `struct sock_filter`: u16 code, u8 jt, u8 jf, u32 k.
const INSN: usize = 8;

/// A compiled filter: the instructions in the kernel's layout (native
/// endianness, as `seccomp_export_bpf(3)` writes them) and the flags of
/// `seccomp(2)` the profile asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub bytes: Vec<u8>,
    pub flags: u32,
}

impl Program {
    /// The instructions as `seccomp(2)` takes them.
    pub fn instructions(&self) -> Vec<libc::sock_filter> {
        self.bytes
            .chunks_exact(INSN)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect()
    }
}

/// The `seccomp(2)` flags of the profile's `flags`, as libseccomp sets
/// them on load. `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` only applies
/// with a notification listener, which ketch never asks for (libseccomp
/// drops it too without one).
pub fn flags(spec: &LinuxSeccomp) -> u32 {
    spec.flags()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|f| match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 0,
        } as u32)
        .fold(0, |a, b| a | b)
}

/// The cache key of a profile: the digest of its JSON (serde keeps the
/// field order of the types, so the same profile always gives the same
/// bytes).
pub fn key(spec: &LinuxSeccomp) -> Result<[u8; 32], FilterError> {
    let json =
        serde_json::to_vec(spec).map_err(|e| FilterError::Unsupported(format!("encode: {e}")))?;
    Ok(Sha256::digest(&json).into())
}

/// Compiles `spec` with libseccomp and exports the program it would load.
pub fn compile(spec: &LinuxSeccomp) -> Result<Program, FilterError> {
    let ctx = filter::compile(spec)?;
    let io = |e: std::io::Error| FilterError::Unsupported(format!("export the program: {e}"));
    let fd = nix::sys::memfd::memfd_create(c"seccomp-bpf", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(|e| io(e.into()))?;
    let mut file = std::fs::File::from(fd);
    ctx.export_bpf(&file).map_err(|source| FilterError::Lib {
        context: "export the program".into(),
        source,
    })?;
    file.rewind().map_err(io)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io)?;
    if bytes.is_empty() || bytes.len() % INSN != 0 {
        return Err(FilterError::Unsupported(format!(
            "libseccomp exported {} bytes, not a BPF program",
            bytes.len()
        )));
    }
    Ok(Program {
        bytes,
        flags: flags(spec),
    })
}

/// The compiled programs, most recently used last.
static CACHE: Mutex<VecDeque<([u8; 32], Arc<Program>)>> = Mutex::new(VecDeque::new());

/// `spec` compiled, from the cache when it was compiled before. The lock
/// is held while compiling, so concurrent starts of the same profile
/// compile it once.
pub fn cached(spec: &LinuxSeccomp) -> Result<Arc<Program>, FilterError> {
    let key = key(spec)?;
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let hit = cache
        .iter()
        .position(|(k, _)| *k == key)
        .and_then(|i| cache.remove(i));
    if let Some(entry) = hit {
        let program = entry.1.clone();
        cache.push_back(entry);
        return Ok(program);
    }
    let program = Arc::new(compile(spec)?);
    if cache.len() >= CACHE_SIZE {
        cache.pop_front();
    }
    cache.push_back((key, program.clone()));
    Ok(program)
}

/// The bundle file's bytes: magic, the profile's key, the program's
/// digest, the program.
pub fn encode(key: &[u8; 32], program: &Program) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + program.bytes.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(key);
    out.extend_from_slice(&Sha256::digest(&program.bytes));
    out.extend_from_slice(&program.bytes);
    out
}

/// The program in `bytes` if it was compiled from the profile whose key
/// is `key` and is whole; else `None`.
pub fn decode(bytes: &[u8], key: &[u8; 32], flags: u32) -> Option<Program> {
    let (header, program) = bytes.split_at_checked(HEADER)?;
    let (magic, rest) = header.split_at(MAGIC.len());
    let (their_key, digest) = rest.split_at(32);
    let whole = magic == MAGIC
        && their_key == key
        && !program.is_empty()
        && program.len() % INSN == 0
        && Sha256::digest(program).as_slice() == digest;
    whole.then(|| Program {
        bytes: program.to_vec(),
        flags,
    })
}

/// Writes the compiled `spec` into `bundle` (from the cache).
pub fn write(bundle: &Path, spec: &LinuxSeccomp) -> Result<(), FilterError> {
    let program = cached(spec)?;
    let data = encode(&key(spec)?, &program);
    crate::store::write_volatile(&bundle.join(FILE), &data, 0o600)
        .map_err(|e| FilterError::Unsupported(format!("write {FILE}: {e}")))
}

/// The program the bundle holds for `spec`, if it holds a good one.
pub fn read(bundle: &Path, spec: &LinuxSeccomp) -> Option<Program> {
    let bytes = std::fs::read(bundle.join(FILE)).ok()?;
    decode(&bytes, &key(spec).ok()?, flags(spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seccomp::{Choice, for_container};
    use oci_spec::runtime::Capability;

    fn default_profile() -> LinuxSeccomp {
        for_container(&Choice::RuntimeDefault, &[Capability::Chown].into())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn the_cached_program_equals_a_fresh_one() {
        let spec = default_profile();
        let first = cached(&spec).unwrap();
        let again = cached(&spec).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "compiled twice");
        assert_eq!(*first, compile(&spec).unwrap());
        assert_eq!(first.bytes.len() % INSN, 0);
        assert_eq!(first.instructions().len(), first.bytes.len() / INSN);
        // Another profile is another program.
        let admin = for_container(&Choice::RuntimeDefault, &[Capability::SysAdmin].into())
            .unwrap()
            .unwrap();
        assert_ne!(key(&admin).unwrap(), key(&spec).unwrap());
        assert_ne!(cached(&admin).unwrap().bytes, first.bytes);
    }

    #[test]
    fn flags_map_to_the_kernels() {
        let mut spec = LinuxSeccomp::default();
        assert_eq!(flags(&spec), 0);
        spec.set_flags(Some(vec![
            LinuxSeccompFilterFlag::SeccompFilterFlagLog,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv,
        ]));
        assert_eq!(flags(&spec), 3);
    }

    #[test]
    fn the_bundle_file_is_used_only_when_whole_and_for_its_profile() {
        let spec = default_profile();
        let program = Program {
            bytes: (0..64u8).collect(),
            flags: 0,
        };
        let key = key(&spec).unwrap();
        let data = encode(&key, &program);
        assert_eq!(decode(&data, &key, 0), Some(program.clone()));
        assert_eq!(decode(&data, &[0; 32], 0), None, "another profile");
        assert_eq!(decode(&data[..data.len() - 8], &key, 0), None, "torn");
        assert_eq!(decode(&data[..10], &key, 0), None, "torn header");
        assert_eq!(decode(&[], &key, 0), None, "empty");
        let mut flipped = data.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(decode(&flipped, &key, 0), None, "corrupt");

        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path(), &spec), None);
        write(dir.path(), &spec).unwrap();
        assert_eq!(
            read(dir.path(), &spec),
            Some((*cached(&spec).unwrap()).clone())
        );
    }
}
