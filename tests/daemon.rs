//! The daemon itself: the socket, configuration, RuntimeService basics and shutdown.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Berthd, TempDir, cri};
use tonic::Code;

#[tokio::test]
async fn version_status_and_runtime_config() {
    let d = Berthd::start("cgroup_driver = \"systemd\"");
    let mut rt = d.runtime().await;
    let v = rt
        .version(cri::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "berth");
    assert_eq!(v.runtime_api_version, "v1");
    assert!(!v.runtime_version.is_empty());

    let st = rt
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let conds = st.status.unwrap().conditions;
    let runtime = conds.iter().find(|c| c.r#type == "RuntimeReady").unwrap();
    assert!(runtime.status);
    let net = conds.iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(!net.status && !net.reason.is_empty() && !net.message.is_empty());
    assert!(!st.runtime_handlers.is_empty());
    let info: serde_json::Value = serde_json::from_str(&st.info["config"]).unwrap();
    assert_eq!(info["cgroupDriver"], "systemd");

    let rc = rt
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rc.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Systemd as i32
    );
}

#[tokio::test]
async fn socket_is_0660_and_unbuilt_rpcs_are_unimplemented() {
    let d = Berthd::start("");
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
    let mut rt = d.runtime().await;
    let err = rt
        .checkpoint_container(cri::CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    // The daemon is still there after it.
    rt.version(cri::VersionRequest::default()).await.unwrap();
}

#[tokio::test]
async fn second_daemon_on_the_same_root_is_refused() {
    let d = Berthd::start("");
    let out = d.command().output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    // The first one still serves.
    d.runtime()
        .await
        .version(cri::VersionRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_a_stale_socket_is_replaced() {
    let mut d = Berthd::start("");
    d.runtime()
        .await
        .version(cri::VersionRequest::default())
        .await
        .unwrap();
    let status = d.stop();
    assert!(status.success(), "{status}");
    assert!(!d.socket.exists(), "socket removed on shutdown");
    assert!(d.log().contains("shutting down"));

    // A crash leaves the socket behind; the next start replaces it.
    d.restart();
    d.kill();
    assert!(d.socket.exists());
    d.restart();
    d.runtime()
        .await
        .version(cri::VersionRequest::default())
        .await
        .unwrap();
}

#[test]
fn config_errors_name_the_problem() {
    let dir = TempDir::new("berth-config");
    let bin = env!("CARGO_BIN_EXE_berthd");
    let run = |text: &str| {
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        let out = std::process::Command::new(bin)
            .arg("--config")
            .arg(&p)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run("root = \"/tmp/x\"\nnot_a_key = 1\n");
    assert!(e.contains("not_a_key"), "{e}");
    let e = run("[registry.hosts.\"docker.io\"]\nmirrors = [\"http://h:1/path\"]\n");
    assert!(e.contains("mirrors"), "{e}");
    let e = run("log_format = \"xml\"\n");
    assert!(e.contains("log_format") || e.contains("xml"), "{e}");
    let out = std::process::Command::new(bin)
        .args(["--config", "/nonexistent/berth.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/berth.toml"));
}
