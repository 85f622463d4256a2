//! CNI network configuration: which file in the conf dir is used, parsing it as
//! libcni does (`.conflist`, or a single-plugin `.conf`/`.json` wrapped into a
//! list), and building each plugin's stdin (`name`, `cniVersion`, `prevResult`,
//! `runtimeConfig`).
//!
//! File choice follows containerd (go-cni with one network): the lexically first
//! `.conf`/`.conflist`/`.json` file is THE config; if it is broken the error is
//! reported (NetworkReady=false) instead of silently using the next file.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value};

use super::{Capabilities, Error};

/// Spec versions berth understands, oldest first.
pub(super) const SUPPORTED_VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// Extensions libcni/go-cni look at in the conf dir.
const CONFIG_EXTENSIONS: &[&str] = &["conf", "conflist", "json"];

/// Capabilities berth can fill in `runtimeConfig`.
pub(super) const CAP_PORT_MAPPINGS: &str = "portMappings";
pub(super) const CAP_DNS: &str = "dns";
pub(super) const CAP_BANDWIDTH: &str = "bandwidth";
pub(super) const CAP_IPS: &str = "ips";

/// A parsed network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// The network's `name`.
    pub name: String,
    /// The `cniVersion` used (from `cniVersion`, or the highest supported entry of
    /// `cniVersions`).
    pub cni_version: String,
    /// The file it came from.
    pub file: PathBuf,
    /// The chain, in ADD order.
    pub plugins: Vec<PluginConfig>,
    /// `disableCheck`: CHECK is a no-op.
    pub disable_check: bool,
    /// `disableGC`: GC is a no-op.
    pub disable_gc: bool,
    /// The whole list as JSON (single-plugin files wrapped into a list).
    pub raw: Value,
}

/// One plugin of a [`NetworkConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// `type`: the binary's name.
    pub plugin_type: String,
    /// The capabilities the plugin declares as `true` in its `capabilities` map.
    pub capabilities: Vec<String>,
    /// The plugin's JSON object as written.
    pub raw: Map<String, Value>,
}

impl NetworkConfig {
    /// Whether the config's `cniVersion` is at least `v` (e.g. `"0.4.0"`).
    pub fn version_at_least(&self, v: &str) -> bool {
        version_ge(&self.cni_version, v)
    }
}

/// `"1.0.0"` → `(1, 0, 0)`.
pub(super) fn version_tuple(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let t = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(t)
}

/// `a >= b`; unparsable versions compare as lowest.
pub(super) fn version_ge(a: &str, b: &str) -> bool {
    version_tuple(a) >= version_tuple(b)
}

fn invalid(file: &Path, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

/// libcni's network name rule (`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`), also used for
/// container ids.
pub(super) fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Parses one config file's bytes; `.conflist` is a list, anything else is a
/// single plugin wrapped into a list (libcni `ConfListFromConf`).
pub fn parse_config_file(file: &Path, bytes: &[u8]) -> Result<NetworkConfig, Error> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(file, format!("not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(invalid(file, "not a JSON object"));
    };
    let is_list = file.extension().is_some_and(|e| e == "conflist");
    let list = if is_list {
        obj
    } else {
        wrap_single_plugin(file, obj)?
    };
    parse_list(file, Value::Object(list))
}

fn wrap_single_plugin(file: &Path, obj: Map<String, Value>) -> Result<Map<String, Value>, Error> {
    match obj.get("type") {
        Some(Value::String(t)) if !t.is_empty() => {}
        _ if obj.contains_key("plugins") => {
            return Err(invalid(
                file,
                "has a \"plugins\" list, but a .conf/.json file holds a single plugin: \
                 rename it to .conflist",
            ));
        }
        _ => {
            return Err(invalid(
                file,
                "no plugin \"type\" (a .conf/.json file holds one plugin)",
            ));
        }
    }
    let mut list = Map::new();
    for key in ["name", "cniVersion", "cniVersions"] {
        if let Some(v) = obj.get(key) {
            list.insert(key.into(), v.clone());
        }
    }
    list.insert("plugins".into(), Value::Array(vec![Value::Object(obj)]));
    Ok(list)
}

fn parse_bool(file: &Path, list: &Map<String, Value>, key: &str) -> Result<bool, Error> {
    match list.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(invalid(
            file,
            format!("{key:?} must be true or false, not {other}"),
        )),
    }
}

fn choose_version(file: &Path, list: &Map<String, Value>) -> Result<String, Error> {
    let supported = || SUPPORTED_VERSIONS.join(", ");
    let check = |v: &str| {
        if SUPPORTED_VERSIONS.contains(&v) {
            Ok(v.to_string())
        } else {
            Err(invalid(
                file,
                format!(
                    "unsupported cniVersion {v:?} (berth supports {})",
                    supported()
                ),
            ))
        }
    };
    let single = match list.get("cniVersion") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(other) => {
            return Err(invalid(
                file,
                format!("\"cniVersion\" must be a string, not {other}"),
            ));
        }
    };
    match list.get("cniVersions") {
        None | Some(Value::Null) => match single {
            Some(v) => check(v),
            None => Err(invalid(
                file,
                "no \"cniVersion\" (use \"1.0.0\" for Debian's plugins 1.1.1)",
            )),
        },
        Some(Value::Array(vs)) => {
            // CNI 1.1: the highest listed version this runtime supports wins.
            let mut best: Option<&str> = None;
            for v in vs.iter().map(|v| v.as_str()).chain(std::iter::once(single)) {
                let Some(v) = v else { continue };
                if version_tuple(v).is_none() {
                    return Err(invalid(
                        file,
                        format!("invalid version {v:?} in \"cniVersions\""),
                    ));
                }
                if SUPPORTED_VERSIONS.contains(&v) && best.is_none_or(|b| !version_ge(b, v)) {
                    best = Some(v);
                }
            }
            best.map(str::to_string).ok_or_else(|| {
                invalid(
                    file,
                    format!(
                        "none of \"cniVersions\" is supported (berth supports {})",
                        supported()
                    ),
                )
            })
        }
        Some(other) => Err(invalid(
            file,
            format!("\"cniVersions\" must be a list, not {other}"),
        )),
    }
}

/// Parses a configuration list (already wrapped if it came from a `.conf`).
/// Also used for the config stored in the result cache.
pub(super) fn parse_list(file: &Path, raw: Value) -> Result<NetworkConfig, Error> {
    let Value::Object(list) = &raw else {
        return Err(invalid(file, "not a JSON object"));
    };
    let name = match list.get("name") {
        Some(Value::String(n)) if valid_name(n) => n.clone(),
        Some(Value::String(n)) if !n.is_empty() => {
            return Err(invalid(
                file,
                format!(
                    "network name {n:?} is invalid (allowed: letters, digits, '_', '.', '-'; not starting with a symbol)"
                ),
            ));
        }
        _ => return Err(invalid(file, "no network \"name\"")),
    };
    let cni_version = choose_version(file, list)?;
    let disable_check = parse_bool(file, list, "disableCheck")?;
    let disable_gc = parse_bool(file, list, "disableGC")?;
    let plugins = match list.get("plugins") {
        Some(Value::Array(p)) if !p.is_empty() => p,
        Some(Value::Array(_)) => return Err(invalid(file, "\"plugins\" is empty")),
        Some(_) => return Err(invalid(file, "\"plugins\" must be a list")),
        None => return Err(invalid(file, "no \"plugins\" list")),
    };
    let plugins = plugins
        .iter()
        .enumerate()
        .map(|(i, p)| parse_plugin(file, i, p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NetworkConfig {
        name,
        cni_version,
        file: file.to_path_buf(),
        plugins,
        disable_check,
        disable_gc,
        raw,
    })
}

fn parse_plugin(file: &Path, i: usize, p: &Value) -> Result<PluginConfig, Error> {
    let Value::Object(obj) = p else {
        return Err(invalid(file, format!("plugins[{i}] is not a JSON object")));
    };
    let plugin_type = match obj.get("type") {
        Some(Value::String(t)) if !t.is_empty() && !t.contains('/') && t != "." && t != ".." => {
            t.clone()
        }
        Some(Value::String(t)) if !t.is_empty() => {
            return Err(invalid(
                file,
                format!("plugins[{i}]: invalid plugin type {t:?} (a binary name, not a path)"),
            ));
        }
        _ => return Err(invalid(file, format!("plugins[{i}]: no plugin \"type\""))),
    };
    let capabilities = match obj.get("capabilities") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(caps)) => {
            let mut enabled = Vec::new();
            for (k, v) in caps {
                match v {
                    Value::Bool(true) => enabled.push(k.clone()),
                    Value::Bool(false) => {}
                    other => {
                        return Err(invalid(
                            file,
                            format!(
                                "plugins[{i}] ({plugin_type}): capability {k:?} must be true or false, not {other}"
                            ),
                        ));
                    }
                }
            }
            enabled
        }
        Some(other) => {
            return Err(invalid(
                file,
                format!(
                    "plugins[{i}] ({plugin_type}): \"capabilities\" must be an object, not {other}"
                ),
            ));
        }
    };
    Ok(PluginConfig {
        plugin_type,
        capabilities,
        raw: obj.clone(),
    })
}

/// The config files of `dir` in lexical order (libcni `ConfFiles` + sort).
pub(super) fn config_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let no_config = |reason: String| Error::NoConfig {
        dir: dir.to_path_buf(),
        reason,
    };
    let entries = fs::read_dir(dir).map_err(|e| no_config(read_dir_reason(&e)))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| no_config(format!("cannot list the directory: {e}")))?;
        let path = entry.path();
        let ext_ok = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| CONFIG_EXTENSIONS.contains(&e));
        // Follow symlinks, skip directories (libcni skips dirs only).
        if ext_ok && !fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn read_dir_reason(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        "the directory does not exist".into()
    } else {
        format!("cannot read the directory: {e}")
    }
}

/// Loads the config that is used now: the first file of [`config_files`].
pub(super) fn load_first(dir: &Path) -> Result<NetworkConfig, Error> {
    match config_files(dir)?.first() {
        Some(file) => load_file(file),
        None => Err(no_files(dir)),
    }
}

fn no_files(dir: &Path) -> Error {
    Error::NoConfig {
        dir: dir.to_path_buf(),
        reason: "no .conflist, .conf or .json file in it".into(),
    }
}

fn load_file(file: &Path) -> Result<NetworkConfig, Error> {
    let bytes = fs::read(file).map_err(|e| invalid(file, format!("cannot read it: {e}")))?;
    parse_config_file(file, &bytes)
}

/// What identifies a version of a file or directory, for the reload check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let m = fs::metadata(path).ok()?;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        })
    }
}

struct Loaded {
    dir: Stamp,
    /// The file chosen (if any) and its stamp when it was read.
    file: Option<(PathBuf, Option<Stamp>)>,
    result: Result<NetworkConfig, Error>,
}

/// Caches [`load_first`] until the directory or the chosen file changes
/// (mtime/size/inode), so `ready()` costs two `stat`s when nothing changed.
#[derive(Default)]
pub(super) struct Loader {
    state: Mutex<Option<Loaded>>,
}

impl Loader {
    pub(super) fn load(&self, dir: &Path) -> Result<NetworkConfig, Error> {
        let Some(dir_stamp) = Stamp::of(dir) else {
            // Not cached: the next call looks again.
            return load_first(dir);
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(loaded) = state.as_ref()
            && loaded.dir == dir_stamp
            && loaded
                .file
                .as_ref()
                .is_none_or(|(path, stamp)| Stamp::of(path) == *stamp)
        {
            return loaded.result.clone();
        }
        // Stat before reading: a change after this is seen by the next call.
        let (file, result) = match config_files(dir) {
            Err(e) => (None, Err(e)),
            Ok(files) => match files.into_iter().next() {
                None => (None, Err(no_files(dir))),
                Some(path) => {
                    let stamp = Stamp::of(&path);
                    let result = load_file(&path);
                    (Some((path, stamp)), result)
                }
            },
        };
        match &result {
            Ok(c) => {
                tracing::info!(file = %c.file.display(), network = %c.name, "CNI config loaded")
            }
            Err(e) => tracing::warn!(error = %e, "no usable CNI config"),
        }
        *state = Some(Loaded {
            dir: dir_stamp,
            file,
            result: result.clone(),
        });
        result
    }
}

/// The capability arguments a runtime offers, as libcni's `CapabilityArgs`.
/// Empty port mappings / IPs and absent DNS / bandwidth are left out.
pub(super) fn capability_args(caps: &Capabilities) -> Map<String, Value> {
    let mut m = Map::new();
    if !caps.port_mappings.is_empty() {
        m.insert(
            CAP_PORT_MAPPINGS.into(),
            serde_json::to_value(&caps.port_mappings).unwrap_or_default(),
        );
    }
    if let Some(dns) = &caps.dns {
        m.insert(
            CAP_DNS.into(),
            serde_json::to_value(dns).unwrap_or_default(),
        );
    }
    if let Some(bw) = &caps.bandwidth {
        m.insert(
            CAP_BANDWIDTH.into(),
            serde_json::to_value(bw).unwrap_or_default(),
        );
    }
    if !caps.ips.is_empty() {
        m.insert(
            CAP_IPS.into(),
            serde_json::to_value(&caps.ips).unwrap_or_default(),
        );
    }
    m
}

/// The `runtimeConfig` for one plugin: only the capabilities it declares
/// (libcni `injectRuntimeConfig`).
pub(super) fn runtime_config(
    plugin: &PluginConfig,
    cap_args: &Map<String, Value>,
) -> Map<String, Value> {
    plugin
        .capabilities
        .iter()
        .filter_map(|c| cap_args.get(c).map(|v| (c.clone(), v.clone())))
        .collect()
}

/// A plugin's stdin (libcni `buildOneConfig`): its own config with `name` and
/// `cniVersion` of the list, `prevResult` when given, `runtimeConfig` when any
/// declared capability has a value, plus `extra` keys (GC's attachments).
pub(super) fn plugin_stdin(
    net: &NetworkConfig,
    plugin: &PluginConfig,
    prev_result: Option<&Value>,
    cap_args: &Map<String, Value>,
    extra: &[(&str, Value)],
) -> Vec<u8> {
    let mut conf = plugin.raw.clone();
    conf.insert("name".into(), Value::String(net.name.clone()));
    conf.insert("cniVersion".into(), Value::String(net.cni_version.clone()));
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    let rc = runtime_config(plugin, cap_args);
    if !rc.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(rc));
    }
    for (k, v) in extra {
        conf.insert((*k).into(), v.clone());
    }
    serde_json::to_vec(&Value::Object(conf)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::{Bandwidth, DnsCap, PortMapping};
    use super::*;
    use serde_json::json;

    fn p(name: &str) -> PathBuf {
        PathBuf::from(format!("/etc/cni/net.d/{name}"))
    }

    #[test]
    fn versions() {
        assert_eq!(version_tuple("1.0.0"), Some((1, 0, 0)));
        assert_eq!(version_tuple("0.3.1"), Some((0, 3, 1)));
        assert_eq!(version_tuple("1.0"), None);
        assert_eq!(version_tuple("1.0.0.0"), None);
        assert_eq!(version_tuple("x"), None);
        assert!(version_ge("1.0.0", "0.4.0"));
        assert!(version_ge("0.4.0", "0.4.0"));
        assert!(!version_ge("0.3.1", "0.4.0"));
        assert!(version_ge("0.10.0", "0.4.0"));
    }

    #[test]
    fn names() {
        for ok in ["berth", "a", "0abc", "k8s-pod_net.1", "f00d"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "a:b", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    /// (file name, content, Ok((name, version, plugin types, caps of plugin 0, disableCheck)) or Err(part of the reason))
    type Case = (
        &'static str,
        &'static str,
        Result<
            (
                &'static str,
                &'static str,
                Vec<&'static str>,
                Vec<&'static str>,
                bool,
            ),
            &'static str,
        >,
    );

    #[test]
    fn parse_table() {
        let cases: Vec<Case> = vec![
            (
                "10-a.conflist",
                r#"{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}]}"#,
                Ok(("net", "1.0.0", vec!["bridge", "portmap"], vec![], false)),
            ),
            (
                "10-a.conf",
                r#"{"cniVersion":"0.4.0","name":"one","type":"ptp","capabilities":{"ips":true}}"#,
                Ok(("one", "0.4.0", vec!["ptp"], vec!["ips"], false)),
            ),
            (
                "10-a.json",
                r#"{"cniVersion":"0.3.1","name":"j","type":"bridge"}"#,
                Ok(("j", "0.3.1", vec!["bridge"], vec![], false)),
            ),
            (
                "a.conflist",
                r#"{"cniVersions":["0.4.0","1.0.0","9.9.9"],"name":"v","disableCheck":"true","plugins":[{"type":"x"}]}"#,
                Ok(("v", "1.0.0", vec!["x"], vec![], true)),
            ),
            (
                "a.conflist",
                r#"{"cniVersions":["1.1.0"],"cniVersion":"1.0.0","name":"v","disableCheck":false,"plugins":[{"type":"x"}]}"#,
                Ok(("v", "1.1.0", vec!["x"], vec![], false)),
            ),
            (
                "a.conflist",
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x"}"#,
                Err("not valid JSON"),
            ),
            ("a.conflist", r#"[1]"#, Err("not a JSON object")),
            (
                "a.conflist",
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
                Err("no network \"name\""),
            ),
            (
                "a.conflist",
                r#"{"cniVersion":"1.0.0","name":"a b","plugins":[{"type":"x"}]}"#,
                Err("network name \"a b\" is invalid"),
            ),
            (
                "a.conflist",
                r#"{"name":"n","plugins":[{"type":"x"}]}"#,
                Err("no \"cniVersion\""),
            ),
            (
                "a.conflist",
                r#"{"cniVersion":"2.0.0","name":"n","plugins":[{"type":"x"}]}"#,
                Err("unsupported cniVersion \"2.0.0\""),
            ),
            (
                "a.conflist",
                r#"{"cniVersions":["3.0.0"],"name":"n","plugins":[{"type":"x"}]}"#,
                Err("none of \"cniVersions\""),
            ),
            (
                "a.conflist",
                r#"{"cniVersion":"1.0.0","name":"n"}"#,
                Err("no \"plugins\" list"),
            ),
            (
                "a.conflist",
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                Err("\"plugins\" is empty"),
            ),
            (
                "a.conflist",
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x"},{"ipam":{}}]}"#,
                Err("plugins[1]: no plugin \"type\""),
            ),
            (
                "a.conflist",
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../x"}]}"#,
                Err("invalid plugin type"),
            ),
            (
                "a.conflist",
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x","capabilities":{"ips":1}}]}"#,
                Err("capability \"ips\" must be true or false"),
            ),
            (
                "a.conflist",
                r#"{"cniVersion":"1.0.0","name":"n","disableGC":3,"plugins":[{"type":"x"}]}"#,
                Err("\"disableGC\" must be true or false"),
            ),
            (
                "a.conf",
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x"}]}"#,
                Err("rename it to .conflist"),
            ),
            (
                "a.conf",
                r#"{"cniVersion":"1.0.0","name":"n"}"#,
                Err("no plugin \"type\""),
            ),
        ];
        for (file, content, want) in cases {
            let got = parse_config_file(&p(file), content.as_bytes());
            match (got, want) {
                (Ok(c), Ok((name, version, types, caps0, dc))) => {
                    assert_eq!(c.name, name, "{content}");
                    assert_eq!(c.cni_version, version, "{content}");
                    let got_types: Vec<_> =
                        c.plugins.iter().map(|p| p.plugin_type.as_str()).collect();
                    assert_eq!(got_types, types, "{content}");
                    assert_eq!(c.plugins[0].capabilities, caps0, "{content}");
                    assert_eq!(c.disable_check, dc, "{content}");
                    assert_eq!(c.file, p(file));
                }
                (Err(Error::InvalidConfig { file: f, reason }), Err(part)) => {
                    assert_eq!(f, p(file));
                    assert!(
                        reason.contains(part),
                        "{content}: {reason:?} lacks {part:?}"
                    );
                }
                (got, want) => panic!("{content}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn single_plugin_file_is_wrapped_like_libcni() {
        let c = parse_config_file(
            &p("a.conf"),
            br#"{"cniVersion":"1.0.0","name":"n","type":"bridge","bridge":"br0"}"#,
        )
        .unwrap();
        assert_eq!(
            c.raw,
            json!({"cniVersion":"1.0.0","name":"n","plugins":[{"cniVersion":"1.0.0","name":"n","type":"bridge","bridge":"br0"}]})
        );
        // The wrapped list parses again to the same thing (the cache relies on it).
        assert_eq!(parse_list(&c.file, c.raw.clone()).unwrap(), c);
    }

    fn caps_full() -> Capabilities {
        Capabilities {
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }],
            dns: Some(DnsCap {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            bandwidth: Some(Bandwidth {
                ingress_rate: 1000,
                ingress_burst: 2000,
                egress_rate: 3000,
                egress_burst: 4000,
            }),
            ips: vec!["10.1.2.3/24".into()],
        }
    }

    #[test]
    fn capability_args_encoding() {
        assert_eq!(capability_args(&Capabilities::default()), Map::new());
        assert_eq!(
            Value::Object(capability_args(&caps_full())),
            json!({
                "portMappings": [{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":""}],
                "dns": {"servers":["10.96.0.10"],"searches":["svc.cluster.local"],"options":["ndots:5"]},
                "bandwidth": {"ingressRate":1000,"ingressBurst":2000,"egressRate":3000,"egressBurst":4000},
                "ips": ["10.1.2.3/24"],
            })
        );
    }

    #[test]
    fn runtime_config_filtering_table() {
        let args = capability_args(&caps_full());
        let only_ports = capability_args(&Capabilities {
            port_mappings: caps_full().port_mappings,
            ..Default::default()
        });
        // (plugin capabilities map, capability args, expected runtimeConfig keys)
        let cases: Vec<(Value, &Map<String, Value>, Vec<&str>)> = vec![
            (json!(null), &args, vec![]),
            (json!({"portMappings": true}), &args, vec!["portMappings"]),
            (
                json!({"portMappings": false, "bandwidth": true}),
                &args,
                vec!["bandwidth"],
            ),
            (
                json!({"dns": true, "ips": true, "mac": true}),
                &args,
                vec!["dns", "ips"],
            ),
            (
                json!({"portMappings": true, "bandwidth": true}),
                &only_ports,
                vec!["portMappings"],
            ),
            (json!({"bandwidth": true}), &only_ports, vec![]),
        ];
        for (caps, cap_args, want) in cases {
            let mut raw = json!({"type": "x"});
            if !caps.is_null() {
                raw["capabilities"] = caps.clone();
            }
            let plugin = parse_plugin(&p("a"), 0, &raw).unwrap();
            let rc = runtime_config(&plugin, cap_args);
            let keys: Vec<_> = rc.keys().map(String::as_str).collect();
            assert_eq!(keys, want, "{caps}");
            for k in keys {
                assert_eq!(rc[k], cap_args[k]);
            }
        }
    }

    #[test]
    fn stdin_injection() {
        let net = parse_config_file(
            &p("a.conflist"),
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"portmap","name":"other","cniVersion":"0.1.0","runtimeConfig":{"old":1},"capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        let prev = json!({"cniVersion":"1.0.0","ips":[]});
        let args = capability_args(&caps_full());
        let v: Value = serde_json::from_slice(&plugin_stdin(
            &net,
            &net.plugins[0],
            Some(&prev),
            &args,
            &[],
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({
                "type":"portmap","name":"n","cniVersion":"1.0.0","capabilities":{"portMappings":true},
                "prevResult": prev,
                "runtimeConfig": {"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":""}]},
            })
        );
        // Nothing to inject: no prevResult, and the plugin's own runtimeConfig stays (libcni).
        let v: Value = serde_json::from_slice(&plugin_stdin(
            &net,
            &net.plugins[0],
            None,
            &Map::new(),
            &[("k", json!(1))],
        ))
        .unwrap();
        assert_eq!(v.get("prevResult"), None);
        assert_eq!(v["runtimeConfig"], json!({"old": 1}));
        assert_eq!(v["k"], json!(1));
    }
}
