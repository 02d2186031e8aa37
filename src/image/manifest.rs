//! The JSON documents of an image: OCI and Docker schema2 manifests and
//! indexes, the image config, and the choice of this machine's platform in
//! an index.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::error::ImageError;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1";

/// The `Accept` header of a manifest request: every type we can read.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest, index or config we read (containerd uses 4 MiB too).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
pub const MAX_CONFIG_SIZE: u64 = 4 << 20;

/// A content descriptor.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// The digest, validated.
    pub fn digest(&self) -> Result<Digest, ImageError> {
        Digest::parse(&self.digest)
    }

    /// The size, refused when negative.
    pub fn size(&self) -> Result<u64, ImageError> {
        u64::try_from(self.size).map_err(|_| ImageError::Malformed {
            what: "descriptor",
            name: self.digest.clone(),
            reason: format!("negative size {}", self.size),
        })
    }
}

/// An index's platform entry (also the shape of the config's fields).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image manifest (OCI or Docker schema2: the same shape).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index / manifest list.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What a manifest endpoint returned.
#[derive(Debug)]
pub enum ManifestKind {
    Manifest(Manifest),
    Index(Index),
}

/// Parses manifest bytes. The body's `mediaType` wins over the HTTP
/// `Content-Type` (registries get the latter wrong); without either, the
/// shape decides.
pub fn parse_manifest(
    bytes: &[u8],
    content_type: Option<&str>,
    name: &str,
) -> Result<ManifestKind, ImageError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        schema_version: Option<u32>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let malformed = |reason: String| ImageError::Malformed {
        what: "manifest",
        name: name.to_owned(),
        reason,
    };
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
    let content_type = content_type.map(|c| c.split(';').next().unwrap_or("").trim());
    let media_type = probe
        .media_type
        .as_deref()
        .or(content_type)
        .unwrap_or_default();
    if media_type.starts_with(DOCKER_SCHEMA1) || probe.schema_version == Some(1) {
        return Err(ImageError::Unsupported {
            what: "manifest",
            detail: format!("{name} is a Docker schema 1 manifest, deprecated and unsupported"),
        });
    }
    let is_index = match media_type {
        OCI_INDEX | DOCKER_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST => false,
        _ => probe.manifests.is_some() && probe.config.is_none(),
    };
    if is_index {
        let index: Index = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        Ok(ManifestKind::Index(index))
    } else {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        Ok(ManifestKind::Manifest(manifest))
    }
}

/// How a layer blob is compressed, as told by its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerMediaType {
    Tar,
    Gzip,
    Zstd,
}

/// Checks a layer media type. Foreign (Windows) and encrypted layers are
/// refused; the actual compression is sniffed from the bytes anyway.
pub fn layer_media_type(media_type: &str) -> Result<LayerMediaType, ImageError> {
    let unsupported = || ImageError::Unsupported {
        what: "layer media type",
        detail: media_type.to_owned(),
    };
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Ok(LayerMediaType::Tar),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(LayerMediaType::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
            Ok(LayerMediaType::Zstd)
        }
        _ => Err(unsupported()),
    }
}

/// The image config blob: only the fields we use are typed; the rest is
/// kept in the content store and shown verbatim by verbose ImageStatus.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// The config's `config` object: what a container of the image runs.
/// Entries that are `null` in the JSON read as empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "User", default, deserialize_with = "null_default")]
    pub user: String,
    #[serde(rename = "Env", default, deserialize_with = "null_default")]
    pub env: Vec<String>,
    #[serde(rename = "Entrypoint", default, deserialize_with = "null_default")]
    pub entrypoint: Vec<String>,
    #[serde(rename = "Cmd", default, deserialize_with = "null_default")]
    pub cmd: Vec<String>,
    #[serde(rename = "WorkingDir", default, deserialize_with = "null_default")]
    pub working_dir: String,
    #[serde(rename = "StopSignal", default, deserialize_with = "null_default")]
    pub stop_signal: String,
    /// "PORT/PROTO" keys.
    #[serde(
        rename = "ExposedPorts",
        default,
        deserialize_with = "keys_of_map",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub exposed_ports: Vec<String>,
    #[serde(
        rename = "Volumes",
        default,
        deserialize_with = "keys_of_map",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub volumes: Vec<String>,
    #[serde(rename = "Labels", default, deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `{"80/tcp": {}}` (as images write it) or a list of keys (as we store it).
fn keys_of_map<'de, D>(d: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Keys {
        Map(BTreeMap<String, serde_json::Value>),
        List(Vec<String>),
    }
    Ok(match Option::<Keys>::deserialize(d)? {
        None => Vec::new(),
        Some(Keys::Map(m)) => m.into_keys().collect(),
        Some(Keys::List(l)) => l,
    })
}

/// Parses a config blob and checks it has one diff ID per layer.
pub fn parse_config(bytes: &[u8], name: &str, layers: usize) -> Result<ConfigFile, ImageError> {
    let malformed = |reason: String| ImageError::Malformed {
        what: "image config",
        name: name.to_owned(),
        reason,
    };
    let config: ConfigFile = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
    if !config.rootfs.kind.is_empty() && config.rootfs.kind != "layers" {
        return Err(malformed(format!(
            "rootfs type {:?} is not \"layers\"",
            config.rootfs.kind
        )));
    }
    if config.rootfs.diff_ids.len() != layers {
        return Err(malformed(format!(
            "{} diff_ids for {layers} layers",
            config.rootfs.diff_ids.len()
        )));
    }
    Ok(config)
}

/// This machine's platform: linux and the Go-style name of its architecture
/// (with the variant for ARM).
pub fn host_platform() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "x86" => ("386", None),
        "aarch64" => ("arm64", Some("v8".to_owned())),
        "arm" => ("arm", Some(arm_variant())),
        "powerpc64" => ("ppc64le", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        "loongarch64" => ("loong64", None),
        other => (other, None),
    };
    Platform {
        os: "linux".into(),
        architecture: architecture.into(),
        variant,
    }
}

/// "v7" or "v6" from /proc/cpuinfo's "CPU architecture" line, as
/// containerd reads it; v7 when unknown.
fn arm_variant() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    for line in cpuinfo.lines() {
        if let Some((key, value)) = line.split_once(':')
            && key.trim() == "CPU architecture"
        {
            return match value.trim() {
                "8" | "AArch64" => "v8".into(),
                "6" => "v6".into(),
                "5" | "5T" | "5TE" | "5TEJ" => "v5".into(),
                _ => "v7".into(),
            };
        }
    }
    "v7".into()
}

/// How well `candidate` suits `host`: `None` when it cannot run, else a rank
/// (0 is best). linux only; the architecture must be equal; the variant
/// must match, where a missing variant means the default one (arm64 → v8,
/// arm → v7), and an older ARM variant runs on a newer CPU.
pub fn platform_rank(host: &Platform, candidate: &Platform) -> Option<usize> {
    if candidate.os != host.os || candidate.architecture != host.architecture {
        return None;
    }
    let default_variant = match host.architecture.as_str() {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        "amd64" => Some("v1"),
        _ => None,
    };
    let want = host.variant.as_deref().or(default_variant);
    let have = candidate.variant.as_deref().or(default_variant);
    if want == have {
        return Some(0);
    }
    if host.architecture == "arm" {
        let level = |v: Option<&str>| v.and_then(|v| v.strip_prefix('v')?.parse::<usize>().ok());
        if let (Some(w), Some(h)) = (level(want), level(have))
            && h < w
        {
            return Some(w - h);
        }
    }
    None
}

/// Picks the best manifest of `index` for `host` (ties: index order).
pub fn choose_platform<'a>(
    index: &'a Index,
    host: &Platform,
    reference: &str,
) -> Result<&'a Descriptor, ImageError> {
    index
        .manifests
        .iter()
        .filter_map(|d| {
            let platform = d.platform.as_ref()?;
            Some((platform_rank(host, platform)?, d))
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, d)| d)
        .ok_or_else(|| ImageError::NoMatchingPlatform {
            reference: reference.to_owned(),
            platform: host.to_string(),
            available: index
                .manifests
                .iter()
                .map(|d| d.platform.as_ref().map_or("?".into(), |p| p.to_string()))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(os: &str, arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        }
    }

    #[test]
    fn platform_matching() {
        let amd = p("linux", "amd64", None);
        assert_eq!(platform_rank(&amd, &p("linux", "amd64", None)), Some(0));
        assert_eq!(
            platform_rank(&amd, &p("linux", "amd64", Some("v1"))),
            Some(0)
        );
        assert_eq!(platform_rank(&amd, &p("linux", "arm64", None)), None);
        assert_eq!(platform_rank(&amd, &p("windows", "amd64", None)), None);
        let arm64 = p("linux", "arm64", Some("v8"));
        assert_eq!(platform_rank(&arm64, &p("linux", "arm64", None)), Some(0));
        assert_eq!(
            platform_rank(&arm64, &p("linux", "arm64", Some("v8"))),
            Some(0)
        );
        let arm = p("linux", "arm", Some("v7"));
        assert_eq!(platform_rank(&arm, &p("linux", "arm", Some("v6"))), Some(1));
        assert_eq!(platform_rank(&arm, &p("linux", "arm", Some("v8"))), None);
        assert_eq!(platform_rank(&arm, &p("linux", "arm", None)), Some(0));
    }

    fn desc(platform: Platform, digest: char) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", digest.to_string().repeat(64)),
            size: 1,
            platform: Some(platform),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn index_choice_prefers_the_best_rank() {
        let index = Index {
            schema_version: 2,
            media_type: None,
            manifests: vec![
                desc(p("linux", "arm", Some("v6")), 'a'),
                desc(p("linux", "arm", Some("v7")), 'b'),
                desc(p("linux", "amd64", None), 'c'),
            ],
            annotations: BTreeMap::new(),
        };
        let arm = p("linux", "arm", Some("v7"));
        assert!(
            choose_platform(&index, &arm, "x")
                .unwrap()
                .digest
                .contains('b')
        );
        let amd = p("linux", "amd64", None);
        assert!(
            choose_platform(&index, &amd, "x")
                .unwrap()
                .digest
                .contains('c')
        );
        let s390 = p("linux", "s390x", None);
        let err = choose_platform(&index, &s390, "x").unwrap_err().to_string();
        assert!(
            err.contains("linux/s390x") && err.contains("linux/arm/v6"),
            "{err}"
        );
    }

    #[test]
    fn manifest_kinds_are_told_apart() {
        let m = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:00","size":1},"layers":[]}"#;
        assert!(matches!(
            parse_manifest(m, None, "m").unwrap(),
            ManifestKind::Manifest(_)
        ));
        let i = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse_manifest(i, None, "i").unwrap(),
            ManifestKind::Index(_)
        ));
        let i = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#;
        assert!(matches!(
            parse_manifest(i, Some(OCI_MANIFEST), "i").unwrap(),
            ManifestKind::Index(_)
        ));
        let s1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
        let err = parse_manifest(s1, None, "s1").unwrap_err().to_string();
        assert!(err.contains("schema 1"), "{err}");
        assert!(parse_manifest(b"not json", None, "x").is_err());
    }

    #[test]
    fn config_nulls_and_ports() {
        let c = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":null,"Env":["A=b"],
            "ExposedPorts":{"80/tcp":{}},"Labels":null,"User":"1000:1000"},
            "rootfs":{"type":"layers","diff_ids":["sha256:x"]}}"#;
        let config = parse_config(c, "c", 1).unwrap();
        let run = config.config.unwrap();
        assert!(run.cmd.is_empty());
        assert_eq!(run.env, vec!["A=b"]);
        assert_eq!(run.exposed_ports, vec!["80/tcp"]);
        assert_eq!(run.user, "1000:1000");
        let err = parse_config(c, "c", 2).unwrap_err().to_string();
        assert!(err.contains("1 diff_ids for 2 layers"), "{err}");
        // Round trip through our own serialisation.
        let json = serde_json::to_string(&run).unwrap();
        let back: RunConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, run);
    }

    #[test]
    fn layer_media_types() {
        assert_eq!(
            layer_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip").unwrap(),
            LayerMediaType::Gzip
        );
        assert_eq!(
            layer_media_type("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(),
            LayerMediaType::Zstd
        );
        assert!(
            layer_media_type("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip").is_err()
        );
        assert!(layer_media_type("application/vnd.oci.image.layer.v1.tar+gzip+encrypted").is_err());
    }
}
