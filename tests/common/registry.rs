//! A real OCI registry for the tests: Debian's `docker-registry` (distribution 2.8) on a
//! free loopback port, filesystem storage in a unique temporary directory, holding every
//! berth test image (`e2e/testimg.rs`, see its module doc for what each image is for).
//!
//! ```ignore
//! let reg = common::registry::Registry::start();          // anonymous
//! let img = reg.image(testimg::BUSYBOX);                     // what was pushed
//! let r = reg.reference(testimg::BUSYBOX);                   // "127.0.0.1:PORT/berth-test/busybox:latest"
//! ```
//!
//! `start` is synchronous (it pushes from a thread of its own) and may be called from
//! sync tests and from async tests alike. Dropping the `Registry` (also while a test
//! panics) kills the process with SIGKILL, waits for it and removes its directory; set
//! `BERTH_TEST_KEEP=1` to keep the directory for a post-mortem.
//!
//! Needs the Debian packages `docker-registry`, `busybox-static` and, for
//! `start_with_htpasswd`, `apache2-utils` (`hack/test.sh` installs them).

#![allow(dead_code)]

#[path = "../../e2e/testimg.rs"]
pub mod testimg;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use testimg::TestImage;

/// How long `start` waits for `GET /v2/` to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The registry binary (Debian's `docker-registry`); `BERTH_REGISTRY_BIN` overrides it.
pub const REGISTRY_BIN: &str = "docker-registry";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running registry holding the test images. See the module doc.
pub struct Registry {
    addr: String,
    dir: PathBuf,
    child: Option<Child>,
    images: Vec<TestImage>,
    credentials: Option<(String, String)>,
}

/// A `127.0.0.1:PORT` that nothing listens on (for "unreachable registry" tests; a port
/// freed just now, so another process could take it, but that is unlikely).
pub fn unused_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

impl Registry {
    /// Start an anonymous registry and push every test image to it. Panics (with the
    /// registry's log tail) if it cannot.
    pub fn start() -> Registry {
        Self::start_inner(None, Some(Vec::new()))
    }

    /// Start an anonymous registry holding only the named test images (e.g.
    /// `&[testimg::BUSYBOX]`): quicker than `start` when a test needs no `bench` (~25 MB).
    pub fn start_only(references: &[&str]) -> Registry {
        assert!(
            !references.is_empty(),
            "start_only needs at least one reference"
        );
        Self::start_inner(
            None,
            Some(references.iter().map(|r| r.to_string()).collect()),
        )
    }

    /// Start a registry behind basic auth (htpasswd file, bcrypt via `htpasswd -Bbn`) and
    /// push every test image with those credentials.
    pub fn start_with_htpasswd(user: &str, pass: &str) -> Registry {
        Self::start_inner(Some((user.to_string(), pass.to_string())), Some(Vec::new()))
    }

    /// Start an anonymous registry without pushing anything (`images()` is empty).
    pub fn start_empty() -> Registry {
        Self::start_inner(None, None)
    }

    /// `push`: None = nothing, Some(empty) = every image, Some(refs) = those.
    fn start_inner(credentials: Option<(String, String)>, push: Option<Vec<String>>) -> Registry {
        let dir = std::env::temp_dir().join(format!(
            "berth-registry-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("storage"))
            .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let mut reg = Registry {
            addr: String::new(),
            dir,
            child: None,
            images: Vec::new(),
            credentials,
        };
        if let Some((u, p)) = &reg.credentials {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .stderr(Stdio::inherit())
                .output()
                .unwrap_or_else(|e| {
                    panic!("running htpasswd (apt-get install apache2-utils): {e}")
                });
            assert!(out.status.success(), "htpasswd -Bbn failed: {}", out.status);
            std::fs::write(reg.dir.join("htpasswd"), &out.stdout).expect("writing htpasswd");
        }

        // The port is free when we look; a parallel test may take it before the registry
        // binds it, so retry on "address already in use".
        let mut last = String::new();
        for _attempt in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            reg.write_config(&addr);
            let log = std::fs::File::create(reg.log_path()).expect("creating registry.log");
            let log2 = log.try_clone().expect("dup log fd");
            let bin =
                std::env::var("BERTH_REGISTRY_BIN").unwrap_or_else(|_| REGISTRY_BIN.to_string());
            let mut cmd = Command::new(&bin);
            cmd.arg("serve")
                .arg(reg.dir.join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .current_dir(&reg.dir);
            // REGISTRY_* variables would override the config file
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("REGISTRY_") {
                    cmd.env_remove(k);
                }
            }
            let child = cmd.spawn().unwrap_or_else(|e| {
                panic!("spawning {bin} (Debian package docker-registry: apt-get install docker-registry): {e}")
            });
            reg.child = Some(child);
            reg.addr = addr;
            match reg.wait_ready() {
                Ok(()) => {
                    last.clear();
                    break;
                }
                Err(e) => {
                    reg.kill();
                    let tail = reg.log_tail(30);
                    if tail.contains("address already in use") {
                        last = format!("{e}\n{tail}");
                        continue;
                    }
                    panic!(
                        "registry at {} did not start: {e}\n--- {} (tail) ---\n{tail}",
                        reg.addr,
                        reg.log_path().display()
                    );
                }
            }
        }
        if !last.is_empty() {
            panic!("registry did not start (ports kept being taken):\n{last}");
        }

        if let Some(only) = push {
            let addr = reg.addr.clone();
            let creds = reg.credentials.clone();
            let res = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime for pushing");
                rt.block_on(async {
                    let auth = creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
                    let mut imgs = testimg::build_all();
                    if !only.is_empty() {
                        if let Some(r) = only
                            .iter()
                            .find(|r| !imgs.iter().any(|i| &i.info.reference == *r))
                        {
                            anyhow::bail!("no test image {r}");
                        }
                        imgs.retain(|i| only.contains(&i.info.reference));
                    }
                    testimg::push_images(&addr, auth, &imgs).await
                })
            })
            .join();
            match res {
                Ok(Ok(images)) => reg.images = images,
                Ok(Err(e)) => panic!(
                    "pushing the test images to {} failed: {e:#}\n--- registry log (tail) ---\n{}",
                    reg.addr,
                    reg.log_tail(30)
                ),
                Err(p) => panic!(
                    "pushing the test images to {} panicked: {}",
                    reg.addr,
                    p.downcast_ref::<String>()
                        .map(String::as_str)
                        .or(p.downcast_ref::<&str>().copied())
                        .unwrap_or("?")
                ),
            }
        }
        reg
    }

    fn write_config(&self, addr: &str) {
        let mut cfg = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
             redirect:\n    disable: true\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {addr}\n  secret: berth-test-registry\n  headers:\n    X-Content-Type-Options: [nosniff]\n\
             health:\n  storagedriver:\n    enabled: false\n",
            storage = self.dir.join("storage").display(),
        );
        if self.credentials.is_some() {
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                self.dir.join("htpasswd").display()
            ));
        }
        std::fs::write(self.dir.join("config.yml"), cfg).expect("writing config.yml");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("docker-registry exited: {status}"));
            }
            match self.get("/v2/") {
                // 401 is the answer behind htpasswd
                Ok((200, _)) | Ok((401, _)) => return Ok(()),
                Ok((code, _)) => return Err(format!("GET /v2/ answered {code}")),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(25))
                }
                Err(e) => {
                    return Err(format!(
                        "GET /v2/ not answered within {READY_TIMEOUT:?}: {e}"
                    ));
                }
            }
        }
    }

    /// A minimal anonymous HTTP/1.0 GET to the registry: (status, body). For assertions
    /// such as `/v2/_catalog`; `Accept` is sent for every manifest media type.
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let mut s =
            TcpStream::connect_timeout(&self.addr.parse().expect("addr"), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {}\r\nAccept: {}, {}, {}, {}\r\n\r\n",
            self.addr,
            testimg::media::DOCKER_LIST,
            testimg::media::DOCKER_MANIFEST,
            testimg::media::OCI_INDEX,
            testimg::media::OCI_MANIFEST,
        )?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad HTTP answer: {text:.80}")))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `ADDR/reference`, e.g. `127.0.0.1:PORT/berth-test/busybox:latest`.
    pub fn reference(&self, reference: &str) -> String {
        format!("{}/{}", self.addr, reference)
    }

    /// Every pushed image (one entry per tag).
    pub fn images(&self) -> &[TestImage] {
        &self.images
    }

    /// The pushed image with this reference (`berth-test/busybox:latest`, with or without
    /// the `ADDR/` prefix). Panics if there is none.
    pub fn image(&self, reference: &str) -> &TestImage {
        let r = reference
            .strip_prefix(&format!("{}/", self.addr))
            .unwrap_or(reference);
        self.images
            .iter()
            .find(|i| i.reference == r)
            .unwrap_or_else(|| panic!("no test image {r} in this registry"))
    }

    /// The basic-auth credentials of `start_with_htpasswd`.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The registry's temporary directory (config, log, storage).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("registry.log")
    }

    /// The last `n` lines of the registry's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Path of a blob's data file in the registry's storage.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
        self.dir
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Tamper with a stored blob so that its content no longer matches its digest, keeping
    /// its length (the registry keeps serving it under the old digest and size). A gzip blob
    /// gets its header's MTIME field flipped, so it still decompresses to the same tar and
    /// only digest verification can notice; any other blob gets its middle byte flipped.
    /// Blobs are shared by all repositories of the registry: tamper only with a blob no other
    /// image uses (the last layer of `berth-test/badblob:latest`).
    pub fn corrupt_blob(&self, digest: &str) {
        let path = self.blob_path(digest);
        let mut data =
            std::fs::read(&path).unwrap_or_else(|e| panic!("reading blob {}: {e}", path.display()));
        let len = data.len();
        if len >= 10 && data[0] == 0x1f && data[1] == 0x8b {
            for b in &mut data[4..8] {
                *b ^= 0xff;
            }
        } else {
            assert!(len > 0, "blob {digest} is empty");
            data[len / 2] ^= 0xff;
        }
        std::fs::write(&path, &data)
            .unwrap_or_else(|e| panic!("writing blob {}: {e}", path.display()));
        assert_eq!(
            std::fs::metadata(&path).map(|m| m.len()).ok(),
            Some(len as u64)
        );
    }

    /// Stop the registry and remove its directory (what `Drop` does).
    pub fn stop(self) {}

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("BERTH_TEST_KEEP").is_some() {
            eprintln!(
                "BERTH_TEST_KEEP: registry directory kept at {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
