//! A test's world around one berthd: its own cgroup tree ([`CgroupGuard`]), berthd started
//! with a test network and registry and the busybox test image pulled, and the CRI calls
//! every container test makes (run and remove a pod, a busybox container config).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::registry::{Registry, testimg};
use super::{Berthd, TestNetwork, cri, spec};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Removes a test's cgroup tree `/berth-test-<pid>-<tag>` from every v1 hierarchy (and the
/// v2 one), killing what still runs in it first; also when the test fails.
pub struct CgroupGuard(pub String);

impl CgroupGuard {
    pub fn new(tag: &str) -> CgroupGuard {
        CgroupGuard(format!("berth-test-{}-{tag}", std::process::id()))
    }

    /// `/<top>/<name>`: a pod's cgroup parent inside this test's tree.
    pub fn parent(&self, name: &str) -> String {
        format!("/{}/{name}", self.0)
    }

    /// Every directory of the tree in every hierarchy, deepest first.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for h in std::fs::read_dir(CGROUP_ROOT)
            .into_iter()
            .flatten()
            .flatten()
        {
            let mut stack = vec![h.path().join(&self.0)];
            while let Some(d) = stack.pop() {
                if !d.is_dir() {
                    continue;
                }
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
                out.push(d);
            }
        }
        out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        out
    }

    /// PIDs of processes anywhere in the tree.
    pub fn pids(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .dirs()
            .iter()
            .flat_map(|d| {
                std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// SIGKILLs everything in the tree and removes its directories, retrying for up to 5 s
    /// while processes exit.
    pub fn clear(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for p in self.pids() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            for d in self.dirs() {
                let _ = std::fs::remove_dir(d);
            }
            if self.dirs().is_empty() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Waits until berthd accepts connections. `Berthd::start` returns once the socket file
/// exists, but the file appears at bind(2), before listen(2): a connection in between is
/// refused (seen with several berthds starting at once).
pub async fn wait_listening(d: &Berthd) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::UnixStream::connect(&d.socket).await {
            Ok(_) => return,
            Err(e) if Instant::now() > deadline => {
                panic!("berthd does not accept connections: {e}\n{}", d.log())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Starts berthd with `extra` config lines, `net`'s CNI config and plain HTTP to `reg`,
/// waits until it listens and pulls busybox from `reg`; returns berthd and the busybox
/// reference.
pub async fn berthd_with_busybox(
    extra: &str,
    net: &TestNetwork,
    reg: &Registry,
) -> (Berthd, String) {
    let d = Berthd::start(&format!(
        "{extra}{}[registry.hosts.\"{}\"]\nplain_http = true\n",
        net.toml(),
        reg.addr()
    ));
    wait_listening(&d).await;
    let image = reg.reference(testimg::BUSYBOX);
    d.images()
        .await
        .pull_image(cri::PullImageRequest {
            image: spec(&image),
            ..Default::default()
        })
        .await
        .expect("pull busybox");
    (d, image)
}

/// [`super::pod_config`] with its cgroup parent in `cg`'s tree.
pub fn pod_config_in(cg: &CgroupGuard, name: &str) -> cri::PodSandboxConfig {
    let mut c = super::pod_config(name);
    c.linux.as_mut().unwrap().cgroup_parent = cg.parent(name);
    c
}

/// RunPodSandbox; the pod's id.
pub async fn run_pod(d: &Berthd, config: &cri::PodSandboxConfig) -> String {
    d.runtime()
        .await
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("run pod")
        .into_inner()
        .pod_sandbox_id
}

/// StopPodSandbox.
pub async fn stop_pod(d: &Berthd, id: &str) {
    d.runtime()
        .await
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .expect("stop pod");
}

/// StopPodSandbox then RemovePodSandbox, as kubelet does.
pub async fn remove_pod(d: &Berthd, id: &str) {
    stop_pod(d, id).await;
    d.runtime()
        .await
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .expect("remove pod");
}

/// A container config named `name` running `cmd` in `image`, with default Linux settings.
pub fn busybox_config(image: &str, name: &str, cmd: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: spec(image),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// The names in `dir`, sorted (none if it cannot be read).
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// CreateContainer in pod `pod`; the container's id.
pub async fn create_container(
    d: &Berthd,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    d.runtime()
        .await
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .map(|r| r.into_inner().container_id)
}

/// StartContainer.
pub async fn start_container(d: &Berthd, id: &str) -> Result<(), tonic::Status> {
    d.runtime()
        .await
        .start_container(cri::StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .map(|_| ())
}

/// ListContainers with `filter`.
pub async fn list_containers(
    d: &Berthd,
    filter: Option<cri::ContainerFilter>,
) -> Vec<cri::Container> {
    d.runtime()
        .await
        .list_containers(cri::ListContainersRequest { filter })
        .await
        .expect("list containers")
        .into_inner()
        .containers
}
