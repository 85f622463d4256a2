//! CDI (Container Device Interface) devices: spec files loaded from the configured
//! directories, fully qualified device names (`vendor.com/class=name`) resolved to their
//! container edits, and those edits applied to a container's OCI spec, as containerd does
//! with the CDI project's Go `pkg/cdi` (`WithCDIDevices`: refresh, then `InjectDevices`).
//!
//! Hand-written rather than the `container-device-interface` crate (1.1): that crate
//! validates with `jsonschema`, which brings reqwest with aws-lc, a second nix in the normal
//! tree and clap into the library, and its registry drops every spec when one file is
//! malformed. The Go library's behaviour is kept: a broken or conflicting spec file only
//! loses its own devices (and is named when a device cannot be resolved), later
//! directories override earlier ones, and loading is strict (unknown fields, the
//! `cdiVersion` must cover the fields used).
//!
//! I/O is in [`resolve`] (reading spec files, stat-ing host device nodes); [`apply`] is a
//! pure function on the OCI spec, called by `spec::generate`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Hook, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxIntelRdt, LinuxNetDevice, Mount,
    Spec,
};
use serde::{Deserialize, Deserializer};

use super::spec::SpecError;

/// Annotations kubelet's device plugins set: `cdi.k8s.io/<plugin>_<id>` with a
/// comma-separated list of device names.
pub const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";

/// `cdiVersion`s this runtime reads, newest first. 0.1.0 and 0.2.0 had another format.
const VERSIONS: [&str; 8] = [
    "1.1.0", "1.0.0", "0.8.0", "0.7.0", "0.6.0", "0.5.0", "0.4.0", "0.3.0",
];

const HOOK_NAMES: [&str; 6] = [
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A requested name that is not `vendor.com/class=name`.
    #[error("invalid CDI device name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    /// No loaded spec defines these devices. `spec_errors` are the spec files that were
    /// refused (each `path: reason`): the device may be in one of them.
    #[error("unresolvable CDI devices {}{}", .devices.join(", "), spec_errors_note(.spec_errors))]
    Unresolvable {
        devices: Vec<String>,
        spec_errors: Vec<String>,
    },
    /// A device node whose host path is missing or of another type, and which the spec
    /// does not describe fully enough to do without it.
    #[error("CDI {owner}: device node {path:?}: {reason}")]
    DeviceNode {
        owner: String,
        path: String,
        reason: String,
    },
}

fn spec_errors_note(errors: &[String]) -> String {
    if errors.is_empty() {
        String::new()
    } else {
        format!(" (CDI spec files refused: {})", errors.join("; "))
    }
}

impl From<Error> for SpecError {
    fn from(e: Error) -> SpecError {
        // containerd answers all of these as a failed CreateContainer (code Unknown); they
        // are the request's or the node's CDI setup's, not the runtime's fault.
        SpecError::InvalidArgument(e.to_string())
    }
}

/// `null` reads as the default, as Go's decoders read it for slices and maps.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A CDI spec file (`specs-go` `Spec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SpecFile {
    pub cdi_version: String,
    pub kind: String,
    #[serde(default, deserialize_with = "nullable")]
    pub annotations: BTreeMap<String, String>,
    #[serde(deserialize_with = "nullable")]
    pub devices: Vec<DeviceSpec>,
    #[serde(default, deserialize_with = "nullable")]
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceSpec {
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub container_edits: ContainerEdits,
}

/// Edits to a container's OCI spec, of a spec file (applied once when any of its
/// devices is injected) or of one device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerEdits {
    #[serde(default, deserialize_with = "nullable")]
    pub env: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub device_nodes: Vec<DeviceNodeEdit>,
    #[serde(default, deserialize_with = "nullable")]
    pub net_devices: Vec<NetDeviceEdit>,
    #[serde(default, deserialize_with = "nullable")]
    pub hooks: Vec<HookEdit>,
    #[serde(default, deserialize_with = "nullable")]
    pub mounts: Vec<MountEdit>,
    #[serde(default)]
    pub intel_rdt: Option<IntelRdtEdit>,
    #[serde(default, rename = "additionalGids", deserialize_with = "nullable")]
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceNodeEdit {
    /// In the container.
    pub path: String,
    /// On the host; empty: `path`.
    #[serde(default, deserialize_with = "nullable")]
    pub host_path: String,
    /// `b`, `c`, `u`, `p`; empty: the host node's.
    #[serde(default, rename = "type", deserialize_with = "nullable")]
    pub typ: String,
    #[serde(default)]
    pub major: i64,
    #[serde(default)]
    pub minor: i64,
    #[serde(default)]
    pub file_mode: Option<u32>,
    /// cgroup access: `rwm` subset; empty: `rwm`; `none`: no access rule.
    #[serde(default, deserialize_with = "nullable")]
    pub permissions: String,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MountEdit {
    pub host_path: String,
    pub container_path: String,
    #[serde(default, deserialize_with = "nullable")]
    pub options: Vec<String>,
    #[serde(default, rename = "type", deserialize_with = "nullable")]
    pub typ: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HookEdit {
    pub hook_name: String,
    pub path: String,
    #[serde(default, deserialize_with = "nullable")]
    pub args: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub env: Vec<String>,
    #[serde(default)]
    pub timeout: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IntelRdtEdit {
    #[serde(default, rename = "closID", deserialize_with = "nullable")]
    pub clos_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub l3_cache_schema: String,
    #[serde(default, deserialize_with = "nullable")]
    pub mem_bw_schema: String,
    #[serde(default, deserialize_with = "nullable")]
    pub schemata: Vec<String>,
    #[serde(default)]
    pub enable_monitoring: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetDeviceEdit {
    pub host_interface_name: String,
    pub name: String,
}

impl ContainerEdits {
    fn is_empty(&self) -> bool {
        *self == ContainerEdits::default()
    }

    /// Go's `ContainerEdits.Append`: lists concatenate, the last `intelRdt` wins.
    fn append(&mut self, o: &ContainerEdits) {
        self.env.extend(o.env.iter().cloned());
        self.device_nodes.extend(o.device_nodes.iter().cloned());
        self.net_devices.extend(o.net_devices.iter().cloned());
        self.hooks.extend(o.hooks.iter().cloned());
        self.mounts.extend(o.mounts.iter().cloned());
        if o.intel_rdt.is_some() {
            self.intel_rdt.clone_from(&o.intel_rdt);
        }
        self.additional_gids
            .extend(o.additional_gids.iter().copied());
    }

    fn validate(&self) -> Result<(), String> {
        validate_env(&self.env)?;
        for d in &self.device_nodes {
            if d.path.is_empty() {
                return Err("invalid (empty) device path".into());
            }
            if !["", "b", "c", "u", "p"].contains(&d.typ.as_str()) {
                return Err(format!("device {:?}: invalid type {:?}", d.path, d.typ));
            }
            if d.permissions != "none" && d.permissions.chars().any(|c| !"rwm".contains(c)) {
                return Err(format!(
                    "device {:?}: invalid permissions {:?}",
                    d.path, d.permissions
                ));
            }
        }
        for h in &self.hooks {
            if !HOOK_NAMES.contains(&h.hook_name.as_str()) {
                return Err(format!("invalid hook name {:?}", h.hook_name));
            }
            if h.path.is_empty() {
                return Err(format!("invalid hook {:?} with empty path", h.hook_name));
            }
            validate_env(&h.env).map_err(|e| format!("invalid hook {:?}: {e}", h.hook_name))?;
        }
        for m in &self.mounts {
            if m.host_path.is_empty() {
                return Err("invalid mount, empty host path".into());
            }
            if m.container_path.is_empty() {
                return Err("invalid mount, empty container path".into());
            }
        }
        if let Some(r) = &self.intel_rdt {
            let c = &r.clos_id;
            if c != "/" && (c.len() >= 4096 || c == "." || c == ".." || c.contains(['/', '\n'])) {
                return Err(format!("invalid intelRdt closID {c:?}"));
            }
        }
        let (mut hosts, mut names) = (HashSet::new(), HashSet::new());
        for n in &self.net_devices {
            if n.host_interface_name.is_empty() || n.name.is_empty() {
                return Err("invalid net device: empty hostInterfaceName or name".into());
            }
            if !hosts.insert(&n.host_interface_name) || !names.insert(&n.name) {
                return Err(format!(
                    "duplicate net device {:?} -> {:?}",
                    n.host_interface_name, n.name
                ));
            }
        }
        Ok(())
    }
}

fn validate_env(env: &[String]) -> Result<(), String> {
    match env.iter().find(|v| v.find('=').is_none_or(|i| i == 0)) {
        Some(v) => Err(format!("invalid environment variable {v:?}")),
        None => Ok(()),
    }
}

fn alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// A vendor (`vendor.com`) or class name: a letter, then letters, digits, `_`, `-`, `.`,
/// ending in a letter or digit.
fn validate_vendor_or_class(what: &str, name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Err(format!("invalid {what}: empty name"));
    };
    if !first.is_ascii_alphabetic() {
        return Err(format!(
            "invalid {what} {name:?}: should start with a letter"
        ));
    }
    if let Some(c) = name.chars().find(|&c| !(alnum(c) || "_-.".contains(c))) {
        return Err(format!("invalid {what} {name:?}: invalid character {c:?}"));
    }
    if !name.ends_with(alnum) {
        return Err(format!(
            "invalid {what} {name:?}: should end with a letter or digit"
        ));
    }
    Ok(())
}

/// A device name: a letter or digit, then letters, digits, `_`, `-`, `.`, `:`, ending in
/// a letter or digit.
fn validate_device_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("invalid (empty) device name".into());
    }
    if !name.starts_with(alnum) || !name.ends_with(alnum) {
        return Err(format!(
            "invalid device name {name:?}: should start and end with a letter or digit"
        ));
    }
    if let Some(c) = name.chars().find(|&c| !(alnum(c) || "_-.:".contains(c))) {
        return Err(format!(
            "invalid device name {name:?}: invalid character {c:?}"
        ));
    }
    Ok(())
}

/// `vendor/class` of a `kind`, either empty when there is no `/`.
fn split_kind(kind: &str) -> (&str, &str) {
    match kind.split_once('/') {
        Some((v, c)) if !v.is_empty() && !c.is_empty() => (v, c),
        _ => ("", kind),
    }
}

/// Checks a fully qualified device name, `vendor.com/class=name`.
pub fn validate_qualified_name(device: &str) -> Result<(), Error> {
    let invalid = |reason: String| Error::InvalidName {
        name: device.to_string(),
        reason,
    };
    let (kind, name) = device
        .split_once('=')
        .filter(|(k, n)| !k.is_empty() && !n.is_empty() && !k.starts_with('/'))
        .ok_or_else(|| invalid("not of the form vendor.com/class=name".into()))?;
    let (vendor, class) = split_kind(kind);
    if vendor.is_empty() {
        return Err(invalid("missing vendor".into()));
    }
    validate_vendor_or_class("vendor", vendor).map_err(invalid)?;
    validate_vendor_or_class("class", class).map_err(invalid)?;
    validate_device_name(name).map_err(invalid)
}

/// The devices `cdi.k8s.io/…` annotations ask for, in key order (Go's
/// `ParseAnnotations`; kubelet's device plugins still use them).
pub fn annotation_devices<'a>(
    annotations: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<Vec<String>, Error> {
    let mut keyed: Vec<(&String, &String)> = annotations
        .into_iter()
        .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
        .collect();
    keyed.sort();
    let mut out = Vec::new();
    for (_, value) in keyed {
        for d in value.split(',') {
            validate_qualified_name(d)?;
            out.push(d.to_string());
        }
    }
    Ok(out)
}

/// The oldest `cdiVersion` that has every field `s` uses (Go's `MinimumRequiredVersion`).
fn required_version(s: &SpecFile) -> &'static str {
    let edits: Vec<&ContainerEdits> = std::iter::once(&s.container_edits)
        .chain(s.devices.iter().map(|d| &d.container_edits))
        .collect();
    if edits.iter().any(|e| {
        !e.net_devices.is_empty()
            || e.intel_rdt
                .as_ref()
                .is_some_and(|r| !r.schemata.is_empty() || r.enable_monitoring)
    }) {
        return "1.1.0";
    }
    if edits
        .iter()
        .any(|e| e.intel_rdt.is_some() || !e.additional_gids.is_empty())
    {
        return "0.7.0";
    }
    if !s.annotations.is_empty()
        || s.devices.iter().any(|d| !d.annotations.is_empty())
        || split_kind(&s.kind).1.contains('.')
    {
        return "0.6.0";
    }
    if s.devices
        .iter()
        .any(|d| d.name.starts_with(|c: char| c.is_ascii_digit()))
        || edits
            .iter()
            .any(|e| e.device_nodes.iter().any(|n| !n.host_path.is_empty()))
    {
        return "0.5.0";
    }
    if edits
        .iter()
        .any(|e| e.mounts.iter().any(|m| !m.typ.is_empty()))
    {
        return "0.4.0";
    }
    "0.3.0"
}

fn validate_spec(s: &SpecFile) -> Result<(), String> {
    let version = s.cdi_version.strip_prefix('v').unwrap_or(&s.cdi_version);
    let Some(have) = VERSIONS.iter().position(|v| *v == version) else {
        return Err(format!(
            "unsupported cdiVersion {:?} (known: {})",
            s.cdi_version,
            VERSIONS.join(", ")
        ));
    };
    let need = required_version(s);
    if VERSIONS.iter().position(|v| *v == need) < Some(have) {
        return Err(format!(
            "cdiVersion {:?} is too old for the fields used: it must be at least {need}",
            s.cdi_version
        ));
    }
    let (vendor, class) = split_kind(&s.kind);
    validate_vendor_or_class("vendor", vendor).map_err(|e| format!("kind {:?}: {e}", s.kind))?;
    validate_vendor_or_class("class", class).map_err(|e| format!("kind {:?}: {e}", s.kind))?;
    s.container_edits.validate()?;
    if s.devices.is_empty() {
        return Err("no devices".into());
    }
    let mut seen = HashSet::new();
    for d in &s.devices {
        validate_device_name(&d.name)?;
        if d.container_edits.is_empty() {
            return Err(format!("device {:?} has no container edits", d.name));
        }
        d.container_edits
            .validate()
            .map_err(|e| format!("device {:?}: {e}", d.name))?;
        if !seen.insert(&d.name) {
            return Err(format!("device {:?} is defined twice", d.name));
        }
    }
    Ok(())
}

/// Parses and validates a spec file's content; `.json` files as JSON, others as YAML.
pub fn parse_spec(path: &Path, text: &str) -> Result<SpecFile, String> {
    let spec: SpecFile = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(text).map_err(|e| e.to_string())?
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?
    };
    validate_spec(&spec)?;
    Ok(spec)
}

struct Loaded {
    path: PathBuf,
    spec: SpecFile,
}

/// The spec files of the CDI directories and the devices they define.
#[derive(Default)]
pub struct Registry {
    specs: Vec<Loaded>,
    devices: HashMap<String, Defined>,
    /// `path: reason` for each refused file or conflict.
    errors: Vec<String>,
}

/// Where a qualified device name is defined.
struct Defined {
    /// Index in `Registry::specs` and in that spec's devices; `None`: defined twice in
    /// the directory of `priority`, so by neither.
    at: Option<(usize, usize)>,
    priority: usize,
}

fn is_spec_file(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| e == "json" || e == "yaml" || e == "yml")
}

impl Registry {
    /// Reads every `.json`, `.yaml` and `.yml` file (not recursing) of `dirs`; a device
    /// defined in several directories is taken from the last, one defined twice in the
    /// same directory from neither. Missing directories are skipped.
    pub fn load(dirs: &[PathBuf]) -> Registry {
        let mut r = Registry::default();
        for (priority, dir) in dirs.iter().enumerate() {
            let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| is_spec_file(p) && !p.is_dir())
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    r.errors.push(format!("{}: {e}", dir.display()));
                    continue;
                }
            };
            files.sort();
            for path in files {
                let parsed = std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|text| parse_spec(&path, &text));
                match parsed {
                    Ok(spec) => r.add(path, priority, spec),
                    Err(e) => r.errors.push(format!("{}: {e}", path.display())),
                }
            }
        }
        r
    }

    /// Adds a spec file of the directory of `priority` (higher: later, wins).
    fn add(&mut self, path: PathBuf, priority: usize, spec: SpecFile) {
        let idx = self.specs.len();
        for (di, d) in spec.devices.iter().enumerate() {
            let name = format!("{}={}", spec.kind, d.name);
            let at = match self.devices.get(&name) {
                Some(old) if old.priority == priority => {
                    let other = match old.at {
                        Some((s, _)) => self.specs[s].path.display().to_string(),
                        None => "another file".into(),
                    };
                    self.errors.push(format!(
                        "{}: device {name} is also defined by {other} in the same directory: \
                         neither is used",
                        path.display()
                    ));
                    None
                }
                _ => Some((idx, di)),
            };
            self.devices.insert(name, Defined { at, priority });
        }
        self.specs.push(Loaded { path, spec });
    }

    /// Spec files refused while loading, `path: reason` each.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// The devices defined, sorted.
    pub fn device_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, d)| d.at.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// The edits for `names` (deduplicated, in order): each spec's own edits once, before
    /// its first requested device's, then each device's; device nodes are completed from
    /// the host (`fill_from_host`).
    pub fn resolve(&self, names: &[String]) -> Result<Injection, Error> {
        let mut devices: Vec<String> = Vec::new();
        for n in names {
            validate_qualified_name(n)?;
            if !devices.contains(n) {
                devices.push(n.clone());
            }
        }
        let unresolved: Vec<String> = devices
            .iter()
            .filter(|d| self.devices.get(*d).is_none_or(|d| d.at.is_none()))
            .cloned()
            .collect();
        if !unresolved.is_empty() {
            return Err(Error::Unresolvable {
                devices: unresolved,
                spec_errors: self.errors.clone(),
            });
        }
        let mut edits = ContainerEdits::default();
        let mut specs_seen = HashSet::new();
        for name in &devices {
            let Some((si, di)) = self.devices[name].at else {
                continue;
            };
            let loaded = &self.specs[si];
            if specs_seen.insert(si) {
                let mut e = loaded.spec.container_edits.clone();
                let owner = format!("spec {}", loaded.path.display());
                fill_from_host(&owner, &mut e.device_nodes)?;
                edits.append(&e);
            }
            let mut e = loaded.spec.devices[di].container_edits.clone();
            fill_from_host(&format!("device {name}"), &mut e.device_nodes)?;
            edits.append(&e);
        }
        Ok(Injection { devices, edits })
    }
}

/// What CreateContainer injects: the devices asked for and their merged edits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Injection {
    pub devices: Vec<String>,
    pub edits: ContainerEdits,
}

/// Loads the CDI registry from `dirs` and resolves `names`; touches nothing when no
/// device is asked for. Spec files refused while loading are logged here and named in
/// the error when a device cannot be resolved.
pub fn resolve(dirs: &[PathBuf], names: &[String]) -> Result<Injection, Error> {
    if names.is_empty() {
        return Ok(Injection::default());
    }
    for n in names {
        validate_qualified_name(n)?;
    }
    let registry = Registry::load(dirs);
    for e in registry.errors() {
        tracing::warn!(error = %e, "CDI spec file refused");
    }
    registry.resolve(names)
}

/// Type, major, minor and permission bits of a host device node (not following a final
/// symlink, as Go's `Lstat`).
fn host_node(path: &Path) -> std::io::Result<(&'static str, i64, i64, u32)> {
    let md = std::fs::symlink_metadata(path)?;
    let ft = md.file_type();
    let typ = if ft.is_block_device() {
        "b"
    } else if ft.is_char_device() {
        "c"
    } else if ft.is_fifo() {
        "p"
    } else {
        return Err(std::io::Error::other("not a device node"));
    };
    let rdev = md.rdev();
    Ok((
        typ,
        i64::from(libc::major(rdev)),
        i64::from(libc::minor(rdev)),
        md.mode() & 0o7777,
    ))
}

/// Go's `fillMissingInfo`: type, major/minor and file mode come from the host node when
/// the spec leaves them out; a node the spec fully describes (type, and a major unless a
/// FIFO) may be missing on the host.
fn fill_from_host(owner: &str, nodes: &mut [DeviceNodeEdit]) -> Result<(), Error> {
    for d in nodes {
        let minimal = !d.typ.is_empty() && (d.major != 0 || d.typ == "p");
        if d.host_path.is_empty() {
            d.host_path.clone_from(&d.path);
        }
        let err = |reason: String| Error::DeviceNode {
            owner: owner.to_string(),
            path: d.path.clone(),
            reason,
        };
        let (typ, major, minor, mode) = match host_node(Path::new(&d.host_path)) {
            Ok(n) => n,
            Err(_) if minimal => continue,
            Err(e) => return Err(err(format!("host device {:?}: {e}", d.host_path))),
        };
        d.file_mode.get_or_insert(mode);
        if minimal {
            continue;
        }
        if d.typ.is_empty() {
            d.typ = typ.to_string();
        }
        if d.typ != typ {
            return Err(err(format!(
                "type {:?} but the host device {:?} is of type {typ:?}",
                d.typ, d.host_path
            )));
        }
        if typ != "p" && d.major == 0 {
            d.major = major;
            d.minor = minor;
        }
    }
    Ok(())
}

fn device_type(t: &str) -> LinuxDeviceType {
    match t {
        "b" => LinuxDeviceType::B,
        "u" => LinuxDeviceType::U,
        "p" => LinuxDeviceType::P,
        _ => LinuxDeviceType::C,
    }
}

/// Depth of a container path, for the mount order (`a/b` under `a`).
fn depth(p: &Path) -> usize {
    p.components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .count()
}

fn hook(h: &HookEdit) -> Hook {
    let mut o = Hook::default();
    o.set_path(PathBuf::from(&h.path));
    o.set_args((!h.args.is_empty()).then(|| h.args.clone()));
    o.set_env((!h.env.is_empty()).then(|| h.env.clone()));
    o.set_timeout(h.timeout);
    o
}

/// Applies resolved edits to a container's spec, as Go's `ContainerEdits.Apply`:
/// environment variables replace same-named ones, device nodes replace same-path ones and
/// get an allow rule (`rwm` unless given; none for `none`) and the process's owner when
/// they name none, mounts replace same-destination ones and all mounts are then ordered
/// parents first, hooks are appended, `additionalGids` join the process's groups.
///
/// Bind mounts get no `idmap` option in a user-namespaced container, unlike Go's: berth
/// does no idmapped mounts (libcontainer 0.7 refuses them).
pub fn apply(e: &ContainerEdits, spec: &mut Spec) {
    let mut process = spec.process().clone().unwrap_or_default();
    let mut env = process.env().clone().unwrap_or_default();
    for v in &e.env {
        let key = v.split('=').next().unwrap_or_default();
        let same = |x: &String| x.split('=').next() == Some(key);
        match env.iter().rposition(same) {
            Some(i) => env[i].clone_from(v),
            None => env.push(v.clone()),
        }
    }
    if !e.env.is_empty() {
        process.set_env(Some(env));
    }
    let (uid, gid) = (process.user().uid(), process.user().gid());
    let mut gids = process.user().additional_gids().clone().unwrap_or_default();
    for g in &e.additional_gids {
        if *g != 0 && !gids.contains(g) {
            gids.push(*g);
        }
    }
    if !e.additional_gids.is_empty() {
        process.user_mut().set_additional_gids(Some(gids));
    }
    if spec.process().is_some() || !e.env.is_empty() || !e.additional_gids.is_empty() {
        spec.set_process(Some(process));
    }

    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut devices = linux.devices().clone().unwrap_or_default();
    let mut resources = linux.resources().clone().unwrap_or_default();
    let mut rules = resources.devices().clone().unwrap_or_default();
    for d in &e.device_nodes {
        let mut dev = LinuxDevice::default();
        dev.set_path(PathBuf::from(&d.path));
        dev.set_typ(device_type(&d.typ));
        dev.set_major(d.major);
        dev.set_minor(d.minor);
        dev.set_file_mode(d.file_mode);
        dev.set_uid(d.uid.or((uid > 0).then_some(uid)));
        dev.set_gid(d.gid.or((gid > 0).then_some(gid)));
        devices.retain(|x| x.path() != dev.path());
        devices.push(dev);
        if (d.typ == "b" || d.typ == "c") && d.permissions != "none" {
            let mut rule = LinuxDeviceCgroup::default();
            rule.set_allow(true);
            rule.set_typ(Some(device_type(&d.typ)));
            rule.set_major(Some(d.major));
            rule.set_minor(Some(d.minor));
            rule.set_access(Some(if d.permissions.is_empty() {
                "rwm".to_string()
            } else {
                d.permissions.clone()
            }));
            rules.push(rule);
        }
    }
    if !e.device_nodes.is_empty() {
        linux.set_devices(Some(devices));
        resources.set_devices(Some(rules));
        linux.set_resources(Some(resources));
    }
    if !e.net_devices.is_empty() {
        let mut net = linux.net_devices().clone().unwrap_or_default();
        for n in &e.net_devices {
            let mut dev = LinuxNetDevice::default();
            dev.set_name(Some(n.name.clone()));
            net.insert(n.host_interface_name.clone(), dev);
        }
        linux.set_net_devices(Some(net));
    }
    if let Some(r) = &e.intel_rdt {
        let some = |s: &String| (!s.is_empty()).then(|| s.clone());
        let mut rdt = LinuxIntelRdt::default();
        rdt.set_clos_id(some(&r.clos_id));
        rdt.set_l3_cache_schema(some(&r.l3_cache_schema));
        rdt.set_mem_bw_schema(some(&r.mem_bw_schema));
        rdt.set_schemata((!r.schemata.is_empty()).then(|| r.schemata.clone()));
        rdt.set_enable_monitoring(r.enable_monitoring.then_some(true));
        linux.set_intel_rdt(Some(rdt));
    }
    if spec.linux().is_some()
        || !e.device_nodes.is_empty()
        || !e.net_devices.is_empty()
        || e.intel_rdt.is_some()
    {
        spec.set_linux(Some(linux));
    }

    if !e.mounts.is_empty() {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        for m in &e.mounts {
            let dst = PathBuf::from(&m.container_path);
            if let Some(i) = mounts.iter().position(|x| *x.destination() == dst) {
                mounts.remove(i);
            }
            let mut o = Mount::default();
            o.set_destination(dst);
            o.set_source(Some(PathBuf::from(&m.host_path)));
            o.set_typ((!m.typ.is_empty()).then(|| m.typ.clone()));
            o.set_options((!m.options.is_empty()).then(|| m.options.clone()));
            mounts.push(o);
        }
        mounts.sort_by_key(|m| depth(m.destination()));
        spec.set_mounts(Some(mounts));
    }

    if !e.hooks.is_empty() {
        let mut hooks = spec.hooks().clone().unwrap_or_default();
        for h in &e.hooks {
            let list = match h.hook_name.as_str() {
                "prestart" => hooks.prestart_mut(),
                "createRuntime" => hooks.create_runtime_mut(),
                "createContainer" => hooks.create_container_mut(),
                "startContainer" => hooks.start_container_mut(),
                "poststart" => hooks.poststart_mut(),
                // Validated on load: the only name left.
                _ => hooks.poststop_mut(),
            };
            list.get_or_insert_with(Vec::new).push(hook(h));
        }
        spec.set_hooks(Some(hooks));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use oci_spec::runtime::{LinuxBuilder, ProcessBuilder, SpecBuilder, UserBuilder};

    use super::*;

    /// A unique directory under the temp dir, removed on drop.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new() -> TestDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "berth-cdi-unit-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TestDir(p)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const YAML: &str = r#"
cdiVersion: "0.6.0"
kind: berth.test/device
annotations:
  owner: tests
containerEdits:
  env: ["BERTH_CDI=1"]
devices:
  - name: null0
    containerEdits:
      env: ["NULL=0"]
      deviceNodes:
        - path: /dev/berth-null
          hostPath: /dev/null
          permissions: rw
      mounts:
        - hostPath: /etc/hostname
          containerPath: /etc/berth-host
          options: [ro, bind]
  - name: gpu1
    containerEdits:
      hooks:
        - hookName: createContainer
          path: /usr/bin/true
          args: ["true", "x"]
          timeout: 5
"#;

    const JSON: &str = r#"{
  "cdiVersion": "0.7.0",
  "kind": "vendor.com/nic",
  "devices": [
    {
      "name": "0",
      "containerEdits": {
        "deviceNodes": [{"path": "/dev/vnic0", "type": "c", "major": 240, "minor": 1}],
        "additionalGids": [44, 0]
      }
    }
  ],
  "containerEdits": {"env": null, "mounts": [{"hostPath": "/run/nic", "containerPath": "/run/nic", "type": "none", "options": ["rbind"]}]}
}"#;

    fn spec_with_user(uid: u32, gid: u32) -> Spec {
        SpecBuilder::default()
            .process(
                ProcessBuilder::default()
                    .env(vec!["PATH=/bin".to_string(), "NULL=x".to_string()])
                    .user(UserBuilder::default().uid(uid).gid(gid).build().unwrap())
                    .build()
                    .unwrap(),
            )
            .linux(LinuxBuilder::default().build().unwrap())
            .mounts(vec![
                Mount::default().set_destination("/proc".into()).to_owned(),
                Mount::default()
                    .set_destination("/etc/berth-host".into())
                    .set_source(Some("/old".into()))
                    .to_owned(),
                Mount::default()
                    .set_destination("/dev/pts".into())
                    .to_owned(),
            ])
            .build()
            .unwrap()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn yaml_and_json_specs_parse() {
        let y = parse_spec(Path::new("/etc/cdi/a.yaml"), YAML).unwrap();
        assert_eq!(y.kind, "berth.test/device");
        assert_eq!(y.devices.len(), 2);
        let n = &y.devices[0].container_edits.device_nodes[0];
        assert_eq!(
            (n.path.as_str(), n.host_path.as_str()),
            ("/dev/berth-null", "/dev/null")
        );
        assert_eq!(y.devices[1].container_edits.hooks[0].timeout, Some(5));
        let j = parse_spec(Path::new("/etc/cdi/b.json"), JSON).unwrap();
        assert_eq!(j.devices[0].container_edits.device_nodes[0].major, 240);
        assert_eq!(j.devices[0].container_edits.additional_gids, vec![44, 0]);
        assert_eq!(j.container_edits.mounts[0].typ, "none");
        assert!(j.container_edits.env.is_empty());
        // JSON is YAML too.
        assert_eq!(parse_spec(Path::new("b.yml"), JSON).unwrap(), j);
    }

    #[test]
    fn malformed_specs_are_refused_with_the_reason() {
        let bad = |text: &str, want: &str| {
            let e = parse_spec(Path::new("x.yaml"), text).unwrap_err();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        };
        let dev = "devices: [{name: d, containerEdits: {env: [A=1]}}]";
        bad(
            &format!("cdiVersion: 0.6.0\nkind: vendor.com\n{dev}"),
            "vendor",
        );
        bad(&format!("cdiVersion: 0.6.0\nkind: v/c/x\n{dev}"), "class");
        bad(
            &format!("cdiVersion: 0.6.0\nkind: 1v.com/c\n{dev}"),
            "should start with a letter",
        );
        bad(
            &format!("cdiVersion: 2.0.0\nkind: v.com/c\n{dev}"),
            "unsupported cdiVersion",
        );
        bad(
            &format!("cdiVersion: 0.2.0\nkind: v.com/c\n{dev}"),
            "unsupported cdiVersion",
        );
        bad(
            &format!("cdiVersion: 0.6.0\nkind: v.com/c\nbogus: 1\n{dev}"),
            "bogus",
        );
        bad(
            "cdiVersion: 0.6.0\nkind: v.com/c\ndevices: []",
            "no devices",
        );
        bad(
            "cdiVersion: 0.6.0\nkind: v.com/c\ndevices: [{name: d}]",
            "no container edits",
        );
        bad(
            "cdiVersion: 0.6.0\nkind: v.com/c\ndevices: [{name: -d, containerEdits: {env: [A=1]}}]",
            "device name",
        );
        bad(
            "cdiVersion: 0.6.0\nkind: v.com/c\ndevices: [{name: d, containerEdits: {env: [A=1]}}, \
             {name: d, containerEdits: {env: [A=2]}}]",
            "defined twice",
        );
        bad(
            "cdiVersion: 0.6.0\nkind: v.com/c\ndevices: [{name: d, containerEdits: {env: [=1]}}]",
            "environment variable",
        );
        bad(
            "cdiVersion: 0.6.0\nkind: v.com/c\ndevices: [{name: d, containerEdits: {hooks: \
             [{hookName: bogus, path: /x}]}}]",
            "hook name",
        );
        bad(
            "cdiVersion: 0.6.0\nkind: v.com/c\ndevices: [{name: d, containerEdits: {deviceNodes: \
             [{path: /dev/x, permissions: rwx}]}}]",
            "permissions",
        );
        bad(
            "cdiVersion: 0.6.0\nkind: v.com/c\ndevices: [{name: d, containerEdits: {mounts: \
             [{hostPath: /x, containerPath: ''}]}}]",
            "container path",
        );
        // Fields newer than the declared version.
        bad(
            "cdiVersion: 0.3.0\nkind: v.com/c\ndevices: [{name: d, containerEdits: {deviceNodes: \
             [{path: /dev/x, hostPath: /dev/y}]}}]",
            "at least 0.5.0",
        );
        bad(
            "cdiVersion: 0.6.0\nkind: v.com/c\ndevices: [{name: d, containerEdits: \
             {additionalGids: [5]}}]",
            "at least 0.7.0",
        );
        bad(
            "cdiVersion: 1.0.0\nkind: v.com/c\ndevices: [{name: d, containerEdits: {netDevices: \
             [{hostInterfaceName: eth1, name: net1}]}}]",
            "at least 1.1.0",
        );
        bad(
            "cdiVersion: 0.5.0\nkind: v.com/c.x\ndevices: [{name: d, containerEdits: {env: [A=1]}}]",
            "at least 0.6.0",
        );
        // A leading v is allowed, as Go allows it.
        parse_spec(
            Path::new("x.yaml"),
            &format!("cdiVersion: v0.6.0\nkind: v.com/c\n{dev}"),
        )
        .unwrap();
    }

    #[test]
    fn qualified_names() {
        for ok in [
            "vendor.com/gpu=0",
            "a/b=c",
            "nvidia.com/gpu=GPU-1:2",
            "v.io/c_x-y=a.b",
        ] {
            validate_qualified_name(ok).unwrap();
        }
        for bad in [
            "gpu0",
            "vendor.com/gpu",
            "vendor.com/gpu=",
            "=x",
            "/dev/null",
            "vendor.com=0",
            "vendor.com/=0",
            "vendor.com/gpu/x=0",
            "vendor.com/gpu=-0",
            "vendor.com/gpu=a b",
            "-v.com/gpu=0",
        ] {
            assert!(
                matches!(validate_qualified_name(bad), Err(Error::InvalidName { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn annotations_name_devices_in_key_order() {
        let a: HashMap<String, String> = [
            ("cdi.k8s.io/z".to_string(), "v.com/c=2".to_string()),
            (
                "cdi.k8s.io/a".to_string(),
                "v.com/c=0,v.com/c=1".to_string(),
            ),
            ("io.kubernetes.x".to_string(), "nothing".to_string()),
        ]
        .into();
        assert_eq!(
            annotation_devices(&a).unwrap(),
            names(&["v.com/c=0", "v.com/c=1", "v.com/c=2"])
        );
        let bad: HashMap<String, String> =
            [("cdi.k8s.io/a".to_string(), "v.com/c=0,".to_string())].into();
        assert!(annotation_devices(&bad).is_err());
    }

    #[test]
    fn registry_loads_dirs_in_priority_and_names_broken_files() {
        let low = TestDir::new();
        let high = TestDir::new();
        let spec = |env: &str, dev: &str| {
            format!(
                "cdiVersion: 0.6.0\nkind: v.com/c\ndevices: [{{name: {dev}, containerEdits: \
                 {{env: [{env}]}}}}]\n"
            )
        };
        low.write("a.yaml", &spec("FROM=low", "d"));
        low.write("only-low.yml", &spec("X=1", "low"));
        low.write("ignored.txt", &spec("X=1", "txt"));
        high.write("b.yaml", &spec("FROM=high", "d"));
        // Two files of one directory define `twice`: neither is used.
        high.write("t1.yaml", &spec("T=1", "twice"));
        high.write("t2.yaml", &spec("T=2", "twice"));
        let broken = high.write("broken.json", "{\"cdiVersion\": ");
        let missing = PathBuf::from("/nonexistent/berth-cdi");
        let r = Registry::load(&[missing, low.0.clone(), high.0.clone()]);
        assert_eq!(r.device_names(), names(&["v.com/c=d", "v.com/c=low"]));
        let inj = r.resolve(&names(&["v.com/c=d"])).unwrap();
        assert_eq!(inj.edits.env, names(&["FROM=high"]));
        assert!(
            r.errors().iter().any(|e| e.contains("twice")),
            "{:?}",
            r.errors()
        );

        let e = r
            .resolve(&names(&["v.com/c=twice", "v.com/c=gone"]))
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("unresolvable CDI devices v.com/c=twice, v.com/c=gone"),
            "{msg}"
        );
        assert!(msg.contains(&broken.display().to_string()), "{msg}");
        let e: SpecError = e.into();
        assert!(matches!(e, SpecError::InvalidArgument(_)));
    }

    #[test]
    fn resolve_merges_spec_edits_once_and_fills_nodes_from_the_host() {
        let dir = TestDir::new();
        dir.write("dev.yaml", YAML);
        let dirs = [dir.0.clone()];
        let inj = resolve(
            &dirs,
            &names(&[
                "berth.test/device=null0",
                "berth.test/device=gpu1",
                "berth.test/device=null0",
            ]),
        )
        .unwrap();
        assert_eq!(
            inj.devices,
            names(&["berth.test/device=null0", "berth.test/device=gpu1"])
        );
        assert_eq!(inj.edits.env, names(&["BERTH_CDI=1", "NULL=0"]));
        assert_eq!(inj.edits.hooks.len(), 1);
        let n = &inj.edits.device_nodes[0];
        assert_eq!((n.typ.as_str(), n.major, n.minor), ("c", 1, 3));
        assert_eq!(n.file_mode, Some(0o666));
        // Nothing asked: the directories are not even read.
        let none = resolve(&[PathBuf::from("/nonexistent")], &[]).unwrap();
        assert_eq!(none, Injection::default());
        assert!(matches!(
            resolve(&dirs, &names(&["nope"])),
            Err(Error::InvalidName { .. })
        ));
    }

    #[test]
    fn device_nodes_need_a_host_node_unless_fully_described() {
        let node = |path: &str, typ: &str, major: i64| DeviceNodeEdit {
            path: path.into(),
            typ: typ.into(),
            major,
            ..Default::default()
        };
        let mut missing = [node("/dev/berth-missing", "", 0)];
        let e = fill_from_host("device v.com/c=d", &mut missing).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("v.com/c=d") && msg.contains("/dev/berth-missing"),
            "{msg}"
        );
        // Fully described: the host node may be absent.
        let mut full = [node("/dev/berth-missing", "c", 240)];
        fill_from_host("x", &mut full).unwrap();
        assert_eq!((full[0].major, full[0].file_mode), (240, None));
        // The type must match the host's.
        let mut wrong = [DeviceNodeEdit {
            host_path: "/dev/null".into(),
            ..node("/dev/n", "b", 0)
        }];
        assert!(fill_from_host("x", &mut wrong).is_err());
        // A regular file is no device.
        let mut file = [node("/etc/hostname", "", 0)];
        assert!(fill_from_host("x", &mut file).is_err());
    }

    fn edits(f: impl FnOnce(&mut ContainerEdits)) -> ContainerEdits {
        let mut e = ContainerEdits::default();
        f(&mut e);
        e
    }

    #[test]
    fn apply_env_replaces_same_names_and_appends_others() {
        let mut s = spec_with_user(0, 0);
        apply(&edits(|e| e.env = names(&["NULL=1", "NEW=2"])), &mut s);
        assert_eq!(
            s.process().as_ref().unwrap().env().clone().unwrap(),
            names(&["PATH=/bin", "NULL=1", "NEW=2"])
        );
    }

    #[test]
    fn apply_device_nodes_with_rules_and_owner() {
        let mut s = spec_with_user(1000, 1001);
        let n = |path: &str, typ: &str, perms: &str| DeviceNodeEdit {
            path: path.into(),
            typ: typ.into(),
            major: 1,
            minor: 3,
            file_mode: Some(0o666),
            permissions: perms.into(),
            ..Default::default()
        };
        let e = edits(|e| {
            e.device_nodes = vec![
                n("/dev/a", "c", ""),
                n("/dev/b", "b", "r"),
                n("/dev/c", "c", "none"),
                DeviceNodeEdit {
                    uid: Some(0),
                    ..n("/dev/a", "c", "rw")
                },
                n("/dev/fifo", "p", ""),
            ]
        });
        apply(&e, &mut s);
        let linux = s.linux().as_ref().unwrap();
        let devs = linux.devices().clone().unwrap();
        let paths: Vec<_> = devs
            .iter()
            .map(|d| d.path().display().to_string())
            .collect();
        assert_eq!(paths, ["/dev/b", "/dev/c", "/dev/a", "/dev/fifo"]);
        assert_eq!(devs[0].typ(), LinuxDeviceType::B);
        assert_eq!((devs[0].uid(), devs[0].gid()), (Some(1000), Some(1001)));
        assert_eq!((devs[2].uid(), devs[2].gid()), (Some(0), Some(1001)));
        assert_eq!(devs[3].typ(), LinuxDeviceType::P);
        let rules = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        let access: Vec<_> = rules
            .iter()
            .map(|r| (r.typ(), r.access().clone().unwrap()))
            .collect();
        assert_eq!(
            access,
            [
                (Some(LinuxDeviceType::C), "rwm".to_string()),
                (Some(LinuxDeviceType::B), "r".to_string()),
                (Some(LinuxDeviceType::C), "rw".to_string()),
            ]
        );
        assert!(rules.iter().all(|r| r.allow() && r.major() == Some(1)));

        // Root's devices get no owner.
        let mut s = spec_with_user(0, 0);
        apply(
            &edits(|e| e.device_nodes = vec![n("/dev/a", "c", "")]),
            &mut s,
        );
        let d = &s.linux().as_ref().unwrap().devices().clone().unwrap()[0];
        assert_eq!((d.uid(), d.gid()), (None, None));
    }

    #[test]
    fn apply_mounts_replace_and_sort_parents_first() {
        let mut s = spec_with_user(0, 0);
        let m = |host: &str, ctr: &str| MountEdit {
            host_path: host.into(),
            container_path: ctr.into(),
            options: names(&["ro", "bind"]),
            typ: String::new(),
        };
        apply(
            &edits(|e| e.mounts = vec![m("/etc/hostname", "/etc/berth-host"), m("/opt", "/opt")]),
            &mut s,
        );
        let mounts = s.mounts().clone().unwrap();
        let dsts: Vec<_> = mounts
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        assert_eq!(dsts, ["/proc", "/opt", "/dev/pts", "/etc/berth-host"]);
        let host = &mounts[3];
        assert_eq!(host.source().as_deref(), Some(Path::new("/etc/hostname")));
        assert_eq!(host.typ(), &None);
        assert_eq!(host.options().clone().unwrap(), names(&["ro", "bind"]));
    }

    #[test]
    #[allow(deprecated)]
    fn apply_hooks_by_name() {
        let mut s = spec_with_user(0, 0);
        let e = edits(|e| {
            e.hooks = HOOK_NAMES
                .iter()
                .map(|n| HookEdit {
                    hook_name: n.to_string(),
                    path: format!("/bin/{n}"),
                    args: names(&[n]),
                    env: names(&["A=1"]),
                    timeout: Some(3),
                })
                .collect();
        });
        apply(&e, &mut s);
        let h = s.hooks().as_ref().unwrap();
        let first = |l: &Option<Vec<Hook>>| l.as_ref().unwrap()[0].path().display().to_string();
        assert_eq!(first(h.prestart()), "/bin/prestart");
        assert_eq!(first(h.create_runtime()), "/bin/createRuntime");
        assert_eq!(first(h.create_container()), "/bin/createContainer");
        assert_eq!(first(h.start_container()), "/bin/startContainer");
        assert_eq!(first(h.poststart()), "/bin/poststart");
        assert_eq!(first(h.poststop()), "/bin/poststop");
        let p = &h.poststop().as_ref().unwrap()[0];
        assert_eq!(p.timeout(), Some(3));
        assert_eq!(p.env().clone().unwrap(), names(&["A=1"]));
    }

    #[test]
    fn apply_gids_rdt_and_net_devices() {
        let mut s = spec_with_user(0, 0);
        let e = edits(|e| {
            e.additional_gids = vec![44, 0, 44, 45];
            e.intel_rdt = Some(IntelRdtEdit {
                clos_id: "gold".into(),
                l3_cache_schema: "L3:0=ff".into(),
                ..Default::default()
            });
            e.net_devices = vec![NetDeviceEdit {
                host_interface_name: "eth9".into(),
                name: "net0".into(),
            }];
        });
        apply(&e, &mut s);
        let user = s.process().as_ref().unwrap().user().clone();
        assert_eq!(user.additional_gids().clone().unwrap(), vec![44, 45]);
        let linux = s.linux().as_ref().unwrap();
        let rdt = linux.intel_rdt().as_ref().unwrap();
        assert_eq!(rdt.clos_id().as_deref(), Some("gold"));
        assert_eq!(rdt.l3_cache_schema().as_deref(), Some("L3:0=ff"));
        assert_eq!(rdt.mem_bw_schema(), &None);
        let net = linux.net_devices().as_ref().unwrap();
        assert_eq!(net["eth9"].name().as_deref(), Some("net0"));
        // Nothing to do: nothing changes.
        let before = spec_with_user(0, 0);
        let mut after = before.clone();
        apply(&ContainerEdits::default(), &mut after);
        assert_eq!(before, after);
    }
}
