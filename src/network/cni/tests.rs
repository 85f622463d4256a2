//! Exec-path tests with fake plugins (`#!/bin/sh` scripts that record their
//! env/stdin and print canned results), and one root test with Debian's real
//! bridge + host-local + portmap plugins.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::*;

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "berth-cni-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A conf dir, a bin dir of fake plugins, a cache dir and a record dir.
struct Fake {
    root: TempDir,
}

const NETNS: &str = "/run/netns/fake-netns";

impl Fake {
    fn new() -> Fake {
        let root = TempDir::new("fake");
        for d in ["conf", "bin", "cache", "rec"] {
            fs::create_dir_all(root.0.join(d)).unwrap();
        }
        Fake { root }
    }

    fn dir(&self, d: &str) -> PathBuf {
        self.root.0.join(d)
    }

    fn cni(&self) -> Cni {
        // A second, missing bin dir: CNI_PATH lists both.
        Cni::new(
            self.dir("conf"),
            vec![self.dir("bin"), self.dir("nonexistent-bin")],
            self.dir("cache"),
        )
    }

    fn conf(&self, name: &str, content: &Value) {
        fs::write(
            self.dir("conf").join(name),
            serde_json::to_vec_pretty(content).unwrap(),
        )
        .unwrap();
    }

    /// A plugin that records its call, env and stdin, then runs `body`.
    fn plugin(&self, name: &str, body: &str) {
        let rec = self.dir("rec");
        let script = format!(
            "#!/bin/sh\nR='{rec}'\nN='{name}'\nIN=$(cat)\necho \"$N $CNI_COMMAND\" >> \"$R/calls\"\n\
             printf '%s' \"$IN\" > \"$R/$N.$CNI_COMMAND.stdin\"\n\
             env | grep '^CNI_' | sort > \"$R/$N.$CNI_COMMAND.env\"\n{body}\n",
            rec = rec.display()
        );
        let path = self.dir("bin").join(name);
        fs::write(&path, script).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A plugin that prints `result` on ADD and nothing otherwise.
    fn ok_plugin(&self, name: &str, result: &Value) {
        self.plugin(
            name,
            &format!("if [ \"$CNI_COMMAND\" = ADD ]; then cat <<'EOF'\n{result}\nEOF\nfi\nexit 0"),
        );
    }

    fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.dir("rec").join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn clear_calls(&self) {
        let _ = fs::remove_file(self.dir("rec").join("calls"));
    }

    fn stdin(&self, name: &str, verb: &str) -> Value {
        let p = self.dir("rec").join(format!("{name}.{verb}.stdin"));
        serde_json::from_slice(&fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .unwrap()
    }

    fn env(&self, name: &str, verb: &str) -> HashMap<String, String> {
        fs::read_to_string(self.dir("rec").join(format!("{name}.{verb}.env")))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn cache_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.dir("cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }
}

fn pod_args(id: &str) -> Vec<(String, String)> {
    [
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", "default"),
        ("K8S_POD_NAME", "web-0"),
        ("K8S_POD_INFRA_CONTAINER_ID", id),
        ("K8S_POD_UID", "0b5c-11"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn port_caps(host_port: u16) -> Capabilities {
    Capabilities {
        port_mappings: vec![PortMapping {
            host_port,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: String::new(),
        }],
        dns: Some(DnsCap {
            servers: vec!["10.96.0.10".into()],
            searches: vec![],
            options: vec![],
        }),
        bandwidth: Some(Bandwidth {
            ingress_rate: 1_000_000,
            ingress_burst: 2_000_000,
            egress_rate: 3_000_000,
            egress_burst: 4_000_000,
        }),
        ips: vec![],
    }
}

fn attachment<'a>(id: &'a str, netns: &'a Path, caps: Capabilities) -> Attachment<'a> {
    Attachment {
        container_id: id,
        netns,
        ifname: "eth0",
        args: pod_args(id),
        capabilities: caps,
    }
}

/// The results of a three-plugin chain: an IPAM-ish main plugin answering in
/// 0.4.0 (converted to the list's 1.0.0), a pass-through, a portmap-like one.
fn results() -> (Value, Value, Value) {
    let r1 = json!({
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "cni0", "mac": "aa:00:00:00:00:01"}, {"name": "eth0", "mac": "aa:00:00:00:00:02", "sandbox": NETNS}],
        "ips": [
            {"version": "6", "address": "fd00::5/64", "interface": 1},
            {"version": "4", "address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 1}
        ],
        "routes": [{"dst": "0.0.0.0/0"}]
    });
    let mut r2 = r1.clone();
    r2["cniVersion"] = json!("1.0.0");
    r2["dns"] = json!({"nameservers": ["10.96.0.10"]});
    let mut r3 = r2.clone();
    r3["ips"][0].as_object_mut().unwrap().remove("version");
    r3["ips"][1].as_object_mut().unwrap().remove("version");
    (r1, r2, r3)
}

fn chain_conf() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "fakenet",
        "plugins": [
            {"type": "p1", "ipam": {"type": "host-local"}},
            {"type": "p2", "capabilities": {"bandwidth": true, "dns": false}},
            {"type": "p3", "capabilities": {"portMappings": true}}
        ]
    })
}

fn chain_fake() -> Fake {
    let f = Fake::new();
    let (r1, r2, r3) = results();
    f.ok_plugin("p1", &r1);
    f.ok_plugin("p2", &r2);
    f.ok_plugin("p3", &r3);
    f.conf("10-fake.conflist", &chain_conf());
    f
}

#[tokio::test]
async fn add_runs_the_chain_in_order_threading_prev_result() {
    let f = chain_fake();
    let cni = f.cni();
    let id = "c0ffee01";
    let a = attachment(id, Path::new(NETNS), port_caps(8080));
    let st = cni.add(&a).await.unwrap();

    assert_eq!(f.calls(), ["p1 ADD", "p2 ADD", "p3 ADD"]);
    let (_, r2, r3) = results();
    // p1: own config + name/cniVersion; no prevResult, no declared capability.
    assert_eq!(
        f.stdin("p1", "ADD"),
        json!({"type": "p1", "ipam": {"type": "host-local"}, "name": "fakenet", "cniVersion": "1.0.0"})
    );
    // p2: p1's result converted to 1.0.0 (no ips[].version), only bandwidth.
    let s2 = f.stdin("p2", "ADD");
    let mut r1_as_1 = results().0;
    r1_as_1["cniVersion"] = json!("1.0.0");
    r1_as_1["ips"][0].as_object_mut().unwrap().remove("version");
    r1_as_1["ips"][1].as_object_mut().unwrap().remove("version");
    assert_eq!(s2["prevResult"], r1_as_1);
    assert_eq!(
        s2["runtimeConfig"],
        json!({"bandwidth": {"ingressRate": 1_000_000, "ingressBurst": 2_000_000, "egressRate": 3_000_000, "egressBurst": 4_000_000}})
    );
    // p3: p2's result, only portMappings.
    let s3 = f.stdin("p3", "ADD");
    let mut r2_norm = r2.clone();
    r2_norm["ips"][0].as_object_mut().unwrap().remove("version");
    r2_norm["ips"][1].as_object_mut().unwrap().remove("version");
    assert_eq!(s3["prevResult"], r2_norm);
    assert_eq!(
        s3["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]})
    );
    // The standard environment.
    let env = f.env("p2", "ADD");
    assert_eq!(env["CNI_COMMAND"], "ADD");
    assert_eq!(env["CNI_CONTAINERID"], id);
    assert_eq!(env["CNI_NETNS"], NETNS);
    assert_eq!(env["CNI_IFNAME"], "eth0");
    assert_eq!(
        env["CNI_ARGS"],
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID={id};K8S_POD_UID=0b5c-11"
        )
    );
    assert_eq!(
        env["CNI_PATH"],
        format!(
            "{}:{}",
            f.dir("bin").display(),
            f.dir("nonexistent-bin").display()
        )
    );

    // The status: IPs of eth0, IPv4 first.
    assert_eq!(st.network_name, "fakenet");
    assert_eq!(
        st.ips,
        vec![
            "10.88.0.5".parse::<std::net::IpAddr>().unwrap(),
            "fd00::5".parse().unwrap()
        ]
    );
    assert_eq!(st.interfaces[1].name, "eth0");
    assert_eq!(st.interfaces[1].sandbox, NETNS);
    assert_eq!(st.raw, r3);

    // Cached before returning, with everything DEL needs.
    assert_eq!(f.cache_files(), [format!("{id}@eth0.json")]);
    let entry: Value =
        serde_json::from_slice(&fs::read(f.dir("cache").join(format!("{id}@eth0.json"))).unwrap())
            .unwrap();
    assert_eq!(entry["config"], chain_conf());
    assert_eq!(entry["result"], r3);
    assert_eq!(entry["capabilityArgs"]["portMappings"][0]["hostPort"], 8080);
    assert_eq!(
        entry["cniArgs"][3],
        json!(["K8S_POD_INFRA_CONTAINER_ID", id])
    );
    assert_eq!(cni.cached(id, "eth0"), Some(st.clone()));
    assert_eq!(cni.cached(id, "eth1"), None);
    assert_eq!(cni.cached("../x", "eth0"), None);

    // CHECK: same order, cached result as prevResult, same runtimeConfig.
    f.clear_calls();
    cni.check(&attachment(id, Path::new(NETNS), Capabilities::default()))
        .await
        .unwrap();
    assert_eq!(f.calls(), ["p1 CHECK", "p2 CHECK", "p3 CHECK"]);
    for p in ["p1", "p2", "p3"] {
        assert_eq!(f.stdin(p, "CHECK")["prevResult"], r3, "{p}");
    }
    assert_eq!(f.stdin("p3", "CHECK")["runtimeConfig"], s3["runtimeConfig"]);
    assert_eq!(f.env("p1", "CHECK")["CNI_COMMAND"], "CHECK");
}

#[tokio::test]
async fn del_uses_the_cache_in_reverse_order_after_the_conf_dir_was_emptied() {
    let f = chain_fake();
    let cni = f.cni();
    let id = "c0ffee02";
    cni.add(&attachment(id, Path::new(NETNS), port_caps(9090)))
        .await
        .unwrap();
    f.clear_calls();

    // The conf dir empties (or changes) after the ADD, and berthd restarts.
    fs::remove_file(f.dir("conf").join("10-fake.conflist")).unwrap();
    let cni = f.cni();
    assert!(matches!(cni.ready(), Err(Error::NoConfig { .. })));
    assert!(cni.cached(id, "eth0").is_some());

    // DEL knows neither the port mappings nor the args; the netns is gone.
    let gone = f.dir("no-such-netns");
    let a = Attachment {
        container_id: id,
        netns: &gone,
        ifname: "eth0",
        args: vec![],
        capabilities: Capabilities::default(),
    };
    cni.del(&a).await.unwrap();
    assert_eq!(f.calls(), ["p3 DEL", "p2 DEL", "p1 DEL"]);
    let (_, _, r3) = results();
    let s3 = f.stdin("p3", "DEL");
    assert_eq!(s3["prevResult"], r3);
    assert_eq!(
        s3["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 9090, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]})
    );
    assert_eq!(s3["name"], "fakenet");
    let env = f.env("p1", "DEL");
    assert_eq!(env["CNI_NETNS"], "", "a gone netns is passed as empty");
    assert_eq!(env["CNI_CONTAINERID"], id);
    assert!(
        env["CNI_ARGS"].contains("K8S_POD_NAME=web-0"),
        "cached CNI_ARGS"
    );
    assert_eq!(f.cache_files(), Vec::<String>::new());
    assert_eq!(cni.cached(id, "eth0"), None);

    // Again: no cache, no config: nothing to do.
    f.clear_calls();
    cni.del(&a).await.unwrap();
    assert_eq!(f.calls(), Vec::<String>::new());

    // No cache but a config (an ADD that never finished): DEL through the
    // current config, without prevResult, with the caller's capabilities.
    f.conf("10-fake.conflist", &chain_conf());
    let a = attachment(id, &gone, port_caps(7070));
    cni.del(&a).await.unwrap();
    assert_eq!(f.calls(), ["p3 DEL", "p2 DEL", "p1 DEL"]);
    let s3 = f.stdin("p3", "DEL");
    assert_eq!(s3.get("prevResult"), None);
    assert_eq!(s3["runtimeConfig"]["portMappings"][0]["hostPort"], 7070);
}

#[tokio::test]
async fn del_passes_a_live_netns() {
    let f = chain_fake();
    let cni = f.cni();
    // /proc/self/ns/net is a network namespace (nsfs).
    let live = Path::new("/proc/self/ns/net");
    cni.add(&attachment("c0ffee03", live, Capabilities::default()))
        .await
        .unwrap();
    cni.del(&attachment("c0ffee03", live, Capabilities::default()))
        .await
        .unwrap();
    assert_eq!(f.env("p1", "DEL")["CNI_NETNS"], "/proc/self/ns/net");
    // No capability args at all: no runtimeConfig.
    assert_eq!(f.stdin("p3", "DEL").get("runtimeConfig"), None);
}

#[tokio::test]
async fn a_plugin_that_hangs_is_killed_with_its_children() {
    let f = Fake::new();
    let (r1, ..) = results();
    f.ok_plugin("p1", &r1);
    f.plugin(
        "slow",
        "if [ \"$CNI_COMMAND\" = ADD ]; then sleep 30 & echo $! > \"$R/sleep.pid\"; wait; fi\nexit 0",
    );
    f.conf(
        "10-slow.conflist",
        &json!({"cniVersion": "1.0.0", "name": "slow", "plugins": [{"type": "p1"}, {"type": "slow"}]}),
    );
    let cni = f.cni().with_timeout(Duration::from_millis(700));
    let started = std::time::Instant::now();
    let err = cni
        .add(&attachment(
            "c0ffee04",
            Path::new(NETNS),
            Capabilities::default(),
        ))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    match &err {
        Error::Timeout {
            plugin,
            verb,
            timeout,
        } => {
            assert_eq!(
                (plugin.as_str(), *verb, *timeout),
                ("slow", Verb::Add, Duration::from_millis(700))
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string()
            .contains("\"slow\" did not finish ADD within 700ms and was killed"),
        "{err}"
    );
    // The plugin's child was killed too (gone, or a zombie awaiting its reaper).
    let pid = fs::read_to_string(f.dir("rec").join("sleep.pid")).unwrap();
    let stat = format!("/proc/{}/stat", pid.trim());
    let mut dead = false;
    for _ in 0..100 {
        match fs::read_to_string(&stat) {
            Err(_) => dead = true,
            Ok(s) => {
                dead = s
                    .rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            }
        }
        if dead {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dead, "sleep {pid} survived the timeout");
    // The failed ADD was undone: DEL in reverse order; nothing cached.
    assert_eq!(f.calls(), ["p1 ADD", "slow ADD", "slow DEL", "p1 DEL"]);
    assert_eq!(f.cache_files(), Vec::<String>::new());
}

#[tokio::test]
async fn plugin_errors_are_reported_and_the_failed_add_undone() {
    let f = Fake::new();
    let (r1, ..) = results();
    f.ok_plugin("good", &r1);
    f.plugin(
        "full",
        "if [ \"$CNI_COMMAND\" = ADD ]; then echo '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"failed to allocate for range 0\",\"details\":\"10.88.0.0/30 has no free IPs\"}'; exit 1; fi",
    );
    f.plugin(
        "junk",
        "echo 'panic: oops'; echo 'goroutine 1 [running]' >&2; exit 2",
    );
    f.plugin("garbage", "echo 'not a result'; exit 0");
    let cni = f.cni();
    let a = attachment("c0ffee05", Path::new(NETNS), Capabilities::default());

    f.conf(
        "10-a.conflist",
        &json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "good"}, {"type": "full"}]}),
    );
    let err = cni.add(&a).await.unwrap_err();
    match &err {
        Error::Plugin {
            plugin,
            verb,
            code,
            msg,
            details,
        } => {
            assert_eq!(plugin, "full");
            assert_eq!(*verb, Verb::Add);
            assert_eq!(*code, Some(11));
            assert_eq!(msg, "failed to allocate for range 0");
            assert_eq!(details, "10.88.0.0/30 has no free IPs");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "CNI plugin \"full\" failed ADD (code 11: try again later): failed to allocate for range 0 (10.88.0.0/30 has no free IPs)"
    );
    assert_eq!(f.calls(), ["good ADD", "full ADD", "full DEL", "good DEL"]);
    assert_eq!(f.cache_files(), Vec::<String>::new());

    // Non-JSON output is quoted; the exit status is given.
    f.conf(
        "10-a.conflist",
        &json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "junk"}]}),
    );
    let err = cni.add(&a).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "CNI plugin \"junk\" failed ADD (no CNI error code): exit status: 2, printing \"panic: oops\""
    );

    // Exit 0 with something that is not a result.
    f.conf(
        "10-a.conflist",
        &json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "garbage"}]}),
    );
    let err = cni.add(&a).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("CNI plugin \"garbage\" failed ADD (no CNI error code): unusable result (result is not JSON"),
        "{err}"
    );
    // A failing DEL is an error too.
    f.conf(
        "10-a.conflist",
        &json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "junk"}]}),
    );
    let e = cni.del(&a).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Plugin {
                verb: Verb::Del,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn a_missing_plugin_means_not_ready_and_runs_nothing() {
    let f = Fake::new();
    let (r1, ..) = results();
    f.ok_plugin("p1", &r1);
    f.conf(
        "10-a.conflist",
        &json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "p1"}, {"type": "nope"}]}),
    );
    // Not executable does not count.
    fs::write(f.dir("bin").join("nope"), "#!/bin/sh\n").unwrap();
    let cni = f.cni();
    let err = cni.ready().unwrap_err();
    match &err {
        Error::MissingPlugin {
            plugin,
            dirs,
            config,
        } => {
            assert_eq!(plugin, "nope");
            assert_eq!(dirs, &vec![f.dir("bin"), f.dir("nonexistent-bin")]);
            assert_eq!(config, &f.dir("conf").join("10-a.conflist"));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string()
            .contains("apt install containernetworking-plugins"),
        "{err}"
    );
    let a = attachment("c0ffee06", Path::new(NETNS), Capabilities::default());
    assert!(matches!(
        cni.add(&a).await,
        Err(Error::MissingPlugin { .. })
    ));
    assert!(matches!(
        cni.status().await,
        Err(Error::MissingPlugin { .. })
    ));
    assert_eq!(f.calls(), Vec::<String>::new());
    // Installing it is noticed at once (binaries are looked up on every call).
    f.ok_plugin("nope", &r1);
    assert_eq!(cni.ready().unwrap().plugins.len(), 2);
}

#[tokio::test]
async fn the_first_config_file_wins_and_a_broken_one_is_reported() {
    let f = Fake::new();
    let (r1, ..) = results();
    f.ok_plugin("p1", &r1);
    let good =
        |name: &str| json!({"cniVersion": "1.0.0", "name": name, "plugins": [{"type": "p1"}]});
    let conf = f.dir("conf");
    // Not config files: ignored.
    fs::write(conf.join("00-readme.txt"), "hello").unwrap();
    fs::create_dir(conf.join("01-dir.conflist")).unwrap();
    fs::write(
        conf.join("10-broken.conflist"),
        "{\"cniVersion\": \"1.0.0\", \"name\": ",
    )
    .unwrap();
    f.conf("20-good.conflist", &good("second"));
    let cni = f.cni();
    let err = cni.ready().unwrap_err();
    match &err {
        Error::InvalidConfig { file, reason } => {
            assert_eq!(file, &conf.join("10-broken.conflist"));
            assert!(
                reason.starts_with("not valid JSON: EOF while parsing"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("10-broken.conflist"), "{err}");
    let a = attachment("c0ffee07", Path::new(NETNS), Capabilities::default());
    assert!(matches!(
        cni.add(&a).await,
        Err(Error::InvalidConfig { .. })
    ));
    assert_eq!(f.calls(), Vec::<String>::new());

    // Fixed by removing it: the next file is used (reloaded, same Cni).
    fs::remove_file(conf.join("10-broken.conflist")).unwrap();
    assert_eq!(cni.ready().unwrap().name, "second");
    // Lexical order across extensions: a .conf before the .conflist wins, wrapped.
    fs::write(
        conf.join("15-single.conf"),
        r#"{"cniVersion": "0.4.0", "name": "single", "type": "p1"}"#,
    )
    .unwrap();
    let net = cni.ready().unwrap();
    assert_eq!(
        (net.name.as_str(), net.cni_version.as_str()),
        ("single", "0.4.0")
    );
    assert_eq!(net.file, conf.join("15-single.conf"));
    cni.add(&a).await.unwrap();
    assert_eq!(
        f.stdin("p1", "ADD"),
        json!({"cniVersion": "0.4.0", "name": "single", "type": "p1"})
    );

    // Empty or missing directories.
    let empty = TempDir::new("empty");
    let c = Cni::new(empty.0.clone(), vec![], empty.0.join("cache"));
    assert!(
        c.ready()
            .unwrap_err()
            .to_string()
            .contains("no .conflist, .conf or .json file")
    );
    let c = Cni::new(empty.0.join("missing"), vec![], empty.0.join("cache"));
    let err = c.ready().unwrap_err();
    assert!(matches!(err, Error::NoConfig { .. }));
    assert!(
        err.to_string().contains("the directory does not exist"),
        "{err}"
    );
}

#[tokio::test]
async fn ready_rereads_only_when_the_file_or_directory_changes() {
    let f = Fake::new();
    let (r1, ..) = results();
    f.ok_plugin("p1", &r1);
    let file = f.dir("conf").join("10-a.conflist");
    f.conf(
        "10-a.conflist",
        &json!({"cniVersion": "1.0.0", "name": "aaaa", "plugins": [{"type": "p1"}]}),
    );
    let cni = f.cni();
    assert_eq!(cni.ready().unwrap().name, "aaaa");

    // Same size, inode and mtime: not re-read (the cached config answers).
    let mtime = fs::metadata(&file).unwrap().modified().unwrap();
    fs::write(
        &file,
        serde_json::to_vec_pretty(
            &json!({"cniVersion": "1.0.0", "name": "bbbb", "plugins": [{"type": "p1"}]}),
        )
        .unwrap(),
    )
    .unwrap();
    fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(cni.ready().unwrap().name, "aaaa");

    // Edited in place (size changes): re-read.
    f.conf(
        "10-a.conflist",
        &json!({"cniVersion": "1.0.0", "name": "ccccc", "plugins": [{"type": "p1"}]}),
    );
    assert_eq!(cni.ready().unwrap().name, "ccccc");
    // Broken in place: reported, then fixed again.
    fs::write(&file, "{").unwrap();
    assert!(matches!(cni.ready(), Err(Error::InvalidConfig { .. })));
    f.conf(
        "10-a.conflist",
        &json!({"cniVersion": "1.0.0", "name": "dddd", "plugins": [{"type": "p1"}]}),
    );
    assert_eq!(cni.ready().unwrap().name, "dddd");
    // A new, lexically earlier file (the directory changes).
    f.conf(
        "05-b.conflist",
        &json!({"cniVersion": "1.0.0", "name": "eeee", "plugins": [{"type": "p1"}]}),
    );
    assert_eq!(cni.ready().unwrap().name, "eeee");
}

#[tokio::test]
async fn check_needs_a_cache_and_version_0_4() {
    let f = chain_fake();
    let cni = f.cni();
    let a = attachment("c0ffee08", Path::new(NETNS), Capabilities::default());
    let err = cni.check(&a).await.unwrap_err();
    assert!(matches!(err, Error::NotCached { .. }), "{err}");

    // 0.3.1: CHECK does not exist; Ok without calls.
    let mut conf = chain_conf();
    conf["cniVersion"] = json!("0.3.1");
    f.conf("10-fake.conflist", &conf);
    cni.add(&a).await.unwrap();
    f.clear_calls();
    cni.check(&a).await.unwrap();
    assert_eq!(f.calls(), Vec::<String>::new());
    // 0.3.1: DEL gets no prevResult (libcni).
    cni.del(&a).await.unwrap();
    assert_eq!(f.stdin("p1", "DEL").get("prevResult"), None);
    assert_eq!(f.stdin("p1", "DEL")["cniVersion"], "0.3.1");

    // disableCheck: Ok without calls.
    conf["cniVersion"] = json!("1.0.0");
    conf["disableCheck"] = json!(true);
    f.conf("10-fake.conflist", &conf);
    cni.add(&a).await.unwrap();
    f.clear_calls();
    cni.check(&a).await.unwrap();
    assert_eq!(f.calls(), Vec::<String>::new());

    // A failing CHECK is reported.
    conf["disableCheck"] = json!(false);
    f.conf("10-fake.conflist", &conf);
    cni.add(&a).await.unwrap();
    f.plugin("p2", "if [ \"$CNI_COMMAND\" = CHECK ]; then echo '{\"code\":7,\"msg\":\"eth0 has the wrong address\"}'; exit 1; fi");
    let err = cni.check(&a).await.unwrap_err();
    assert!(
        matches!(&err, Error::Plugin { plugin, verb: Verb::Check, code: Some(7), .. } if plugin == "p2"),
        "{err}"
    );
}

#[tokio::test]
async fn status_runs_only_from_1_1_0() {
    let f = Fake::new();
    let (r1, ..) = results();
    f.ok_plugin("p1", &r1);
    f.ok_plugin("p2", &r1);
    let cni = f.cni();
    f.conf(
        "10-a.conflist",
        &json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "p1"}, {"type": "p2"}]}),
    );
    cni.status().await.unwrap();
    assert_eq!(f.calls(), Vec::<String>::new());

    f.conf(
        "10-a.conflist",
        &json!({"cniVersion": "1.1.0", "name": "n11", "plugins": [{"type": "p1"}, {"type": "p2"}]}),
    );
    cni.status().await.unwrap();
    assert_eq!(f.calls(), ["p1 STATUS", "p2 STATUS"]);
    assert_eq!(
        f.stdin("p2", "STATUS"),
        json!({"cniVersion": "1.1.0", "name": "n11", "type": "p2"})
    );
    let env = f.env("p1", "STATUS");
    assert_eq!(
        (env["CNI_CONTAINERID"].as_str(), env["CNI_NETNS"].as_str()),
        ("", "")
    );

    f.plugin(
        "p2",
        "echo '{\"code\":50,\"msg\":\"daemon not running\"}'; exit 1",
    );
    let err = cni.status().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "CNI plugin \"p2\" failed STATUS (code 50: plugin not available): daemon not running"
    );
    // No config: the ready() error.
    assert!(matches!(
        Cni::new(f.dir("nonexistent"), vec![], f.dir("c"))
            .status()
            .await,
        Err(Error::NoConfig { .. })
    ));
}

#[tokio::test]
async fn gc_deletes_stale_attachments_and_sends_the_valid_ones() {
    let f = chain_fake();
    let mut conf = chain_conf();
    conf["cniVersion"] = json!("1.1.0");
    f.conf("10-fake.conflist", &conf);
    let cni = f.cni();
    for id in ["keep1", "stale1", "stale2"] {
        cni.add(&attachment(id, Path::new(NETNS), port_caps(1000)))
            .await
            .unwrap();
    }
    f.clear_calls();
    cni.gc(&[
        ("keep1".into(), "eth0".into()),
        ("gone".into(), "eth0".into()),
    ])
    .await
    .unwrap();
    assert_eq!(
        f.calls(),
        [
            "p3 DEL", "p2 DEL", "p1 DEL", "p3 DEL", "p2 DEL", "p1 DEL", "p1 GC", "p2 GC", "p3 GC"
        ]
    );
    assert_eq!(f.cache_files(), ["keep1@eth0.json"]);
    // The stale DEL used the cached capability args.
    assert_eq!(
        f.stdin("p3", "DEL")["runtimeConfig"]["portMappings"][0]["hostPort"],
        1000
    );
    let valid = json!([{"containerID": "keep1", "ifname": "eth0"}, {"containerID": "gone", "ifname": "eth0"}]);
    let gc = f.stdin("p2", "GC");
    assert_eq!(gc["cni.dev/valid-attachments"], valid);
    assert_eq!(gc["cni.dev/attachments"], valid);
    assert_eq!(gc["name"], "fakenet");

    // disableGC: nothing at all.
    conf["disableGC"] = json!(true);
    f.conf("10-fake.conflist", &conf);
    f.clear_calls();
    cni.gc(&[]).await.unwrap();
    assert_eq!(f.calls(), Vec::<String>::new());
    assert_eq!(f.cache_files(), ["keep1@eth0.json"]);
}

#[tokio::test]
async fn bad_arguments_are_refused() {
    let f = chain_fake();
    let cni = f.cni();
    let netns = Path::new(NETNS);
    for (id, ifname, what) in [
        ("../etc", "eth0", "container id"),
        ("", "eth0", "container id"),
        ("ok", "", "interface name"),
        ("ok", "a-very-long-ifname", "interface name"),
        ("ok", "eth/0", "interface name"),
        ("ok", "..", "interface name"),
    ] {
        let a = Attachment {
            container_id: id,
            netns,
            ifname,
            args: vec![],
            capabilities: Capabilities::default(),
        };
        for r in [
            cni.add(&a).await.map(|_| ()),
            cni.del(&a).await,
            cni.check(&a).await,
        ] {
            match r {
                Err(Error::InvalidArgument { what: w, .. }) => assert_eq!(w, what),
                other => panic!("{id:?}/{ifname:?}: {other:?}"),
            }
        }
    }
    let a = attachment("ok", Path::new(""), Capabilities::default());
    assert!(matches!(
        cni.add(&a).await,
        Err(Error::InvalidArgument {
            what: "netns path",
            ..
        })
    ));
    assert_eq!(f.calls(), Vec::<String>::new());
}

// ---------------------------------------------------------------------------
// Real plugins (root): Debian's bridge + host-local + portmap.

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn sh(args: &[&str]) -> (bool, String) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

const REAL_BIN: &str = "/usr/lib/cni";

/// Undoes everything the real test may have left, even on panic: DEL through
/// the cache (from a thread with its own runtime), then the netns and bridge.
struct RealGuard {
    netns: String,
    bridge: String,
    conf_dir: PathBuf,
    cache_dir: PathBuf,
    container_id: String,
}

impl Drop for RealGuard {
    fn drop(&mut self) {
        let (conf, cache, id) = (
            self.conf_dir.clone(),
            self.cache_dir.clone(),
            self.container_id.clone(),
        );
        let netns = PathBuf::from(format!("/run/netns/{}", self.netns));
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let cni = Cni::new(conf, vec![REAL_BIN.into()], cache);
                if cni.cached(&id, "eth0").is_some() {
                    let a = attachment(&id, &netns, Capabilities::default());
                    let _ = cni.del(&a).await;
                }
            });
        })
        .join();
        let _ = sh(&["ip", "netns", "del", &self.netns]);
        let _ = sh(&["ip", "link", "del", &self.bridge]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_bridge_and_portmap_plugins() {
    if !is_root()
        || !Path::new(REAL_BIN).join("bridge").exists()
        || !Path::new(REAL_BIN).join("portmap").exists()
    {
        eprintln!("skipped: needs root and Debian's containernetworking-plugins in {REAL_BIN}");
        return;
    }
    let pid = std::process::id();
    let tmp = TempDir::new("real");
    let bridge = format!("bt{pid}");
    let ns = format!("berth-cni-{pid}");
    let subnet = format!("10.{}.{}", 250 + (pid / 256) % 5, pid % 256);
    let host_port = 20000 + (pid % 20000) as u16;
    let network = format!("berth-test-{pid}");
    let id = format!("realtest{pid}");
    let (conf_dir, cache_dir, ipam_dir) =
        (tmp.0.join("conf"), tmp.0.join("cache"), tmp.0.join("ipam"));
    fs::create_dir_all(&conf_dir).unwrap();
    let _guard = RealGuard {
        netns: ns.clone(),
        bridge: bridge.clone(),
        conf_dir: conf_dir.clone(),
        cache_dir: cache_dir.clone(),
        container_id: id.clone(),
    };
    let (ok, out) = sh(&["ip", "netns", "add", &ns]);
    assert!(ok, "ip netns add: {out}");
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [
            {
                "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("{subnet}.0/24")}]], "dataDir": ipam_dir}
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    fs::write(
        conf_dir.join("10-test.conflist"),
        serde_json::to_vec(&conflist).unwrap(),
    )
    .unwrap();
    let cni = Cni::new(conf_dir.clone(), vec![REAL_BIN.into()], cache_dir.clone());
    assert_eq!(cni.ready().unwrap().name, network);
    let netns = PathBuf::from(format!("/run/netns/{ns}"));
    let caps = Capabilities {
        port_mappings: vec![PortMapping {
            host_port,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: String::new(),
        }],
        ..Default::default()
    };
    let a = attachment(&id, &netns, caps);

    let st = cni.add(&a).await.unwrap();
    assert_eq!(st.ips.len(), 1, "{st:?}");
    let ip = st.ips[0].to_string();
    assert!(
        ip.starts_with(&format!("{subnet}.")),
        "{ip} not in {subnet}.0/24"
    );
    let (ok, out) = sh(&["ip", "-n", &ns, "addr", "show", "eth0"]);
    assert!(ok && out.contains(&format!("{ip}/24")), "{out}");
    let (ok, rules) = sh(&["iptables", "-t", "nat", "-S"]);
    assert!(ok, "{rules}");
    let dnat = format!("--to-destination {ip}:80");
    assert!(
        rules
            .lines()
            .any(|l| l.contains(&format!("--dport {host_port}")) && l.contains(&dnat)),
        "no DNAT rule for {host_port} → {ip}:80 in:\n{rules}"
    );
    let lease = ipam_dir.join(&network).join(&ip);
    assert!(lease.exists(), "{} missing", lease.display());
    let veth = st
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_empty() && i.name != bridge)
        .map(|i| i.name.clone())
        .expect("host veth in the result");
    assert!(sh(&["ip", "link", "show", &veth]).0);
    assert_eq!(cni.cached(&id, "eth0").unwrap().ips, st.ips);
    // bridge's CHECK passes; Debian's portmap 1.1.1 fails CHECK on IPv4-only
    // pods (containernetworking/plugins#819, fixed upstream later).
    match cni.check(&a).await {
        Ok(()) => {}
        Err(Error::Plugin {
            plugin,
            verb: Verb::Check,
            msg,
            ..
        }) if plugin == "portmap" && msg.contains("could not check ipv6 dnat") => {}
        Err(e) => panic!("CHECK: {e}"),
    }

    // DEL from a fresh executor (as after a restart) with the conf dir emptied.
    fs::remove_file(conf_dir.join("10-test.conflist")).unwrap();
    let cni = Cni::new(conf_dir.clone(), vec![REAL_BIN.into()], cache_dir.clone());
    let bare = Attachment {
        container_id: &id,
        netns: &netns,
        ifname: "eth0",
        args: vec![],
        capabilities: Capabilities::default(),
    };
    cni.del(&bare).await.unwrap();
    assert!(!lease.exists(), "lease {} not released", lease.display());
    let leases: Vec<_> = fs::read_dir(ipam_dir.join(&network))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    assert!(leases.is_empty(), "{leases:?}");
    let (_, rules) = sh(&["iptables", "-t", "nat", "-S"]);
    assert!(
        !rules
            .lines()
            .any(|l| l.contains(&format!("--dport {host_port}")) || l.contains(&dnat)),
        "portmap rules left:\n{rules}"
    );
    assert!(!sh(&["ip", "link", "show", &veth]).0, "veth {veth} left");
    assert!(
        !sh(&["ip", "-n", &ns, "link", "show", "eth0"]).0,
        "eth0 left in the netns"
    );
    assert_eq!(cni.cached(&id, "eth0"), None);
    // Idempotent.
    cni.del(&bare).await.unwrap();
}
