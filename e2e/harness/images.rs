//! OCI images for the end-to-end tests, built in memory and pushed to a test [`Registry`].
//!
//! Layers are tars written entry by entry from [`Entry`] values. Names and link targets are
//! written into the headers byte for byte (GNU long-name records past 100 bytes) rather than
//! through `tar::Header::set_path`, which refuses `..` and absolute paths: tests need exactly
//! those hostile archives to check that the runtime's unpacker refuses or contains them.
//!
//! The base of most images is the static busybox of Debian's `busybox-static` with a symlink
//! per applet, a small /etc/passwd and /etc/group, and a 1777 /tmp. Everything is
//! deterministic (fixed mtimes, gzip header without time), so digests are stable from run to
//! run; the busybox layer and the standard images are built once per test process.
//!
//! [`TestImages::push_all`] pushes the standard set every runtime test can rely on.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use serde_json::{Value, json};

use super::registry::{Registry, RegistryClient, sha256_digest};

/// The busybox binary of Debian's `busybox-static`.
pub const BUSYBOX_BIN: &str = "/bin/busybox";
/// The mtime of every entry unless a test sets another: 2024-01-01T00:00:00Z.
pub const DEFAULT_MTIME: u64 = 1_704_067_200;
/// The `created` time written into image configs.
const CREATED: &str = "2024-01-01T00:00:00Z";

/// The PATH every standard image sets.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// /etc/passwd of the busybox layer: root, www (1000:1000) and nobody (65534:65534).
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
    www:x:1000:1000:www:/home/www:/bin/sh\n\
    nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
/// /etc/group of the busybox layer; `www` is also a member of `users` (100), a supplementary
/// group a runtime should add for it.
pub const GROUP: &str = "root:x:0:\nusers:x:100:www\nwww:x:1000:\nnogroup:x:65534:\n";

/// The page /www/index.html of the `web` image.
pub const WEB_INDEX_HTML: &str =
    "<html><body><h1>ketch e2e</h1><p>served by busybox httpd</p></body></html>\n";
/// The port `web` listens on inside its pod.
pub const WEB_PORT: u16 = 80;

/// Files (with contents) the `layered` image shows after its whiteouts are applied.
pub const LAYERED_PRESENT: &[(&str, &str)] = &[
    ("/data/b", "b from layer 1\n"),
    ("/data/c", "c from layer 3\n"),
    ("/opaque/y", "y from layer 2\n"),
];
/// Paths the `layered` image must not show: deleted by a whiteout, hidden by an opaque dir,
/// and the whiteout markers themselves.
pub const LAYERED_ABSENT: &[&str] = &[
    "/data/a",
    "/opaque/x",
    "/data/.wh.a",
    "/opaque/.wh..wh..opq",
];

/// The file in each `multiarch` variant that holds its architecture ("amd64\n", "arm64\n").
pub const MULTIARCH_ARCH_FILE: &str = "/etc/arch";
/// The file in the compression variants that names their compression ("gzip\n", ...).
pub const COMPRESSION_FILE: &str = "/etc/compression";

/// `configured`: the user (a name from the image's /etc/passwd: uid 1000, gid 1000, also in
/// group 100).
pub const CONFIGURED_USER: &str = "www";
pub const CONFIGURED_UID: u32 = 1000;
pub const CONFIGURED_GID: u32 = 1000;
/// `configured`: the working dir, absent from its layers (the runtime must create it).
pub const CONFIGURED_WORKDIR: &str = "/work";
/// `configured`: what its default command prints.
pub const CONFIGURED_OUTPUT: &str = "hello from /work\n";
/// `configured`: its StopSignal.
pub const CONFIGURED_STOP_SIGNAL: &str = "SIGUSR1";

pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MEDIA_DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const MEDIA_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The image's architecture name for the machine the tests run on.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

// ---------------------------------------------------------------------------------------------
// Tar entries and layers
// ---------------------------------------------------------------------------------------------

/// What a tar entry is.
#[derive(Clone, Debug)]
pub enum EntryKind {
    File(Vec<u8>),
    Dir,
    /// A symlink to the given target, written as is (absolute, relative, `..`: anything).
    Symlink(String),
    /// A hardlink to the given archive path.
    Hardlink(String),
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
    /// A header written exactly as given (its checksum is not recomputed) followed by `data`
    /// padded to 512 bytes: for archives no well-behaved writer makes.
    Raw {
        header: Box<tar::Header>,
        data: Vec<u8>,
    },
}

/// One tar entry. `path` is written byte for byte: `../x`, `/abs`, `link/through` all work.
#[derive(Clone, Debug)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// PAX extended records (e.g. `SCHILY.xattr.user.foo`) written before the entry.
    pub pax: Vec<(String, Vec<u8>)>,
}

impl Entry {
    fn new(path: impl Into<String>, kind: EntryKind, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            pax: Vec::new(),
        }
    }

    /// A regular file, mode 0644, owned by root.
    pub fn file(path: impl Into<String>, contents: impl Into<Vec<u8>>) -> Entry {
        Entry::new(path, EntryKind::File(contents.into()), 0o644)
    }

    /// A directory, mode 0755, owned by root.
    pub fn dir(path: impl Into<String>) -> Entry {
        Entry::new(path, EntryKind::Dir, 0o755)
    }

    /// A symlink `path` → `target`.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Entry {
        Entry::new(path, EntryKind::Symlink(target.into()), 0o777)
    }

    /// A hardlink `path` → the earlier archive entry `target`.
    pub fn hardlink(path: impl Into<String>, target: impl Into<String>) -> Entry {
        Entry::new(path, EntryKind::Hardlink(target.into()), 0o644)
    }

    /// The whiteout that deletes `dir/name` of lower layers: an empty file `dir/.wh.name`.
    pub fn whiteout(path: &str) -> Entry {
        let (dir, name) = split_parent(path);
        Entry::file(format!("{dir}.wh.{name}"), Vec::new())
    }

    /// The marker that makes `dir` opaque (hides everything lower layers put in it).
    pub fn opaque(dir: &str) -> Entry {
        Entry::file(
            format!("{}/.wh..wh..opq", dir.trim_end_matches('/')),
            Vec::new(),
        )
    }

    /// A character device node, mode 0666.
    pub fn char_device(path: impl Into<String>, major: u32, minor: u32) -> Entry {
        Entry::new(path, EntryKind::CharDevice { major, minor }, 0o666)
    }

    /// A block device node, mode 0660.
    pub fn block_device(path: impl Into<String>, major: u32, minor: u32) -> Entry {
        Entry::new(path, EntryKind::BlockDevice { major, minor }, 0o660)
    }

    /// A named pipe, mode 0644.
    pub fn fifo(path: impl Into<String>) -> Entry {
        Entry::new(path, EntryKind::Fifo, 0o644)
    }

    /// An entry whose header is written exactly as given; see [`EntryKind::Raw`].
    pub fn raw(header: tar::Header, data: Vec<u8>) -> Entry {
        let path = String::from_utf8_lossy(&header.path_bytes()).into_owned();
        Entry::new(
            path,
            EntryKind::Raw {
                header: Box::new(header),
                data,
            },
            0,
        )
    }

    pub fn mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(mut self, mtime: u64) -> Entry {
        self.mtime = mtime;
        self
    }

    /// Adds a PAX record, e.g. `("SCHILY.xattr.user.note", b"hi")`.
    pub fn pax(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Entry {
        self.pax.push((key.into(), value.into()));
        self
    }
}

/// "a/b/c" → ("a/b/", "c"); "c" → ("", "c").
fn split_parent(path: &str) -> (&str, &str) {
    let path = path.trim_end_matches('/');
    match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    }
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The layer media type for this compression in `format`. Docker schema2 has no zstd
    /// type; the OCI one is used there, as image builders do.
    pub fn media_type(self, format: Format) -> &'static str {
        match (format, self) {
            (Format::Oci, Compression::None) => MEDIA_OCI_LAYER_TAR,
            (Format::Oci, Compression::Gzip) => MEDIA_OCI_LAYER_GZIP,
            (_, Compression::Zstd) => MEDIA_OCI_LAYER_ZSTD,
            (Format::Docker, Compression::None) => MEDIA_DOCKER_LAYER_TAR,
            (Format::Docker, Compression::Gzip) => MEDIA_DOCKER_LAYER_GZIP,
        }
    }

    /// Compresses `data`.
    pub fn compress(self, data: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                // GzBuilder writes mtime 0 and no name: the same input gives the same blob.
                let mut enc =
                    flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::fast());
                enc.write_all(data).expect("gzip into memory");
                enc.finish().expect("finish gzip")
            }
            Compression::Zstd => zstd::encode_all(data, 3).expect("zstd into memory"),
        }
    }
}

/// Manifest flavour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OCI image manifest / index.
    Oci,
    /// Docker image manifest v2 schema 2 / manifest list.
    Docker,
}

/// A layer to build: entries in archive order and a compression.
#[derive(Clone, Debug)]
pub struct Layer {
    pub entries: Vec<Entry>,
    pub compression: Compression,
}

impl Layer {
    /// A gzip layer of `entries`.
    pub fn new(entries: Vec<Entry>) -> Layer {
        Layer {
            entries,
            compression: Compression::Gzip,
        }
    }

    pub fn compression(mut self, compression: Compression) -> Layer {
        self.compression = compression;
        self
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> Vec<u8> {
        write_tar(&self.entries)
    }

    /// Tar, compress and digest.
    pub fn build(&self) -> BuiltLayer {
        BuiltLayer::from_tar(&self.tar(), self.compression)
    }
}

/// A layer ready to push.
#[derive(Clone, Debug)]
pub struct BuiltLayer {
    pub compression: Compression,
    /// The compressed blob.
    pub blob: Arc<Vec<u8>>,
    /// Digest of `blob`.
    pub digest: String,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
}

impl BuiltLayer {
    pub fn from_tar(tar: &[u8], compression: Compression) -> BuiltLayer {
        let blob = compression.compress(tar);
        BuiltLayer {
            compression,
            digest: sha256_digest(&blob),
            diff_id: sha256_digest(tar),
            blob: Arc::new(blob),
        }
    }

    pub fn size(&self) -> usize {
        self.blob.len()
    }
}

/// Writes `entries` as a tar with two zero blocks at the end.
pub fn write_tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        write_entry(&mut out, entry);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn write_entry(out: &mut Vec<u8>, entry: &Entry) {
    if let EntryKind::Raw { header, data } = &entry.kind {
        out.extend_from_slice(header.as_bytes());
        push_padded(out, data);
        return;
    }
    if !entry.pax.is_empty() {
        let mut records = Vec::new();
        for (key, value) in &entry.pax {
            records.extend_from_slice(&pax_record(key, value));
        }
        let mut h = tar::Header::new_ustar();
        set_name(&mut h, b"././@PaxHeader");
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(records.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(entry.mtime);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        push_padded(out, &records);
    }
    let path = entry.path.as_bytes();
    if path.len() > 100 {
        push_long_name(out, tar::EntryType::GNULongName, path);
    }
    let link = match &entry.kind {
        EntryKind::Symlink(t) | EntryKind::Hardlink(t) => Some(t.as_bytes()),
        _ => None,
    };
    if let Some(link) = link
        && link.len() > 100
    {
        push_long_name(out, tar::EntryType::GNULongLink, link);
    }

    let mut h = tar::Header::new_gnu();
    set_name(&mut h, &path[..path.len().min(100)]);
    if let Some(link) = link {
        let field = &mut h.as_old_mut().linkname;
        let n = link.len().min(100);
        field[..n].copy_from_slice(&link[..n]);
    }
    h.set_mode(entry.mode);
    h.set_uid(entry.uid);
    h.set_gid(entry.gid);
    h.set_mtime(entry.mtime);
    let (ty, data): (tar::EntryType, &[u8]) = match &entry.kind {
        EntryKind::File(data) => (tar::EntryType::Regular, data),
        EntryKind::Dir => (tar::EntryType::Directory, &[]),
        EntryKind::Symlink(_) => (tar::EntryType::Symlink, &[]),
        EntryKind::Hardlink(_) => (tar::EntryType::Link, &[]),
        EntryKind::CharDevice { major, minor } => {
            set_device(&mut h, *major, *minor);
            (tar::EntryType::Char, &[])
        }
        EntryKind::BlockDevice { major, minor } => {
            set_device(&mut h, *major, *minor);
            (tar::EntryType::Block, &[])
        }
        EntryKind::Fifo => (tar::EntryType::Fifo, &[]),
        EntryKind::Raw { .. } => unreachable!("raw entries were written above"),
    };
    h.set_entry_type(ty);
    h.set_size(data.len() as u64);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    push_padded(out, data);
}

fn set_name(h: &mut tar::Header, name: &[u8]) {
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    field[..name.len()].copy_from_slice(name);
}

fn set_device(h: &mut tar::Header, major: u32, minor: u32) {
    h.set_device_major(major)
        .expect("GNU headers have device fields");
    h.set_device_minor(minor)
        .expect("GNU headers have device fields");
}

/// A GNU `././@LongLink` record carrying a name or link target longer than 100 bytes.
fn push_long_name(out: &mut Vec<u8>, ty: tar::EntryType, name: &[u8]) {
    let mut h = tar::Header::new_gnu();
    set_name(&mut h, b"././@LongLink");
    h.set_entry_type(ty);
    h.set_mode(0o644);
    h.set_size(name.len() as u64 + 1);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    let mut data = name.to_vec();
    data.push(0);
    push_padded(out, &data);
}

/// One PAX record: "<len> <key>=<value>\n", where len counts itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut rec = format!("{len} {key}=").into_bytes();
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

fn push_padded(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    let rem = data.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

// ---------------------------------------------------------------------------------------------
// The busybox layer
// ---------------------------------------------------------------------------------------------

/// The entries of the busybox base layer: the standard directories, /bin/busybox, a symlink
/// to it for every applet of `busybox --list-full`, /etc/passwd and /etc/group.
pub fn busybox_entries() -> Vec<Entry> {
    let binary = std::fs::read(BUSYBOX_BIN)
        .unwrap_or_else(|e| panic!("read {BUSYBOX_BIN} (install Debian's busybox-static): {e}"));
    let list = std::process::Command::new(BUSYBOX_BIN)
        .arg("--list-full")
        .output()
        .unwrap_or_else(|e| panic!("run {BUSYBOX_BIN} --list-full: {e}"));
    assert!(list.status.success(), "{BUSYBOX_BIN} --list-full failed");
    let applets = String::from_utf8(list.stdout).expect("applet list is UTF-8");

    let mut entries = vec![
        Entry::dir("bin"),
        Entry::dir("dev"),
        Entry::dir("etc"),
        Entry::dir("home"),
        Entry::dir("home/www").owner(1000, 1000),
        Entry::dir("proc"),
        Entry::dir("root").mode(0o700),
        Entry::dir("sbin"),
        Entry::dir("sys"),
        Entry::dir("tmp").mode(0o1777),
        Entry::dir("usr"),
        Entry::dir("usr/bin"),
        Entry::dir("usr/sbin"),
        Entry::dir("var"),
        Entry::file("bin/busybox", binary).mode(0o755),
        Entry::file("etc/passwd", PASSWD),
        Entry::file("etc/group", GROUP),
    ];
    let mut links: Vec<&str> = applets
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "bin/busybox")
        .collect();
    links.sort_unstable();
    links.dedup();
    entries.extend(links.into_iter().map(|l| Entry::symlink(l, "/bin/busybox")));
    entries
}

/// The busybox base layer with `compression`, built once per process.
pub fn busybox_layer(compression: Compression) -> Arc<BuiltLayer> {
    static TAR: OnceLock<Vec<u8>> = OnceLock::new();
    static LAYERS: [OnceLock<Arc<BuiltLayer>>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let slot = match compression {
        Compression::None => 0,
        Compression::Gzip => 1,
        Compression::Zstd => 2,
    };
    LAYERS[slot]
        .get_or_init(|| {
            let tar = TAR.get_or_init(|| write_tar(&busybox_entries()));
            Arc::new(BuiltLayer::from_tar(tar, compression))
        })
        .clone()
}

// ---------------------------------------------------------------------------------------------
// Images and indexes
// ---------------------------------------------------------------------------------------------

type JsonEdit = Arc<dyn Fn(&mut Value) + Send + Sync>;

/// Builds an image: layers, config, manifest. Deliberately broken images are made with
/// [`ImageBuilder::edit_config`], [`ImageBuilder::raw_config`],
/// [`ImageBuilder::edit_manifest`] and [`ImageBuilder::extra_blob`].
#[derive(Clone)]
pub struct ImageBuilder {
    layers: Vec<Arc<BuiltLayer>>,
    format: Format,
    os: String,
    architecture: String,
    variant: Option<String>,
    /// The config's "config" object (User, Env, Cmd, ...).
    runtime: serde_json::Map<String, Value>,
    annotations: BTreeMap<String, String>,
    config_edits: Vec<JsonEdit>,
    raw_config: Option<Arc<Vec<u8>>>,
    manifest_edits: Vec<JsonEdit>,
    extra_blobs: Vec<Arc<Vec<u8>>>,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageBuilder {
    /// No layers, linux on the host's architecture, OCI media types, empty config.
    pub fn new() -> ImageBuilder {
        ImageBuilder {
            layers: Vec::new(),
            format: Format::Oci,
            os: "linux".into(),
            architecture: host_arch().into(),
            variant: None,
            runtime: serde_json::Map::new(),
            annotations: BTreeMap::new(),
            config_edits: Vec::new(),
            raw_config: None,
            manifest_edits: Vec::new(),
            extra_blobs: Vec::new(),
        }
    }

    /// The busybox layer (gzip), PATH set, Cmd ["sh"].
    pub fn busybox() -> ImageBuilder {
        Self::busybox_with(Compression::Gzip)
    }

    /// The busybox layer with `compression`, PATH set, Cmd ["sh"].
    pub fn busybox_with(compression: Compression) -> ImageBuilder {
        ImageBuilder::new()
            .built_layer(busybox_layer(compression))
            .env(&[DEFAULT_PATH])
            .cmd(&["sh"])
    }

    /// Appends a layer (built now).
    pub fn layer(self, layer: Layer) -> ImageBuilder {
        self.built_layer(Arc::new(layer.build()))
    }

    /// Appends an already built layer.
    pub fn built_layer(mut self, layer: Arc<BuiltLayer>) -> ImageBuilder {
        self.layers.push(layer);
        self
    }

    pub fn format(mut self, format: Format) -> ImageBuilder {
        self.format = format;
        self
    }

    pub fn platform(mut self, os: &str, architecture: &str, variant: Option<&str>) -> ImageBuilder {
        self.os = os.into();
        self.architecture = architecture.into();
        self.variant = variant.map(Into::into);
        self
    }

    fn set(mut self, key: &str, value: Value) -> ImageBuilder {
        self.runtime.insert(key.into(), value);
        self
    }

    /// Config.User: "name", "uid", "uid:gid", "name:group".
    pub fn user(self, user: &str) -> ImageBuilder {
        self.set("User", json!(user))
    }

    pub fn working_dir(self, dir: &str) -> ImageBuilder {
        self.set("WorkingDir", json!(dir))
    }

    /// Config.Env ("KEY=value" items), replacing what was set.
    pub fn env(self, env: &[&str]) -> ImageBuilder {
        self.set("Env", json!(env))
    }

    pub fn entrypoint(self, entrypoint: &[&str]) -> ImageBuilder {
        self.set("Entrypoint", json!(entrypoint))
    }

    pub fn cmd(self, cmd: &[&str]) -> ImageBuilder {
        self.set("Cmd", json!(cmd))
    }

    pub fn stop_signal(self, signal: &str) -> ImageBuilder {
        self.set("StopSignal", json!(signal))
    }

    /// Adds "PORT/PROTO" to Config.ExposedPorts.
    pub fn exposed_port(mut self, port: &str) -> ImageBuilder {
        let ports = self
            .runtime
            .entry("ExposedPorts")
            .or_insert_with(|| json!({}));
        ports[port] = json!({});
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> ImageBuilder {
        let labels = self.runtime.entry("Labels").or_insert_with(|| json!({}));
        labels[key] = json!(value);
        self
    }

    /// A manifest annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> ImageBuilder {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// Edits the config JSON after it is assembled and before it is serialized and digested
    /// (the manifest then names the edited config): e.g. a wrong `rootfs.diff_ids` entry.
    pub fn edit_config(
        mut self,
        edit: impl Fn(&mut Value) + Send + Sync + 'static,
    ) -> ImageBuilder {
        self.config_edits.push(Arc::new(edit));
        self
    }

    /// Pushes `bytes` as the config blob instead of the generated JSON (not even JSON, or
    /// many MiB of it).
    pub fn raw_config(mut self, bytes: Vec<u8>) -> ImageBuilder {
        self.raw_config = Some(Arc::new(bytes));
        self
    }

    /// Edits the manifest JSON just before it is serialized: wrong sizes or media types,
    /// descriptors naming other blobs, huge annotations.
    pub fn edit_manifest(
        mut self,
        edit: impl Fn(&mut Value) + Send + Sync + 'static,
    ) -> ImageBuilder {
        self.manifest_edits.push(Arc::new(edit));
        self
    }

    /// Another blob to push with the image (for manifests edited to point at it).
    pub fn extra_blob(mut self, bytes: Vec<u8>) -> ImageBuilder {
        self.extra_blobs.push(Arc::new(bytes));
        self
    }

    /// The image config JSON as it would be serialized (before `raw_config`).
    pub fn config_json(&self) -> Value {
        let mut config = json!({
            "created": CREATED,
            "architecture": self.architecture,
            "os": self.os,
            "config": Value::Object(self.runtime.clone()),
            "rootfs": {
                "type": "layers",
                "diff_ids": self.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": self.layers.iter().map(|_| json!({
                "created": CREATED,
                "created_by": "ketch e2e image builder",
            })).collect::<Vec<_>>(),
        });
        if let Some(variant) = &self.variant {
            config["variant"] = json!(variant);
        }
        for edit in &self.config_edits {
            edit(&mut config);
        }
        config
    }

    /// Serializes config and manifest.
    pub fn build(&self) -> Image {
        let config = match &self.raw_config {
            Some(raw) => raw.clone(),
            None => {
                Arc::new(serde_json::to_vec(&self.config_json()).expect("serialize image config"))
            }
        };
        let config_digest = sha256_digest(&config);
        let (media_type, config_media_type) = match self.format {
            Format::Oci => (MEDIA_OCI_MANIFEST, MEDIA_OCI_CONFIG),
            Format::Docker => (MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_CONFIG),
        };
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": config_media_type,
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": self.layers.iter().map(|l| json!({
                "mediaType": l.compression.media_type(self.format),
                "digest": l.digest,
                "size": l.size(),
            })).collect::<Vec<_>>(),
        });
        if !self.annotations.is_empty() {
            manifest["annotations"] = json!(self.annotations);
        }
        for edit in &self.manifest_edits {
            edit(&mut manifest);
        }
        let manifest = serde_json::to_vec(&manifest).expect("serialize manifest");
        Image {
            digest: sha256_digest(&manifest),
            manifest,
            media_type,
            config,
            config_digest,
            layers: self.layers.clone(),
            extra_blobs: self.extra_blobs.clone(),
            platform: Platform {
                os: self.os.clone(),
                architecture: self.architecture.clone(),
                variant: self.variant.clone(),
            },
        }
    }
}

/// An OS/architecture pair, as in an index's `platform`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// A built image: every blob and the manifest bytes.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: Vec<u8>,
    /// The manifest's media type (its Content-Type on push).
    pub media_type: &'static str,
    /// Digest of `manifest`.
    pub digest: String,
    pub config: Arc<Vec<u8>>,
    /// Digest of `config`: the image ID.
    pub config_digest: String,
    pub layers: Vec<Arc<BuiltLayer>>,
    pub extra_blobs: Vec<Arc<Vec<u8>>>,
    pub platform: Platform,
}

impl Image {
    /// Pushes blobs, then the manifest under `tag` (or by digest when `tag` is None).
    /// Returns the manifest digest.
    pub async fn push(&self, client: &RegistryClient, repo: &str, tag: Option<&str>) -> String {
        self.push_blobs(client, repo).await;
        let reference = tag.unwrap_or(&self.digest);
        client
            .push_manifest(repo, reference, self.media_type, &self.manifest)
            .await
    }

    /// Pushes config, layers and extra blobs (skipping those present).
    pub async fn push_blobs(&self, client: &RegistryClient, repo: &str) {
        client
            .push_blob_as(repo, &self.config_digest, &self.config)
            .await;
        for layer in &self.layers {
            client.push_blob_as(repo, &layer.digest, &layer.blob).await;
        }
        for blob in &self.extra_blobs {
            client.push_blob(repo, blob).await;
        }
    }
}

/// Builds an image index (multi-platform) over built images.
#[derive(Clone)]
pub struct IndexBuilder {
    format: Format,
    images: Vec<Image>,
    edits: Vec<JsonEdit>,
}

impl IndexBuilder {
    pub fn new(format: Format) -> IndexBuilder {
        IndexBuilder {
            format,
            images: Vec::new(),
            edits: Vec::new(),
        }
    }

    /// Adds an image; its platform goes into the index entry.
    pub fn image(mut self, image: Image) -> IndexBuilder {
        self.images.push(image);
        self
    }

    /// Edits the index JSON before it is serialized.
    pub fn edit(mut self, edit: impl Fn(&mut Value) + Send + Sync + 'static) -> IndexBuilder {
        self.edits.push(Arc::new(edit));
        self
    }

    pub fn build(&self) -> Index {
        let media_type = match self.format {
            Format::Oci => MEDIA_OCI_INDEX,
            Format::Docker => MEDIA_DOCKER_LIST,
        };
        let mut index = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": self.images.iter().map(|img| {
                let mut platform = json!({
                    "architecture": img.platform.architecture,
                    "os": img.platform.os,
                });
                if let Some(v) = &img.platform.variant {
                    platform["variant"] = json!(v);
                }
                json!({
                    "mediaType": img.media_type,
                    "digest": img.digest,
                    "size": img.manifest.len(),
                    "platform": platform,
                })
            }).collect::<Vec<_>>(),
        });
        for edit in &self.edits {
            edit(&mut index);
        }
        let manifest = serde_json::to_vec(&index).expect("serialize index");
        Index {
            digest: sha256_digest(&manifest),
            manifest,
            media_type,
            images: self.images.clone(),
        }
    }
}

/// A built index and its images.
#[derive(Clone, Debug)]
pub struct Index {
    pub manifest: Vec<u8>,
    pub media_type: &'static str,
    pub digest: String,
    pub images: Vec<Image>,
}

impl Index {
    /// Pushes every image by digest, then the index under `tag`. Returns the index digest.
    pub async fn push(&self, client: &RegistryClient, repo: &str, tag: &str) -> String {
        for image in &self.images {
            image.push(client, repo, None).await;
        }
        client
            .push_manifest(repo, tag, self.media_type, &self.manifest)
            .await
    }
}

// ---------------------------------------------------------------------------------------------
// The standard test images
// ---------------------------------------------------------------------------------------------

/// One platform's image inside a pushed index.
#[derive(Clone, Debug)]
pub struct PlatformImage {
    pub platform: Platform,
    pub manifest_digest: String,
    pub config_digest: String,
}

/// A pushed standard image.
#[derive(Clone, Debug)]
pub struct TestImage {
    /// "127.0.0.1:PORT/repo:tag".
    pub reference: String,
    pub repository: String,
    pub tag: String,
    /// The digest of what the tag names (the index for `multiarch`).
    pub manifest_digest: String,
    pub media_type: &'static str,
    /// The image ID: the config digest (for `multiarch`, that of the host's platform).
    pub config_digest: String,
    /// Layer digests (compressed blobs) in order (for `multiarch`, the host's platform).
    pub layer_digests: Vec<String>,
    /// For an index: each platform's image. Empty otherwise.
    pub platforms: Vec<PlatformImage>,
}

impl TestImage {
    /// "127.0.0.1:PORT/repo@sha256:...".
    pub fn by_digest(&self) -> String {
        let base = self
            .reference
            .rsplit_once(':')
            .map(|(b, _)| b)
            .expect("reference has a tag");
        format!("{base}@{}", self.manifest_digest)
    }

    /// The image ID a runtime should report (the config digest).
    pub fn id(&self) -> &str {
        &self.config_digest
    }
}

/// `image` as an OCI image layout at `layout`, named `name` the way
/// containerd's export names it (`io.containerd.image.name`).
pub fn write_layout(image: &Image, name: &str, layout: &Path) {
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let write = |digest: &str, bytes: &[u8]| {
        std::fs::write(blobs.join(&digest["sha256:".len()..]), bytes).unwrap();
    };
    write(&image.digest, &image.manifest);
    write(&image.config_digest, &image.config);
    for layer in &image.layers {
        write(&layer.digest, &layer.blob);
    }
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": image.media_type,
            "digest": image.digest,
            "size": image.manifest.len(),
            "annotations": {"io.containerd.image.name": name},
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
}

/// A tar of the directory's contents.
pub fn tar_dir(dir: &Path, archive: &Path) {
    let mut builder = tar::Builder::new(std::fs::File::create(archive).unwrap());
    builder.append_dir_all(".", dir).unwrap();
    builder.finish().unwrap();
}

/// The web image of [`TestImages::web`], built (for writing it out as a layout).
pub fn web_image() -> &'static Image {
    &standard().web
}

/// The standard images, pushed to one registry.
#[derive(Clone, Debug)]
pub struct TestImages {
    /// busybox:latest — the busybox layer (gzip), Cmd ["sh"].
    pub busybox: TestImage,
    /// web:latest — busybox + /www/index.html ([`WEB_INDEX_HTML`]), Cmd httpd -f -p 80.
    pub web: TestImage,
    /// layered:latest — busybox + three layers with a whiteout and an opaque dir; see
    /// [`LAYERED_PRESENT`] and [`LAYERED_ABSENT`].
    pub layered: TestImage,
    /// multiarch:latest — an OCI index of linux/amd64 and linux/arm64/v8 images, each with
    /// [`MULTIARCH_ARCH_FILE`] naming its architecture (the binaries are the host's).
    pub multiarch: TestImage,
    /// busybox:uncompressed — tar layers, plus [`COMPRESSION_FILE`] = "none\n".
    pub uncompressed: TestImage,
    /// busybox:gzip — gzip layers, plus [`COMPRESSION_FILE`] = "gzip\n".
    pub gzip: TestImage,
    /// busybox:zstd — zstd layers, plus [`COMPRESSION_FILE`] = "zstd\n".
    pub zstd: TestImage,
    /// configured:latest — User [`CONFIGURED_USER`], WorkingDir [`CONFIGURED_WORKDIR`],
    /// Env PATH and GREETING=hello, Entrypoint ["/bin/sh","-c"],
    /// Cmd ["echo $GREETING from $(pwd)"], StopSignal SIGUSR1, a label.
    pub configured: TestImage,
    /// busybox:docker — busybox as a Docker schema2 manifest (same config, so the same image
    /// ID as `busybox`).
    pub docker: TestImage,
}

/// The built (not yet pushed) standard images, made once per process.
struct Standard {
    busybox: Image,
    web: Image,
    layered: Image,
    multiarch: Index,
    uncompressed: Image,
    gzip: Image,
    zstd: Image,
    configured: Image,
    docker: Image,
}

fn standard() -> &'static Standard {
    static STANDARD: OnceLock<Standard> = OnceLock::new();
    STANDARD.get_or_init(|| {
        let compressed = |c: Compression, name: &str| {
            ImageBuilder::busybox_with(c)
                .layer(
                    Layer::new(vec![Entry::file(
                        COMPRESSION_FILE.trim_start_matches('/'),
                        format!("{name}\n"),
                    )])
                    .compression(c),
                )
                .build()
        };
        let arch_variant = |arch: &str, variant: Option<&str>| {
            ImageBuilder::busybox()
                .platform("linux", arch, variant)
                .layer(Layer::new(vec![Entry::file(
                    MULTIARCH_ARCH_FILE.trim_start_matches('/'),
                    format!("{arch}\n"),
                )]))
                .build()
        };
        Standard {
            busybox: ImageBuilder::busybox().build(),
            web: ImageBuilder::busybox()
                .layer(Layer::new(vec![
                    Entry::dir("www"),
                    Entry::file("www/index.html", WEB_INDEX_HTML),
                ]))
                .cmd(&["httpd", "-f", "-p", "80", "-h", "/www"])
                .exposed_port("80/tcp")
                .build(),
            layered: ImageBuilder::busybox()
                .layer(Layer::new(vec![
                    Entry::dir("data"),
                    Entry::file("data/a", "a from layer 1\n"),
                    Entry::file("data/b", "b from layer 1\n"),
                    Entry::dir("opaque"),
                    Entry::file("opaque/x", "x from layer 1\n"),
                ]))
                .layer(Layer::new(vec![
                    Entry::dir("data"),
                    Entry::whiteout("data/a"),
                    Entry::dir("opaque"),
                    Entry::opaque("opaque"),
                    Entry::file("opaque/y", "y from layer 2\n"),
                ]))
                .layer(Layer::new(vec![
                    Entry::dir("data"),
                    Entry::file("data/c", "c from layer 3\n"),
                ]))
                .build(),
            multiarch: IndexBuilder::new(Format::Oci)
                .image(arch_variant("amd64", None))
                .image(arch_variant("arm64", Some("v8")))
                .build(),
            uncompressed: compressed(Compression::None, "none"),
            gzip: compressed(Compression::Gzip, "gzip"),
            zstd: compressed(Compression::Zstd, "zstd"),
            configured: ImageBuilder::busybox()
                .user(CONFIGURED_USER)
                .working_dir(CONFIGURED_WORKDIR)
                .env(&[DEFAULT_PATH, "GREETING=hello"])
                .entrypoint(&["/bin/sh", "-c"])
                .cmd(&["echo $GREETING from $(pwd)"])
                .stop_signal(CONFIGURED_STOP_SIGNAL)
                .label("io.ketch.e2e", "configured")
                .build(),
            docker: ImageBuilder::busybox().format(Format::Docker).build(),
        }
    })
}

impl TestImages {
    /// Builds (once per process) and pushes every standard image to `registry`.
    pub async fn push_all(registry: &Registry) -> TestImages {
        let client = registry.client();
        let std = standard();
        let host = registry.host();
        let single = |repo: &'static str, tag: &'static str, image: &'static Image| {
            let client = &client;
            async move {
                let digest = image.push(client, repo, Some(tag)).await;
                TestImage {
                    reference: format!("{host}/{repo}:{tag}"),
                    repository: repo.into(),
                    tag: tag.into(),
                    manifest_digest: digest,
                    media_type: image.media_type,
                    config_digest: image.config_digest.clone(),
                    layer_digests: image.layers.iter().map(|l| l.digest.clone()).collect(),
                    platforms: Vec::new(),
                }
            }
        };
        let multiarch = async {
            let index = &std.multiarch;
            let digest = index.push(&client, "multiarch", "latest").await;
            let host_image = index
                .images
                .iter()
                .find(|i| i.platform.architecture == host_arch())
                .unwrap_or(&index.images[0]);
            TestImage {
                reference: format!("{host}/multiarch:latest"),
                repository: "multiarch".into(),
                tag: "latest".into(),
                manifest_digest: digest,
                media_type: index.media_type,
                config_digest: host_image.config_digest.clone(),
                layer_digests: host_image.layers.iter().map(|l| l.digest.clone()).collect(),
                platforms: index
                    .images
                    .iter()
                    .map(|i| PlatformImage {
                        platform: i.platform.clone(),
                        manifest_digest: i.digest.clone(),
                        config_digest: i.config_digest.clone(),
                    })
                    .collect(),
            }
        };
        // Images of one repository go one after another (they share blobs); repositories
        // go in parallel.
        let busyboxes = async {
            (
                single("busybox", "latest", &std.busybox).await,
                single("busybox", "uncompressed", &std.uncompressed).await,
                single("busybox", "gzip", &std.gzip).await,
                single("busybox", "zstd", &std.zstd).await,
                single("busybox", "docker", &std.docker).await,
            )
        };
        let ((busybox, uncompressed, gzip, zstd, docker), web, layered, multiarch, configured) = tokio::join!(
            busyboxes,
            single("web", "latest", &std.web),
            single("layered", "latest", &std.layered),
            multiarch,
            single("configured", "latest", &std.configured),
        );
        TestImages {
            busybox,
            web,
            layered,
            multiarch,
            uncompressed,
            gzip,
            zstd,
            configured,
            docker,
        }
    }

    /// Every standard image.
    pub fn all(&self) -> [&TestImage; 9] {
        [
            &self.busybox,
            &self.web,
            &self.layered,
            &self.multiarch,
            &self.uncompressed,
            &self.gzip,
            &self.zstd,
            &self.configured,
            &self.docker,
        ]
    }
}
