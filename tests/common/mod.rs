//! Test harness: the real `berthd` binary on a unique temporary root, state directory and
//! socket, reached over its socket with the generated CRI client. Everything it made is
//! killed and removed on drop, also when the test panics.
#![allow(dead_code)]

pub mod registry;
pub mod world;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

pub use berth::proto::runtime::v1 as cri;
use cri::image_service_client::ImageServiceClient;
use cri::runtime_service_client::RuntimeServiceClient;

/// A unique directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Berthd {
    pub dir: TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
}

impl Berthd {
    /// Starts berthd with `extra` appended to its config (registry mirrors and the like).
    pub fn start(extra: &str) -> Berthd {
        let dir = TempDir::new("berth-test");
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let socket = dir.path().join("berth.sock");
        let config = dir.path().join("berth.toml");
        std::fs::write(
            &config,
            format!(
                "root = {root:?}\nstate_dir = {state:?}\nsocket = {socket:?}\nlog_level = \"debug\"\n{extra}\n"
            ),
        )
        .unwrap();
        let mut d = Berthd {
            dir,
            root,
            state,
            socket,
            config,
            child: None,
        };
        d.spawn();
        d
    }

    /// A command line for berthd with this instance's config.
    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berthd"));
        c.arg("--config").arg(&self.config);
        c
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("berthd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let _ = std::fs::remove_file(&self.socket);
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn berthd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        // The socket file appears at bind(2), before listen(2): wait until it accepts.
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("berthd exited with {status} during start:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "berthd did not create its socket:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        c.wait().unwrap()
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub async fn channel(&self) -> Channel {
        let path = self.socket.clone();
        Endpoint::try_from("http://berth.invalid")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            }))
            .await
            .expect("connect to berthd")
    }

    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().await)
    }

    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await)
    }

    /// Entries of the layer store directory (names), for leak checks.
    pub fn layer_dirs(&self) -> Vec<String> {
        world::entries(&self.root.join("layers"))
    }
}

impl Berthd {
    /// What a failed test may leave of its pods: shims (their inits die with them), CNI
    /// attachments (DEL from berthd's own cache: veths, IPs, portmap rules), mounts.
    fn clean_up_pods(&self) {
        let pods = self.state.join("pods");
        for e in std::fs::read_dir(&pods).into_iter().flatten().flatten() {
            if let Some(pid) = std::fs::read_to_string(e.path().join("shim.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if let Ok(cfg) = berth::config::Config::load(&self.config, true) {
            let cni = berth::network::cni::Cni::new(
                cfg.cni.conf_dir.clone(),
                cfg.cni.bin_dirs.clone(),
                cfg.root.join("cni"),
            );
            // Its own thread and runtime: this may run inside the test's runtime.
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    let _ = rt.block_on(cni.gc(&[]));
                }
            })
            .join();
        }
        let mut mounts = mounts_under(self.dir.path())
            .iter()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .collect::<Vec<_>>();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- berthd log ---\n{}", self.log());
        }
        self.clean_up_pods();
    }
}

/// One unary gRPC call over a bare HTTP/2 stream, so that no client-side machinery
/// (deadline enforcement, retries) stands between the test and berthd's answer. Returns
/// the `grpc-status` code and message.
pub async fn raw_unary<M: prost::Message>(
    socket: &Path,
    path: &str,
    msg: &M,
    headers: &[(&str, &str)],
) -> (i32, String) {
    let io = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (client, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let mut req = http::Request::post(format!("http://berth{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (resp, mut send) = client.send_request(req.body(()).unwrap(), false).unwrap();
    let body = msg.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend((body.len() as u32).to_be_bytes());
    frame.extend(body);
    send.send_data(frame.into(), true).unwrap();
    let resp = resp.await.unwrap();
    let (parts, mut body) = resp.into_parts();
    let read = |h: &http::HeaderMap| {
        h.get("grpc-status").map(|s| {
            let code = s.to_str().unwrap().parse().unwrap();
            let msg = h
                .get("grpc-message")
                .map(|m| m.to_str().unwrap().to_string())
                .unwrap_or_default();
            (code, msg)
        })
    };
    if let Some(r) = read(&parts.headers) {
        return r;
    }
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.unwrap().unwrap_or_default();
    read(&trailers).expect("grpc-status in headers or trailers")
}

/// An `ImageSpec` for a reference.
pub fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

/// A CNI network of the tests' own: a conflist in a temp conf dir naming a unique bridge,
/// subnet and IPAM data dir, with Debian's plugins. The bridge is deleted on drop.
pub struct TestNetwork {
    pub dir: TempDir,
    pub bridge: String,
    /// `10.X.Y.0/24`
    pub subnet: String,
    pub prefix: String,
}

impl TestNetwork {
    pub fn new() -> TestNetwork {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let dir = TempDir::new("berth-net");
        let bridge = format!("bt{}x{n}", pid % 100_000);
        let x = 200 + (pid % 50);
        let y = (pid / 50 % 200 + n * 7) % 250;
        let prefix = format!("10.{x}.{y}.");
        let subnet = format!("{prefix}0/24");
        let net = TestNetwork {
            dir,
            bridge,
            subnet,
            prefix,
        };
        net.write_conflist("10-test.conflist", true);
        net
    }

    pub fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    pub fn write_conflist(&self, name: &str, portmap: bool) {
        std::fs::create_dir_all(self.conf_dir()).unwrap();
        let mut plugins = vec![serde_json::json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": self.subnet}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": self.ipam_dir(),
            }
        })];
        if portmap {
            plugins.push(
                serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}}),
            );
        }
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("berth-test-{}", self.bridge),
            "plugins": plugins,
        });
        std::fs::write(self.conf_dir().join(name), conf.to_string()).unwrap();
    }

    /// The config section for berthd.
    pub fn toml(&self) -> String {
        format!(
            "[cni]\nconf_dir = {:?}\nbin_dirs = [\"/usr/lib/cni\"]\n",
            self.conf_dir()
        )
    }

    /// IPs host-local has handed out and not released.
    pub fn leases(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.ipam_dir())
            .map(|rd| {
                rd.flatten()
                    .flat_map(|e| {
                        std::fs::read_dir(e.path())
                            .into_iter()
                            .flatten()
                            .flatten()
                            .map(|f| f.file_name().to_string_lossy().into_owned())
                    })
                    .filter(|n| n.starts_with(&self.prefix))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// A pod config with the given name (unique uid per call).
pub fn pod_config(name: &str) -> cri::PodSandboxConfig {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{}-{n}", std::process::id()),
            namespace: "berth-test".into(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: String::new(),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

/// Lines of the mount table that mention `path`.
pub fn mounts_under(path: &Path) -> Vec<String> {
    let p = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&p))
        .map(str::to_string)
        .collect()
}

/// PIDs of running berth-shim processes of pods under `path`.
pub fn shims_under(path: &Path) -> Vec<u32> {
    let p = path.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("berth-shim") {
            continue;
        }
        // A pod's init is a fork of its shim: count shims only.
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .map(|p| p.trim().to_string())
            .unwrap_or_default();
        let parent = std::fs::read_to_string(format!("/proc/{ppid}/comm")).unwrap_or_default();
        if parent.starts_with("berth-shim") {
            continue;
        }
        // The shim's stderr is its log file in the pod's state directory.
        let log = std::fs::read_link(e.path().join("fd/2")).unwrap_or_default();
        if log.starts_with(&p) {
            out.push(pid);
        }
    }
    out
}
