//! The registry side of a pull, on `oci-client`: which endpoints to try (mirrors first,
//! keeping the repository path), which credentials to present, retries of transient
//! failures, and platform selection in manifest lists and OCI indexes.
//!
//! Written here rather than in oci-client: endpoint fallback (oci-client knows one mirror per
//! reference), per-request credentials (oci-client caches one credential per registry for the
//! life of a client), and platform selection that reports the platforms it saw.

use std::sync::{Arc, Once};
use std::time::Duration;

use futures_util::stream::BoxStream;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference as OciReference};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::reference::Reference;
use crate::config::{Endpoint, RegistryConfig};

pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const ACCEPT: &[&str] = &[
    MEDIA_OCI_INDEX,
    MEDIA_DOCKER_LIST,
    MEDIA_OCI_MANIFEST,
    MEDIA_DOCKER_MANIFEST,
];

const ATTEMPTS: u32 = 3;

/// Why a registry request failed, classified for the caller's status code.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("not found at {host}: {detail}")]
    NotFound { host: String, detail: String },
    #[error("unauthorized at {host}: {detail}")]
    Unauthorized { host: String, detail: String },
    #[error("access denied at {host}: {detail}")]
    Forbidden { host: String, detail: String },
    #[error("cannot reach {host}: {detail}")]
    Unreachable { host: String, detail: String },
    #[error("{0}")]
    Invalid(String),
    #[error("content from {host} does not match its digest {digest}: {detail}")]
    Corrupt {
        host: String,
        digest: String,
        detail: String,
    },
}

impl FetchError {
    fn transient(&self) -> bool {
        matches!(self, FetchError::Unreachable { .. })
    }

    /// Worth trying the next endpoint: anything but a definitive verdict on the content.
    fn try_next(&self) -> bool {
        !matches!(self, FetchError::Invalid(_) | FetchError::Corrupt { .. })
    }

    fn from_oci(host: &str, e: OciDistributionError) -> FetchError {
        use OciDistributionError as E;
        let host = host.to_string();
        match e {
            E::UnauthorizedError { url } => FetchError::Unauthorized {
                host,
                detail: format!("401 from {url}"),
            },
            E::AuthenticationFailure(d) => FetchError::Unauthorized { host, detail: d },
            E::ImageManifestNotFoundError(d) => FetchError::NotFound { host, detail: d },
            E::RegistryError { envelope, url } => {
                let codes: Vec<String> = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}", e.code))
                    .collect();
                let detail = format!("{} ({url})", envelope);
                if codes.iter().any(|c| c.contains("Unknown")) {
                    FetchError::NotFound { host, detail }
                } else if codes.iter().any(|c| c == "Unauthorized") {
                    FetchError::Unauthorized { host, detail }
                } else if codes.iter().any(|c| c == "Denied") {
                    FetchError::Forbidden { host, detail }
                } else if codes.iter().any(|c| c == "Toomanyrequests") {
                    FetchError::Unreachable { host, detail }
                } else {
                    FetchError::Invalid(format!("registry {host}: {detail}"))
                }
            }
            E::ServerError { code, url, message } => {
                let detail = format!("HTTP {code} from {url}: {}", message.trim());
                match code {
                    401 => FetchError::Unauthorized { host, detail },
                    403 => FetchError::Forbidden { host, detail },
                    404 => FetchError::NotFound { host, detail },
                    429 | 500.. => FetchError::Unreachable { host, detail },
                    _ => FetchError::Invalid(format!("registry {host}: {detail}")),
                }
            }
            E::RequestError(e) => FetchError::Unreachable {
                host,
                detail: error_chain(&e),
            },
            E::IoError(e) => FetchError::Unreachable {
                host,
                detail: e.to_string(),
            },
            other => FetchError::Invalid(format!("registry {host}: {other}")),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Credentials for one pull, from the CRI `AuthConfig` (already decoded by `cri/`).
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// A registry bearer token (`registry_token`).
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl Credentials {
    fn to_oci(&self) -> RegistryAuth {
        match self {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credentials::Bearer(t) => RegistryAuth::Bearer(t.clone()),
        }
    }
}

/// The registry configuration, and how to make clients for it.
pub struct Registries {
    config: RegistryConfig,
    plain_hosts: Vec<String>,
    /// Clients for requests without the caller's own credentials, one per endpoint host,
    /// kept for their connections and tokens (building one loads the TLS roots).
    shared: std::sync::Mutex<std::collections::HashMap<String, Arc<Client>>>,
}

/// A resolved image: the endpoint that served it and its platform manifest.
pub struct Resolved {
    pub session: Session,
    /// Digest of what the reference named (index or manifest): the repo digest.
    pub digest: String,
    pub manifest: Manifest,
    pub manifest_digest: String,
    /// Bytes of the manifests read (index and platform manifest), part of the image size.
    pub manifests_size: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: OciDescriptor,
    #[serde(default)]
    pub layers: Vec<OciDescriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

/// One endpoint and an authenticated client for it, used for every request of one pull.
#[derive(Clone)]
pub struct Session {
    client: Arc<Client>,
    auth: RegistryAuth,
    pub endpoint: Endpoint,
    repository: String,
}

/// The host's platform as OCI names it.
pub fn host_platform() -> (&'static str, &'static str, Option<&'static str>) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    let variant = match arch {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    };
    ("linux", arch, variant)
}

fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Fails only if another provider was installed first, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Registries {
    pub fn new(config: RegistryConfig) -> Registries {
        install_crypto_provider();
        let mut plain_hosts = Vec::new();
        for (host, h) in &config.hosts {
            if h.plain_http {
                plain_hosts.push(host.clone());
            }
            for ep in config.endpoints(host) {
                if ep.plain_http {
                    plain_hosts.push(ep.host.clone());
                }
            }
        }
        plain_hosts.sort();
        plain_hosts.dedup();
        Registries {
            config,
            plain_hosts,
            shared: Default::default(),
        }
    }

    fn client(&self, endpoint: &Endpoint) -> Client {
        let mut plain = self.plain_hosts.clone();
        if endpoint.plain_http && !plain.contains(&endpoint.host) {
            plain.push(endpoint.host.clone());
        }
        let insecure = self
            .config
            .host(&endpoint.host)
            .is_some_and(|h| h.insecure_skip_verify);
        Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain),
            accept_invalid_certificates: insecure,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            max_concurrent_download: 4,
            platform_resolver: None,
            ..ClientConfig::default()
        })
    }

    /// Credentials for `host`: the request's for the image's own registry, the config's for
    /// a mirror (kubelet's credentials are for the registry it named, as in containerd).
    /// The second value says whether they are the request's own.
    fn credentials(
        &self,
        host: &str,
        registry: &str,
        request: &Credentials,
    ) -> (RegistryAuth, bool) {
        if host == registry && *request != Credentials::Anonymous {
            return (request.to_oci(), true);
        }
        let auth = match self.config.host(host) {
            Some(h) if h.username.is_some() => RegistryAuth::Basic(
                h.username.clone().unwrap_or_default(),
                h.password.clone().unwrap_or_default(),
            ),
            _ => RegistryAuth::Anonymous,
        };
        (auth, false)
    }

    /// A client for `endpoint`: the shared one unless the request brings credentials
    /// (oci-client keeps one credential per registry for a client's life).
    fn client_for(&self, endpoint: &Endpoint, own_credentials: bool) -> Arc<Client> {
        if own_credentials {
            return Arc::new(self.client(endpoint));
        }
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared
            .entry(endpoint.host.clone())
            .or_insert_with(|| Arc::new(self.client(endpoint)))
            .clone()
    }

    /// Finds the image on the first endpoint that has it and picks the host's platform.
    pub async fn resolve(
        &self,
        image: &Reference,
        creds: &Credentials,
    ) -> Result<Resolved, FetchError> {
        let mut first_err: Option<FetchError> = None;
        for endpoint in self.config.endpoints(&image.domain) {
            let (auth, own) = self.credentials(&endpoint.host, &image.domain, creds);
            let session = Session {
                client: self.client_for(&endpoint, own),
                auth,
                repository: image.path.clone(),
                endpoint,
            };
            match session.resolve(image.tag_or_digest()).await {
                Ok((digest, manifest, manifest_digest, manifests_size)) => {
                    return Ok(Resolved {
                        session,
                        digest,
                        manifest,
                        manifest_digest,
                        manifests_size,
                    });
                }
                Err(e) => {
                    tracing::debug!(endpoint = %session.endpoint.host, error = %e, "endpoint failed");
                    let stop = !e.try_next();
                    // Report the most telling error: a mirror's "not found" beats the
                    // unreachable upstream behind it.
                    let keep = match &first_err {
                        None => true,
                        Some(prev) => prev.transient() && !e.transient(),
                    };
                    if keep {
                        first_err = Some(e);
                    }
                    if stop {
                        break;
                    }
                }
            }
        }
        Err(first_err.expect("at least one endpoint"))
    }
}

impl Session {
    fn reference(&self, tag_or_digest: &str) -> OciReference {
        if tag_or_digest.contains(':') {
            OciReference::with_digest(
                self.endpoint.host.clone(),
                self.repository.clone(),
                tag_or_digest.to_string(),
            )
        } else {
            OciReference::with_tag(
                self.endpoint.host.clone(),
                self.repository.clone(),
                tag_or_digest.to_string(),
            )
        }
    }

    async fn retry<T, F, Fut>(&self, mut f: F) -> Result<T, FetchError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let e = FetchError::from_oci(&self.endpoint.host, e);
                    if !e.transient() || attempt >= ATTEMPTS {
                        return Err(e);
                    }
                    tracing::debug!(attempt, error = %e, "retrying");
                    tokio::time::sleep(Duration::from_millis(100 << (2 * attempt))).await;
                }
            }
        }
    }

    /// Fetches a manifest by tag or digest and checks the bytes against the digest.
    async fn manifest(
        &self,
        tag_or_digest: &str,
    ) -> Result<(bytes::Bytes, String, String), FetchError> {
        let r = self.reference(tag_or_digest);
        let (bytes, _) = self
            .retry(|| self.client.pull_manifest_raw(&r, &self.auth, ACCEPT))
            .await?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if tag_or_digest.contains(':') && tag_or_digest != digest {
            return Err(FetchError::Corrupt {
                host: self.endpoint.host.clone(),
                digest: tag_or_digest.to_string(),
                detail: format!("manifest hashes to {digest}"),
            });
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            #[serde(default)]
            media_type: Option<String>,
            #[serde(default)]
            manifests: Option<serde_json::Value>,
        }
        let probe: Probe = serde_json::from_slice(&bytes).map_err(|e| {
            FetchError::Invalid(format!("manifest {tag_or_digest} is not JSON: {e}"))
        })?;
        let media = match probe.media_type {
            Some(m) => m,
            None if probe.manifests.is_some() => MEDIA_OCI_INDEX.to_string(),
            None => MEDIA_OCI_MANIFEST.to_string(),
        };
        Ok((bytes, digest, media))
    }

    async fn resolve(
        &self,
        tag_or_digest: &str,
    ) -> Result<(String, Manifest, String, u64), FetchError> {
        let (bytes, digest, media) = self.manifest(tag_or_digest).await?;
        let mut size = bytes.len() as u64;
        let (bytes, manifest_digest, media) = match media.as_str() {
            MEDIA_OCI_INDEX | MEDIA_DOCKER_LIST => {
                let index: Index = serde_json::from_slice(&bytes)
                    .map_err(|e| FetchError::Invalid(format!("manifest list {digest}: {e}")))?;
                let chosen = select_platform(&index).map_err(|detail| FetchError::NotFound {
                    host: self.endpoint.host.clone(),
                    detail,
                })?;
                let (b, d, m) = self.manifest(&chosen).await?;
                size += b.len() as u64;
                (b, d, m)
            }
            _ => (bytes, digest.clone(), media),
        };
        if media != MEDIA_OCI_MANIFEST && media != MEDIA_DOCKER_MANIFEST {
            return Err(FetchError::Invalid(format!(
                "unsupported manifest media type {media:?}"
            )));
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| FetchError::Invalid(format!("manifest {manifest_digest}: {e}")))?;
        Ok((digest, manifest, manifest_digest, size))
    }

    /// A small blob read whole and verified (the image config).
    pub async fn blob(&self, desc: &OciDescriptor) -> Result<Vec<u8>, FetchError> {
        use futures_util::TryStreamExt;
        let mut stream = self.blob_stream(desc).await?;
        let mut out = Vec::with_capacity(desc.size.clamp(0, 1 << 20) as usize);
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| FetchError::Unreachable {
                host: self.endpoint.host.clone(),
                detail: e.to_string(),
            })
            .or_else(|e| {
                if out.len() as i64 == desc.size {
                    Ok(None)
                } else {
                    Err(e)
                }
            })?
        {
            out.extend_from_slice(&chunk);
        }
        let got = format!("sha256:{}", hex::encode(Sha256::digest(&out)));
        if got != desc.digest {
            return Err(FetchError::Corrupt {
                host: self.endpoint.host.clone(),
                digest: desc.digest.clone(),
                detail: format!("blob hashes to {got}"),
            });
        }
        Ok(out)
    }

    /// A layer as a byte stream; the caller verifies its digest while unpacking.
    pub async fn blob_stream(
        &self,
        desc: &OciDescriptor,
    ) -> Result<BoxStream<'static, std::io::Result<bytes::Bytes>>, FetchError> {
        let r = self.reference(&desc.digest);
        let s = self
            .retry(|| self.client.pull_blob_stream(&r, desc))
            .await?;
        Ok(s.stream)
    }
}

fn select_platform(index: &Index) -> Result<String, String> {
    let (os, arch, variant) = host_platform();
    let mut seen = Vec::new();
    let mut fallback = None;
    for m in &index.manifests {
        let Some(p) = &m.platform else { continue };
        seen.push(match &p.variant {
            Some(v) => format!("{}/{}/{}", p.os, p.architecture, v),
            None => format!("{}/{}", p.os, p.architecture),
        });
        if p.os != os || p.architecture != arch {
            continue;
        }
        match (&p.variant, variant) {
            (Some(v), Some(want)) if v == want => return Ok(m.digest.clone()),
            (None, _) | (Some(_), None) => return Ok(m.digest.clone()),
            _ => {
                fallback.get_or_insert(m.digest.clone());
            }
        }
    }
    fallback.ok_or_else(|| {
        let want = match variant {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        };
        format!(
            "no manifest for platform {want} (the image has: {})",
            if seen.is_empty() {
                "none".to_string()
            } else {
                seen.join(", ")
            }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(platforms: &[(&str, &str, Option<&str>)]) -> Index {
        Index {
            manifests: platforms
                .iter()
                .enumerate()
                .map(|(i, (os, arch, v))| IndexEntry {
                    digest: format!("d{i}"),
                    platform: Some(Platform {
                        os: os.to_string(),
                        architecture: arch.to_string(),
                        variant: v.map(str::to_string),
                    }),
                })
                .collect(),
        }
    }

    #[test]
    fn picks_host_platform_not_decoy() {
        let (_, arch, _) = host_platform();
        let i = index(&[("linux", "s390x", None), ("linux", arch, None)]);
        assert_eq!(select_platform(&i).unwrap(), "d1");
    }

    #[test]
    fn other_platform_only_is_not_found_and_lists_what_exists() {
        let i = index(&[("linux", "s390x", None), ("windows", "amd64", None)]);
        let msg = select_platform(&i).unwrap_err();
        assert!(
            msg.contains("linux/s390x") && msg.contains("windows/amd64"),
            "{msg}"
        );
    }

    #[test]
    fn credentials_never_print() {
        let c = Credentials::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", Credentials::Bearer("tok".into())).contains("tok"));
    }
}
