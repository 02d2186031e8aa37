//! The ImageService RPCs: pulling, listing and removing images. Proto ↔
//! domain only; the work is `crate::image::ImageStore`'s.
//!
//! Semantics follow containerd: PullImage answers the image ID; ImageStatus
//! of an unknown image is an empty answer, not an error; RemoveImage removes
//! the image with every tag, and an unknown image is not an error.

use std::collections::HashMap;

use super::api::*;
use tonic::Status;

use super::CriService;
use crate::image::{self as domain, Credentials, RegistryAuth};

/// The image reference of a request, refused when missing.
fn image_ref(spec: Option<&ImageSpec>, rpc: &str) -> Result<String, Status> {
    match spec.map(|s| s.image.trim()) {
        Some(image) if !image.is_empty() => Ok(image.to_owned()),
        _ => Err(Status::invalid_argument(format!("{rpc}: no image given"))),
    }
}

/// The CRI `AuthConfig` as domain credentials. Precedence as containerd's
/// `ParseAuth`: a registry token, then an identity token, then username and
/// password, then the base64 `auth` field.
fn auth_from_cri(auth: &AuthConfig) -> Result<Option<RegistryAuth>, Status> {
    let credentials = if !auth.registry_token.is_empty() {
        Credentials::RegistryToken(auth.registry_token.clone())
    } else if !auth.identity_token.is_empty() {
        Credentials::IdentityToken {
            username: auth.username.clone(),
            token: auth.identity_token.clone(),
        }
    } else if !auth.username.is_empty() {
        Credentials::Basic {
            username: auth.username.clone(),
            password: auth.password.clone(),
        }
    } else if !auth.auth.is_empty() {
        let (username, password) = RegistryAuth::decode_auth_field(&auth.auth)?;
        Credentials::Basic { username, password }
    } else {
        return Ok(None);
    };
    Ok(Some(RegistryAuth {
        server_address: auth.server_address.clone(),
        credentials,
    }))
}

fn to_cri(image: &domain::Image) -> Image {
    let (uid, username) = image.user();
    Image {
        id: image.id.clone(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.size,
        uid: uid.map(|value| Int64Value { value }),
        username,
        spec: Some(ImageSpec {
            image: image.id.clone(),
            annotations: image
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..Default::default()
        }),
        pinned: false,
    }
}

pub(super) async fn list(
    cri: &CriService,
    req: ListImagesRequest,
) -> Result<ListImagesResponse, Status> {
    let store = cri.runtime.images();
    let filter = req
        .filter
        .as_ref()
        .and_then(|f| f.image.as_ref())
        .map(|s| s.image.trim())
        .filter(|s| !s.is_empty());
    let images = match filter {
        Some(key) => store.find(key)?.into_iter().collect(),
        None => store.list()?,
    };
    Ok(ListImagesResponse {
        images: images.iter().map(to_cri).collect(),
    })
}

pub(super) async fn status(
    cri: &CriService,
    req: ImageStatusRequest,
) -> Result<ImageStatusResponse, Status> {
    let key = image_ref(req.image.as_ref(), "ImageStatus")?;
    let store = cri.runtime.images();
    let Some(image) = store.find(&key)? else {
        return Ok(ImageStatusResponse::default());
    };
    let mut info = HashMap::new();
    if req.verbose {
        let verbose = serde_json::json!({
            "id": image.id,
            "chainID": image.layers.last().map(|l| l.chain_id.to_string()),
            "platform": image.platform,
            "imageSpec": store.config_json(&image)?,
        });
        info.insert("info".to_owned(), verbose.to_string());
    }
    Ok(ImageStatusResponse {
        image: Some(to_cri(&image)),
        info,
    })
}

pub(super) async fn pull(
    cri: &CriService,
    req: PullImageRequest,
) -> Result<PullImageResponse, Status> {
    let reference = image_ref(req.image.as_ref(), "PullImage")?;
    let auth = match &req.auth {
        Some(a) => auth_from_cri(a)?,
        None => None,
    };
    let started = std::time::Instant::now();
    let image = cri.runtime.images().pull(&reference, auth).await?;
    crate::metrics::get().observe_pull(image.size, image.layers.len(), started.elapsed());
    Ok(PullImageResponse {
        image_ref: image.id,
    })
}

pub(super) async fn remove(
    cri: &CriService,
    req: RemoveImageRequest,
) -> Result<RemoveImageResponse, Status> {
    let key = image_ref(req.image.as_ref(), "RemoveImage")?;
    cri.runtime.images().remove(&key).await?;
    Ok(RemoveImageResponse {})
}

pub(super) async fn fs_info(
    cri: &CriService,
    _req: ImageFsInfoRequest,
) -> Result<ImageFsInfoResponse, Status> {
    let usage = cri.runtime.images().fs_usage().await?;
    Ok(ImageFsInfoResponse {
        image_filesystems: vec![FilesystemUsage {
            timestamp: usage.timestamp,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: usage.mountpoint.display().to_string(),
            }),
            used_bytes: Some(UInt64Value {
                value: usage.used_bytes,
            }),
            inodes_used: Some(UInt64Value {
                value: usage.inodes_used,
            }),
        }],
        container_filesystems: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn auth_config_mapping() {
        let none = auth_from_cri(&AuthConfig::default()).unwrap();
        assert!(none.is_none());
        let basic = auth_from_cri(&AuthConfig {
            username: "u".into(),
            password: "p".into(),
            server_address: "reg:5000".into(),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(basic.server_address, "reg:5000");
        assert_eq!(
            basic.credentials,
            Credentials::Basic {
                username: "u".into(),
                password: "p".into()
            }
        );
        let encoded = base64::engine::general_purpose::STANDARD.encode("user:secret");
        let from_auth = auth_from_cri(&AuthConfig {
            auth: encoded,
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            from_auth.credentials,
            Credentials::Basic {
                username: "user".into(),
                password: "secret".into()
            }
        );
        let token = auth_from_cri(&AuthConfig {
            username: "u".into(),
            identity_token: "refresh".into(),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert!(matches!(
            token.credentials,
            Credentials::IdentityToken { .. }
        ));
        let registry = auth_from_cri(&AuthConfig {
            registry_token: "bearer".into(),
            identity_token: "ignored".into(),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            registry.credentials,
            Credentials::RegistryToken("bearer".into())
        );
        let bad = auth_from_cri(&AuthConfig {
            auth: "!!!".into(),
            ..Default::default()
        });
        assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
