//! CRI `ContainerConfig` → `container::config::ContainerConfig`, checking what can be
//! checked without the image or the host (names, paths, modes), so that bad input is an
//! `InvalidArgument` naming the field before anything is created.

use std::path::{Path, PathBuf};

use tonic::Status;

use crate::container::config::{
    Capabilities, ContainerConfig, ContainerMetadata, Device, EnvVar, HugepageLimit, IdMapping,
    Mount, NamespaceMode, NamespaceOptions, Propagation, Resources, SeccompProfile,
    SecurityContext, SupplementalGroupsPolicy, UserNamespace,
};
use crate::container::spec::SpecError;
use crate::container::{capabilities, cdi};
use crate::proto::runtime::v1 as cri;

impl From<SpecError> for Status {
    fn from(e: SpecError) -> Status {
        let msg = e.to_string();
        match e {
            SpecError::InvalidArgument(_) | SpecError::Unsupported(_) => {
                Status::invalid_argument(msg)
            }
            SpecError::NotFound(_) => Status::not_found(msg),
            SpecError::Internal(_) => Status::internal(msg),
        }
    }
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

fn absolute(p: &str) -> bool {
    Path::new(p).is_absolute()
}

fn id_mappings(what: &str, m: &[cri::IdMapping]) -> Result<Vec<IdMapping>, Status> {
    m.iter()
        .map(|m| {
            if m.length == 0 {
                return Err(invalid(format!("{what}: an ID mapping of length 0")));
            }
            Ok(IdMapping {
                host_id: m.host_id,
                container_id: m.container_id,
                length: m.length,
            })
        })
        .collect()
}

fn mount(m: &cri::Mount) -> Result<Mount, Status> {
    let dst = &m.container_path;
    if !absolute(dst) {
        return Err(invalid(format!(
            "mount container path {dst:?} must be an absolute path"
        )));
    }
    let image = m
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .filter(|i| !i.is_empty());
    match (&image, m.host_path.is_empty()) {
        (Some(_), false) => {
            return Err(invalid(format!(
                "mount {dst:?}: host_path and image are mutually exclusive"
            )));
        }
        (None, true) => return Err(invalid(format!("mount {dst:?} has no host path"))),
        (None, false) if !absolute(&m.host_path) => {
            return Err(invalid(format!(
                "mount {dst:?}: host path {:?} must be an absolute path",
                m.host_path
            )));
        }
        _ => {}
    }
    // containerd treats an unknown propagation as private.
    let propagation = match cri::MountPropagation::try_from(m.propagation) {
        Ok(cri::MountPropagation::PropagationHostToContainer) => Propagation::HostToContainer,
        Ok(cri::MountPropagation::PropagationBidirectional) => Propagation::Bidirectional,
        _ => Propagation::Private,
    };
    if m.recursive_read_only {
        if !m.readonly {
            return Err(invalid(format!(
                "mount {dst:?}: recursive_read_only needs readonly"
            )));
        }
        if propagation != Propagation::Private {
            return Err(invalid(format!(
                "mount {dst:?}: recursive_read_only needs private propagation"
            )));
        }
    }
    Ok(Mount {
        container_path: dst.clone(),
        host_path: m.host_path.clone(),
        readonly: m.readonly,
        recursive_read_only: m.recursive_read_only,
        propagation,
        uid_mappings: id_mappings(&format!("mount {dst:?} uid mappings"), &m.uid_mappings)?,
        gid_mappings: id_mappings(&format!("mount {dst:?} gid mappings"), &m.gid_mappings)?,
        image,
        image_sub_path: m.image_sub_path.clone(),
    })
}

fn device(d: &cri::Device) -> Result<Device, Status> {
    if !absolute(&d.host_path) {
        return Err(invalid(format!(
            "device host path {:?} must be an absolute path",
            d.host_path
        )));
    }
    if !d.container_path.is_empty() && !absolute(&d.container_path) {
        return Err(invalid(format!(
            "device container path {:?} must be an absolute path",
            d.container_path
        )));
    }
    if let Some(c) = d.permissions.chars().find(|c| !"rwm".contains(*c)) {
        return Err(invalid(format!(
            "device {:?}: permission {c:?} is not one of r, w, m",
            d.host_path
        )));
    }
    Ok(Device {
        container_path: d.container_path.clone(),
        host_path: d.host_path.clone(),
        permissions: d.permissions.clone(),
    })
}

pub(super) fn resources(r: &cri::LinuxContainerResources) -> Result<Resources, Status> {
    for (what, v) in [("cpu_shares", r.cpu_shares), ("cpu_period", r.cpu_period)] {
        if v < 0 {
            return Err(invalid(format!("{what} {v} is negative")));
        }
    }
    let hugepage_limits = r
        .hugepage_limits
        .iter()
        .map(|h| {
            if h.page_size.is_empty() {
                return Err(invalid("hugepage limit without a page size"));
            }
            Ok(HugepageLimit {
                page_size: h.page_size.clone(),
                limit: h.limit,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Resources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit: r.memory_limit_in_bytes,
        memory_swap_limit: r.memory_swap_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits,
        unified: r.unified.clone().into_iter().collect(),
    })
}

fn capability_names(what: &str, names: &[String]) -> Result<Vec<String>, Status> {
    names
        .iter()
        .map(|n| {
            capabilities::normalize(n)
                .ok_or_else(|| invalid(format!("{what}: unknown capability {n:?}")))
        })
        .collect()
}

fn ns_mode(what: &str, v: i32) -> Result<NamespaceMode, Status> {
    Ok(match cri::NamespaceMode::try_from(v) {
        Ok(cri::NamespaceMode::Pod) => NamespaceMode::Pod,
        Ok(cri::NamespaceMode::Container) => NamespaceMode::Container,
        Ok(cri::NamespaceMode::Node) => NamespaceMode::Node,
        Ok(cri::NamespaceMode::Target) => NamespaceMode::Target,
        Err(_) => return Err(invalid(format!("{what} namespace mode {v} is unknown"))),
    })
}

/// containerd's `parseUsernsIDs`: `Node` without mappings, `Pod` with exactly one UID and
/// one GID mapping.
pub(super) fn userns(u: &cri::UserNamespace) -> Result<UserNamespace, Status> {
    let mode = ns_mode("user", u.mode)?;
    for (what, m) in [("UID", &u.uids), ("GID", &u.gids)] {
        if m.len() > 1 {
            return Err(invalid(format!(
                "user namespace: only one {what} mapping is supported, got {}",
                m.len()
            )));
        }
    }
    let uids = id_mappings("user namespace UID mapping", &u.uids)?;
    let gids = id_mappings("user namespace GID mapping", &u.gids)?;
    // Root in the pod must be somebody on the host (containerd's check too).
    for (what, m) in [("UID", &uids), ("GID", &gids)] {
        if m.first().is_some_and(|m| m.container_id != 0) {
            return Err(invalid(format!(
                "user namespace: the {what} mapping must start at container ID 0"
            )));
        }
    }
    match mode {
        NamespaceMode::Node if !uids.is_empty() || !gids.is_empty() => {
            Err(invalid("user namespace mode NODE cannot have ID mappings"))
        }
        NamespaceMode::Pod if uids.is_empty() || gids.is_empty() => Err(invalid(
            "user namespace mode POD needs a UID and a GID mapping",
        )),
        NamespaceMode::Container | NamespaceMode::Target => Err(invalid(format!(
            "user namespace mode {mode:?} is not supported (only POD and NODE)"
        ))),
        _ => Ok(UserNamespace { mode, uids, gids }),
    }
}

fn namespaces(o: &cri::NamespaceOption) -> Result<NamespaceOptions, Status> {
    let pid = ns_mode("pid", o.pid)?;
    if pid == NamespaceMode::Target && o.target_id.is_empty() {
        return Err(invalid("pid namespace mode TARGET needs a target_id"));
    }
    let network = ns_mode("network", o.network)?;
    let ipc = ns_mode("ipc", o.ipc)?;
    for (what, m) in [("network", network), ("ipc", ipc)] {
        if m == NamespaceMode::Target {
            return Err(invalid(format!(
                "{what} namespace mode TARGET is not supported"
            )));
        }
    }
    Ok(NamespaceOptions {
        network,
        pid,
        ipc,
        target_id: o.target_id.clone(),
        userns: o.userns_options.as_ref().map(userns).transpose()?,
    })
}

/// containerd's `GenerateSeccompSecurityProfile` + `GenerateSeccompSpecOpts`: the
/// structured field wins; else the deprecated path (`runtime/default`, `docker/default`,
/// `unconfined`, `localhost/<path>`); neither means unconfined.
fn seccomp(sc: &cri::LinuxContainerSecurityContext) -> Result<SeccompProfile, Status> {
    use cri::security_profile::ProfileType;
    if let Some(p) = &sc.seccomp {
        let t = ProfileType::try_from(p.profile_type).map_err(|_| {
            invalid(format!(
                "seccomp profile type {} is unknown",
                p.profile_type
            ))
        })?;
        if t != ProfileType::Localhost && !p.localhost_ref.is_empty() {
            return Err(invalid(
                "seccomp localhost_ref must only be set with profile type Localhost",
            ));
        }
        return match t {
            ProfileType::RuntimeDefault => Ok(SeccompProfile::RuntimeDefault),
            ProfileType::Unconfined => Ok(SeccompProfile::Unconfined),
            ProfileType::Localhost => localhost_profile(&p.localhost_ref),
        };
    }
    #[allow(deprecated)]
    let path = sc.seccomp_profile_path.as_str();
    match path {
        "" | "unconfined" => Ok(SeccompProfile::Unconfined),
        "runtime/default" | "docker/default" => Ok(SeccompProfile::RuntimeDefault),
        p => match p.strip_prefix("localhost/") {
            Some(rest) => localhost_profile(rest),
            None => Err(invalid(format!("invalid seccomp profile {p:?}"))),
        },
    }
}

fn localhost_profile(reference: &str) -> Result<SeccompProfile, Status> {
    let path = reference.strip_prefix("localhost/").unwrap_or(reference);
    if !absolute(path) {
        return Err(invalid(format!(
            "seccomp Localhost profile {reference:?} must be an absolute path"
        )));
    }
    Ok(SeccompProfile::Localhost(PathBuf::from(path)))
}

/// AppArmor is not enabled on this kernel: a profile that must be loaded is refused (as
/// containerd refuses it), the default and unconfined need nothing.
fn apparmor(sc: &cri::LinuxContainerSecurityContext) -> Result<(), Status> {
    use cri::security_profile::ProfileType;
    let localhost = match &sc.apparmor {
        Some(p) => p.profile_type == ProfileType::Localhost as i32,
        #[allow(deprecated)]
        None => sc.apparmor_profile.starts_with("localhost/"),
    };
    if localhost {
        return Err(invalid(
            "AppArmor is not enabled on this host: a Localhost AppArmor profile cannot be applied",
        ));
    }
    Ok(())
}

fn security(sc: &cri::LinuxContainerSecurityContext) -> Result<SecurityContext, Status> {
    apparmor(sc)?;
    let caps = sc.capabilities.clone().unwrap_or_default();
    let run_as_user = sc.run_as_user.as_ref().map(|v| v.value);
    let run_as_group = sc.run_as_group.as_ref().map(|v| v.value);
    for (what, v) in [("run_as_user", run_as_user), ("run_as_group", run_as_group)] {
        if let Some(v) = v
            && !(0..=i64::from(i32::MAX)).contains(&v)
        {
            return Err(invalid(format!("{what} {v} is out of range")));
        }
    }
    if run_as_group.is_some() && run_as_user.is_none() && sc.run_as_username.is_empty() {
        return Err(invalid(
            "run_as_group is specified without run_as_user or run_as_username",
        ));
    }
    if let Some(g) = sc
        .supplemental_groups
        .iter()
        .find(|g| u32::try_from(**g).is_err())
    {
        return Err(invalid(format!("supplemental group {g} is out of range")));
    }
    let policy = match cri::SupplementalGroupsPolicy::try_from(sc.supplemental_groups_policy) {
        Ok(cri::SupplementalGroupsPolicy::Merge) => SupplementalGroupsPolicy::Merge,
        Ok(cri::SupplementalGroupsPolicy::Strict) => SupplementalGroupsPolicy::Strict,
        Err(_) => {
            return Err(invalid(format!(
                "supplemental groups policy {} is unknown",
                sc.supplemental_groups_policy
            )));
        }
    };
    Ok(SecurityContext {
        capabilities: Capabilities {
            add: capability_names("add_capabilities", &caps.add_capabilities)?,
            drop: capability_names("drop_capabilities", &caps.drop_capabilities)?,
            add_ambient: capability_names(
                "add_ambient_capabilities",
                &caps.add_ambient_capabilities,
            )?,
        },
        privileged: sc.privileged,
        namespaces: namespaces(&sc.namespace_options.clone().unwrap_or_default())?,
        run_as_user,
        run_as_group,
        run_as_username: sc.run_as_username.clone(),
        readonly_rootfs: sc.readonly_rootfs,
        supplemental_groups: sc.supplemental_groups.clone(),
        supplemental_groups_policy: policy,
        no_new_privs: sc.no_new_privs,
        masked_paths: sc.masked_paths.clone(),
        readonly_paths: sc.readonly_paths.clone(),
        seccomp: seccomp(sc)?,
    })
}

pub fn container_config(c: &cri::ContainerConfig) -> Result<ContainerConfig, Status> {
    let metadata = c
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("container config has no metadata"))?;
    if metadata.name.is_empty() {
        return Err(invalid("container config metadata has an empty name"));
    }
    let image = c.image.clone().unwrap_or_default();
    if image.image.is_empty() {
        return Err(invalid(format!(
            "container {:?} names no image",
            metadata.name
        )));
    }
    if let Some(e) = c.envs.iter().find(|e| e.key.is_empty()) {
        return Err(invalid(format!(
            "environment variable with an empty name (value {:?})",
            e.value
        )));
    }
    if c.cdi_devices.iter().any(|d| d.name.is_empty()) {
        return Err(invalid("CDI device with an empty name"));
    }
    // containerd's `WithCDI`: the CRI field's devices, then the `cdi.k8s.io/*`
    // annotations' (device plugins), each once.
    let mut cdi_devices: Vec<String> = Vec::new();
    let annotated = cdi::annotation_devices(&c.annotations).map_err(|e| invalid(e.to_string()))?;
    let named = c.cdi_devices.iter().map(|d| d.name.clone());
    for d in named.chain(annotated) {
        if !cdi_devices.contains(&d) {
            cdi_devices.push(d);
        }
    }
    let stop_signal = match cri::Signal::try_from(c.stop_signal) {
        Ok(cri::Signal::RuntimeDefault) => None,
        Ok(s) => Some(s.as_str_name().to_string()),
        Err(_) => return Err(invalid(format!("stop signal {} is unknown", c.stop_signal))),
    };
    let linux = c.linux.clone().unwrap_or_default();
    Ok(ContainerConfig {
        metadata: ContainerMetadata {
            name: metadata.name.clone(),
            attempt: metadata.attempt,
        },
        image: image.image,
        user_specified_image: image.user_specified_image,
        command: c.command.clone(),
        args: c.args.clone(),
        working_dir: c.working_dir.clone(),
        envs: c
            .envs
            .iter()
            .map(|e| EnvVar {
                key: e.key.clone(),
                value: e.value.clone(),
            })
            .collect(),
        mounts: c.mounts.iter().map(mount).collect::<Result<_, _>>()?,
        devices: c.devices.iter().map(device).collect::<Result<_, _>>()?,
        cdi_devices,
        labels: c.labels.clone().into_iter().collect(),
        annotations: c.annotations.clone().into_iter().collect(),
        log_path: c.log_path.clone(),
        stdin: c.stdin,
        stdin_once: c.stdin_once,
        tty: c.tty,
        resources: linux.resources.as_ref().map(resources).transpose()?,
        security: security(&linux.security_context.unwrap_or_default())?,
        stop_signal,
    })
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn base() -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 2,
            }),
            image: Some(cri::ImageSpec {
                image: "busybox".into(),
                user_specified_image: "busybox:1.36".into(),
                ..Default::default()
            }),
            command: vec!["sh".into()],
            args: vec!["-c".into(), "true".into()],
            envs: vec![cri::KeyValue {
                key: "A".into(),
                value: "1".into(),
            }],
            ..Default::default()
        }
    }

    fn with_sc(f: impl FnOnce(&mut cri::LinuxContainerSecurityContext)) -> cri::ContainerConfig {
        let mut c = base();
        let mut sc = cri::LinuxContainerSecurityContext::default();
        f(&mut sc);
        c.linux = Some(cri::LinuxContainerConfig {
            resources: None,
            security_context: Some(sc),
        });
        c
    }

    fn code(c: &cri::ContainerConfig) -> Code {
        container_config(c).unwrap_err().code()
    }

    #[test]
    fn plain_config_translates() {
        let c = container_config(&base()).unwrap();
        assert_eq!(c.metadata.name, "app");
        assert_eq!(c.metadata.attempt, 2);
        assert_eq!(c.image, "busybox");
        assert_eq!(c.user_specified_image, "busybox:1.36");
        assert_eq!(c.command, vec!["sh"]);
        assert_eq!(c.envs[0].key, "A");
        assert!(c.resources.is_none());
        assert_eq!(c.security.seccomp, SeccompProfile::Unconfined);
        assert_eq!(c.stop_signal, None);
        // berthd stores it: JSON round trip.
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<ContainerConfig>(&json).unwrap(), c);
    }

    #[test]
    fn metadata_and_image_are_required() {
        let mut c = base();
        c.metadata = None;
        assert_eq!(code(&c), Code::InvalidArgument);
        let mut c = base();
        c.metadata.as_mut().unwrap().name.clear();
        assert_eq!(code(&c), Code::InvalidArgument);
        let mut c = base();
        c.image = None;
        assert_eq!(code(&c), Code::InvalidArgument);
        let mut c = base();
        c.envs[0].key.clear();
        assert_eq!(code(&c), Code::InvalidArgument);
    }

    #[test]
    fn capabilities_are_normalised_and_checked() {
        let c = container_config(&with_sc(|sc| {
            sc.capabilities = Some(cri::Capability {
                add_capabilities: vec!["NET_ADMIN".into(), "all".into()],
                drop_capabilities: vec!["CAP_CHOWN".into()],
                add_ambient_capabilities: vec![],
            })
        }))
        .unwrap();
        assert_eq!(c.security.capabilities.add, vec!["CAP_NET_ADMIN", "ALL"]);
        assert_eq!(c.security.capabilities.drop, vec!["CAP_CHOWN"]);
        for bad in ["CAP_NOPE", "NOPE"] {
            let c = with_sc(|sc| {
                sc.capabilities = Some(cri::Capability {
                    add_capabilities: vec![bad.into()],
                    ..Default::default()
                })
            });
            let e = container_config(&c).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            assert!(e.message().contains(bad), "{}", e.message());
            let c = with_sc(|sc| {
                sc.capabilities = Some(cri::Capability {
                    drop_capabilities: vec![bad.into()],
                    ..Default::default()
                })
            });
            assert_eq!(code(&c), Code::InvalidArgument);
        }
    }

    #[test]
    fn mounts_translate_and_bad_ones_fail() {
        let mut c = base();
        c.mounts = vec![cri::Mount {
            container_path: "/data".into(),
            host_path: "/srv/data".into(),
            readonly: true,
            recursive_read_only: true,
            propagation: cri::MountPropagation::PropagationPrivate as i32,
            ..Default::default()
        }];
        let m = &container_config(&c).unwrap().mounts[0];
        assert!(m.readonly && m.recursive_read_only);
        assert_eq!(m.propagation, Propagation::Private);

        c.mounts[0].propagation = cri::MountPropagation::PropagationBidirectional as i32;
        assert_eq!(code(&c), Code::InvalidArgument, "rro needs private");
        c.mounts[0].recursive_read_only = false;
        assert_eq!(
            container_config(&c).unwrap().mounts[0].propagation,
            Propagation::Bidirectional
        );
        c.mounts[0].readonly = false;
        c.mounts[0].recursive_read_only = true;
        assert_eq!(code(&c), Code::InvalidArgument, "rro needs readonly");

        for (dst, src) in [("data", "/srv"), ("/data", "srv"), ("/data", "")] {
            let mut c = base();
            c.mounts = vec![cri::Mount {
                container_path: dst.into(),
                host_path: src.into(),
                ..Default::default()
            }];
            assert_eq!(code(&c), Code::InvalidArgument, "{dst} {src}");
        }
        // Image volumes: no host path, and not both.
        let mut c = base();
        c.mounts = vec![cri::Mount {
            container_path: "/img".into(),
            image: Some(cri::ImageSpec {
                image: "sha256:abc".into(),
                ..Default::default()
            }),
            image_sub_path: "sub".into(),
            ..Default::default()
        }];
        let m = &container_config(&c).unwrap().mounts[0];
        assert_eq!(m.image.as_deref(), Some("sha256:abc"));
        assert_eq!(m.image_sub_path, "sub");
        c.mounts[0].host_path = "/srv".into();
        assert_eq!(code(&c), Code::InvalidArgument);
    }

    #[test]
    fn devices_are_checked() {
        let mut c = base();
        c.devices = vec![cri::Device {
            container_path: "/dev/xfuse".into(),
            host_path: "/dev/fuse".into(),
            permissions: "rwm".into(),
        }];
        assert_eq!(
            container_config(&c).unwrap().devices[0].host_path,
            "/dev/fuse"
        );
        c.devices[0].permissions = "rwx".into();
        assert_eq!(code(&c), Code::InvalidArgument);
        c.devices[0].permissions = "r".into();
        c.devices[0].host_path = "fuse".into();
        assert_eq!(code(&c), Code::InvalidArgument);
    }

    #[test]
    fn cdi_devices_come_from_the_field_then_the_annotations_once_each() {
        let mut c = base();
        c.cdi_devices = vec![cri::CdiDevice {
            name: "vendor.com/gpu=0".into(),
        }];
        c.annotations = [
            ("cdi.k8s.io/b_plugin".into(), "vendor.com/gpu=2".into()),
            (
                "cdi.k8s.io/a_plugin".into(),
                "vendor.com/gpu=1,vendor.com/gpu=0".into(),
            ),
            ("other.io/x".into(), "not a device".into()),
        ]
        .into();
        assert_eq!(
            container_config(&c).unwrap().cdi_devices,
            vec!["vendor.com/gpu=0", "vendor.com/gpu=1", "vendor.com/gpu=2"]
        );
        c.annotations.insert("cdi.k8s.io/c".into(), "gpu0".into());
        let e = container_config(&c).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("\"gpu0\""), "{e:?}");
        c.annotations.clear();
        c.cdi_devices[0].name.clear();
        assert_eq!(code(&c), Code::InvalidArgument);
    }

    #[test]
    fn resources_translate() {
        let mut c = base();
        c.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_shares: 512,
                memory_limit_in_bytes: 1 << 26,
                oom_score_adj: -500,
                hugepage_limits: vec![cri::HugepageLimit {
                    page_size: "2MB".into(),
                    limit: 0,
                }],
                ..Default::default()
            }),
            security_context: None,
        });
        let r = container_config(&c).unwrap().resources.unwrap();
        assert_eq!(
            (r.cpu_shares, r.memory_limit, r.oom_score_adj),
            (512, 1 << 26, -500)
        );
        assert_eq!(r.hugepage_limits[0].page_size, "2MB");
        c.linux
            .as_mut()
            .unwrap()
            .resources
            .as_mut()
            .unwrap()
            .cpu_shares = -1;
        assert_eq!(code(&c), Code::InvalidArgument);
    }

    #[test]
    fn users_and_groups() {
        let c = container_config(&with_sc(|sc| {
            sc.run_as_user = Some(cri::Int64Value { value: 1000 });
            sc.run_as_group = Some(cri::Int64Value { value: 2000 });
            sc.supplemental_groups = vec![3000];
            sc.supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
        }))
        .unwrap();
        assert_eq!(c.security.run_as_user, Some(1000));
        assert_eq!(c.security.run_as_group, Some(2000));
        assert_eq!(
            c.security.supplemental_groups_policy,
            SupplementalGroupsPolicy::Strict
        );
        assert_eq!(
            code(&with_sc(
                |sc| sc.run_as_group = Some(cri::Int64Value { value: 1 })
            )),
            Code::InvalidArgument
        );
        assert_eq!(
            code(&with_sc(
                |sc| sc.run_as_user = Some(cri::Int64Value { value: -1 })
            )),
            Code::InvalidArgument
        );
        assert_eq!(
            code(&with_sc(|sc| sc.supplemental_groups = vec![-5])),
            Code::InvalidArgument
        );
        assert_eq!(
            code(&with_sc(|sc| sc.supplemental_groups_policy = 7)),
            Code::InvalidArgument
        );
    }

    #[test]
    fn seccomp_profiles() {
        use cri::security_profile::ProfileType;
        fn profile(
            t: ProfileType,
            r: &'static str,
        ) -> impl FnOnce(&mut cri::LinuxContainerSecurityContext) {
            move |sc| {
                sc.seccomp = Some(cri::SecurityProfile {
                    profile_type: t as i32,
                    localhost_ref: r.into(),
                })
            }
        }
        let sec = |c: cri::ContainerConfig| container_config(&c).unwrap().security.seccomp;
        assert_eq!(
            sec(with_sc(profile(ProfileType::RuntimeDefault, ""))),
            SeccompProfile::RuntimeDefault
        );
        assert_eq!(
            sec(with_sc(profile(ProfileType::Unconfined, ""))),
            SeccompProfile::Unconfined
        );
        assert_eq!(
            sec(with_sc(profile(ProfileType::Localhost, "/etc/p.json"))),
            SeccompProfile::Localhost("/etc/p.json".into())
        );
        assert_eq!(
            code(&with_sc(profile(ProfileType::Localhost, "p.json"))),
            Code::InvalidArgument
        );
        assert_eq!(
            code(&with_sc(profile(
                ProfileType::RuntimeDefault,
                "/etc/p.json"
            ))),
            Code::InvalidArgument
        );
        // The deprecated string field.
        #[allow(deprecated)]
        {
            assert_eq!(
                sec(with_sc(
                    |sc| sc.seccomp_profile_path = "runtime/default".into()
                )),
                SeccompProfile::RuntimeDefault
            );
            assert_eq!(
                sec(with_sc(
                    |sc| sc.seccomp_profile_path = "localhost//x/p.json".into()
                )),
                SeccompProfile::Localhost("/x/p.json".into())
            );
            assert_eq!(
                code(&with_sc(|sc| sc.seccomp_profile_path = "bogus".into())),
                Code::InvalidArgument
            );
        }
    }

    #[test]
    fn apparmor_localhost_is_refused() {
        use cri::security_profile::ProfileType;
        assert_eq!(
            code(&with_sc(|sc| {
                sc.apparmor = Some(cri::SecurityProfile {
                    profile_type: ProfileType::Localhost as i32,
                    localhost_ref: "p".into(),
                })
            })),
            Code::InvalidArgument
        );
        container_config(&with_sc(|sc| {
            sc.apparmor = Some(cri::SecurityProfile {
                profile_type: ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            })
        }))
        .unwrap();
    }

    #[test]
    fn namespaces_and_user_namespaces() {
        let ok = container_config(&with_sc(|sc| {
            sc.namespace_options = Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                pid: cri::NamespaceMode::Target as i32,
                target_id: "c0".into(),
                userns_options: Some(cri::UserNamespace {
                    mode: cri::NamespaceMode::Pod as i32,
                    uids: vec![cri::IdMapping {
                        host_id: 100000,
                        container_id: 0,
                        length: 65536,
                    }],
                    gids: vec![cri::IdMapping {
                        host_id: 100000,
                        container_id: 0,
                        length: 65536,
                    }],
                }),
                ..Default::default()
            })
        }))
        .unwrap();
        let ns = ok.security.namespaces;
        assert_eq!(
            (ns.network, ns.pid),
            (NamespaceMode::Node, NamespaceMode::Target)
        );
        assert_eq!(ns.userns.unwrap().uids[0].length, 65536);

        let bad = |f: fn(&mut cri::NamespaceOption)| {
            code(&with_sc(|sc| {
                let mut o = cri::NamespaceOption::default();
                f(&mut o);
                sc.namespace_options = Some(o);
            }))
        };
        assert_eq!(
            bad(|o| o.pid = cri::NamespaceMode::Target as i32),
            Code::InvalidArgument
        );
        assert_eq!(bad(|o| o.ipc = 9), Code::InvalidArgument);
        assert_eq!(
            bad(|o| {
                o.userns_options = Some(cri::UserNamespace {
                    mode: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                })
            }),
            Code::InvalidArgument
        );
        assert_eq!(
            bad(|o| {
                o.userns_options = Some(cri::UserNamespace {
                    mode: cri::NamespaceMode::Node as i32,
                    uids: vec![cri::IdMapping {
                        host_id: 1,
                        container_id: 0,
                        length: 1,
                    }],
                    gids: vec![],
                })
            }),
            Code::InvalidArgument
        );
        assert_eq!(
            bad(|o| {
                o.userns_options = Some(cri::UserNamespace {
                    mode: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                })
            }),
            Code::InvalidArgument
        );
    }

    #[test]
    fn stop_signal_names() {
        let mut c = base();
        c.stop_signal = cri::Signal::Sigrtminplus3 as i32;
        let cfg = container_config(&c).unwrap();
        assert_eq!(cfg.stop_signal.as_deref(), Some("SIGRTMINPLUS3"));
        assert_eq!(
            crate::container::spec::stop_signal(&cfg, &Default::default()).unwrap(),
            37
        );
        c.stop_signal = 999;
        assert_eq!(code(&c), Code::InvalidArgument);
    }

    #[test]
    fn spec_errors_map_to_codes() {
        let s = |e: SpecError| Status::from(e).code();
        assert_eq!(
            s(SpecError::InvalidArgument("x".into())),
            Code::InvalidArgument
        );
        assert_eq!(s(SpecError::NotFound("x".into())), Code::NotFound);
        assert_eq!(s(SpecError::Unsupported("x".into())), Code::InvalidArgument);
        assert_eq!(s(SpecError::Internal("x".into())), Code::Internal);
    }
}
