//! berth's test images, built deterministically from Debian's `busybox-static`
//! (`/bin/busybox`) and pushed to a plain-HTTP registry.
//!
//! Used as a module (no `main`) by `e2e/bin_testimg.rs` (the `berth-testimg` binary) and by
//! the registry harness `tests/common/registry.rs`. Every build is byte-reproducible: tar
//! entries in a fixed order with mtime 2024-01-01T00:00:00Z, uid/gid 0 unless stated, gzip
//! header mtime 0, JSON with sorted keys, and synthetic data from a seeded xorshift
//! generator. The only input is `/bin/busybox` (override with `BERTH_TESTIMG_BUSYBOX`), so
//! the digests change only when Debian's busybox binary (or this file) does.
//!
//! "host" below is the architecture berth runs on (linux/amd64 here); the "decoy" is
//! linux/arm64 (linux/amd64 on an arm64 host). A decoy manifest holds a single layer whose
//! only content is `/WRONG-PLATFORM`: finding that file in a rootfs means platform
//! selection failed.
//!
//! | reference | shape | what it is for |
//! | --- | --- | --- |
//! | `berth-test/busybox:latest` | Docker manifest **list**: host entry = an OCI manifest (see below), decoy entry = a Docker schema2 manifest | the main image: 4 layers — (1) gzip: busybox with hard links (`sh echo sleep cat`) and symlinks (`ls id true env` and many more applets), `/etc/passwd` (root, www-data 33, tester 1000, nobody 65534), `/etc/group` (tester also in staff 50 and users 100), `/tmp` 1777, `/root` 0700, `/var/spool/x/{a,b}`; (2) gzip: `/etc/layer2`, `/opt/data/file{1,2}`, a fifo `/opt/fifo`, setuid `/usr/local/bin/suid` (04755, uid 0), `/home/tester/own` owned 1000:1000; (3) **zstd**: whiteout `/opt/data/.wh.file1`, opaque `/var/spool/x/.wh..wh..opq` + `/var/spool/x/c`; (4) **uncompressed** tar: `/etc/layer4`. Expected rootfs: `/opt/data/file2` only, `/var/spool/x/c` only. Config: `Env=[PATH=…]`, `Cmd=["sh"]`, no `User`, `WorkingDir=/` |
//! | `berth-test/busybox-oci:latest` | OCI index: host + decoy, OCI manifests | OCI index and OCI media types; layers (1)+(2) of busybox, gzip |
//! | `berth-test/single:latest` | plain Docker schema2 manifest | no list; 1 gzip layer (= busybox layer 1); `User="1002"` → uid 1002 |
//! | `berth-test/user-name:latest` | plain OCI manifest (no index) | `User="www-data:33"` → username `www-data`; 1 gzip layer (= busybox layer 1) |
//! | `berth-test/tags:1`, `:2`, `:3` | plain Docker schema2 | one image under three tags (RemoveImage by tag/ID/digest); busybox layer 1 + its own layer `/etc/tags-image` |
//! | `berth-test/arm64-only:latest` | OCI index with only the decoy entry | "no image for this platform" (`NotFound`) |
//! | `berth-test/escape-dotdot:latest` | Docker schema2 | layer 2 holds `escape/ok` then an entry named `../escaped`: must be rejected |
//! | `berth-test/escape-symlink:latest` | Docker schema2 | layer 2 holds symlink `evil -> /` then file `evil/tmp/berth-escaped-symlink`: must be rejected, and [`ESCAPE_SYMLINK_HOST_FILE`] must never appear on the host |
//! | `berth-test/truncated:latest` | Docker schema2 | layer 2 is a gzip stream cut in the middle; its digest and size in the manifest match the cut bytes, so the registry serves it and only decompression fails |
//! | `berth-test/badblob:latest` | Docker schema2 | valid; its **last** layer (unique to this image) is the one a test tampers with on disk (`Registry::corrupt_blob`, which keeps the gzip stream decodable so that only digest verification can catch it) |
//! | `berth-test/bench:latest` | Docker schema2 | pull benchmark: busybox layer 1 + 5 gzip layers of 6 MiB deterministic xorshift data each (6 bits of entropy a byte: gzip has to decode real Huffman codes, ~25 MB on the wire) |
//! | `berth-test/pause:latest` | Docker schema2 | a sandbox ("pause") image for runtimes that run one (containerd in `hack/bench.sh`): busybox layer 1, `Cmd=["sleep","2147483647"]`, `User="65535:65535"` as upstream pause; SIGKILL ends it, as containerd stops sandboxes |
//!
//! Why the host entry of the busybox list is an OCI manifest: zstd has no Docker media type
//! (`application/vnd.docker.image.rootfs.diff.tar.zstd` does not exist), and BuildKit, the
//! tool that produces zstd images, switches the manifest to OCI media types whenever a layer
//! is zstd. A list (Docker or OCI) names each child's media type in its descriptor:
//! distribution (Debian's `docker-registry` 2.8) only checks that each child manifest exists
//! in the repository, and containerd resolves each child by its own media type, so a Docker
//! list with one OCI and one Docker child is accepted by both, and it makes berth handle
//! both child kinds. The list itself stays Docker schema2 to cover that media type;
//! `busybox-oci` covers the OCI index.
//!
//! The build takes well over a second in a debug build (hashing and compressing ~30 MB), so
//! it is cached on disk under `target/berth-testimg/<key>/` (key: sha256 of the busybox
//! binary and of this source file; `CARGO_TARGET_DIR` is honoured; `BERTH_TESTIMG_NO_CACHE=1`
//! turns the cache off) and in memory for the life of the process.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use sha2::{Digest, Sha256};

/// Where the busybox binary comes from (Debian's `busybox-static`).
pub const BUSYBOX_PATH: &str = "/bin/busybox";
/// Every tar entry's mtime: 2024-01-01T00:00:00Z.
pub const MTIME: u64 = 1_704_067_200;
/// `created` of every config and history entry.
pub const CREATED: &str = "2024-01-01T00:00:00Z";
/// `PATH` in every image config.
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub const BUSYBOX: &str = "berth-test/busybox:latest";
pub const BUSYBOX_OCI: &str = "berth-test/busybox-oci:latest";
pub const SINGLE: &str = "berth-test/single:latest";
pub const USER_NAME: &str = "berth-test/user-name:latest";
pub const TAGS: [&str; 3] = [
    "berth-test/tags:1",
    "berth-test/tags:2",
    "berth-test/tags:3",
];
pub const ARM64_ONLY: &str = "berth-test/arm64-only:latest";
pub const ESCAPE_DOTDOT: &str = "berth-test/escape-dotdot:latest";
pub const ESCAPE_SYMLINK: &str = "berth-test/escape-symlink:latest";
pub const TRUNCATED: &str = "berth-test/truncated:latest";
pub const BADBLOB: &str = "berth-test/badblob:latest";
pub const BENCH: &str = "berth-test/bench:latest";
pub const PAUSE: &str = "berth-test/pause:latest";

/// The host file that `escape-symlink` tries to create through `evil -> /`.
pub const ESCAPE_SYMLINK_HOST_FILE: &str = "/tmp/berth-escaped-symlink";
/// Content of the only file (`/WRONG-PLATFORM`) of every decoy image.
pub const WRONG_PLATFORM_CONTENT: &str =
    "berth: this is the decoy platform's image; platform selection failed\n";

/// Media types.
pub mod media {
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
}

/// What was built and pushed under one reference, for a test's assertions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestImage {
    /// `berth-test/busybox:latest` (no registry host: prefix it with `ADDR/`).
    pub reference: String,
    /// `berth-test/busybox`.
    pub repository: String,
    /// `latest`.
    pub tag: String,
    /// Media type of the tagged manifest (a list/index or a manifest).
    pub media_type: String,
    /// Digest of the tagged manifest (the list/index for multi-platform images): what
    /// `repo_digests` shows (`ADDR/berth-test/busybox@<manifest_digest>`).
    pub manifest_digest: String,
    /// Digest of the host platform's manifest (== `manifest_digest` without a list).
    pub platform_manifest_digest: String,
    /// Config digest: the image ID the runtime must report.
    pub config_digest: String,
    /// Layer blob digests (compressed, as in the manifest), bottom first.
    pub layer_digests: Vec<String>,
    /// Layer media types, bottom first.
    pub layer_media_types: Vec<String>,
    /// `rootfs.diff_ids` of the config (uncompressed tar digests), bottom first.
    pub diff_ids: Vec<String>,
    /// From the config's `User` as the CRI says: numeric user part → uid.
    pub uid: Option<i64>,
    /// From the config's `User`: non-numeric user part → name (else empty).
    pub username: String,
    /// The config's raw `User`.
    pub user: String,
    /// As containerd reports it: sizes of the tagged manifest, the host platform's manifest
    /// (if different), the config and the compressed layers, added.
    pub size: u64,
    /// Sum of the compressed layer sizes.
    pub layers_size: u64,
    /// `linux/amd64` (the host); for `arm64-only` the decoy platform, the only one it has.
    pub platform: String,
    /// Whether a correct runtime can pull it (false for the bad-input images).
    pub pullable: bool,
}

/// One content-addressed blob.
#[derive(Clone, Debug)]
pub struct Blob {
    pub digest: String,
    pub media_type: String,
    pub data: Bytes,
}

impl Blob {
    fn new(media_type: &str, data: impl Into<Bytes>) -> Blob {
        let data = data.into();
        Blob {
            digest: sha256_digest(&data),
            media_type: media_type.to_string(),
            data,
        }
    }
    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }
}

/// An image as built in memory, ready to push.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub info: TestImage,
    /// Layers and configs of every platform, pushed first.
    pub blobs: Vec<Blob>,
    /// Platform manifests of a list/index, pushed by digest before `manifest`.
    pub children: Vec<Blob>,
    /// The manifest pushed under the tag.
    pub manifest: Blob,
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The host's architecture in OCI terms.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The decoy platform: (architecture, variant).
pub fn decoy_arch() -> (&'static str, Option<&'static str>) {
    if host_arch() == "arm64" {
        ("amd64", None)
    } else {
        ("arm64", Some("v8"))
    }
}

fn host_variant() -> Option<&'static str> {
    if host_arch() == "arm64" {
        Some("v8")
    } else {
        None
    }
}

// ---------------------------------------------------------------- tar layers

enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(&'static str),
    Hardlink(&'static str),
    Fifo,
}

struct Entry {
    /// Raw entry name, written as is (directories end with `/`).
    name: String,
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
}

fn dir(name: &str, mode: u32) -> Entry {
    Entry {
        name: format!("{}/", name.trim_end_matches('/')),
        kind: Kind::Dir,
        mode,
        uid: 0,
        gid: 0,
    }
}
fn file(name: &str, mode: u32, data: impl Into<Vec<u8>>) -> Entry {
    Entry {
        name: name.into(),
        kind: Kind::File(data.into()),
        mode,
        uid: 0,
        gid: 0,
    }
}
fn symlink(name: &str, target: &'static str) -> Entry {
    Entry {
        name: name.into(),
        kind: Kind::Symlink(target),
        mode: 0o777,
        uid: 0,
        gid: 0,
    }
}
fn hardlink(name: &str, target: &'static str) -> Entry {
    Entry {
        name: name.into(),
        kind: Kind::Hardlink(target),
        mode: 0o755,
        uid: 0,
        gid: 0,
    }
}
fn owned(mut e: Entry, uid: u64, gid: u64) -> Entry {
    e.uid = uid;
    e.gid = gid;
    e
}

fn put_raw(field: &mut [u8], value: &str) {
    let b = value.as_bytes();
    assert!(
        b.len() < field.len(),
        "tar name too long for the test images: {value}"
    );
    field.fill(0);
    field[..b.len()].copy_from_slice(b);
}

/// A tar stream of `entries` in the given order (GNU headers, names written raw so that
/// malicious names such as `../escaped` can be produced, which `tar::Header::set_path`
/// refuses).
fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        put_raw(&mut h.as_old_mut().name, &e.name);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(MTIME);
        h.set_device_major(0).unwrap();
        h.set_device_minor(0).unwrap();
        let data: &[u8] = match &e.kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                &[]
            }
            Kind::File(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                d
            }
            Kind::Symlink(t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                put_raw(&mut h.as_old_mut().linkname, t);
                &[]
            }
            Kind::Hardlink(t) => {
                h.set_entry_type(tar::EntryType::Link);
                put_raw(&mut h.as_old_mut().linkname, t);
                &[]
            }
            Kind::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                &[]
            }
        };
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).expect("tar to memory");
    }
    b.into_inner().expect("tar to memory")
}

/// Like [`tar_of`] with the entries sorted by name (parents before children).
fn sorted_tar(mut entries: Vec<Entry>) -> Vec<u8> {
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    tar_of(&entries)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Compression {
    None,
    Gzip(u32),
    Zstd,
}

#[derive(Clone, Debug)]
struct Layer {
    blob: Bytes,
    digest: String,
    diff_id: String,
    compression: Compression,
}

fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::GzBuilder::new().mtime(0).write(
        Vec::with_capacity(data.len() / 2),
        flate2::Compression::new(level),
    );
    e.write_all(data).expect("gzip to memory");
    e.finish().expect("gzip to memory")
}

fn layer(tar: Vec<u8>, compression: Compression) -> Layer {
    let diff_id = sha256_digest(&tar);
    let blob: Vec<u8> = match compression {
        Compression::None => tar,
        Compression::Gzip(level) => gzip(&tar, level),
        Compression::Zstd => zstd::stream::encode_all(&tar[..], 3).expect("zstd to memory"),
    };
    Layer {
        digest: sha256_digest(&blob),
        blob: blob.into(),
        diff_id,
        compression,
    }
}

fn layer_media_type(docker: bool, c: Compression) -> &'static str {
    match (docker, c) {
        (true, Compression::Gzip(_)) => media::DOCKER_LAYER_GZIP,
        (true, _) => panic!("test images: Docker schema2 has no media type for {c:?} layers"),
        (false, Compression::None) => media::OCI_LAYER_TAR,
        (false, Compression::Gzip(_)) => media::OCI_LAYER_GZIP,
        (false, Compression::Zstd) => media::OCI_LAYER_ZSTD,
    }
}

/// Seeded xorshift64* bytes, each with 6 bits of entropy (64 distinct values): gzip
/// shrinks them to about 3/4 by Huffman coding alone, as it does real binaries' worst
/// parts, and decoding them costs real work.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        for i in 0..8 {
            out.push(b'0' + ((v >> (i * 8)) as u8 & 0x3f));
        }
    }
    out.truncate(len);
    out
}

// ---------------------------------------------------------------- layer contents

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
www-data:x:33:33:www-data:/var/www:/bin/sh\n\
tester:x:1000:1000:tester:/home/tester:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n";

const GROUP: &str = "root:x:0:\n\
www-data:x:33:\n\
staff:x:50:tester\n\
users:x:100:tester\n\
tester:x:1000:\n\
nogroup:x:65534:\n";

/// Applets linked with hard links (the brief's four) and with symlinks.
const HARDLINK_APPLETS: [&str; 4] = ["cat", "echo", "sh", "sleep"];
const SYMLINK_APPLETS: &[&str] = &[
    "[", "awk", "basename", "chgrp", "chmod", "chown", "cp", "cut", "date", "dd", "df", "dirname",
    "du", "env", "false", "find", "free", "grep", "head", "hostname", "id", "ip", "kill",
    "killall", "ln", "ls", "mkdir", "mkfifo", "mknod", "mount", "mv", "nc", "netstat", "nproc",
    "nslookup", "pidof", "ping", "printf", "ps", "pwd", "readlink", "rm", "rmdir", "sed", "seq",
    "sort", "stat", "sync", "tail", "tee", "test", "timeout", "top", "touch", "tr", "true",
    "umount", "uname", "uptime", "usleep", "wc", "wget", "which", "whoami", "xargs", "yes",
];

fn base_tar(busybox: &[u8]) -> Vec<u8> {
    let mut e = vec![
        dir("bin", 0o755),
        file("bin/busybox", 0o755, busybox.to_vec()),
        dir("dev", 0o755),
        dir("etc", 0o755),
        file("etc/group", 0o644, GROUP),
        file("etc/passwd", 0o644, PASSWD),
        dir("home", 0o755),
        dir("proc", 0o555),
        dir("root", 0o700),
        dir("sys", 0o555),
        dir("tmp", 0o1777),
        dir("usr", 0o755),
        dir("var", 0o755),
        dir("var/spool", 0o755),
        dir("var/spool/x", 0o755),
        file("var/spool/x/a", 0o644, "a\n"),
        file("var/spool/x/b", 0o644, "b\n"),
    ];
    for a in HARDLINK_APPLETS {
        e.push(hardlink(&format!("bin/{a}"), "bin/busybox"));
    }
    for &a in SYMLINK_APPLETS {
        e.push(symlink(&format!("bin/{a}"), "busybox"));
    }
    sorted_tar(e)
}

fn layer2_tar() -> Vec<u8> {
    sorted_tar(vec![
        dir("etc", 0o755),
        file("etc/layer2", 0o644, "layer2\n"),
        dir("home", 0o755),
        owned(dir("home/tester", 0o755), 1000, 1000),
        owned(
            file("home/tester/own", 0o644, "owned by tester\n"),
            1000,
            1000,
        ),
        dir("opt", 0o755),
        dir("opt/data", 0o755),
        file("opt/data/file1", 0o644, "file1\n"),
        file("opt/data/file2", 0o644, "file2\n"),
        Entry {
            name: "opt/fifo".into(),
            kind: Kind::Fifo,
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
        dir("usr", 0o755),
        dir("usr/local", 0o755),
        dir("usr/local/bin", 0o755),
        file("usr/local/bin/suid", 0o4755, "#!/bin/sh\necho suid\n"),
    ])
}

fn layer3_tar() -> Vec<u8> {
    sorted_tar(vec![
        dir("opt", 0o755),
        dir("opt/data", 0o755),
        file("opt/data/.wh.file1", 0o644, ""),
        dir("var", 0o755),
        dir("var/spool", 0o755),
        dir("var/spool/x", 0o755),
        file("var/spool/x/.wh..wh..opq", 0o644, ""),
        file("var/spool/x/c", 0o644, "c\n"),
    ])
}

fn layer4_tar() -> Vec<u8> {
    sorted_tar(vec![
        dir("etc", 0o755),
        file("etc/layer4", 0o644, "layer4\n"),
    ])
}

fn decoy_tar() -> Vec<u8> {
    tar_of(&[file("WRONG-PLATFORM", 0o644, WRONG_PLATFORM_CONTENT)])
}

// ---------------------------------------------------------------- configs and manifests

fn to_json(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec_pretty(v).expect("json")
}

struct Platform {
    arch: &'static str,
    variant: Option<&'static str>,
    config: Blob,
    layers: Vec<(Layer, &'static str)>,
    manifest: Blob,
    user: String,
}

/// One platform's image: config + manifest (Docker schema2 or OCI).
fn platform_image(
    docker: bool,
    arch: &'static str,
    variant: Option<&'static str>,
    layers: &[(&Layer, &str)],
    user: &str,
    cmd: &[&str],
    label: &str,
) -> Platform {
    let mut cfg = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "created": CREATED,
        "config": {
            "Env": [PATH_ENV],
            "Cmd": cmd,
            "WorkingDir": "/",
            "Labels": { "io.berth.test.image": label },
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|(l, _)| l.diff_id.clone()).collect::<Vec<_>>(),
        },
        "history": layers.iter().map(|(_, what)| serde_json::json!({
            "created": CREATED,
            "created_by": format!("berth-testimg: {what}"),
        })).collect::<Vec<_>>(),
    });
    if let Some(v) = variant {
        cfg["variant"] = v.into();
    }
    if !user.is_empty() {
        cfg["config"]["User"] = user.into();
    }
    let config = Blob::new(
        if docker {
            media::DOCKER_CONFIG
        } else {
            media::OCI_CONFIG
        },
        to_json(&cfg),
    );
    let descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|(l, _)| {
            serde_json::json!({
                "mediaType": layer_media_type(docker, l.compression),
                "size": l.blob.len(),
                "digest": l.digest,
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": if docker { media::DOCKER_MANIFEST } else { media::OCI_MANIFEST },
        "config": { "mediaType": config.media_type, "size": config.size(), "digest": config.digest },
        "layers": descs,
    });
    let manifest = Blob::new(
        if docker {
            media::DOCKER_MANIFEST
        } else {
            media::OCI_MANIFEST
        },
        to_json(&manifest),
    );
    Platform {
        arch,
        variant,
        config,
        layers: layers
            .iter()
            .map(|(l, _)| ((*l).clone(), layer_media_type(docker, l.compression)))
            .collect(),
        manifest,
        user: user.to_string(),
    }
}

fn index(docker: bool, platforms: &[&Platform]) -> Blob {
    let entries: Vec<serde_json::Value> = platforms
        .iter()
        .map(|p| {
            let mut platform = serde_json::json!({ "architecture": p.arch, "os": "linux" });
            if let Some(v) = p.variant {
                platform["variant"] = v.into();
            }
            serde_json::json!({
                "mediaType": p.manifest.media_type,
                "size": p.manifest.size(),
                "digest": p.manifest.digest,
                "platform": platform,
            })
        })
        .collect();
    let mt = if docker {
        media::DOCKER_LIST
    } else {
        media::OCI_INDEX
    };
    Blob::new(
        mt,
        to_json(&serde_json::json!({ "schemaVersion": 2, "mediaType": mt, "manifests": entries })),
    )
}

/// uid / username from an image's `User` as containerd's CRI does.
pub fn user_fields(user: &str) -> (Option<i64>, String) {
    let name = user.split(':').next().unwrap_or("");
    if name.is_empty() {
        return (None, String::new());
    }
    match name.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, name.to_string()),
    }
}

fn split_reference(reference: &str) -> (String, String) {
    let (repo, tag) = reference
        .rsplit_once(':')
        .expect("test references have tags");
    (repo.to_string(), tag.to_string())
}

/// Assemble a BuiltImage: `shown` is the platform the TestImage describes, `others` are
/// further platforms (decoys) in the list, `list` the list/index kind if any.
fn assemble(
    reference: &str,
    list: Option<bool>,
    shown: &Platform,
    others: &[&Platform],
    pullable: bool,
) -> BuiltImage {
    let (repository, tag) = split_reference(reference);
    let mut blobs: Vec<Blob> = Vec::new();
    let mut seen = HashSet::new();
    for p in std::iter::once(shown).chain(others.iter().copied()) {
        for (l, mt) in &p.layers {
            if seen.insert(l.digest.clone()) {
                blobs.push(Blob {
                    digest: l.digest.clone(),
                    media_type: mt.to_string(),
                    data: l.blob.clone(),
                });
            }
        }
        if seen.insert(p.config.digest.clone()) {
            blobs.push(p.config.clone());
        }
    }
    let (children, manifest) = match list {
        Some(docker) => {
            let mut all = vec![shown];
            all.extend_from_slice(others);
            // host entry first, as registries list them
            let idx = index(docker, &all);
            (all.iter().map(|p| p.manifest.clone()).collect(), idx)
        }
        None => (Vec::new(), shown.manifest.clone()),
    };
    let (uid, username) = user_fields(&shown.user);
    let layers_size: u64 = shown.layers.iter().map(|(l, _)| l.blob.len() as u64).sum();
    let mut size = manifest.size() + shown.config.size() + layers_size;
    if list.is_some() {
        size += shown.manifest.size();
    }
    let info = TestImage {
        reference: reference.to_string(),
        repository,
        tag,
        media_type: manifest.media_type.clone(),
        manifest_digest: manifest.digest.clone(),
        platform_manifest_digest: shown.manifest.digest.clone(),
        config_digest: shown.config.digest.clone(),
        layer_digests: shown.layers.iter().map(|(l, _)| l.digest.clone()).collect(),
        layer_media_types: shown.layers.iter().map(|(_, mt)| mt.to_string()).collect(),
        diff_ids: shown
            .layers
            .iter()
            .map(|(l, _)| l.diff_id.clone())
            .collect(),
        uid,
        username,
        user: shown.user.clone(),
        size,
        layers_size,
        platform: match shown.variant {
            Some(v) => format!("linux/{}/{v}", shown.arch),
            None => format!("linux/{}", shown.arch),
        },
        pullable,
    };
    BuiltImage {
        info,
        blobs,
        children,
        manifest,
    }
}

// ---------------------------------------------------------------- building

/// Build every test image from `busybox` (the binary's bytes).
pub fn build_from(busybox: &[u8]) -> Vec<BuiltImage> {
    let host = host_arch();
    let hv = host_variant();
    let (decoy, dv) = decoy_arch();
    let sh: &[&str] = &["sh"];

    let base_t = base_tar(busybox);
    let base = layer(base_t, Compression::Gzip(6));
    let l2 = layer(layer2_tar(), Compression::Gzip(6));
    let l3 = layer(layer3_tar(), Compression::Zstd);
    let l4 = layer(layer4_tar(), Compression::None);
    let decoy_l = layer(decoy_tar(), Compression::Gzip(6));

    let b1 = "busybox-static /bin/busybox, applets, /etc/passwd, /etc/group";
    let mut out = Vec::new();

    // busybox: Docker list → [host: OCI manifest (gzip, gzip, zstd, tar), decoy: Docker manifest]
    let bb = platform_image(
        false,
        host,
        hv,
        &[
            (&base, b1),
            (
                &l2,
                "layer2: /etc/layer2, /opt/data, setuid file, tester's file, fifo",
            ),
            (
                &l3,
                "layer3 (zstd): whiteout /opt/data/file1, opaque /var/spool/x, /var/spool/x/c",
            ),
            (&l4, "layer4 (uncompressed): /etc/layer4"),
        ],
        "",
        sh,
        "busybox",
    );
    let decoy_cmd: &[&str] = &["/WRONG-PLATFORM"];
    let decoy_docker = platform_image(
        true,
        decoy,
        dv,
        &[(&decoy_l, "decoy: /WRONG-PLATFORM")],
        "",
        decoy_cmd,
        "decoy",
    );
    out.push(assemble(BUSYBOX, Some(true), &bb, &[&decoy_docker], true));

    // busybox-oci: OCI index → [host: OCI manifest (gzip, gzip), decoy: OCI manifest]
    let decoy_oci = platform_image(
        false,
        decoy,
        dv,
        &[(&decoy_l, "decoy: /WRONG-PLATFORM")],
        "",
        decoy_cmd,
        "decoy",
    );
    let bo = platform_image(
        false,
        host,
        hv,
        &[(&base, b1), (&l2, "layer2")],
        "",
        sh,
        "busybox-oci",
    );
    out.push(assemble(BUSYBOX_OCI, Some(false), &bo, &[&decoy_oci], true));

    // single: plain Docker schema2, User 1002
    let single = platform_image(true, host, hv, &[(&base, b1)], "1002", sh, "single");
    out.push(assemble(SINGLE, None, &single, &[], true));

    // user-name: plain OCI manifest, User www-data:33
    let un = platform_image(
        false,
        host,
        hv,
        &[(&base, b1)],
        "www-data:33",
        sh,
        "user-name",
    );
    out.push(assemble(USER_NAME, None, &un, &[], true));

    // tags: one image, three tags
    let tags_l = layer(
        sorted_tar(vec![
            dir("etc", 0o755),
            file("etc/tags-image", 0o644, "tags\n"),
        ]),
        Compression::Gzip(6),
    );
    let tags = platform_image(
        true,
        host,
        hv,
        &[(&base, b1), (&tags_l, "/etc/tags-image")],
        "",
        sh,
        "tags",
    );
    for r in TAGS {
        out.push(assemble(r, None, &tags, &[], true));
    }

    // arm64-only: OCI index with the decoy only
    out.push(assemble(ARM64_ONLY, Some(false), &decoy_oci, &[], false));

    // escape-dotdot
    let dotdot = layer(
        tar_of(&[
            dir("escape", 0o755),
            file("escape/ok", 0o644, "ok\n"),
            file("../escaped", 0o644, "escaped\n"),
        ]),
        Compression::Gzip(6),
    );
    let img = platform_image(
        true,
        host,
        hv,
        &[(&base, b1), (&dotdot, "entry ../escaped")],
        "",
        sh,
        "escape-dotdot",
    );
    out.push(assemble(ESCAPE_DOTDOT, None, &img, &[], false));

    // escape-symlink
    let evil_file = format!("evil{ESCAPE_SYMLINK_HOST_FILE}");
    let evil = layer(
        tar_of(&[
            symlink("evil", "/"),
            file(&evil_file, 0o644, "escaped through a symlink\n"),
        ]),
        Compression::Gzip(6),
    );
    let img = platform_image(
        true,
        host,
        hv,
        &[
            (&base, b1),
            (&evil, "symlink evil -> / and a file through it"),
        ],
        "",
        sh,
        "escape-symlink",
    );
    out.push(assemble(ESCAPE_SYMLINK, None, &img, &[], false));

    // truncated: a gzip stream cut in the middle, digest/size of the cut bytes
    let full_t = sorted_tar(vec![
        dir("data", 0o755),
        file("data/truncated", 0o644, pseudo_random(7, 256 * 1024)),
    ]);
    let full = layer(full_t, Compression::Gzip(6));
    let cut = full.blob.slice(..full.blob.len() / 2);
    let cut_l = Layer {
        digest: sha256_digest(&cut),
        blob: cut,
        diff_id: full.diff_id.clone(),
        compression: full.compression,
    };
    let img = platform_image(
        true,
        host,
        hv,
        &[(&base, b1), (&cut_l, "truncated gzip stream")],
        "",
        sh,
        "truncated",
    );
    out.push(assemble(TRUNCATED, None, &img, &[], false));

    // badblob: valid, last layer unique to it (tampered with by the test)
    let bad = layer(
        sorted_tar(vec![
            dir("badblob", 0o755),
            file("badblob/data", 0o644, pseudo_random(11, 64 * 1024)),
        ]),
        Compression::Gzip(6),
    );
    let img = platform_image(
        true,
        host,
        hv,
        &[(&base, b1), (&bad, "/badblob/data")],
        "",
        sh,
        "badblob",
    );
    out.push(assemble(BADBLOB, None, &img, &[], true));

    // bench: busybox + 5 × 6 MiB
    let mut bench_layers = Vec::new();
    for n in 0..5u64 {
        let mut e = vec![dir("bench", 0o755), dir(&format!("bench/{n}"), 0o755)];
        for f in 0..6u64 {
            e.push(file(
                &format!("bench/{n}/f{f}"),
                0o644,
                pseudo_random(1000 + n * 16 + f, 1 << 20),
            ));
        }
        bench_layers.push(layer(sorted_tar(e), Compression::Gzip(1)));
    }
    let mut ls: Vec<(&Layer, &str)> = vec![(&base, b1)];
    for l in &bench_layers {
        ls.push((l, "6 x 1 MiB of xorshift data"));
    }
    let img = platform_image(true, host, hv, &ls, "", sh, "bench");
    out.push(assemble(BENCH, None, &img, &[], true));

    // pause: a sandbox image that sleeps until killed
    let sleep: &[&str] = &["sleep", "2147483647"];
    let img = platform_image(
        true,
        host,
        hv,
        &[(&base, b1)],
        "65535:65535",
        sleep,
        "pause",
    );
    out.push(assemble(PAUSE, None, &img, &[], true));

    out
}

static BUILT: OnceLock<Vec<BuiltImage>> = OnceLock::new();

/// Every test image, built once per process (and cached on disk, see the module doc).
/// Panics if the busybox binary is missing (`apt-get install busybox-static`).
pub fn build_all() -> Vec<BuiltImage> {
    if let Some(b) = BUILT.get() {
        return b.clone();
    }
    BUILT
        .get_or_init(|| {
            let path = std::env::var("BERTH_TESTIMG_BUSYBOX").unwrap_or_else(|_| BUSYBOX_PATH.to_string());
            let busybox = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("berth test images need {path} (Debian package busybox-static: apt-get install busybox-static): {e}")
            });
            let key = cache_key(&busybox);
            let use_cache = std::env::var_os("BERTH_TESTIMG_NO_CACHE").is_none();
            let dir = cache_root().join(&key);
            if use_cache && let Some(imgs) = cache::load(&dir) {
                return imgs;
            }
            let imgs = build_from(&busybox);
            if use_cache {
                // best effort: a read-only target dir only costs the next run a rebuild
                let _ = cache::store(&dir, &imgs);
            }
            imgs
        })
        .clone()
}

/// The images as a table of `TestImage`s, without pushing.
pub fn list_all() -> Vec<TestImage> {
    build_all().into_iter().map(|b| b.info).collect()
}

fn cache_key(busybox: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(Sha256::digest(busybox));
    h.update(Sha256::digest(include_bytes!("testimg.rs")));
    hex::encode(h.finalize())[..24].to_string()
}

fn cache_root() -> PathBuf {
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("berth-testimg");
    }
    match option_env!("CARGO_MANIFEST_DIR") {
        Some(m) => Path::new(m).join("target").join("berth-testimg"),
        None => std::env::temp_dir().join("berth-testimg"),
    }
}

/// The on-disk cache: `<dir>/images.json` (everything but blob bytes) and
/// `<dir>/blobs/<hex>`. Written to a temporary directory and renamed into place, so
/// concurrent test processes never see half a cache.
mod cache {
    use super::*;

    fn blob_json(b: &Blob) -> serde_json::Value {
        serde_json::json!({ "digest": b.digest, "mediaType": b.media_type })
    }

    fn info_json(t: &TestImage) -> serde_json::Value {
        serde_json::json!({
            "reference": t.reference, "repository": t.repository, "tag": t.tag,
            "media_type": t.media_type, "manifest_digest": t.manifest_digest,
            "platform_manifest_digest": t.platform_manifest_digest,
            "config_digest": t.config_digest, "layer_digests": t.layer_digests,
            "layer_media_types": t.layer_media_types, "diff_ids": t.diff_ids,
            "uid": t.uid, "username": t.username, "user": t.user, "size": t.size,
            "layers_size": t.layers_size, "platform": t.platform, "pullable": t.pullable,
        })
    }

    pub(super) fn store(dir: &Path, imgs: &[BuiltImage]) -> std::io::Result<()> {
        let parent = dir.parent().expect("cache dir has a parent");
        std::fs::create_dir_all(parent)?;
        let tmp = parent.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let res = (|| {
            std::fs::create_dir_all(tmp.join("blobs"))?;
            let mut written = HashSet::new();
            let mut list = Vec::new();
            for img in imgs {
                for b in img
                    .blobs
                    .iter()
                    .chain(img.children.iter())
                    .chain(std::iter::once(&img.manifest))
                {
                    if written.insert(b.digest.clone()) {
                        std::fs::write(tmp.join("blobs").join(&b.digest[7..]), &b.data)?;
                    }
                }
                list.push(serde_json::json!({
                    "info": info_json(&img.info),
                    "blobs": img.blobs.iter().map(blob_json).collect::<Vec<_>>(),
                    "children": img.children.iter().map(blob_json).collect::<Vec<_>>(),
                    "manifest": blob_json(&img.manifest),
                }));
            }
            std::fs::write(
                tmp.join("images.json"),
                serde_json::to_vec(&list).map_err(std::io::Error::other)?,
            )?;
            std::fs::rename(&tmp, dir)
        })();
        if res.is_err() || tmp.exists() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        if res.is_ok() {
            // drop the caches of older busybox binaries / older versions of this file
            for e in std::fs::read_dir(parent)?.flatten() {
                let name = e.file_name();
                if !name.to_string_lossy().starts_with('.') && e.path() != dir {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        res
    }

    pub(super) fn load(dir: &Path) -> Option<Vec<BuiltImage>> {
        let list: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(dir.join("images.json")).ok()?).ok()?;
        let mut blobs: std::collections::HashMap<String, Bytes> = Default::default();
        let mut read_blob = |v: &serde_json::Value| -> Option<Blob> {
            let digest = v["digest"].as_str()?.to_string();
            let data = match blobs.get(&digest) {
                Some(d) => d.clone(),
                None => {
                    let d =
                        Bytes::from(std::fs::read(dir.join("blobs").join(digest.get(7..)?)).ok()?);
                    blobs.insert(digest.clone(), d.clone());
                    d
                }
            };
            Some(Blob {
                digest,
                media_type: v["mediaType"].as_str()?.to_string(),
                data,
            })
        };
        let strs = |v: &serde_json::Value| -> Option<Vec<String>> {
            v.as_array()?
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect()
        };
        let mut out = Vec::new();
        for img in &list {
            let i = &img["info"];
            let s = |k: &str| i[k].as_str().map(str::to_string);
            let info = TestImage {
                reference: s("reference")?,
                repository: s("repository")?,
                tag: s("tag")?,
                media_type: s("media_type")?,
                manifest_digest: s("manifest_digest")?,
                platform_manifest_digest: s("platform_manifest_digest")?,
                config_digest: s("config_digest")?,
                layer_digests: strs(&i["layer_digests"])?,
                layer_media_types: strs(&i["layer_media_types"])?,
                diff_ids: strs(&i["diff_ids"])?,
                uid: i["uid"].as_i64(),
                username: s("username")?,
                user: s("user")?,
                size: i["size"].as_u64()?,
                layers_size: i["layers_size"].as_u64()?,
                platform: s("platform")?,
                pullable: i["pullable"].as_bool()?,
            };
            let mut bl = Vec::new();
            for b in img["blobs"].as_array()? {
                bl.push(read_blob(b)?);
            }
            let mut ch = Vec::new();
            for b in img["children"].as_array()? {
                ch.push(read_blob(b)?);
            }
            let manifest = read_blob(&img["manifest"])?;
            out.push(BuiltImage {
                info,
                blobs: bl,
                children: ch,
                manifest,
            });
        }
        // cheap integrity check: manifests are small, hash them all
        for img in &out {
            for m in img.children.iter().chain(std::iter::once(&img.manifest)) {
                if sha256_digest(&m.data) != m.digest {
                    return None;
                }
            }
        }
        if out.is_empty() { None } else { Some(out) }
    }
}

// ---------------------------------------------------------------- pushing

/// Push every test image to the plain-HTTP registry at `addr` (`HOST:PORT`), anonymously.
pub async fn push_all(addr: &str) -> anyhow::Result<Vec<TestImage>> {
    push_all_with_auth(addr, None).await
}

/// Push every test image to `addr`, with basic-auth credentials if given.
pub async fn push_all_with_auth(
    addr: &str,
    auth: Option<(&str, &str)>,
) -> anyhow::Result<Vec<TestImage>> {
    let imgs = tokio::task::spawn_blocking(build_all)
        .await
        .context("building the test images")?;
    push_images(addr, auth, &imgs).await
}

/// Push `imgs` to `addr`: per repository its blobs (4 at a time), then the child
/// manifests by digest, then the tagged manifests; 4 repositories at a time.
pub async fn push_images(
    addr: &str,
    auth: Option<(&str, &str)>,
    imgs: &[BuiltImage],
) -> anyhow::Result<Vec<TestImage>> {
    use oci_client::client::{ClientConfig, ClientProtocol};
    use oci_client::secrets::RegistryAuth;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        use_monolithic_push: true,
        ..Default::default()
    });
    let registry_auth = match auth {
        Some((u, p)) => RegistryAuth::Basic(u.to_string(), p.to_string()),
        None => RegistryAuth::Anonymous,
    };
    client.store_auth_if_needed(addr, &registry_auth).await;

    let mut repos: Vec<String> = Vec::new();
    for i in imgs {
        if !repos.contains(&i.info.repository) {
            repos.push(i.info.repository.clone());
        }
    }
    let client = &client;
    stream::iter(repos.iter().map(|repo| async move {
        let mine: Vec<&BuiltImage> = imgs.iter().filter(|i| &i.info.repository == repo).collect();
        let repo_ref: oci_client::Reference = format!("{addr}/{repo}:push")
            .parse()
            .with_context(|| format!("reference {addr}/{repo}"))?;
        let mut blobs: Vec<&Blob> = Vec::new();
        let mut seen = BTreeSet::new();
        for i in &mine {
            for b in &i.blobs {
                if seen.insert(&b.digest) {
                    blobs.push(b);
                }
            }
        }
        stream::iter(blobs.into_iter().map(|b| {
            let r = &repo_ref;
            async move {
                client
                    .push_blob(r, b.data.clone(), &b.digest)
                    .await
                    .with_context(|| {
                        format!(
                            "pushing blob {} ({} bytes) to {addr}/{repo}",
                            b.digest,
                            b.data.len()
                        )
                    })
            }
        }))
        .buffer_unordered(4)
        .try_collect::<Vec<_>>()
        .await?;
        let mut pushed = HashSet::new();
        for i in &mine {
            for c in &i.children {
                if pushed.insert(c.digest.clone()) {
                    let r: oci_client::Reference = format!("{addr}/{repo}@{}", c.digest).parse()?;
                    client
                        .push_manifest_raw(&r, c.data.clone(), c.media_type.parse()?)
                        .await
                        .with_context(|| format!("pushing manifest {r}"))?;
                }
            }
            let r: oci_client::Reference = format!("{addr}/{}", i.info.reference).parse()?;
            client
                .push_manifest_raw(&r, i.manifest.data.clone(), i.manifest.media_type.parse()?)
                .await
                .with_context(|| format!("pushing manifest {r}"))?;
        }
        anyhow::Ok(())
    }))
    .buffer_unordered(4)
    .try_collect::<Vec<_>>()
    .await?;
    if imgs.is_empty() {
        bail!("no test images to push");
    }
    Ok(imgs.iter().map(|i| i.info.clone()).collect())
}
