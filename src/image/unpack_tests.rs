//! Unpacking crafted archives, hostile ones included. Needs root (owners,
//! device nodes, trusted.* xattrs).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;

/// Writes tar entries with names and link targets copied byte for byte,
/// which `tar::Builder` refuses to do for `..` and absolute paths.
#[derive(Default)]
pub(crate) struct TarWriter {
    out: Vec<u8>,
}

pub(crate) struct E<'a> {
    pub path: &'a str,
    pub kind: tar::EntryType,
    pub data: &'a [u8],
    pub link: &'a str,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub dev: (u32, u32),
    pub pax: Vec<(&'a str, &'a [u8])>,
}

impl<'a> E<'a> {
    pub fn new(path: &'a str, kind: tar::EntryType) -> Self {
        E {
            path,
            kind,
            data: b"",
            link: "",
            mode: if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            },
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            dev: (0, 0),
            pax: Vec::new(),
        }
    }
    pub fn file(path: &'a str, data: &'a [u8]) -> Self {
        E {
            data,
            ..E::new(path, tar::EntryType::Regular)
        }
    }
    pub fn dir(path: &'a str) -> Self {
        E::new(path, tar::EntryType::Directory)
    }
    pub fn symlink(path: &'a str, target: &'a str) -> Self {
        E {
            link: target,
            mode: 0o777,
            ..E::new(path, tar::EntryType::Symlink)
        }
    }
    pub fn hardlink(path: &'a str, target: &'a str) -> Self {
        E {
            link: target,
            ..E::new(path, tar::EntryType::Link)
        }
    }
}

impl TarWriter {
    pub fn add(&mut self, e: E<'_>) -> &mut Self {
        if !e.pax.is_empty() {
            let mut records = Vec::new();
            for (k, v) in &e.pax {
                let rest = k.len() + v.len() + 3;
                let mut len = rest + 1;
                while len != rest + len.to_string().len() {
                    len = rest + len.to_string().len();
                }
                records.extend_from_slice(format!("{len} {k}=").as_bytes());
                records.extend_from_slice(v);
                records.push(b'\n');
            }
            let mut h = tar::Header::new_ustar();
            raw_name(&mut h, b"././@PaxHeader");
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_size(records.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            self.out.extend_from_slice(h.as_bytes());
            pad(&mut self.out, &records);
        }
        let mut h = tar::Header::new_gnu();
        raw_name(&mut h, e.path.as_bytes());
        let link = e.link.as_bytes();
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        if matches!(e.kind, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(e.dev.0).unwrap();
            h.set_device_minor(e.dev.1).unwrap();
        }
        h.set_size(e.data.len() as u64);
        h.set_cksum();
        self.out.extend_from_slice(h.as_bytes());
        pad(&mut self.out, e.data);
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.out);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

fn raw_name(h: &mut tar::Header, name: &[u8]) {
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    field[..name.len()].copy_from_slice(name);
}

fn pad(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    let rem = data.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

/// A temp dir holding `layer/` (the unpack root) and `outside/` (a host
/// dir hostile archives aim at).
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("layer")).unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        Fixture { dir }
    }
    fn layer(&self) -> std::path::PathBuf {
        self.dir.path().join("layer")
    }
    fn outside(&self) -> std::path::PathBuf {
        self.dir.path().join("outside")
    }
    fn unpack(&self, tar: &[u8]) -> Result<UnpackStats, UnpackError> {
        unpack(tar, &self.layer())
    }
    fn outside_is_empty(&self) -> bool {
        std::fs::read_dir(self.outside()).unwrap().next().is_none()
    }
}

fn meta(p: &Path) -> std::fs::Metadata {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn regular_content_and_metadata() {
    if !crate::testing::root_or_skip("unpacking chowns entries and sets trusted.* xattrs") {
        return;
    }
    let f = Fixture::new();
    let tar = TarWriter::default()
        .add(E {
            mode: 0o700,
            ..E::dir("./")
        })
        .add(E {
            uid: 1000,
            gid: 1001,
            mode: 0o750,
            ..E::dir("usr/")
        })
        .add(E {
            mode: 0o4755,
            uid: 0,
            gid: 0,
            ..E::file("usr/suid", b"#!/bin/sh\n")
        })
        .add(E {
            uid: 1000,
            gid: 1000,
            mtime: 1_600_000_000,
            ..E::file("usr/owned", b"x")
        })
        .add(E::symlink("usr/link", "/usr/suid"))
        .add(E::hardlink("usr/hard", "usr/owned"))
        .add(E::new("dev/fifo", tar::EntryType::Fifo))
        .add(E {
            dev: (1, 3),
            mode: 0o666,
            ..E::new("dev/null", tar::EntryType::Char)
        })
        .add(E {
            dev: (7, 0),
            mode: 0o660,
            ..E::new("dev/loop0", tar::EntryType::Block)
        })
        .add(E {
            pax: vec![
                ("SCHILY.xattr.user.note", b"hi"),
                ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ],
            ..E::file("x", b"y")
        })
        .finish();
    let stats = f.unpack(&tar).unwrap();
    assert_eq!(stats.whiteouts, 0);
    let l = f.layer();
    assert_eq!(meta(&l).permissions().mode() & 0o7777, 0o700);
    let usr = meta(&l.join("usr"));
    assert_eq!(
        (usr.uid(), usr.gid(), usr.mode() & 0o7777),
        (1000, 1001, 0o750)
    );
    assert_eq!(
        usr.mtime(),
        1_700_000_000,
        "directory mtime is set after its children"
    );
    let suid = meta(&l.join("usr/suid"));
    assert_eq!(suid.mode() & 0o7777, 0o4755);
    assert_eq!(std::fs::read(l.join("usr/suid")).unwrap(), b"#!/bin/sh\n");
    let owned = meta(&l.join("usr/owned"));
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mtime()),
        (1000, 1000, 1_600_000_000)
    );
    assert_eq!(
        std::fs::read_link(l.join("usr/link")).unwrap(),
        Path::new("/usr/suid")
    );
    assert_eq!(meta(&l.join("usr/hard")).ino(), owned.ino());
    assert!(meta(&l.join("dev/fifo")).file_type().is_fifo());
    let null = meta(&l.join("dev/null"));
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    assert!(meta(&l.join("dev/loop0")).file_type().is_block_device());
    assert_eq!(
        meta(&l.join("dev")).mode() & 0o7777,
        0o755,
        "implicit parents are 0755"
    );
    assert_eq!(
        get_xattr(&l.join("x"), "user.note").unwrap().as_deref(),
        Some(&b"hi"[..])
    );
    assert_eq!(
        get_xattr(&l.join("x"), "trusted.overlay.redirect").unwrap(),
        None
    );
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    if !crate::testing::root_or_skip("unpacking chowns entries and sets trusted.* xattrs") {
        return;
    }
    let f = Fixture::new();
    let tar = TarWriter::default()
        .add(E::dir("data/"))
        .add(E {
            uid: 5,
            gid: 6,
            ..E::file("data/.wh.gone", b"")
        })
        .add(E::dir("opaque/"))
        .add(E::file("opaque/.wh..wh..opq", b""))
        .add(E::file("opaque/kept", b"k"))
        .add(E::file("deep/er/.wh.x", b""))
        .add(E::file("data/.wh..wh.plnk", b""))
        // A later entry for an existing dir keeps the dir and its xattr.
        .add(E::dir("opaque/"))
        .finish();
    let stats = f.unpack(&tar).unwrap();
    assert_eq!(stats.whiteouts, 3);
    let l = f.layer();
    let w = meta(&l.join("data/gone"));
    assert!(w.file_type().is_char_device());
    assert_eq!(w.rdev(), 0);
    assert_eq!((w.uid(), w.gid()), (5, 6));
    assert!(!l.join("data/.wh.gone").exists());
    assert!(std::fs::symlink_metadata(l.join("data/.wh..wh.plnk")).is_err());
    assert_eq!(
        get_xattr(&l.join("opaque"), OPAQUE_XATTR)
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert!(!l.join("opaque/.wh..wh..opq").exists());
    assert_eq!(std::fs::read(l.join("opaque/kept")).unwrap(), b"k");
    assert!(meta(&l.join("deep/er/x")).file_type().is_char_device());
    assert_eq!(get_xattr(&l.join("data"), OPAQUE_XATTR).unwrap(), None);
}

#[test]
fn absolute_paths_are_made_relative() {
    if !crate::testing::root_or_skip("unpacking chowns entries and sets trusted.* xattrs") {
        return;
    }
    let f = Fixture::new();
    let tar = TarWriter::default()
        .add(E::file("/etc/abs", b"a"))
        .add(E::file("//./etc/./twice", b"b"))
        .finish();
    f.unpack(&tar).unwrap();
    assert_eq!(std::fs::read(f.layer().join("etc/abs")).unwrap(), b"a");
    assert_eq!(std::fs::read(f.layer().join("etc/twice")).unwrap(), b"b");
}

#[test]
fn dotdot_is_refused() {
    for path in ["../outside/escape", "a/../../outside/escape", "a/.."] {
        let f = Fixture::new();
        let tar = TarWriter::default().add(E::file(path, b"x")).finish();
        let err = f.unpack(&tar).unwrap_err();
        assert!(matches!(err, UnpackError::Refused { .. }), "{path}: {err}");
        assert!(err.to_string().contains(path), "{err}");
        assert!(f.outside_is_empty());
    }
}

#[test]
fn symlinked_parents_resolve_inside_the_layer() {
    if !crate::testing::root_or_skip("unpacking chowns entries and sets trusted.* xattrs") {
        return;
    }
    let f = Fixture::new();
    let tar = TarWriter::default()
        .add(E::dir("real/"))
        .add(E::symlink("abs", "/real"))
        .add(E::file("abs/f1", b"x"))
        .add(E::symlink("rel", "../../../../../../.."))
        .add(E::file("rel/f2", b"y"))
        .finish();
    f.unpack(&tar).unwrap();
    let l = f.layer();
    assert_eq!(std::fs::read(l.join("real/f1")).unwrap(), b"x");
    assert_eq!(std::fs::read(l.join("f2")).unwrap(), b"y");
    assert!(f.outside_is_empty());

    // A symlink to a host dir is a path inside the layer, absent here: the
    // entry fails and nothing lands on the host.
    for target in [f.outside().to_str().unwrap().to_owned(), "/etc".to_owned()] {
        let f2 = Fixture::new();
        let target = if target == "/etc" {
            target
        } else {
            f2.outside().to_str().unwrap().to_owned()
        };
        let tar = TarWriter::default()
            .add(E::symlink("out", &target))
            .add(E::file("out/pwned", b"x"))
            .finish();
        assert!(f2.unpack(&tar).is_err(), "{target}");
        assert!(f2.outside_is_empty());
        assert!(!Path::new("/etc/pwned").exists());
    }
}

#[test]
fn symlink_last_component_is_replaced_not_followed() {
    if !crate::testing::root_or_skip("unpacking chowns entries and sets trusted.* xattrs") {
        return;
    }
    let f = Fixture::new();
    let target = f.outside().join("victim");
    std::fs::write(&target, b"original").unwrap();
    let t = target.to_str().unwrap().to_owned();
    let tar = TarWriter::default()
        .add(E::symlink("link", &t))
        .add(E::file("link", b"replaced"))
        .finish();
    f.unpack(&tar).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"original");
    assert_eq!(std::fs::read(f.layer().join("link")).unwrap(), b"replaced");
}

#[test]
fn hard_links_stay_inside() {
    // A target outside the layer names a path inside it: here absent.
    let f = Fixture::new();
    let victim = f.outside().join("victim");
    std::fs::write(&victim, b"secret").unwrap();
    let v = victim.to_str().unwrap().to_owned();
    let tar = TarWriter::default().add(E::hardlink("stolen", &v)).finish();
    assert!(f.unpack(&tar).is_err());
    assert_eq!(meta(&victim).nlink(), 1);
    assert!(!f.layer().join("stolen").exists());

    // Through a symlinked parent: still resolved inside.
    let f = Fixture::new();
    let victim = f.outside().join("victim");
    std::fs::write(&victim, b"secret").unwrap();
    let o = f.outside().to_str().unwrap().to_owned();
    let tar = TarWriter::default()
        .add(E::symlink("out", &o))
        .add(E::hardlink("stolen", "out/victim"))
        .finish();
    assert!(f.unpack(&tar).is_err());
    assert_eq!(meta(&victim).nlink(), 1);

    // And `..` in the target is refused.
    let f = Fixture::new();
    let tar = TarWriter::default()
        .add(E::hardlink("stolen", "../outside/victim"))
        .finish();
    let err = f.unpack(&tar).unwrap_err();
    assert!(matches!(err, UnpackError::Refused { .. }), "{err}");
}

#[test]
fn replacing_entries() {
    if !crate::testing::root_or_skip("unpacking chowns entries and sets trusted.* xattrs") {
        return;
    }
    let f = Fixture::new();
    let tar = TarWriter::default()
        .add(E::dir("a/"))
        .add(E::file("a/child", b"c"))
        .add(E::file("a", b"now a file"))
        .add(E::file("b", b"file first"))
        .add(E::dir("b/"))
        .finish();
    f.unpack(&tar).unwrap();
    let l = f.layer();
    assert_eq!(std::fs::read(l.join("a")).unwrap(), b"now a file");
    assert!(meta(&l.join("b")).is_dir());
}

#[test]
fn garbage_is_an_error() {
    let f = Fixture::new();
    let mut junk = vec![0x42u8; 512];
    junk.extend_from_slice(&[0u8; 1024]);
    assert!(matches!(f.unpack(&junk), Err(UnpackError::Read(_))));
    // A truncated archive: a header promising more data than there is.
    let mut tar = TarWriter::default()
        .add(E::file("f", &[1u8; 2000]))
        .finish();
    tar.truncate(1024);
    assert!(f.unpack(&tar).is_err());
}
