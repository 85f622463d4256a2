//! ImageService against a real registry and the real berthd: pulls of every manifest
//! shape, references, removal, bad input, deadlines and a crash in the middle of a pull.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use common::registry::{Registry, testimg, unused_addr};
use common::{Berthd, cri, spec};
use tonic::Code;

fn plain_http(reg: &Registry) -> String {
    format!("[registry.hosts.\"{}\"]\nplain_http = true\n", reg.addr())
}

async fn pull(d: &Berthd, image: &str) -> Result<String, tonic::Status> {
    let mut c = d.images().await;
    c.pull_image(cri::PullImageRequest {
        image: spec(image),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().image_ref)
}

async fn status(d: &Berthd, image: &str) -> Option<cri::Image> {
    let mut c = d.images().await;
    c.image_status(cri::ImageStatusRequest {
        image: spec(image),
        verbose: false,
    })
    .await
    .expect("image status")
    .into_inner()
    .image
}

async fn list(d: &Berthd) -> Vec<cri::Image> {
    let mut c = d.images().await;
    c.list_images(cri::ListImagesRequest::default())
        .await
        .expect("list images")
        .into_inner()
        .images
}

async fn remove(d: &Berthd, image: &str) {
    let mut c = d.images().await;
    c.remove_image(cri::RemoveImageRequest { image: spec(image) })
        .await
        .expect("remove image");
}

/// Nothing half-stored: no temporary unpack directory, and every layer directory belongs
/// to an image that is listed.
async fn assert_store_clean(d: &Berthd) {
    let dirs = d.layer_dirs();
    assert!(
        dirs.iter().all(|n| !n.starts_with(".tmp")),
        "temporary layer dirs left: {dirs:?}"
    );
    let mut c = d.images().await;
    let mut wanted = HashSet::new();
    for img in list(d).await {
        let st = c
            .image_status(cri::ImageStatusRequest {
                image: spec(&img.id),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
        for id in info["chainIDs"].as_array().unwrap() {
            wanted.insert(
                id.as_str()
                    .unwrap()
                    .trim_start_matches("sha256:")
                    .to_string(),
            );
        }
    }
    let have: HashSet<String> = dirs.into_iter().collect();
    assert_eq!(
        have, wanted,
        "layer dirs on disk != layers of listed images"
    );
}

/// Mounts the image's layers as overlayfs (the way containers will) and returns the
/// merged tree's path; unmounted on drop.
struct Merged {
    target: common::TempDir,
}

impl Merged {
    async fn mount(d: &Berthd, image: &str) -> Merged {
        let mut c = d.images().await;
        let st = c
            .image_status(cri::ImageStatusRequest {
                image: spec(image),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
        let lowers: Vec<String> = info["chainIDs"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .map(|c| {
                d.root
                    .join("layers")
                    .join(c.as_str().unwrap().trim_start_matches("sha256:"))
                    .display()
                    .to_string()
            })
            .collect();
        let target = common::TempDir::new("berth-merged");
        let opts = format!("lowerdir={}", lowers.join(":"));
        nix::mount::mount(
            Some("overlay"),
            target.path(),
            Some("overlay"),
            nix::mount::MsFlags::MS_RDONLY,
            Some(opts.as_str()),
        )
        .expect("mount overlay of the image's layers");
        Merged { target }
    }

    fn path(&self, p: &str) -> std::path::PathBuf {
        self.target.path().join(p.trim_start_matches('/'))
    }
}

impl Drop for Merged {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.target.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test]
async fn pull_list_status_remove_multi_layer_list() {
    let reg = Registry::start_only(&[testimg::BUSYBOX, testimg::BUSYBOX_OCI]);
    let d = Berthd::start(&plain_http(&reg));
    let want = reg.image(testimg::BUSYBOX);
    let name = reg.reference(testimg::BUSYBOX);

    let id = pull(&d, &name).await.expect("pull");
    assert_eq!(id, want.config_digest, "PullImage returns the image ID");

    let img = status(&d, &name).await.expect("status after pull");
    assert_eq!(img.id, want.config_digest);
    assert_eq!(img.repo_tags, vec![name.clone()]);
    let repo = name.trim_end_matches(":latest");
    assert_eq!(
        img.repo_digests,
        vec![format!("{repo}@{}", want.manifest_digest)]
    );
    assert_eq!(img.size, want.size);
    assert!(img.uid.is_none() && img.username.is_empty());

    // Every way of naming it gives the same answer, as containerd's CRI does.
    let short = &img.id["sha256:".len()..][..12];
    for r in [
        img.id.clone(),
        img.id.trim_start_matches("sha256:").to_string(),
        short.to_string(),
        img.repo_digests[0].clone(),
        format!("{repo}:latest@{}", want.manifest_digest),
    ] {
        assert_eq!(status(&d, &r).await.as_ref(), Some(&img), "status by {r}");
    }

    // The unpacked layers stack into the expected rootfs: whiteout, opaque dir, zstd and
    // uncompressed layers, ownership, setuid, no trace of the decoy platform.
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let m = Merged::mount(&d, &img.id).await;
        assert!(!m.path("/opt/data/file1").exists(), "whiteout hides file1");
        assert!(m.path("/opt/data/file2").is_file());
        let spool: Vec<_> = std::fs::read_dir(m.path("/var/spool/x"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(spool, vec!["c".to_string()], "opaque dir hides a and b");
        assert!(m.path("/etc/layer2").is_file() && m.path("/etc/layer4").is_file());
        let suid = std::fs::metadata(m.path("/usr/local/bin/suid")).unwrap();
        assert_eq!(suid.permissions().mode() & 0o7777, 0o4755);
        let own = std::fs::metadata(m.path("/home/tester/own")).unwrap();
        assert_eq!((own.uid(), own.gid()), (1000, 1000));
        assert_eq!(
            std::fs::metadata(m.path("/tmp"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o1777
        );
        assert!(m.path("/bin/busybox").is_file());
        assert!(!m.path("/WRONG-PLATFORM").exists());
    }

    // A second image; listing shows both; removing one leaves the other whole.
    let oci = reg.reference(testimg::BUSYBOX_OCI);
    pull(&d, &oci).await.expect("pull OCI index image");
    let ids: HashSet<String> = list(&d).await.into_iter().map(|i| i.id).collect();
    assert_eq!(ids.len(), 2);
    remove(&d, &name).await;
    assert!(status(&d, &name).await.is_none());
    assert!(status(&d, &img.id).await.is_none());
    assert!(status(&d, &oci).await.is_some());
    assert_store_clean(&d).await;
    // Removing again, or something never pulled, is fine.
    remove(&d, &name).await;
    remove(&d, "never/pulled:x").await;
    remove(&d, &oci).await;
    assert!(list(&d).await.is_empty());
    assert!(
        d.layer_dirs().is_empty(),
        "layers left: {:?}",
        d.layer_dirs()
    );
}

#[tokio::test]
async fn mirror_keeps_the_repository_path_and_normalises_names() {
    let reg = Registry::start_only(&[testimg::SINGLE, testimg::USER_NAME]);
    let d = Berthd::start(&format!(
        "[registry.hosts.\"docker.io\"]\nmirrors = [\"http://{}\"]\n",
        reg.addr()
    ));
    let id = pull(&d, "berth-test/single")
        .await
        .expect("pull through the mirror");
    assert_eq!(id, reg.image(testimg::SINGLE).config_digest);
    let img = status(&d, "docker.io/berth-test/single:latest")
        .await
        .unwrap();
    assert_eq!(img.repo_tags, vec!["docker.io/berth-test/single:latest"]);
    assert_eq!(img.uid, Some(cri::Int64Value { value: 1002 }));
    assert!(img.username.is_empty());

    pull(&d, "docker.io/berth-test/user-name:latest")
        .await
        .unwrap();
    let img = status(&d, "berth-test/user-name").await.unwrap();
    assert_eq!(img.uid, None);
    assert_eq!(img.username, "www-data");
}

#[tokio::test]
async fn three_tags_one_image_and_removal_by_tag_removes_all() {
    let reg = Registry::start_only(&testimg::TAGS);
    let d = Berthd::start(&plain_http(&reg));
    let names: Vec<String> = testimg::TAGS.iter().map(|t| reg.reference(t)).collect();
    let mut ids = HashSet::new();
    for n in &names {
        ids.insert(pull(&d, n).await.unwrap());
    }
    assert_eq!(ids.len(), 1);
    let imgs = list(&d).await;
    assert_eq!(imgs.len(), 1);
    let mut tags = imgs[0].repo_tags.clone();
    tags.sort();
    assert_eq!(tags, names);

    // A filter names one image.
    let mut c = d.images().await;
    let filtered = c
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: spec(&names[1]),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);

    remove(&d, &names[1]).await;
    assert!(list(&d).await.is_empty());
    assert!(d.layer_dirs().is_empty());
}

#[tokio::test]
async fn concurrent_pulls_of_one_image_agree() {
    let reg = Registry::start_only(&[testimg::BUSYBOX]);
    let d = Berthd::start(&plain_http(&reg));
    let name = reg.reference(testimg::BUSYBOX);
    let (a, b, c) = tokio::join!(pull(&d, &name), pull(&d, &name), pull(&d, &name));
    let want = &reg.image(testimg::BUSYBOX).config_digest;
    assert_eq!((&a.unwrap(), &b.unwrap(), &c.unwrap()), (want, want, want));
    assert_eq!(list(&d).await.len(), 1);
    assert_store_clean(&d).await;
}

/// Asserts a failed pull's code, that its message names the image, and that nothing of
/// it was stored.
async fn assert_pull_fails(d: &Berthd, image: &str, code: Code) -> String {
    let err = pull(d, image).await.expect_err("pull must fail");
    assert_eq!(err.code(), code, "{image}: {}", err.message());
    assert!(
        err.message()
            .contains(image.split('@').next().unwrap().split(':').next().unwrap())
            || err.message().contains(image),
        "message names the image: {}",
        err.message()
    );
    assert!(status(d, image).await.is_none() || code == Code::InvalidArgument);
    assert_store_clean(d).await;
    err.message().to_string()
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_stores_nothing() {
    let reg = Registry::start_only(&[
        testimg::SINGLE,
        testimg::ARM64_ONLY,
        testimg::ESCAPE_DOTDOT,
        testimg::ESCAPE_SYMLINK,
        testimg::TRUNCATED,
        testimg::BADBLOB,
    ]);
    let d = Berthd::start(&plain_http(&reg));

    for bad in [
        "UPPER",
        "docker.io/UPPER/x",
        "a:",
        "x@sha256:short",
        "-x",
        "a//b",
    ] {
        let err = pull(&d, bad).await.expect_err(bad);
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{bad}: {}",
            err.message()
        );
        assert!(err.message().contains(bad), "{}", err.message());
    }
    let err = pull(&d, "").await.expect_err("empty");
    assert_eq!(err.code(), Code::InvalidArgument);

    let dead = unused_addr();
    let d2 = Berthd::start(&format!("[registry.hosts.\"{dead}\"]\nplain_http = true\n"));
    assert_pull_fails(&d2, &format!("{dead}/x/y:1"), Code::Unavailable).await;
    drop(d2);

    assert_pull_fails(&d, &reg.reference("berth-test/nope:latest"), Code::NotFound).await;
    assert_pull_fails(&d, &reg.reference("berth-test/single:nope"), Code::NotFound).await;
    let msg = assert_pull_fails(&d, &reg.reference(testimg::ARM64_ONLY), Code::NotFound).await;
    assert!(
        msg.contains("linux/amd64") || msg.contains("platform"),
        "{msg}"
    );

    assert_pull_fails(&d, &reg.reference(testimg::TRUNCATED), Code::DataLoss).await;

    let bad = reg.image(testimg::BADBLOB);
    reg.corrupt_blob(bad.layer_digests.last().unwrap());
    let msg = assert_pull_fails(&d, &reg.reference(testimg::BADBLOB), Code::DataLoss).await;
    assert!(msg.contains(bad.layer_digests.last().unwrap()), "{msg}");

    assert_pull_fails(
        &d,
        &reg.reference(testimg::ESCAPE_DOTDOT),
        Code::InvalidArgument,
    )
    .await;
    assert_pull_fails(
        &d,
        &reg.reference(testimg::ESCAPE_SYMLINK),
        Code::InvalidArgument,
    )
    .await;
    assert!(!Path::new(testimg::ESCAPE_SYMLINK_HOST_FILE).exists());
    assert!(!d.root.parent().unwrap().join("escaped").exists());

    // After all that, a good image still pulls.
    pull(&d, &reg.reference(testimg::SINGLE)).await.unwrap();
}

#[tokio::test]
async fn credentials_are_checked_and_never_logged() {
    let reg = Registry::start_with_htpasswd("berth", "s3cret-pw");
    let only = testimg::SINGLE;
    let d = Berthd::start(&plain_http(&reg));
    let name = reg.reference(only);
    let auth = |u: &str, p: &str| cri::PullImageRequest {
        image: spec(&name),
        auth: Some(cri::AuthConfig {
            username: u.into(),
            password: p.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut c = d.images().await;
    let err = pull(&d, &name).await.expect_err("anonymous pull");
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    let err = c
        .pull_image(auth("berth", "wrong-pw"))
        .await
        .expect_err("wrong password");
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    assert!(err.message().contains(&name), "{}", err.message());
    assert_store_clean(&d).await;
    let id = c
        .pull_image(auth("berth", "s3cret-pw"))
        .await
        .unwrap()
        .into_inner()
        .image_ref;
    assert_eq!(id, reg.image(only).config_digest);
    let log = d.log();
    assert!(
        !log.contains("s3cret-pw") && !log.contains("wrong-pw"),
        "a password reached the log"
    );
}

#[tokio::test]
async fn expired_deadline_is_deadline_exceeded_and_leaves_nothing() {
    let reg = Registry::start_only(&[testimg::BENCH]);
    let d = Berthd::start(&plain_http(&reg));
    let name = reg.reference(testimg::BENCH);
    let mut c = d.images().await;
    for ms in [1u64, 150] {
        // Over a bare HTTP/2 stream: tonic's client would enforce the deadline itself
        // (CANCELLED) and hide berthd's answer, which is what this test is about.
        let req = cri::PullImageRequest {
            image: spec(&name),
            ..Default::default()
        };
        let (code, message) = common::raw_unary(
            &d.socket,
            "/runtime.v1.ImageService/PullImage",
            &req,
            &[("grpc-timeout", &format!("{ms}m"))],
        )
        .await;
        assert_eq!(code, Code::DeadlineExceeded as i32, "{ms} ms: {message}");
    }
    // kubelet-style client-side deadline: the pull is abandoned all the same.
    let mut req = tonic::Request::new(cri::PullImageRequest {
        image: spec(&name),
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(100));
    assert!(c.pull_image(req).await.is_err());
    // The aborted pull's unpackers finish their current write, then clean up.
    let mut clean = false;
    for _ in 0..100 {
        if d.layer_dirs().is_empty() {
            clean = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(clean, "left after an aborted pull: {:?}", d.layer_dirs());
    assert!(list(&d).await.is_empty());
    pull(&d, &name).await.expect("the same pull then succeeds");
}

#[tokio::test]
async fn sigkill_during_a_pull_then_restart_is_consistent() {
    let reg = Registry::start_only(&[testimg::BENCH]);
    let mut d = Berthd::start(&plain_http(&reg));
    let name = reg.reference(testimg::BENCH);
    let puller = {
        let channel = d.channel().await;
        let name = name.clone();
        tokio::spawn(async move {
            let mut c = cri::image_service_client::ImageServiceClient::new(channel);
            c.pull_image(cri::PullImageRequest {
                image: spec(&name),
                ..Default::default()
            })
            .await
        })
    };
    // Kill it once some layer is being unpacked (or done), before the image is committed.
    let mut saw_work = false;
    for _ in 0..2000 {
        if !d.layer_dirs().is_empty() {
            saw_work = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(saw_work, "the pull never started unpacking");
    d.kill();
    let res = puller.await.unwrap();
    assert!(res.is_err(), "the pull cannot have succeeded");
    let left = d.layer_dirs();
    assert!(!left.is_empty(), "the kill landed mid-pull");

    d.restart();
    assert!(list(&d).await.is_empty(), "no half image is listed");
    assert!(
        d.layer_dirs().is_empty(),
        "start-up clean-up left: {:?}",
        d.layer_dirs()
    );
    let id = pull(&d, &name).await.expect("pull after restart");
    assert_eq!(id, reg.image(testimg::BENCH).config_digest);
    assert_store_clean(&d).await;

    // And the image survives a restart whole.
    d.restart();
    assert_eq!(status(&d, &name).await.map(|i| i.id), Some(id));
    assert_store_clean(&d).await;
}

#[tokio::test]
async fn image_fs_info_counts_unpacked_layers() {
    let reg = Registry::start_only(&[testimg::SINGLE]);
    let d = Berthd::start(&plain_http(&reg));
    let mut c = d.images().await;
    let before = c
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let fs = &before.image_filesystems[0];
    assert_eq!(fs.used_bytes.as_ref().unwrap().value, 0);
    assert!(
        fs.fs_id
            .as_ref()
            .unwrap()
            .mountpoint
            .starts_with(d.root.to_str().unwrap())
    );
    assert!(fs.timestamp > 0);
    pull(&d, &reg.reference(testimg::SINGLE)).await.unwrap();
    let after = c
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let fs = &after.image_filesystems[0];
    assert!(
        fs.used_bytes.as_ref().unwrap().value > 1_000_000,
        "busybox is > 1 MB"
    );
    assert!(fs.inodes_used.as_ref().unwrap().value > 10);
    assert_eq!(after.container_filesystems.len(), 1);
}
