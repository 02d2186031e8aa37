//! The store as a whole, fed through imports (no registry needed): records,
//! shared layers, leases and garbage collection, restart survival, crash
//! leftovers, verification.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use super::unpack::tests::{E, TarWriter};
use super::*;
use crate::image::manifest::host_platform;

/// Builds an OCI image layout directory.
struct Layout {
    dir: PathBuf,
    manifests: Vec<serde_json::Value>,
}

struct Built {
    id: String,
    manifest: Digest,
}

impl Layout {
    fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        Layout {
            dir: dir.to_owned(),
            manifests: Vec::new(),
        }
    }

    fn blob(&self, bytes: &[u8]) -> (Digest, usize) {
        let d = Digest::of(bytes);
        std::fs::write(self.dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
        (d, bytes.len())
    }

    /// An image of gzip layers made of `tars`, named `name` (a full ref).
    fn image(&mut self, tars: &[Vec<u8>], name: Option<&str>, user: &str) -> Built {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for tar in tars {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            let (d, size) = self.blob(&e.finish().unwrap());
            layers.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": size}));
            diff_ids.push(Digest::of(tar).to_string());
        }
        let config = json!({
            "architecture": host_platform().architecture, "os": "linux",
            "config": {"User": user, "Env": ["PATH=/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let (cd, csize) = self.blob(config.to_string().as_bytes());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": csize},
            "layers": layers,
            "annotations": {"org.example.note": "hi"},
        });
        let (md, msize) = self.blob(manifest.to_string().as_bytes());
        let mut desc = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": msize});
        if let Some(n) = name {
            desc["annotations"] = json!({"io.containerd.image.name": n});
        }
        self.manifests.push(desc);
        Built {
            id: cd.to_string(),
            manifest: md,
        }
    }

    fn finish(&self) {
        std::fs::write(
            self.dir.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let index = json!({"schemaVersion": 2, "manifests": self.manifests});
        std::fs::write(self.dir.join("index.json"), index.to_string()).unwrap();
    }
}

fn base_tar() -> Vec<u8> {
    TarWriter::default()
        .add(E::dir("bin/"))
        .add(E::file("bin/sh", b"#!fake shell"))
        .add(E::file("etc/passwd", b"root:x:0:0::/:/bin/sh\n"))
        .finish()
}

fn app_tar(marker: &'static [u8]) -> Vec<u8> {
    TarWriter::default()
        .add(E::file("app/marker", marker))
        .add(E::file("bin/.wh.sh", b""))
        .finish()
}

struct Env {
    dir: tempfile::TempDir,
    config: Config,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            root_dir: dir.path().join("root"),
            ..Config::default()
        };
        Env { dir, config }
    }
    fn store(&self) -> ImageStore {
        ImageStore::new(&self.config).unwrap()
    }
    fn layout(&self, name: &str) -> Layout {
        Layout::new(&self.dir.path().join(name))
    }
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn import_records_share_layers_and_resolve() {
    if !crate::testing::root_or_skip("unpacking chowns entries to their owners") {
        return;
    }
    let env = Env::new();
    let mut layout = env.layout("layout");
    let a = layout.image(
        &[base_tar(), app_tar(b"a")],
        Some("example.com/app:a"),
        "1000:1000",
    );
    let b = layout.image(
        &[base_tar(), app_tar(b"b")],
        Some("example.com/app:b"),
        "www",
    );
    layout.finish();
    let store = env.store();
    let seen = std::sync::Mutex::new(Vec::new());
    let images = store
        .import(&layout.dir, &|p| {
            seen.lock().unwrap().push((p.layer, p.skipped))
        })
        .unwrap();
    assert_eq!(images.len(), 2);
    // The shared base layer was unpacked once: skipped the second time.
    assert!(seen.lock().unwrap().contains(&(1, true)));
    let layers = std::fs::read_dir(env.config.root_dir.join("layers"))
        .unwrap()
        .count();
    assert_eq!(layers, 3, "base stored once");

    let ia = store.resolve("example.com/app:a").unwrap();
    assert_eq!(ia.id, a.id);
    assert_eq!(ia.user(), (Some(1000), String::new()));
    assert_eq!(
        ia.repo_digests,
        vec![format!("example.com/app@{}", a.manifest)]
    );
    assert_eq!(
        ia.annotations.get("org.example.note").map(String::as_str),
        Some("hi")
    );
    assert_eq!(
        store
            .resolve(&format!("example.com/app@{}", b.manifest))
            .unwrap()
            .id,
        b.id
    );
    assert_eq!(store.resolve(&b.id).unwrap().user(), (None, "www".into()));
    assert_eq!(
        store.resolve(&b.id["sha256:".len()..][..12]).unwrap().id,
        b.id
    );
    assert!(store.find("example.com/app:c").unwrap().is_none());
    assert_eq!(store.list().unwrap().len(), 2);

    // Lowerdirs: topmost first; whiteouts converted.
    let dirs = store.layer_dirs("example.com/app:a").unwrap();
    assert_eq!(dirs.len(), 2);
    assert_eq!(std::fs::read(dirs[0].join("app/marker")).unwrap(), b"a");
    assert_eq!(
        std::fs::read(dirs[1].join("bin/sh")).unwrap(),
        b"#!fake shell"
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(dirs[0].join("bin/sh"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    let config = store.config_json(&ia).unwrap();
    assert_eq!(config["config"]["User"], "1000:1000");

    // Importing again changes nothing and unpacks nothing.
    seen.lock().unwrap().clear();
    store
        .import(&layout.dir, &|p| {
            seen.lock().unwrap().push((p.layer, p.skipped))
        })
        .unwrap();
    assert!(seen.lock().unwrap().iter().all(|(_, skipped)| *skipped));
    assert_eq!(store.list().unwrap().len(), 2);

    let usage = tokio_test_runtime().block_on(store.fs_usage()).unwrap();
    assert!(usage.used_bytes > 0 && usage.inodes_used > 5, "{usage:?}");
}

fn tokio_test_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn leases_keep_layers_until_released() {
    if !crate::testing::root_or_skip("unpacking chowns entries to their owners") {
        return;
    }
    let env = Env::new();
    let mut layout = env.layout("layout");
    layout.image(&[base_tar(), app_tar(b"a")], Some("example.com/app:a"), "");
    layout.image(&[base_tar(), app_tar(b"b")], Some("example.com/app:b"), "");
    layout.finish();
    let store = env.store();
    store.import(&layout.dir, &|_| {}).unwrap();
    let a_dirs = store.layer_dirs("example.com/app:a").unwrap();
    let b_dirs = store.layer_dirs("example.com/app:b").unwrap();
    let rt = tokio_test_runtime();
    rt.block_on(async {
        let lease = store.acquire("c1", "example.com/app:a").await.unwrap();
        assert_eq!(store.lease_dirs(&lease), a_dirs);
        assert!(store.remove("example.com/app:a").await.unwrap().is_some());
        assert!(
            store.remove("example.com/app:a").await.unwrap().is_none(),
            "gone is fine"
        );
        assert!(store.find("example.com/app:a").unwrap().is_none());
        store.collect_garbage().await.unwrap();
        assert!(a_dirs[0].exists(), "leased layers stay after RemoveImage");
        assert!(store.acquire("c2", "example.com/app:a").await.is_err());

        // A restart sees the lease and keeps the layers.
        let again = env.store();
        assert_eq!(again.lease("c1").unwrap(), Some(lease.clone()));
        again.collect_garbage().await.unwrap();
        assert!(a_dirs[0].exists());

        store.release("c1").await.unwrap();
        store.release("c1").await.unwrap();
        wait_until("the released layer is collected", || !a_dirs[0].exists());
        assert!(
            b_dirs.iter().all(|d| d.exists()),
            "b's layers, the shared base included, stay"
        );
        assert!(store.leases().unwrap().is_empty());
    });
}

#[test]
fn restart_reloads_and_sweeps_leftovers() {
    if !crate::testing::root_or_skip("unpacking chowns entries to their owners") {
        return;
    }
    let env = Env::new();
    let mut layout = env.layout("layout");
    let a = layout.image(&[base_tar()], Some("example.com/app:a"), "");
    layout.finish();
    {
        let store = env.store();
        store.import(&layout.dir, &|_| {}).unwrap();
    }
    // What a kill -9 in the middle of a pull leaves.
    let root = &env.config.root_dir;
    std::fs::create_dir_all(root.join("layers/.tmp-layer-1-2-3/etc")).unwrap();
    std::fs::write(root.join("content/.tmp-blob-1-2-3"), b"half").unwrap();
    std::fs::write(root.join("images/.tmp-write-1-2-3"), b"{").unwrap();
    let orphan = Digest::of(b"orphan");
    std::fs::create_dir_all(root.join("layers").join(orphan.hex())).unwrap();

    let store = env.store();
    // No runtime here: the start-up collection ran inline.
    assert!(!root.join("layers/.tmp-layer-1-2-3").exists());
    assert!(!root.join("content/.tmp-blob-1-2-3").exists());
    assert!(!root.join("images/.tmp-write-1-2-3").exists());
    assert!(
        !root.join("layers").join(orphan.hex()).exists(),
        "unreferenced layer collected"
    );
    let image = store.resolve("example.com/app:a").unwrap();
    assert_eq!(image.id, a.id);
    assert!(
        store.layer_dirs(&image.id).unwrap()[0]
            .join("bin/sh")
            .exists()
    );
    // The config blob survived collection (an image refers to it).
    assert!(store.config_json(&image).is_ok());
}

#[test]
fn collection_waits_for_writers() {
    let env = Env::new();
    let store = env.store();
    let orphan = env
        .config
        .root_dir
        .join("layers")
        .join(Digest::of(b"x").hex());
    std::fs::create_dir_all(&orphan).unwrap();
    let guard = store.inner.writer_guard_blocking().unwrap();
    // A writer holds the lock: the collection does nothing and stays pending.
    assert!(!store.inner.collect().unwrap());
    store.inner.request_gc();
    assert!(orphan.exists());
    drop(guard);
    // The last writer out runs it (inline, as there is no runtime).
    assert!(!orphan.exists());
}

#[test]
fn a_corrupt_layout_leaves_nothing() {
    if !crate::testing::root_or_skip("unpacking chowns entries to their owners") {
        return;
    }
    let env = Env::new();
    let mut layout = env.layout("layout");
    layout.image(&[base_tar(), app_tar(b"a")], Some("example.com/app:a"), "");
    layout.finish();
    // Corrupt the second layer blob in place (same length).
    let manifest_desc = &layout.manifests[0];
    let md = Digest::parse(manifest_desc["digest"].as_str().unwrap()).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.dir.join("blobs/sha256").join(md.hex())).unwrap(),
    )
    .unwrap();
    let ld = Digest::parse(manifest["layers"][1]["digest"].as_str().unwrap()).unwrap();
    let path = layout.dir.join("blobs/sha256").join(ld.hex());
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let store = env.store();
    let err = store.import(&layout.dir, &|_| {}).unwrap_err().to_string();
    assert!(err.contains(ld.as_str()), "{err}");
    assert!(store.list().unwrap().is_empty());
    store.inner.collect().unwrap();
    let layers: Vec<_> = std::fs::read_dir(env.config.root_dir.join("layers"))
        .unwrap()
        .collect();
    assert!(layers.is_empty(), "no layer, whole or half: {layers:?}");
}

#[test]
fn docker_save_archives_import() {
    if !crate::testing::root_or_skip("unpacking chowns entries to their owners") {
        return;
    }
    let env = Env::new();
    let base = base_tar();
    let app = app_tar(b"d");
    let config = json!({
        "architecture": host_platform().architecture, "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&base).to_string(), Digest::of(&app).to_string()]},
    })
    .to_string();
    let config_id = Digest::of(config.as_bytes());
    let manifest = json!([{
        "Config": format!("{}.json", config_id.hex()),
        "RepoTags": ["busybox:saved"],
        "Layers": ["l1/layer.tar", "l2/layer.tar"],
    }])
    .to_string();
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    add("l1/layer.tar", &base);
    add("l2/layer.tar", &app);
    add(&format!("{}.json", config_id.hex()), config.as_bytes());
    add("manifest.json", manifest.as_bytes());
    let archive = env.dir.path().join("saved.tar");
    std::fs::write(&archive, b.into_inner().unwrap()).unwrap();

    let store = env.store();
    let images = store.import(&archive, &|_| {}).unwrap();
    assert_eq!(images.len(), 1);
    let image = store.resolve("docker.io/library/busybox:saved").unwrap();
    assert_eq!(image.id, config_id.to_string());
    assert_eq!(image.repo_tags, vec!["docker.io/library/busybox:saved"]);
    assert_eq!(image.size, (base.len() + app.len()) as u64);
    let dirs = store.layer_dirs("busybox:saved").unwrap();
    assert_eq!(std::fs::read(dirs[0].join("app/marker")).unwrap(), b"d");

    // Something else is refused with a clear error.
    let junk = env.dir.path().join("junk.tar");
    std::fs::write(&junk, b"not a tar at all, not even close").unwrap();
    assert!(store.import(&junk, &|_| {}).is_err());
}
