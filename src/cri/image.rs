//! ImageService: pull, status, list, remove, filesystem usage.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use tonic::{Request, Response, Status};

use super::{Cri, record};
use crate::image::{Credentials, FsUsage, ImageRecord, Reference, image_user};
use crate::proto::runtime::v1 as cri;
use crate::proto::runtime::v1::image_service_server::ImageService;

fn to_cri(i: &ImageRecord) -> cri::Image {
    let (uid, username) = image_user(&i.config);
    cri::Image {
        id: i.id.clone(),
        repo_tags: i.repo_tags.clone(),
        repo_digests: i.repo_digests.clone(),
        size: i.size,
        uid: uid.map(|value| cri::Int64Value { value }),
        username,
        spec: Some(cri::ImageSpec {
            image: i.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

fn image_name(spec: Option<&cri::ImageSpec>) -> Result<&str, Status> {
    match spec.map(|s| s.image.as_str()) {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(Status::invalid_argument("image reference is empty")),
    }
}

/// The CRI `AuthConfig` as credentials: a registry token is a bearer token; `auth` is
/// base64 `user:password`, as in Docker's config.
fn credentials(auth: Option<&cri::AuthConfig>) -> Result<Credentials, Status> {
    let Some(a) = auth else {
        return Ok(Credentials::Anonymous);
    };
    if !a.registry_token.is_empty() {
        return Ok(Credentials::Bearer(a.registry_token.clone()));
    }
    if !a.username.is_empty() || !a.password.is_empty() {
        return Ok(Credentials::Basic {
            username: a.username.clone(),
            password: a.password.clone(),
        });
    }
    if !a.identity_token.is_empty() {
        return Ok(Credentials::Basic {
            username: "<token>".into(),
            password: a.identity_token.clone(),
        });
    }
    if !a.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| Status::invalid_argument("auth: not base64 of user:password"))?;
        let (u, p) = decoded
            .split_once(':')
            .ok_or_else(|| Status::invalid_argument("auth: not base64 of user:password"))?;
        return Ok(Credentials::Basic {
            username: u.to_string(),
            password: p.to_string(),
        });
    }
    Ok(Credentials::Anonymous)
}

fn fs_usage(u: FsUsage, timestamp: i64) -> cri::FilesystemUsage {
    cri::FilesystemUsage {
        timestamp,
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: u.mountpoint.to_string_lossy().into_owned(),
        }),
        used_bytes: Some(cri::UInt64Value {
            value: u.used_bytes,
        }),
        inodes_used: Some(cri::UInt64Value {
            value: u.inodes_used,
        }),
    }
}

#[tonic::async_trait]
impl ImageService for Cri {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let filter = req
            .get_ref()
            .filter
            .as_ref()
            .and_then(|f| f.image.as_ref())
            .map(|s| s.image.clone())
            .filter(|s| !s.is_empty());
        let images = match filter {
            Some(f) => self.images.resolve(&f)?.into_iter().collect(),
            None => self.images.list()?,
        };
        Ok(Response::new(cri::ListImagesResponse {
            images: images.iter().map(to_cri).collect(),
        }))
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let r = req.get_ref();
        let name = image_name(r.image.as_ref())?;
        record("image", name);
        let Some(img) = self.images.resolve(name)? else {
            return Ok(Response::new(cri::ImageStatusResponse::default()));
        };
        let mut info = HashMap::new();
        if r.verbose {
            let spec: serde_json::Value =
                serde_json::from_str(&img.config).unwrap_or(serde_json::Value::Null);
            let v = serde_json::json!({
                "imageSpec": spec,
                "manifestDigest": img.manifest_digest,
                "chainIDs": img.chain_ids,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok(Response::new(cri::ImageStatusResponse {
            image: Some(to_cri(&img)),
            info,
        }))
    }

    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let r = req.get_ref();
        let name = image_name(r.image.as_ref())?;
        record("image", name);
        let reference =
            Reference::parse(name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let creds = credentials(r.auth.as_ref())?;
        let img = self.images.pull(&reference, creds).await?;
        tracing::info!(image_id = %img.id, "pulled");
        Ok(Response::new(cri::PullImageResponse { image_ref: img.id }))
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let name = image_name(req.get_ref().image.as_ref())?;
        record("image", name);
        if let Some(img) = self.images.remove(name).await? {
            tracing::info!(image_id = %img.id, "removed");
        }
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _req: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let (images, containers) = self.images.fs_usage().await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or_default();
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![fs_usage(images, now)],
            container_filesystems: vec![fs_usage(containers, now)],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_config_to_credentials() {
        let a = |f: fn(&mut cri::AuthConfig)| {
            let mut c = cri::AuthConfig::default();
            f(&mut c);
            credentials(Some(&c)).unwrap()
        };
        assert_eq!(credentials(None).unwrap(), Credentials::Anonymous);
        assert_eq!(a(|_| {}), Credentials::Anonymous);
        assert_eq!(
            a(|c| {
                c.username = "u".into();
                c.password = "p".into();
            }),
            Credentials::Basic {
                username: "u".into(),
                password: "p".into()
            }
        );
        assert_eq!(
            a(|c| c.auth = "dTpwOnE=".into()),
            Credentials::Basic {
                username: "u".into(),
                password: "p:q".into()
            }
        );
        assert_eq!(
            a(|c| c.registry_token = "t".into()),
            Credentials::Bearer("t".into())
        );
        let bad = cri::AuthConfig {
            auth: "!!".into(),
            ..Default::default()
        };
        assert_eq!(
            credentials(Some(&bad)).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn auth_config_debug_hides_secrets() {
        let c = cri::AuthConfig {
            username: "u".into(),
            password: "hunter2".into(),
            auth: "c2VjcmV0".into(),
            registry_token: "tok3n".into(),
            identity_token: "id3nt".into(),
            server_address: "r".into(),
        };
        let s = format!("{c:?}");
        for secret in ["hunter2", "c2VjcmV0", "tok3n", "id3nt"] {
            assert!(!s.contains(secret), "{s}");
        }
    }
}
