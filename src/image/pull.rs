//! The pull pipeline: resolve → fetch config → per layer (in parallel, shared between
//! concurrent pulls) download → verify → decompress → unpack, as one stream → commit the
//! image and its layers in one DB transaction.

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::join_all;
use oci_client::manifest::OciDescriptor;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::registry::Session;
use super::{Credentials, Error, ImageRecord, ImageService, Inner, Reference, Result, unpack};
use crate::store::LayerRecord;

/// Layers of one image unpacked at once; more gains nothing on 2 cores and a local registry.
const PARALLEL_LAYERS: usize = 3;

#[derive(Deserialize)]
struct ConfigRootfs {
    rootfs: Rootfs,
}

#[derive(Deserialize)]
struct Rootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// `ChainID(L0) = DiffID(L0)`, `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

impl ImageService {
    /// Pulls `image` (already normalised). Concurrent pulls of the same reference share
    /// one run; if every caller goes away, the pull is aborted and leaves nothing behind.
    pub async fn pull(&self, image: &Reference, creds: Credentials) -> Result<ImageRecord> {
        let key = image.to_string();
        let inner = self.inner.clone();
        let img = image.clone();
        self.inner
            .pulls
            .run(
                &key,
                move || async move { pull_image(inner, img, creds).await },
            )
            .await
            .unwrap_or(Err(Error::Cancelled { image: key }))
    }
}

async fn pull_image(
    inner: Arc<Inner>,
    image: Reference,
    creds: Credentials,
) -> Result<ImageRecord> {
    let name = image.to_string();
    let resolved = inner
        .registries
        .resolve(&image, &creds)
        .await
        .map_err(|e| Error::fetch(&name, e))?;
    let session = resolved.session;
    let manifest = resolved.manifest;
    tracing::debug!(image = %name, endpoint = %session.endpoint.host, manifest = %resolved.manifest_digest, "resolved");

    let config = session
        .blob(&manifest.config)
        .await
        .map_err(|e| Error::fetch(&name, e))?;
    let id = manifest.config.digest.clone();
    let config = String::from_utf8(config).map_err(|_| Error::Invalid {
        image: name.clone(),
        detail: "image config is not UTF-8".into(),
    })?;
    let rootfs: ConfigRootfs = serde_json::from_str(&config).map_err(|e| Error::Invalid {
        image: name.clone(),
        detail: format!("image config {id}: {e}"),
    })?;
    let diff_ids = rootfs.rootfs.diff_ids;
    if diff_ids.len() != manifest.layers.len() {
        return Err(Error::Invalid {
            image: name,
            detail: format!(
                "manifest has {} layers but the config lists {} diff IDs",
                manifest.layers.len(),
                diff_ids.len()
            ),
        });
    }
    let chains = chain_ids(&diff_ids);
    let mut active = inner.activate(&chains);

    let mut layers = Vec::with_capacity(chains.len());
    for batch in manifest
        .layers
        .iter()
        .zip(&diff_ids)
        .zip(&chains)
        .collect::<Vec<_>>()
        .chunks(PARALLEL_LAYERS)
    {
        let jobs = batch
            .iter()
            .map(|((desc, diff_id), chain)| layer(&inner, &session, &name, desc, diff_id, chain));
        // Every layer settles (and cleans up after itself) before an error is reported.
        for r in join_all(jobs).await {
            layers.push(r?);
        }
    }

    let size = resolved.manifests_size
        + manifest.config.size.max(0) as u64
        + manifest
            .layers
            .iter()
            .map(|l| l.size.max(0) as u64)
            .sum::<u64>();
    let mut record = ImageRecord {
        id,
        repo_tags: Vec::new(),
        repo_digests: vec![format!("{}@{}", image.name(), resolved.digest)],
        manifest_digest: resolved.manifest_digest,
        config,
        chain_ids: chains,
        size,
    };
    if image.digest.is_none() {
        record.repo_tags.push(image.to_string());
    }
    let db = inner.db.clone();
    let committed = tokio::task::spawn_blocking(move || db.commit_image(record, &layers))
        .await
        .map_err(|e| Error::internal(&name, e))?
        .map_err(|e| Error::internal(&name, e))?;
    active.committed = true;
    Ok(committed)
}

/// One layer, unpacked once however many pulls want it at the same time.
async fn layer(
    inner: &Arc<Inner>,
    session: &Session,
    image: &str,
    desc: &OciDescriptor,
    diff_id: &str,
    chain_id: &str,
) -> Result<LayerRecord> {
    if let Some(rec) = inner
        .db
        .layer(chain_id)
        .map_err(|e| Error::internal(image, e))?
        && inner.layers.dir(chain_id).is_dir()
    {
        return Ok(rec);
    }
    let (i, s, img, d, diff, chain) = (
        inner.clone(),
        session.clone(),
        image.to_string(),
        desc.clone(),
        diff_id.to_string(),
        chain_id.to_string(),
    );
    inner
        .layer_pulls
        .run(chain_id, move || async move {
            fetch_layer(i, s, img, d, diff, chain).await
        })
        .await
        .unwrap_or_else(|| {
            Err(Error::Cancelled {
                image: image.to_string(),
            })
        })
}

async fn fetch_layer(
    inner: Arc<Inner>,
    session: Session,
    image: String,
    desc: OciDescriptor,
    diff_id: String,
    chain_id: String,
) -> Result<LayerRecord> {
    let compression =
        Compression::from_media_type(&desc.media_type).ok_or_else(|| Error::Invalid {
            image: image.clone(),
            detail: format!(
                "layer {} has unsupported media type {:?}",
                desc.digest, desc.media_type
            ),
        })?;
    let mut stream = session
        .blob_stream(&desc)
        .await
        .map_err(|e| Error::fetch(&image, e))?;
    let tmp = inner
        .layers
        .tmp_dir(&chain_id)
        .map_err(|e| Error::internal(&image, e))?;

    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(16);
    let expected_diff = diff_id.clone();
    let unpacker = tokio::task::spawn_blocking(move || {
        let res = unpack_stream(rx, compression, tmp.path(), &expected_diff);
        res.map(|stats| (tmp, stats))
    });

    // Feed the unpacker while hashing what the registry sends.
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut verdict: Option<Error> = None;
    let mut unpacker_gone = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => {
                hasher.update(&b);
                received += b.len() as u64;
                if tx.send(Ok(b)).await.is_err() {
                    unpacker_gone = true; // it failed; its error tells why
                    break;
                }
            }
            Err(e) => {
                // oci-client ends a stream whose digest is wrong with an error; our own
                // hash below classifies it.
                if received < desc.size as u64 {
                    verdict = Some(Error::Unavailable {
                        image: image.clone(),
                        detail: format!("layer {}: download broke off: {e}", desc.digest),
                    });
                }
                break;
            }
        }
    }
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    if verdict.is_none() && !unpacker_gone && (got != desc.digest || received != desc.size as u64) {
        verdict = Some(Error::Corrupt {
            image: image.clone(),
            detail: format!(
                "layer {} ({} bytes) arrived as {received} bytes hashing to {got}",
                desc.digest, desc.size
            ),
        });
    }
    if let Some(err) = &verdict {
        let _ = tx.send(Err(std::io::Error::other(err.to_string()))).await;
    }
    drop(tx);
    let unpacked = unpacker.await.map_err(|e| Error::internal(&image, e))?;
    if let Some(err) = verdict {
        return Err(err);
    }
    let (tmp, stats) = unpacked.map_err(|e| e.into_error(&image, &desc.digest))?;
    let dest = inner.layers.dir(&chain_id);
    tokio::task::spawn_blocking(move || tmp.persist(&dest))
        .await
        .map_err(|e| Error::internal(&image, e))?
        .map_err(|e| Error::internal(&image, e))?;
    tracing::debug!(image = %image, layer = %desc.digest, bytes = stats.bytes, "layer unpacked");
    Ok(LayerRecord {
        chain_id,
        diff_id,
        digest: desc.digest.clone(),
        size: desc.size.max(0) as u64,
        unpacked_bytes: stats.bytes,
        inodes: stats.inodes,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
    /// Unknown to the media type (e.g. Docker's plain diff type); decided by magic bytes.
    Sniff,
}

impl Compression {
    fn from_media_type(m: &str) -> Option<Compression> {
        let base = m
            .strip_prefix("application/vnd.oci.image.layer.nondistributable.v1.tar")
            .map(|rest| format!("application/vnd.oci.image.layer.v1.tar{rest}"));
        let m = base.as_deref().unwrap_or(m);
        Some(match m {
            "application/vnd.oci.image.layer.v1.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Compression::Zstd,
            "application/vnd.docker.image.rootfs.diff.tar" | "" => Compression::Sniff,
            _ => return None,
        })
    }
}

enum UnpackError {
    /// The stream itself failed (the feeder's verdict, or a broken download).
    Stream(std::io::Error),
    Decompress(std::io::Error),
    Unpack(unpack::Error),
    DiffId {
        got: String,
        want: String,
    },
}

impl UnpackError {
    fn into_error(self, image: &str, digest: &str) -> Error {
        let image = image.to_string();
        match self {
            UnpackError::Stream(e) => Error::Unavailable {
                image,
                detail: format!("layer {digest}: {e}"),
            },
            UnpackError::Decompress(e) => Error::Corrupt {
                image,
                detail: format!("layer {digest} cannot be decompressed: {e}"),
            },
            UnpackError::Unpack(unpack::Error::Tar(e)) => Error::Corrupt {
                image,
                detail: format!("layer {digest} is not a valid tar stream: {e}"),
            },
            UnpackError::Unpack(
                e @ (unpack::Error::Escape { .. } | unpack::Error::Unsupported { .. }),
            ) => Error::Invalid {
                image,
                detail: format!("layer {digest}: {e}"),
            },
            UnpackError::Unpack(e) => Error::Internal {
                image,
                detail: format!("layer {digest}: {e}"),
            },
            UnpackError::DiffId { got, want } => Error::Corrupt {
                image,
                detail: format!("layer {digest} uncompresses to {got}, the config says {want}"),
            },
        }
    }
}

/// Reads the bytes the feeder sends; an `Err` item aborts the unpack.
struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

/// Hashes what passes through: the uncompressed stream's digest is the layer's diff ID.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn unpack_stream(
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    compression: Compression,
    dest: &std::path::Path,
    diff_id: &str,
) -> std::result::Result<unpack::UnpackStats, UnpackError> {
    let mut src = BufReader::with_capacity(
        256 << 10,
        ChannelReader {
            rx,
            cur: Bytes::new(),
        },
    );
    let compression = match compression {
        Compression::Sniff => {
            let head = src.fill_buf().map_err(UnpackError::Stream)?;
            if head.starts_with(&[0x1f, 0x8b]) {
                Compression::Gzip
            } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                Compression::Zstd
            } else {
                Compression::None
            }
        }
        c => c,
    };
    let decoder: Box<dyn Read> = match compression {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(src)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(src).map_err(UnpackError::Decompress)?,
        ),
        _ => Box::new(src),
    };
    let mut hashing = HashingReader {
        inner: decoder,
        hasher: Sha256::new(),
    };
    let stats = unpack::unpack_layer(&mut hashing, dest).map_err(|e| match e {
        // An I/O error while reading the tar is the stream or the decompressor failing.
        unpack::Error::Tar(io) if is_decompress_error(&io) => UnpackError::Decompress(io),
        other => UnpackError::Unpack(other),
    })?;
    let got = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
    if got != diff_id {
        return Err(UnpackError::DiffId {
            got,
            want: diff_id.to_string(),
        });
    }
    Ok(stats)
}

fn is_decompress_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::InvalidInput
            | std::io::ErrorKind::InvalidData
            | std::io::ErrorKind::UnexpectedEof
    ) || e.to_string().contains("zstd")
        || e.to_string().contains("corrupt")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let ids = chain_ids(&[d('a'), d('b')]);
        assert_eq!(ids[0], d('a'));
        let want = hex::encode(Sha256::digest(format!("{} {}", d('a'), d('b')).as_bytes()));
        assert_eq!(ids[1], format!("sha256:{want}"));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn media_types() {
        use Compression::*;
        let c = Compression::from_media_type;
        assert_eq!(c("application/vnd.oci.image.layer.v1.tar+gzip"), Some(Gzip));
        assert_eq!(
            c("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Gzip)
        );
        assert_eq!(c("application/vnd.oci.image.layer.v1.tar+zstd"), Some(Zstd));
        assert_eq!(c("application/vnd.oci.image.layer.v1.tar"), Some(None));
        assert_eq!(
            c("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"),
            Some(Gzip)
        );
        assert_eq!(
            c("application/vnd.oci.image.layer.v1.tar+lz4"),
            Option::None
        );
    }
}
