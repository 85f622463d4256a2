//! CDI devices with the real berthd, the real pod shim, a real registry serving berth's
//! busybox test image and Debian's CNI plugins: CDI spec files in a temporary directory
//! given to berthd as `cdi_spec_dirs`, containers asking for their devices by the CRI
//! field and by `cdi.k8s.io/*` annotations, and the errors (unknown device, malformed
//! spec file, missing host device) with nothing left behind.
//!
//! The registry, network, berthd and temporary directories are Drop guards (killed and
//! removed also when the test panics); the pods' cgroups go under
//! `/berth-test-<pid>-cdi`, which a [`CgroupGuard`] empties and removes on drop.

mod common;

use std::path::{Path, PathBuf};

use common::registry::{Registry, testimg};
use common::world::{self, CgroupGuard, entries};
use common::{Berthd, TempDir, TestNetwork, cri, mounts_under};
use tonic::Code;

/// One test's world: cgroup tree, berthd (with `cdi_spec_dirs` = [missing dir, `cdi`]),
/// network, registry, the pulled busybox reference.
struct Env {
    cg: CgroupGuard,
    d: Berthd,
    #[allow(dead_code)]
    net: TestNetwork,
    #[allow(dead_code)]
    reg: Registry,
    cdi: TempDir,
    image: String,
}

impl Env {
    async fn new(tag: &str) -> Env {
        let cg = CgroupGuard::new(tag);
        let reg = Registry::start_only(&[testimg::BUSYBOX]);
        let net = TestNetwork::new();
        let cdi = TempDir::new("berth-cdi-specs");
        // A missing first directory is skipped, as the default `/etc/cdi` usually is.
        let missing = cdi.path().join("no-such-dir");
        let (d, image) = world::berthd_with_busybox(
            &format!("cdi_spec_dirs = [{missing:?}, {:?}]\n", cdi.path()),
            &net,
            &reg,
        )
        .await;
        Env {
            cg,
            d,
            net,
            reg,
            cdi,
            image,
        }
    }

    fn write_spec(&self, name: &str, text: &str) -> PathBuf {
        let p = self.cdi.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        world::pod_config_in(&self.cg, name)
    }

    async fn run_pod(&self, config: &cri::PodSandboxConfig) -> String {
        world::run_pod(&self.d, config).await
    }

    async fn remove_pod(&self, id: &str) {
        world::remove_pod(&self.d, id).await
    }

    fn config(&self, name: &str) -> cri::ContainerConfig {
        cri::ContainerConfig {
            // Each its own PID namespace, so that its init is PID 1: in the pod's shared
            // one it gets PID n, and libcontainer 0.7 reads the host's /proc/<n> to set up
            // the v1 cgroup mount, failing where the host has no process n (here 9, 11…).
            linux: Some(cri::LinuxContainerConfig {
                resources: None,
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        pid: cri::NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
            ..world::busybox_config(&self.image, name, &["sleep", "1000"])
        }
    }

    async fn create(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        world::create_container(&self.d, pod, pod_config, config).await
    }

    async fn run(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> String {
        let id = self.create(pod, pod_config, config).await.expect("create");
        world::start_container(&self.d, &id).await.expect("start");
        id
    }

    /// `sh -c script` in the container: exit code and stdout (stderr appended).
    async fn sh(&self, id: &str, script: &str) -> (i32, String) {
        let r = self
            .d
            .runtime()
            .await
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                timeout: 10,
            })
            .await
            .expect("exec")
            .into_inner();
        let mut out = String::from_utf8_lossy(&r.stdout).into_owned();
        out.push_str(&String::from_utf8_lossy(&r.stderr));
        (r.exit_code, out)
    }

    async fn containers(&self) -> Vec<cri::Container> {
        world::list_containers(&self.d, None).await
    }

    /// A refused CreateContainer left no record, bundle, mount or writable layer.
    async fn assert_clean(&self, pod: &str, what: &str) {
        assert!(
            self.containers().await.is_empty(),
            "{what}: container listed"
        );
        let bundles = self.d.state.join("pods").join(pod).join("containers");
        let m = mounts_under(&bundles);
        assert!(m.is_empty(), "{what}: mounts left: {m:?}");
        assert!(entries(&bundles).is_empty(), "{what}: bundles left");
        let layers = entries(&self.d.root.join("containers"));
        assert!(layers.is_empty(), "{what}: container dirs left: {layers:?}");
    }
}

/// The YAML spec of `berth.test/device`: `null0` is the host's `/dev/null` as
/// `/dev/berth-null` with an env var and a read-only bind mount of `file`.
fn device_spec(file: &Path) -> String {
    format!(
        r#"cdiVersion: "0.6.0"
kind: berth.test/device
containerEdits:
  env: ["BERTH_CDI_SPEC=1"]
devices:
  - name: null0
    containerEdits:
      env: ["BERTH_CDI_DEVICE=null0"]
      deviceNodes:
        - path: /dev/berth-null
          hostPath: /dev/null
          permissions: rw
      mounts:
        - hostPath: {file:?}
          containerPath: /etc/berth-cdi/greeting
          options: [ro, bind]
  - name: missing
    containerEdits:
      deviceNodes:
        - path: /dev/berth-missing-{pid}
"#,
        pid = std::process::id()
    )
}

/// The JSON spec of `berth.test/json`: `zero` is `/dev/zero` as `/dev/berth-zero`.
const JSON_SPEC: &str = r#"{
  "cdiVersion": "0.5.0",
  "kind": "berth.test/json",
  "devices": [
    {
      "name": "zero",
      "containerEdits": {
        "env": ["BERTH_CDI_JSON=zero"],
        "deviceNodes": [{"path": "/dev/berth-zero", "hostPath": "/dev/zero"}]
      }
    }
  ]
}"#;

#[tokio::test]
async fn cdi_devices_reach_the_container_and_bad_ones_are_refused_cleanly() {
    let env = Env::new("cdi").await;
    let host = TempDir::new("berth-cdi-host");
    let file = host.path().join("greeting");
    std::fs::write(&file, "hello from the host\n").unwrap();
    env.write_spec("device.yaml", &device_spec(&file));

    let pc = env.pod_config("cdi");
    let pod = env.run_pod(&pc).await;

    // By the CRI field.
    let mut c = env.config("field");
    c.cdi_devices = vec![cri::CdiDevice {
        name: "berth.test/device=null0".into(),
    }];
    let id = env.run(&pod, &pc, c).await;
    assert_eq!(
        env.sh(&id, "echo $BERTH_CDI_SPEC $BERTH_CDI_DEVICE").await,
        (0, "1 null0\n".into())
    );
    assert_eq!(
        env.sh(&id, "stat -c '%t:%T %F' /dev/berth-null").await,
        (0, "1:3 character special file\n".into())
    );
    assert_eq!(
        env.sh(&id, "echo x > /dev/berth-null && echo written")
            .await,
        (0, "written\n".into())
    );
    assert_eq!(
        env.sh(&id, "cat /etc/berth-cdi/greeting").await,
        (0, "hello from the host\n".into())
    );
    let (code, out) = env.sh(&id, "echo no > /etc/berth-cdi/greeting").await;
    assert_ne!(code, 0, "the ro bind mount is writable: {out}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "hello from the host\n"
    );

    // By annotation, from a spec file written after berthd started (read at each create).
    env.write_spec("json.json", JSON_SPEC);
    let mut c = env.config("annotated");
    c.annotations.insert(
        "cdi.k8s.io/berth-test_zero".into(),
        "berth.test/json=zero".into(),
    );
    let id2 = env.run(&pod, &pc, c).await;
    assert_eq!(
        env.sh(
            &id2,
            "echo $BERTH_CDI_JSON; stat -c '%t:%T' /dev/berth-zero"
        )
        .await,
        (0, "zero\n1:5\n".into())
    );
    assert_eq!(env.sh(&id2, "test -e /dev/berth-null").await.0, 1);

    // The errors: none leaves anything behind.
    let keep: Vec<String> = env.containers().await.into_iter().map(|c| c.id).collect();
    let mut rt = env.d.runtime().await;
    for id in keep {
        rt.remove_container(cri::RemoveContainerRequest { container_id: id })
            .await
            .expect("remove container");
    }
    env.assert_clean(&pod, "after removing the good ones").await;

    // A device no spec defines; a malformed spec file is named in the error.
    let broken = env.write_spec("broken.yaml", "cdiVersion: \"0.6.0\"\nkind: [");
    let mut c = env.config("unknown");
    c.cdi_devices = vec![cri::CdiDevice {
        name: "berth.test/device=nope".into(),
    }];
    let err = env.create(&pod, &pc, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message()
            .contains("unresolvable CDI devices berth.test/device=nope"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains(&broken.display().to_string()),
        "{}",
        err.message()
    );
    env.assert_clean(&pod, "unknown device").await;

    // A device node whose host path does not exist.
    let mut c = env.config("missing");
    c.cdi_devices = vec![cri::CdiDevice {
        name: "berth.test/device=missing".into(),
    }];
    let err = env.create(&pod, &pc, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message()
            .contains(&format!("/dev/berth-missing-{}", std::process::id()))
            && err.message().contains("berth.test/device=missing"),
        "{}",
        err.message()
    );
    env.assert_clean(&pod, "missing host device").await;

    // A name that is no CDI name, in an annotation.
    let mut c = env.config("badname");
    c.annotations
        .insert("cdi.k8s.io/berth-test_bad".into(), "null0".into());
    let err = env.create(&pod, &pc, c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("\"null0\""), "{}", err.message());
    env.assert_clean(&pod, "invalid name").await;

    // The broken file does not hide the good ones.
    let mut c = env.config("again");
    c.cdi_devices = vec![cri::CdiDevice {
        name: "berth.test/device=null0".into(),
    }];
    let id3 = env.run(&pod, &pc, c).await;
    assert_eq!(env.sh(&id3, "echo $BERTH_CDI_DEVICE").await.1, "null0\n");

    env.remove_pod(&pod).await;
    assert!(env.containers().await.is_empty());
    let m = mounts_under(env.d.dir.path());
    assert!(m.is_empty(), "mounts left: {m:?}");
}
