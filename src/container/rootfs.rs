//! A container's root filesystem: an overlay of its image's unpacked layers (read-only
//! lower dirs, top layer first) and its own upper and work directories.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// Where one container's writable layer lives (persistent, under the root).
pub struct Layer {
    pub upper: PathBuf,
    pub work: PathBuf,
}

pub fn layer(containers_dir: &Path, id: &str) -> Layer {
    let dir = containers_dir.join(id);
    Layer {
        upper: dir.join("upper"),
        work: dir.join("work"),
    }
}

/// The overlay options; lower dirs are given top first. mount(2) takes at most one page
/// of options, which bounds the number of layers (about 45 under /var/lib/berth).
fn options(lowers: &[PathBuf], l: &Layer) -> String {
    let lower: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        l.upper.display(),
        l.work.display()
    )
}

/// Mounts the rootfs at `target`. `lowers` are the image's layer directories, top first.
pub fn mount_rootfs(lowers: &[PathBuf], l: &Layer, target: &Path) -> std::io::Result<()> {
    for d in [&l.upper, &l.work, &target.to_path_buf()] {
        std::fs::create_dir_all(d)?;
    }
    let opts = options(lowers, l);
    if opts.len() >= 4096 {
        return Err(std::io::Error::other(format!(
            "overlay options for {} layers are {} bytes, over the page-size limit",
            lowers.len(),
            opts.len()
        )));
    }
    if lowers.is_empty() {
        return Err(std::io::Error::other(
            "an image with no layers has no rootfs",
        ));
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| std::io::Error::other(format!("mount overlay at {}: {e}", target.display())))
}

/// Idempotent.
pub fn unmount_rootfs(target: &Path) -> std::io::Result<()> {
    while crate::sandbox::files::is_mountpoint(target) {
        umount2(target, MntFlags::MNT_DETACH)
            .map_err(|e| std::io::Error::other(format!("unmount {}: {e}", target.display())))?;
    }
    Ok(())
}

/// Disk usage of the writable layer (bytes, inodes).
pub fn usage(l: &Layer) -> (u64, u64) {
    crate::stats::disk_usage(&l.upper)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_list_lowers_top_first() {
        let l = Layer {
            upper: "/r/c/upper".into(),
            work: "/r/c/work".into(),
        };
        assert_eq!(
            options(&["/l/b".into(), "/l/a".into()], &l),
            "lowerdir=/l/b:/l/a,upperdir=/r/c/upper,workdir=/r/c/work"
        );
    }
}
