//! Image references, normalised the way docker and containerd do
//! (`github.com/distribution/reference`, `ParseDockerRef`):
//!
//! - no registry → `docker.io`; `index.docker.io` is `docker.io`;
//! - a single-component name on docker.io gets `library/`;
//! - no tag and no digest → tag `latest`;
//! - `name:tag@digest` keeps only the digest (the digest is what is pulled);
//! - the first component is a registry when it has a `.` or a `:`, is
//!   `localhost`, or has upper-case letters (repository paths may not).
//!
//! Hand-written (a page of code) because `oci-client`'s `Reference` is not
//! used here and the rules are best pinned down by our own tests.

use std::fmt;

use super::digest::{Digest, is_sha256_hex};
use super::error::ImageError;

pub const DOCKER_HUB: &str = "docker.io";
/// Where docker.io's registry API actually lives.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;

/// A normalised reference: registry, repository and a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host[:port]`, e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// The path inside the registry, e.g. `library/busybox`.
    pub repository: String,
    /// The tag, when the reference is not by digest.
    pub tag: Option<String>,
    /// The digest, when the reference is by digest.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises `input`.
    pub fn parse(input: &str) -> Result<Reference, ImageError> {
        let invalid = |reason: &str| ImageError::InvalidReference {
            reference: input.to_owned(),
            reason: reason.to_owned(),
        };
        if input.is_empty() {
            return Err(invalid("empty reference"));
        }
        if input.trim() != input {
            return Err(invalid("leading or trailing white space"));
        }
        let (name_tag, digest) = match input.split_once('@') {
            Some((n, d)) => (
                n,
                Some(Digest::parse(d).map_err(|e| invalid(&e.to_string()))?),
            ),
            None => (input, None),
        };
        // A ':' after the last '/' starts the tag; one before it is a port.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].find(':') {
            Some(i) => {
                let at = last_slash + i;
                (&name_tag[..at], Some(&name_tag[at + 1..]))
            }
            None => (name_tag, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(|r| invalid(&r))?;
        }
        if name.is_empty() {
            return Err(invalid("empty repository name"));
        }
        if is_sha256_hex(name) {
            return Err(invalid(
                "a repository name cannot be 64 hexadecimal digits (that is an image ID)",
            ));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first, rest)
            }
            _ => (DOCKER_HUB, name),
        };
        validate_registry(registry).map_err(|r| invalid(&r))?;
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        validate_path(&repository).map_err(|r| invalid(&r))?;
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(invalid("repository name longer than 255 characters"));
        }
        let tag = match (&digest, tag) {
            (Some(_), _) => None,
            (None, Some(tag)) => Some(tag.to_owned()),
            (None, None) => Some(DEFAULT_TAG.to_owned()),
        };
        Ok(Reference {
            registry: registry.to_owned(),
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`, e.g. `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository@digest` for `digest`.
    pub fn with_digest(&self, digest: &Digest) -> String {
        format!("{}@{digest}", self.name())
    }

    /// What to ask the registry's manifest endpoint for: the digest or the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_owned(),
        }
    }
}

/// The host serving `registry`'s API.
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_API
    } else {
        registry
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `[\w][\w.-]{0,127}`
fn validate_tag(tag: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    match bytes.first() {
        None => return Err("empty tag".into()),
        Some(&b) if !word(b) => return Err(format!("tag {tag:?} must start with [A-Za-z0-9_]")),
        _ => {}
    }
    if bytes.len() > 128 {
        return Err(format!("tag {tag:?} is longer than 128 characters"));
    }
    if !bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-') {
        return Err(format!("tag {tag:?} may only hold [A-Za-z0-9_.-]"));
    }
    Ok(())
}

/// A host name or an IP address (IPv6 in brackets), with an optional port.
fn validate_registry(registry: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("registry {registry:?}: unclosed '['"))?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("registry {registry:?}: bad IPv6 address"));
        }
        match after {
            "" => ("", None),
            p => match p.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return Err(format!("registry {registry:?}: junk after ']'")),
            },
        }
    } else {
        match registry.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("registry {registry:?}: bad port"));
    }
    for label in host.split('.').filter(|_| !host.is_empty()) {
        let ok = !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("registry {registry:?}: bad host name"));
        }
    }
    Ok(())
}

/// Components `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*` joined by `/`.
fn validate_path(path: &str) -> Result<(), String> {
    for component in path.split('/') {
        if !valid_component(component) {
            return Err(format!(
                "repository path component {component:?} must be lower-case letters and digits, \
                 separated by '.', '_', '__' or dashes"
            ));
        }
    }
    Ok(())
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: one '.', one '_', "__", or any number of '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .to_string()
    }

    const D: &str = "sha256:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa";

    #[test]
    fn docker_hub_names_are_normalised() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("user/app:v1"), "docker.io/user/app:v1");
        assert_eq!(
            norm("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            norm("index.docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(norm("a/b/c"), "docker.io/a/b/c:latest");
    }

    #[test]
    fn registries_are_recognised() {
        assert_eq!(norm("quay.io/org/app"), "quay.io/org/app:latest");
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(norm("localhost:5000/app:v2"), "localhost:5000/app:v2");
        assert_eq!(
            norm("127.0.0.1:5000/busybox"),
            "127.0.0.1:5000/busybox:latest"
        );
        assert_eq!(norm("[::1]:5000/busybox:x"), "[::1]:5000/busybox:x");
        assert_eq!(norm("Registry/app"), "Registry/app:latest");
        let r = Reference::parse("127.0.0.1:5000/a/b:t").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!(api_host(&r.registry), "127.0.0.1:5000");
        assert_eq!(
            api_host(&Reference::parse("busybox").unwrap().registry),
            DOCKER_HUB_API
        );
    }

    #[test]
    fn digests_win_over_tags() {
        assert_eq!(
            norm(&format!("busybox@{D}")),
            format!("docker.io/library/busybox@{D}")
        );
        let r = Reference::parse(&format!("busybox:1.36@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_ref().map(|d| d.as_str()), Some(D));
        assert_eq!(r.manifest_reference(), D);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        assert_eq!(
            norm(&format!("localhost:5000/x:t@{D}")),
            format!("localhost:5000/x@{D}")
        );
    }

    #[test]
    fn bad_references_are_refused() {
        for bad in [
            "",
            " busybox",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busybox@sha256:123",
            "busybox@md5:d41d8cd98f00b204e9800998ecf8427e",
            "a//b",
            "a/b/",
            "/a",
            "a..b",
            "a_-b",
            "host:port/app",
            &"a".repeat(64).replace('a', "b"),
            &format!("busybox:{}", "t".repeat(129)),
            &format!("x/{}", "a".repeat(300)),
            "[::1/app",
            "[zz::1]:5000/app",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be refused");
        }
        // 64 hex digits is an image ID, never a repository.
        let id = "7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa";
        assert!(Reference::parse(id).is_err());
    }

    #[test]
    fn separators_follow_the_grammar() {
        for good in ["a.b", "a_b", "a__b", "a-b", "a---b", "a-b.c_d"] {
            assert!(valid_component(good), "{good}");
        }
        for bad in ["a___b", "a._b", "-a", "a-", "a..b", "A"] {
            assert!(!valid_component(bad), "{bad}");
        }
    }

    #[test]
    fn name_and_digest_forms() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.name(), "docker.io/library/busybox");
        let d = Digest::parse(D).unwrap();
        assert_eq!(r.with_digest(&d), format!("docker.io/library/busybox@{D}"));
        assert_eq!(r.manifest_reference(), "latest");
    }
}
