//! Unpacks one layer tar into its own directory, ready to be an overlayfs
//! lowerdir.
//!
//! Hand-written on the `tar` crate's entry iterator: `tar::Entry::unpack_in`
//! neither converts whiteouts nor resolves paths inside the layer the way a
//! hostile archive demands. The rules (close to containerd's
//! `archive/tar.go` applying into an overlay upper dir):
//!
//! - **Paths**: a leading `/` is stripped (`/etc/x` is `etc/x`, as
//!   containerd and docker do); `.` components are dropped; an entry with a
//!   `..` component is refused and fails the layer: no image builder writes
//!   one, and refusing is clearer than guessing.
//! - **Containment**: the parent of every entry is opened with
//!   `openat2(RESOLVE_IN_ROOT)` relative to the layer root, so the kernel
//!   resolves every component, symlinks included, as if the layer root were
//!   `/`: a symlink `a -> /etc` makes `a/passwd` the layer's own
//!   `etc/passwd`, never the host's. The last component is created with
//!   `*at` calls on that parent fd and is never followed (`O_NOFOLLOW`,
//!   `AT_SYMLINK_NOFOLLOW`); whatever was there is removed first (a
//!   directory is kept when the entry is a directory too).
//! - **Hard links**: the target is resolved the same way, so it is always a
//!   file inside this layer; `linkat` without `AT_SYMLINK_FOLLOW`.
//! - **Whiteouts**: `.wh.NAME` becomes an overlay whiteout (a 0/0 character
//!   device named NAME); `.wh..wh..opq` sets `trusted.overlay.opaque=y` on
//!   its directory; other `.wh..wh.` names (AUFS metadata) are skipped.
//! - **Metadata**: owner, mode (setuid/setgid/sticky included, set after the
//!   owner since chown clears them), mtime, and `SCHILY.xattr.*` PAX xattrs
//!   except `trusted.overlay.*`, which only our whiteout conversion may set
//!   (an image could otherwise plant overlay redirects). Directory mtimes
//!   are set last, since creating their children changes them.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstatat, futimens, mknodat,
    utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};

use super::error::UnpackError;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// What unpacking wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub whiteouts: u64,
}

/// Unpacks the tar stream `reader` into the existing, empty directory `root`.
/// Returns once the archive's end marker is read (the caller drains and
/// hashes whatever follows).
pub fn unpack(reader: impl Read, root: &Path) -> Result<UnpackStats, UnpackError> {
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Entry {
        entry: root.display().to_string(),
        op: "open layer root",
        source: e.into(),
    })?;
    let mut archive = tar::Archive::new(reader);
    let mut stats = UnpackStats::default();
    let mut dir_times: Vec<(Vec<Vec<u8>>, u64)> = Vec::new();
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let comps = clean_path(&raw).map_err(|reason| UnpackError::Refused {
            entry: name.clone(),
            reason,
        })?;
        let ctx = EntryCtx {
            root: &root_fd,
            name: &name,
        };
        stats.entries += 1;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            continue;
        }
        let meta = Meta::of(&mut entry, &ctx)?;
        let Some((last, parents)) = comps.split_last() else {
            // The layer root itself ("./" or "/").
            if kind.is_dir() {
                ctx.apply_fd_meta(&root_fd, &meta)?;
                dir_times.push((Vec::new(), meta.mtime));
            }
            continue;
        };
        if last.starts_with(WHITEOUT_PREFIX) {
            let parent = ctx.ensure_dir(parents)?;
            if last.as_slice() == WHITEOUT_OPAQUE {
                set_xattr_fd(&parent, OPAQUE_XATTR, b"y")
                    .map_err(|e| ctx.err("set opaque xattr", e))?;
                stats.whiteouts += 1;
            } else if last.starts_with(WHITEOUT_META_PREFIX) {
                // AUFS bookkeeping (.wh..wh.plnk, .wh..wh.aufs): nothing for overlay.
            } else {
                let target = &last[WHITEOUT_PREFIX.len()..];
                if target.is_empty() || target == b"." || target == b".." {
                    return Err(ctx.refused("whiteout without a valid name"));
                }
                ctx.remove_existing(&parent, target)?;
                mknodat(&parent, target, SFlag::S_IFCHR, Mode::empty(), 0)
                    .map_err(|e| ctx.err("create whiteout", e.into()))?;
                fchownat(
                    &parent,
                    target,
                    Some(Uid::from_raw(meta.uid)),
                    Some(Gid::from_raw(meta.gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| ctx.err("chown whiteout", e.into()))?;
                stats.whiteouts += 1;
            }
            continue;
        }
        let parent = ctx.ensure_dir(parents)?;
        match kind {
            tar::EntryType::Directory => {
                let existing = fstatat(&parent, last.as_slice(), AtFlags::AT_SYMLINK_NOFOLLOW);
                let is_dir = matches!(existing, Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR);
                if !is_dir {
                    ctx.remove_existing(&parent, last)?;
                    nix::sys::stat::mkdirat(
                        &parent,
                        last.as_slice(),
                        Mode::from_bits_truncate(0o700),
                    )
                    .map_err(|e| ctx.err("mkdir", e.into()))?;
                }
                let dir = openat(
                    &parent,
                    last.as_slice(),
                    OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| ctx.err("open dir", e.into()))?;
                ctx.apply_fd_meta(&dir, &meta)?;
                let mut path = parents.to_vec();
                path.push(last.clone());
                dir_times.push((path, meta.mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                ctx.remove_existing(&parent, last)?;
                let fd = openat(
                    &parent,
                    last.as_slice(),
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| ctx.err("create file", e.into()))?;
                let mut file = std::fs::File::from(fd);
                copy_sparse(&mut entry, &mut file).map_err(|e| ctx.err("write file", e))?;
                let fd = OwnedFd::from(file);
                ctx.apply_fd_meta(&fd, &meta)?;
                futimens(&fd, &meta.timespec(), &meta.timespec())
                    .map_err(|e| ctx.err("set mtime", e.into()))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ctx.refused("symlink without a target"))?
                    .into_owned();
                ctx.remove_existing(&parent, last)?;
                symlinkat(target.as_slice(), &parent, last.as_slice())
                    .map_err(|e| ctx.err("create symlink", e.into()))?;
                ctx.apply_at_meta(&parent, last, &meta, true)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ctx.refused("hard link without a target"))?
                    .into_owned();
                let tcomps = clean_path(&target)
                    .map_err(|r| ctx.refused(&format!("hard link target: {r}")))?;
                let Some((tlast, tparents)) = tcomps.split_last() else {
                    return Err(ctx.refused("hard link to the layer root"));
                };
                if tcomps == comps {
                    return Err(ctx.refused("hard link to itself"));
                }
                // Resolved inside the layer like any path: the target can only
                // be a file of this layer.
                let tparent = ctx
                    .open_in_root(tparents)
                    .map_err(|e| ctx.err("resolve hard link target", e.into()))?;
                ctx.remove_existing(&parent, last)?;
                linkat(
                    &tparent,
                    tlast.as_slice(),
                    &parent,
                    last.as_slice(),
                    AtFlags::empty(),
                )
                .map_err(|e| ctx.err("create hard link", e.into()))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (sflag, dev) = match kind {
                    tar::EntryType::Char => (SFlag::S_IFCHR, meta.device()),
                    tar::EntryType::Block => (SFlag::S_IFBLK, meta.device()),
                    _ => (SFlag::S_IFIFO, 0),
                };
                ctx.remove_existing(&parent, last)?;
                mknodat(&parent, last.as_slice(), sflag, Mode::empty(), dev)
                    .map_err(|e| ctx.err("create device node", e.into()))?;
                ctx.apply_at_meta(&parent, last, &meta, false)?;
            }
            other => {
                return Err(ctx.refused(&format!("unsupported tar entry type {other:?}")));
            }
        }
    }
    // Deepest first, so setting a child's time never disturbs its parent's.
    dir_times.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    for (path, mtime) in dir_times {
        let refs: Vec<Vec<u8>> = path;
        let ctx = EntryCtx {
            root: &root_fd,
            name: "",
        };
        // A later entry may have replaced the directory: nothing to do then.
        if let Ok(fd) = ctx.open_in_root(&refs) {
            let t = TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0);
            let _ = futimens(&fd, &t, &t);
        }
    }
    Ok(stats)
}

/// The granularity of holes: a filesystem block.
const HOLE_BLOCK: usize = 4096;

/// Copies a file's content, leaving every whole block of zeros as a hole
/// (seek past it; `set_len` at the end covers trailing zeros). A sparse
/// file then costs no more disk than its data, and neither does a layer
/// of zeros that passes the unpack limits. Consecutive blocks of data go
/// out in one `write`. Returns the bytes copied.
pub(super) fn copy_sparse(from: &mut impl Read, to: &mut std::fs::File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom, Write};
    let mut buf = vec![0u8; 16 * HOLE_BLOCK];
    let mut len: u64 = 0;
    let mut pending_hole: i64 = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // Where the run of data blocks not yet written starts in `buf`.
        let mut run: Option<usize> = None;
        for (i, block) in buf[..n].chunks(HOLE_BLOCK).enumerate() {
            let at = i * HOLE_BLOCK;
            if block.len() == HOLE_BLOCK && block.iter().all(|&b| b == 0) {
                if let Some(start) = run.take() {
                    to.write_all(&buf[start..at])?;
                }
                pending_hole += HOLE_BLOCK as i64;
                continue;
            }
            if pending_hole > 0 {
                to.seek(SeekFrom::Current(pending_hole))?;
                pending_hole = 0;
            }
            run.get_or_insert(at);
        }
        if let Some(start) = run {
            to.write_all(&buf[start..n])?;
        }
        len += n as u64;
    }
    if pending_hole > 0 {
        to.set_len(len)?;
    }
    Ok(len)
}

/// Splits an archive path into components: leading `/` and `.` dropped,
/// `..` refused.
fn clean_path(raw: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if raw.contains(&0) {
        return Err("path contains a NUL byte".into());
    }
    let mut out = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("path has a '..' component".into()),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// The metadata of one entry, read before its data.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: u64,
    major: u32,
    minor: u32,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    fn of<R: Read>(entry: &mut tar::Entry<'_, R>, ctx: &EntryCtx<'_>) -> Result<Meta, UnpackError> {
        let bad = |field: &'static str, e: std::io::Error| ctx.err(field, e);
        let h = entry.header();
        let id = |v: u64, what: &'static str| {
            u32::try_from(v).map_err(|_| ctx.refused(&format!("{what} {v} out of range")))
        };
        let uid = id(h.uid().map_err(|e| bad("read uid", e))?, "uid")?;
        let gid = id(h.gid().map_err(|e| bad("read gid", e))?, "gid")?;
        let mode = h.mode().map_err(|e| bad("read mode", e))? & 0o7777;
        let mtime = h.mtime().map_err(|e| bad("read mtime", e))?;
        // Device numbers only mean something for device nodes (other
        // writers leave the fields blank).
        let (major, minor) =
            if matches!(h.entry_type(), tar::EntryType::Char | tar::EntryType::Block) {
                (
                    h.device_major()
                        .map_err(|e| bad("read device major", e))?
                        .unwrap_or(0),
                    h.device_minor()
                        .map_err(|e| bad("read device minor", e))?
                        .unwrap_or(0),
                )
            } else {
                (0, 0)
            };
        let mut xattrs = Vec::new();
        if let Some(exts) = entry
            .pax_extensions()
            .map_err(|e| bad("read PAX records", e))?
        {
            for ext in exts {
                let ext = ext.map_err(|e| bad("read PAX record", e))?;
                let Ok(key) = ext.key() else { continue };
                if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                    xattrs.push((name.to_owned(), ext.value_bytes().to_vec()));
                }
            }
        }
        Ok(Meta {
            uid,
            gid,
            mode,
            mtime,
            major,
            minor,
            xattrs,
        })
    }

    fn timespec(&self) -> TimeSpec {
        TimeSpec::new(i64::try_from(self.mtime).unwrap_or(i64::MAX), 0)
    }

    fn device(&self) -> libc::dev_t {
        libc::makedev(self.major, self.minor)
    }
}

/// The layer root and the entry being written, for errors.
struct EntryCtx<'a> {
    root: &'a OwnedFd,
    name: &'a str,
}

impl EntryCtx<'_> {
    fn err(&self, op: &'static str, source: std::io::Error) -> UnpackError {
        UnpackError::Entry {
            entry: self.name.to_owned(),
            op,
            source,
        }
    }

    fn refused(&self, reason: &str) -> UnpackError {
        UnpackError::Refused {
            entry: self.name.to_owned(),
            reason: reason.to_owned(),
        }
    }

    /// Opens the directory `comps` inside the layer, resolving every
    /// component (symlinks included) as if the layer root were `/`.
    fn open_in_root(&self, comps: &[Vec<u8>]) -> nix::Result<OwnedFd> {
        let path: Vec<u8> = if comps.is_empty() {
            b".".to_vec()
        } else {
            comps.join(&b'/')
        };
        let how = OpenHow::new()
            .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        openat2(self.root, path.as_slice(), how)
    }

    /// Opens the directory `comps`, creating missing components (mode 0755,
    /// owned by root) one at a time, each inside the layer.
    fn ensure_dir(&self, comps: &[Vec<u8>]) -> Result<OwnedFd, UnpackError> {
        match self.open_in_root(comps) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(self.err("open parent dir", e.into())),
        }
        let mut parent = self
            .open_in_root(&[])
            .map_err(|e| self.err("open layer root", e.into()))?;
        for i in 0..comps.len() {
            let prefix = &comps[..=i];
            parent = match self.open_in_root(prefix) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    match nix::sys::stat::mkdirat(
                        &parent,
                        comps[i].as_slice(),
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(self.err("create parent dir", e.into())),
                    }
                    // ENOENT again means a dangling symlink stands there.
                    let fd = self
                        .open_in_root(prefix)
                        .map_err(|e| self.err("open parent dir", e.into()))?;
                    fchmod(&fd, Mode::from_bits_truncate(0o755))
                        .map_err(|e| self.err("chmod parent dir", e.into()))?;
                    fd
                }
                Err(e) => return Err(self.err("open parent dir", e.into())),
            };
        }
        Ok(parent)
    }

    /// Removes whatever is at `name` in `parent` (never following it).
    fn remove_existing(&self, parent: &OwnedFd, name: &[u8]) -> Result<(), UnpackError> {
        match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(self.err("stat existing", e.into())),
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
                remove_tree_at(parent, name).map_err(|e| self.err("remove existing dir", e.into()))
            }
            Ok(_) => unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| self.err("remove existing", e.into())),
        }
    }

    /// Owner, mode and xattrs through an fd of the object itself.
    fn apply_fd_meta(&self, fd: &OwnedFd, meta: &Meta) -> Result<(), UnpackError> {
        fchown(
            fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(|e| self.err("chown", e.into()))?;
        fchmod(fd, Mode::from_bits_truncate(meta.mode)).map_err(|e| self.err("chmod", e.into()))?;
        for (name, value) in &meta.xattrs {
            if !xattr_allowed(name) {
                tracing::debug!(entry = self.name, xattr = %name, "skipping refused xattr");
                continue;
            }
            match set_xattr_fd(fd, name, value) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
                    tracing::debug!(entry = self.name, xattr = %name, "xattr not supported here");
                }
                Err(e) => return Err(self.err("set xattr", e)),
            }
        }
        Ok(())
    }

    /// Owner, mode (not for symlinks: Linux has no lchmod), mtime and
    /// xattrs of `name` in `parent`, without following it.
    fn apply_at_meta(
        &self,
        parent: &OwnedFd,
        name: &[u8],
        meta: &Meta,
        symlink: bool,
    ) -> Result<(), UnpackError> {
        fchownat(
            parent,
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.err("chown", e.into()))?;
        if !symlink {
            // We created this node a moment ago in a directory nobody else
            // writes to, so following is no risk (fchmodat cannot refuse to).
            fchmodat(
                parent,
                name,
                Mode::from_bits_truncate(meta.mode),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| self.err("chmod", e.into()))?;
        }
        for (xname, value) in &meta.xattrs {
            if !xattr_allowed(xname) {
                continue;
            }
            match set_xattr_at(parent, name, xname, value) {
                Ok(()) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOTSUP)
                        || (symlink && e.raw_os_error() == Some(libc::EPERM)) => {}
                Err(e) => return Err(self.err("set xattr", e)),
            }
        }
        utimensat(
            parent,
            name,
            &meta.timespec(),
            &meta.timespec(),
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| self.err("set mtime", e.into()))
    }
}

/// `trusted.overlay.*` would let an image steer overlayfs; only the opaque
/// marker from a whiteout file may set it.
fn xattr_allowed(name: &str) -> bool {
    !name.starts_with("trusted.overlay.")
}

/// Removes the directory `name` in `parent` and everything below it,
/// through fds and without following symlinks.
fn remove_tree_at(parent: &OwnedFd, name: &[u8]) -> nix::Result<()> {
    let dir = openat(
        parent,
        name,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut children: Vec<(Vec<u8>, bool)> = Vec::new();
    {
        let mut listing = nix::dir::Dir::from_fd(nix::unistd::dup(&dir)?)?;
        for item in listing.iter() {
            let item = item?;
            let child = item.file_name().to_bytes();
            if child == b"." || child == b".." {
                continue;
            }
            let is_dir = match item.file_type() {
                Some(t) => t == nix::dir::Type::Directory,
                None => {
                    let st = fstatat(&dir, child, AtFlags::AT_SYMLINK_NOFOLLOW)?;
                    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
                }
            };
            children.push((child.to_vec(), is_dir));
        }
    }
    for (child, is_dir) in children {
        if is_dir {
            remove_tree_at(&dir, &child)?;
        } else {
            unlinkat(&dir, child.as_slice(), UnlinkatFlags::NoRemoveDir)?;
        }
    }
    unlinkat(parent, name, UnlinkatFlags::RemoveDir)
}

/// `fsetxattr(2)`; nix has no xattr calls.
fn set_xattr_fd(fd: &impl AsFd, name: &str, value: &[u8]) -> std::io::Result<()> {
    let name = CString::new(name).map_err(std::io::Error::other)?;
    crate::sys::fsetxattr(fd.as_fd(), &name, value)
}

/// `lsetxattr(2)` on `name` in `parent`, through the parent's fd in /proc,
/// so the path is never resolved outside the layer and `name` is not
/// followed.
fn set_xattr_at(parent: &OwnedFd, name: &[u8], xname: &str, value: &[u8]) -> std::io::Result<()> {
    let mut path = format!("/proc/self/fd/{}/", parent.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    let path = CString::new(path).map_err(std::io::Error::other)?;
    let xname = CString::new(xname).map_err(std::io::Error::other)?;
    crate::sys::lsetxattr(&path, &xname, value)
}

/// Reads an xattr of `path` without following it (the tests of whiteouts).
#[cfg(test)]
pub fn get_xattr(path: &Path, name: &str) -> std::io::Result<Option<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let n = CString::new(name).map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; 4096];
    match crate::sys::lgetxattr(&p, &n, &mut buf) {
        Ok(len) => {
            buf.truncate(len);
            Ok(Some(buf))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
pub(crate) mod tests;
