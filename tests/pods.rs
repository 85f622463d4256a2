//! Pod sandboxes with the real berthd, the real shim and Debian's CNI plugins: lifecycle,
//! namespaces, networking, crash recovery, bad input and leaks.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use common::{Berthd, TestNetwork, cri, mounts_under, pod_config, shims_under};
use tonic::Code;

async fn run(d: &Berthd, config: cri::PodSandboxConfig) -> Result<String, tonic::Status> {
    d.runtime()
        .await
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

async fn status(d: &Berthd, id: &str) -> Result<cri::PodSandboxStatus, tonic::Status> {
    d.runtime()
        .await
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        })
        .await
        .map(|r| r.into_inner().status.unwrap())
}

async fn stop(d: &Berthd, id: &str) {
    d.runtime()
        .await
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .expect("stop");
}

async fn remove(d: &Berthd, id: &str) {
    d.runtime()
        .await
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .expect("remove");
}

async fn list(d: &Berthd, filter: Option<cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
    d.runtime()
        .await
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter })
        .await
        .unwrap()
        .into_inner()
        .items
}

fn nsenter(args: &[&str]) -> String {
    let out = Command::new("nsenter").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "nsenter {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Host ends of the veths on this test's bridge (other tests run pods at the same time).
fn host_veths(net: &TestNetwork) -> HashSet<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", &net.bridge])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

fn nat_rules_mentioning(what: &str) -> Vec<String> {
    let out = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(what))
        .map(str::to_string)
        .collect()
}

/// Nothing of any pod is left: mounts, shims, state dirs, IPs, veths.
fn assert_nothing_left(d: &Berthd, net: &TestNetwork, veths_before: &HashSet<String>) {
    assert!(
        mounts_under(d.dir.path()).is_empty(),
        "mounts left: {:?}",
        mounts_under(d.dir.path())
    );
    assert!(shims_under(d.dir.path()).is_empty(), "shims left");
    let pods_dir = d.state.join("pods");
    let left: Vec<_> = std::fs::read_dir(&pods_dir)
        .map(|r| r.flatten().count())
        .into_iter()
        .collect();
    assert!(
        left.iter().all(|n| *n == 0),
        "pod state dirs left in {}",
        pods_dir.display()
    );
    assert!(
        net.leases().is_empty(),
        "IP leases left: {:?}",
        net.leases()
    );
    let now = host_veths(net);
    let new: Vec<_> = now.difference(veths_before).collect();
    assert!(new.is_empty(), "veths left: {new:?}");
}

#[tokio::test]
async fn pod_lifecycle_with_cni_bridge() {
    let net = TestNetwork::new();
    let d = Berthd::start(&net.toml());
    let veths = host_veths(&net);

    // Ready network reported once a usable conflist exists.
    let st = d
        .runtime()
        .await
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap();
    let conds = st.into_inner().status.unwrap().conditions;
    assert!(
        conds.iter().any(|c| c.r#type == "NetworkReady" && c.status),
        "{conds:?}"
    );

    let mut config = pod_config("web");
    config.hostname = "web-host".into();
    config.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["berth.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    config.labels.insert("app".into(), "web".into());
    config.port_mappings.push(cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 80,
        host_port: 18080 + (std::process::id() % 1000) as i32,
        host_ip: String::new(),
    });
    config
        .linux
        .as_mut()
        .unwrap()
        .sysctls
        .insert("net.ipv4.ip_unprivileged_port_start".into(), "0".into());
    let id = run(&d, config.clone()).await.expect("run pod");

    let st = status(&d, &id).await.unwrap();
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    let ip = st.network.as_ref().unwrap().ip.clone();
    assert!(ip.starts_with(&net.prefix), "pod IP {ip} in {}", net.subnet);
    assert_eq!(st.metadata.as_ref().unwrap().name, "web");
    assert_eq!(st.labels["app"], "web");

    // The sandbox is pinned namespaces with the pod's hostname, IP and sysctl inside.
    let pod_dir = d.state.join("pods").join(&id);
    let netns = pod_dir.join("ns/net");
    let utsns = pod_dir.join("ns/uts");
    assert!(netns.exists() && utsns.exists() && pod_dir.join("ns/ipc").exists());
    let ns_net = format!("--net={}", netns.display());
    assert!(nsenter(&[&ns_net, "ip", "-o", "addr", "show", "eth0"]).contains(&ip));
    assert!(nsenter(&[&ns_net, "ip", "-o", "link", "show", "lo"]).contains("UP"));
    assert_eq!(
        nsenter(&[&format!("--uts={}", utsns.display()), "hostname"]),
        "web-host"
    );
    assert_eq!(
        nsenter(&[
            &ns_net,
            "cat",
            "/proc/sys/net/ipv4/ip_unprivileged_port_start"
        ]),
        "0"
    );
    let resolv = std::fs::read_to_string(pod_dir.join("resolv.conf")).unwrap();
    assert!(resolv.contains("nameserver 10.96.0.10") && resolv.contains("options ndots:5"));
    assert_eq!(
        std::fs::read_to_string(pod_dir.join("hostname")).unwrap(),
        "web-host\n"
    );
    assert!(
        !nat_rules_mentioning(&ip).is_empty(),
        "portmap DNAT rule for {ip}"
    );

    // Duplicate name: AlreadyExists.
    let err = run(&d, config.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{}", err.message());

    // List and filters.
    assert_eq!(list(&d, None).await.len(), 1);
    let by_label = cri::PodSandboxFilter {
        label_selector: [("app".to_string(), "web".to_string())].into(),
        ..Default::default()
    };
    assert_eq!(list(&d, Some(by_label)).await.len(), 1);
    let not_ready = cri::PodSandboxFilter {
        state: Some(cri::PodSandboxStateValue { state: 1 }),
        ..Default::default()
    };
    assert!(list(&d, Some(not_ready.clone())).await.is_empty());
    // A unique id prefix names the pod, as crictl uses it.
    assert_eq!(status(&d, &id[..12]).await.unwrap().id, id);

    // Stop: NotReady, network and namespaces released; twice is fine.
    stop(&d, &id).await;
    stop(&d, &id).await;
    let st = status(&d, &id).await.unwrap();
    assert_eq!(st.state, cri::PodSandboxState::SandboxNotready as i32);
    assert!(st.network.unwrap().ip.is_empty());
    assert!(net.leases().is_empty());
    assert!(nat_rules_mentioning(&ip).is_empty(), "portmap rule removed");
    assert!(
        mounts_under(&pod_dir).is_empty(),
        "{:?}",
        mounts_under(&pod_dir)
    );
    assert_eq!(list(&d, Some(not_ready)).await.len(), 1);

    // Remove: gone; twice is fine; unknown ids are NotFound for status only.
    remove(&d, &id).await;
    remove(&d, &id).await;
    assert_eq!(status(&d, &id).await.unwrap_err().code(), Code::NotFound);
    stop(&d, "no-such-pod").await;
    remove(&d, "no-such-pod").await;
    assert_nothing_left(&d, &net, &veths);
}

#[tokio::test]
async fn host_namespaces_and_shared_pid() {
    let net = TestNetwork::new();
    let d = Berthd::start(&net.toml());
    let mut config = pod_config("hostnet");
    let sc = cri::LinuxSandboxSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            network: cri::NamespaceMode::Node as i32,
            pid: cri::NamespaceMode::Pod as i32,
            ipc: cri::NamespaceMode::Node as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    config.linux.as_mut().unwrap().security_context = Some(sc);
    let id = run(&d, config).await.unwrap();
    let pod_dir = d.state.join("pods").join(&id);
    assert!(
        !pod_dir.join("ns/net").exists(),
        "host network is not pinned"
    );
    assert!(
        pod_dir.join("ns/pid").exists(),
        "shared PID namespace is pinned"
    );
    let st = status(&d, &id).await.unwrap();
    assert!(st.network.unwrap().ip.is_empty());
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(
        std::fs::read_to_string(pod_dir.join("hostname"))
            .unwrap()
            .trim(),
        host
    );
    // PID 1 of the pod's namespace is berth's init, reachable through the pin.
    let out = nsenter(&[
        &format!("--pid={}", pod_dir.join("ns/pid").display()),
        "--",
        "sh",
        "-c",
        "echo ok",
    ]);
    assert_eq!(out, "ok");
    remove(&d, &id).await;
    assert!(mounts_under(d.dir.path()).is_empty());
    assert!(shims_under(d.dir.path()).is_empty());
}

/// Removes this test process's cgroups from every hierarchy, also when a test fails.
struct CgroupGuard(String);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let top = h.path().join(&self.0);
            let mut dirs: Vec<_> = std::fs::read_dir(&top)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect();
            dirs.push(top);
            for d in dirs {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

#[tokio::test]
async fn fifty_pods_leave_nothing_behind() {
    let _cg = CgroupGuard(format!("berth-test-{}", std::process::id()));
    let net = TestNetwork::new();
    let d = Berthd::start(&net.toml());
    let veths = host_veths(&net);
    let mut ids = Vec::new();
    for i in 0..50 {
        let mut c = pod_config(&format!("many-{i}"));
        c.port_mappings.push(cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 80,
            host_port: 20000 + (std::process::id() % 500) as i32 * 50 + i,
            host_ip: String::new(),
        });
        c.linux.as_mut().unwrap().cgroup_parent =
            format!("/berth-test-{}/pod{i}", std::process::id());
        ids.push(run(&d, c).await.expect("run"));
    }
    let ips: HashSet<String> = {
        let mut s = HashSet::new();
        for id in &ids {
            s.insert(status(&d, id).await.unwrap().network.unwrap().ip);
        }
        s
    };
    assert_eq!(ips.len(), 50, "50 distinct IPs");
    let cg = Path::new("/sys/fs/cgroup/memory").join(format!("berth-test-{}", std::process::id()));
    if Path::new("/sys/fs/cgroup/memory").exists() {
        assert!(cg.join("pod7").is_dir(), "pod cgroup created");
    }
    for id in &ids {
        remove(&d, id).await;
    }
    assert!(list(&d, None).await.is_empty());
    assert_nothing_left(&d, &net, &veths);
    for ip in &ips {
        assert!(
            nat_rules_mentioning(ip).is_empty(),
            "portmap rules for {ip} left"
        );
    }
    assert!(!cg.exists(), "pod cgroups removed");
}

#[tokio::test]
async fn pods_survive_a_berthd_crash() {
    let net = TestNetwork::new();
    let mut d = Berthd::start(&net.toml());
    let veths = host_veths(&net);
    let mut pods = Vec::new();
    for i in 0..10 {
        let id = run(&d, pod_config(&format!("crash-{i}"))).await.unwrap();
        let ip = status(&d, &id).await.unwrap().network.unwrap().ip;
        pods.push((id, ip));
    }
    let shims = shims_under(d.dir.path());
    assert_eq!(shims.len(), 10);
    d.kill();
    assert_eq!(shims_under(d.dir.path()).len(), 10, "shims outlive berthd");
    d.restart();
    for (id, ip) in &pods {
        let st = status(&d, id).await.unwrap();
        assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32, "{id}");
        assert_eq!(&st.network.unwrap().ip, ip);
    }
    for (id, _) in &pods {
        stop(&d, id).await;
        remove(&d, id).await;
    }
    assert_nothing_left(&d, &net, &veths);
}

#[tokio::test]
async fn a_dead_shim_makes_its_pod_not_ready() {
    let net = TestNetwork::new();
    let d = Berthd::start(&net.toml());
    let veths = host_veths(&net);
    let id = run(&d, pod_config("victim")).await.unwrap();
    let pid: i32 = std::fs::read_to_string(d.state.join("pods").join(&id).join("shim.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let st = status(&d, &id).await.unwrap();
    assert_eq!(st.state, cri::PodSandboxState::SandboxNotready as i32);
    stop(&d, &id).await;
    remove(&d, &id).await;
    assert_nothing_left(&d, &net, &veths);
}

#[tokio::test]
async fn bad_input_is_refused_and_leaks_nothing() {
    let net = TestNetwork::new();
    let d = Berthd::start(&net.toml());
    let veths = host_veths(&net);

    // A sysctl that is not namespaced.
    let mut c = pod_config("badsysctl");
    c.linux
        .as_mut()
        .unwrap()
        .sysctls
        .insert("vm.swappiness".into(), "1".into());
    let err = run(&d, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("vm.swappiness"));
    // A namespaced one the kernel refuses.
    let mut c = pod_config("badvalue");
    c.linux
        .as_mut()
        .unwrap()
        .sysctls
        .insert("net.ipv4.no_such_knob".into(), "1".into());
    let err = run(&d, c).await.unwrap_err();
    assert!(err.message().contains("no_such_knob"), "{}", err.message());

    // No metadata.
    let mut c = pod_config("nometa");
    c.metadata = None;
    assert_eq!(run(&d, c).await.unwrap_err().code(), Code::InvalidArgument);

    // Unknown ids.
    assert_eq!(
        status(&d, "0123456789ab").await.unwrap_err().code(),
        Code::NotFound
    );

    // A failing plugin: an IPAM range with no room.
    std::fs::remove_dir_all(net.conf_dir()).unwrap();
    std::fs::create_dir_all(net.conf_dir()).unwrap();
    let failing = serde_json::json!({
        "cniVersion": "1.0.0", "name": "failing",
        "plugins": [{"type": "bridge", "bridge": net.bridge, "ipam": {"type": "host-local",
            "ranges": [[{"subnet": "10.255.255.252/32"}]], "dataDir": net.ipam_dir()}}]
    });
    std::fs::write(
        net.conf_dir().join("10-failing.conflist"),
        failing.to_string(),
    )
    .unwrap();
    let err = run(&d, pod_config("failplugin")).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{}", err.message());
    assert!(
        err.message().contains("host-local") || err.message().contains("bridge"),
        "{}",
        err.message()
    );

    // A missing plugin.
    let missing = serde_json::json!({"cniVersion": "1.0.0", "name": "m", "plugins": [{"type": "no-such-plugin"}]});
    std::fs::write(
        net.conf_dir().join("10-failing.conflist"),
        missing.to_string(),
    )
    .unwrap();
    let err = run(&d, pod_config("missing")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(
        err.message().contains("no-such-plugin"),
        "{}",
        err.message()
    );

    // A broken conflist: not ready, and said so in Status.
    std::fs::write(net.conf_dir().join("10-failing.conflist"), "{ not json").unwrap();
    let err = run(&d, pod_config("broken")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    let st = d
        .runtime()
        .await
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap();
    let conds = st.into_inner().status.unwrap().conditions;
    let netc = conds.iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(
        !netc.status && netc.message.contains("10-failing.conflist"),
        "{netc:?}"
    );

    assert!(list(&d, None).await.is_empty());
    assert_nothing_left(&d, &net, &veths);
}

/// kubelet and crictl give up on RPCs at their deadlines. A StopPodSandbox abandoned while
/// the bridge plugin's DEL ran must still finish it: a DEL cut after the veth was deleted
/// left the pod's masquerade chain behind for good (a repeated DEL finds no link and skips
/// the iptables teardown).
#[tokio::test]
async fn an_abandoned_stop_still_tears_the_network_down() {
    let net = TestNetwork::new();
    // The bridge with ipMasq, as config/10-berth-bridge.conflist has it.
    let conf = net.conf_dir().join("10-test.conflist");
    let mut list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&conf).unwrap()).unwrap();
    list["plugins"][0]["ipMasq"] = true.into();
    std::fs::write(&conf, list.to_string()).unwrap();
    let d = Berthd::start(&net.toml());

    for delay_ms in [5u64, 20, 40] {
        let id = run(&d, pod_config(&format!("cut-{delay_ms}")))
            .await
            .unwrap();
        let ip = status(&d, &id).await.unwrap().network.unwrap().ip;
        assert!(
            !nat_rules_mentioning(&id).is_empty(),
            "masquerade chain for {id}"
        );
        let mut req = tonic::Request::new(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        });
        req.set_timeout(std::time::Duration::from_millis(delay_ms));
        let _ = d.runtime().await.stop_pod_sandbox(req).await;
        // kubelet retries; then the pod is gone and so is all of its network.
        stop(&d, &id).await;
        remove(&d, &id).await;
        assert!(
            nat_rules_mentioning(&id).is_empty(),
            "left after a stop abandoned at {delay_ms} ms: {:?}",
            nat_rules_mentioning(&id)
        );
        assert!(nat_rules_mentioning(&format!("{ip}/")).is_empty());
        assert!(net.leases().is_empty(), "{:?}", net.leases());
    }
}
