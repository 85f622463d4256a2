//! The CNI executor (CNI spec 1.0/1.1), behaving like libcni as containerd
//! uses it: the network config is the lexically first `.conflist`/`.conf`/`.json`
//! of the conf dir (a broken one is reported, not skipped — containerd's
//! choice), plugins come from the bin dirs, ADD runs the chain threading
//! `prevResult`, and every attachment's exact config, CNI_ARGS, capability args
//! and result are cached on disk so that DEL (reverse order, same
//! `runtimeConfig`), CHECK and GC work after a berthd restart and after the conf
//! dir changed.
//!
//! - `config`: finding and parsing the config, building plugin stdin.
//! - `result`: result version conversion, the pod's IPs.
//! - `cache`: the on-disk result cache.
//! - `exec`: running one plugin (env, timeout, error JSON).

mod cache;
mod config;
mod exec;
mod result;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub use config::{NetworkConfig, PluginConfig};
pub use result::{Interface, NetworkStatus};

/// How long one plugin call may take before it is killed.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The CNI operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
    Check,
    Status,
    Gc,
}

impl Verb {
    /// The `CNI_COMMAND` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Add => "ADD",
            Verb::Del => "DEL",
            Verb::Check => "CHECK",
            Verb::Status => "STATUS",
            Verb::Gc => "GC",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of the CNI executor. `NoConfig`, `InvalidConfig` and `MissingPlugin`
/// are what `ready()` reports as the NetworkReady=false reason.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error(
        "no CNI network config in {}: {reason}; put a .conflist there (example: berth's config/10-berth-bridge.conflist)",
        dir.display()
    )]
    NoConfig { dir: PathBuf, reason: String },
    #[error(
        "invalid CNI network config {}: {reason} (the lexically first .conflist/.conf/.json file of the directory is the one used: fix or remove it)",
        file.display()
    )]
    InvalidConfig { file: PathBuf, reason: String },
    #[error(
        "CNI plugin {plugin:?} (used by {}) not found as an executable in {}: install it (Debian: apt install containernetworking-plugins) or add its directory to the CNI bin dirs",
        config.display(),
        join_paths(dirs)
    )]
    MissingPlugin {
        plugin: String,
        dirs: Vec<PathBuf>,
        config: PathBuf,
    },
    #[error(
        "CNI plugin {plugin:?} failed {verb} ({}): {msg}{}",
        code_text(code),
        details_text(details)
    )]
    Plugin {
        plugin: String,
        verb: Verb,
        /// The spec's error code; `None` when the plugin printed no error JSON.
        code: Option<u32>,
        msg: String,
        details: String,
    },
    #[error("CNI plugin {plugin:?} did not finish {verb} within {timeout:?} and was killed")]
    Timeout {
        plugin: String,
        verb: Verb,
        timeout: Duration,
    },
    #[error(
        "no cached CNI result for container {container_id} interface {ifname} in {}: the network was never set up for it, or was already torn down",
        cache_dir.display()
    )]
    NotCached {
        container_id: String,
        ifname: String,
        cache_dir: PathBuf,
    },
    #[error("invalid CNI {what} {value:?}: {reason}")]
    InvalidArgument {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
}

fn join_paths(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// The spec's well-known error codes.
fn code_text(code: &Option<u32>) -> String {
    let Some(code) = *code else {
        return "no CNI error code".into();
    };
    let meaning = match code {
        1 => "incompatible CNI version",
        2 => "unsupported field in network configuration",
        3 => "container unknown or does not exist",
        4 => "invalid necessary environment variables",
        5 => "I/O failure",
        6 => "failed to decode content",
        7 => "invalid network config",
        11 => "try again later",
        50 => "plugin not available",
        51 => "plugin not available, existing containers may have limited connectivity",
        _ => return format!("code {code}"),
    };
    format!("code {code}: {meaning}")
}

fn details_text(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(" ({details})")
    }
}

/// A `runtimeConfig` port mapping (the portmap plugin's `portMappings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// Empty for all host addresses.
    #[serde(rename = "hostIP")]
    pub host_ip: String,
}

/// The `dns` capability.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsCap {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// The `bandwidth` capability (bits per second, burst in bits).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    pub ingress_rate: u64,
    pub ingress_burst: u64,
    pub egress_rate: u64,
    pub egress_burst: u64,
}

/// The capability args offered to plugins; each plugin gets in `runtimeConfig`
/// only those it declares in its `capabilities` map. Empty lists and `None` are
/// not offered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub port_mappings: Vec<PortMapping>,
    pub dns: Option<DnsCap>,
    pub bandwidth: Option<Bandwidth>,
    /// Requested IPs as CIDRs (`10.1.2.3/24`).
    pub ips: Vec<String>,
}

/// One attachment of a pod to the network.
#[derive(Debug, Clone)]
pub struct Attachment<'a> {
    /// The pod (sandbox) id.
    pub container_id: &'a str,
    /// The pinned network namespace.
    pub netns: &'a Path,
    /// `eth0`.
    pub ifname: &'a str,
    /// CNI_ARGS: `IgnoreUnknown=1`, `K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
    /// `K8S_POD_INFRA_CONTAINER_ID`, `K8S_POD_UID`.
    pub args: Vec<(String, String)>,
    pub capabilities: Capabilities,
}

/// The CNI executor. Cheap to share (`&self` everywhere); calls for different
/// attachments may run concurrently, calls for the same one must not.
pub struct Cni {
    conf_dir: PathBuf,
    bin_dirs: Vec<PathBuf>,
    cache_dir: PathBuf,
    timeout: Duration,
    /// CNI_PATH.
    cni_path: String,
    loader: config::Loader,
}

/// What DEL and CHECK run with.
struct Plan {
    net: NetworkConfig,
    prev_result: Option<Value>,
    cap_args: Map<String, Value>,
    cni_args: String,
    cached_netns: Option<String>,
}

impl Cni {
    pub fn new(conf_dir: PathBuf, bin_dirs: Vec<PathBuf>, cache_dir: PathBuf) -> Cni {
        let cni_path = bin_dirs
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":");
        Cni {
            conf_dir,
            bin_dirs,
            cache_dir,
            timeout: DEFAULT_PLUGIN_TIMEOUT,
            cni_path,
            loader: config::Loader::default(),
        }
    }

    /// Sets the per-plugin-call timeout (default [`DEFAULT_PLUGIN_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Cni {
        self.timeout = timeout;
        self
    }

    pub fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }

    pub fn bin_dirs(&self) -> &[PathBuf] {
        &self.bin_dirs
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// The network config that would be used now, or why there is none (the
    /// NetworkReady condition): the lexically first `.conflist`/`.conf`/`.json`
    /// file of the conf dir, which must parse and whose plugins must all exist
    /// in the bin dirs. A broken first file is an error even if a later file is
    /// fine (containerd's behaviour). The file is re-read only when the
    /// directory or the file changed (mtime, size, inode); plugin binaries are
    /// looked up on every call.
    pub fn ready(&self) -> Result<NetworkConfig, Error> {
        let net = self.loader.load(&self.conf_dir)?;
        for plugin in &net.plugins {
            self.plugin_binary(&net, plugin)?;
        }
        Ok(net)
    }

    fn plugin_binary(&self, net: &NetworkConfig, plugin: &PluginConfig) -> Result<PathBuf, Error> {
        exec::find_plugin(&self.bin_dirs, &plugin.plugin_type).ok_or_else(|| Error::MissingPlugin {
            plugin: plugin.plugin_type.clone(),
            dirs: self.bin_dirs.clone(),
            config: net.file.clone(),
        })
    }

    async fn run_plugin(
        &self,
        net: &NetworkConfig,
        plugin: &PluginConfig,
        verb: Verb,
        env: &exec::Env<'_>,
        stdin: Vec<u8>,
    ) -> Result<Vec<u8>, Error> {
        let binary = self.plugin_binary(net, plugin)?;
        exec::run(&binary, &plugin.plugin_type, verb, env, stdin, self.timeout).await
    }

    /// ADD through the chain, each plugin getting the previous one's result as
    /// `prevResult`. The final result, with the exact config, CNI_ARGS and
    /// capability args used, is cached on disk before this returns. On failure
    /// the whole list is DELeted (reverse order, best effort) before the error
    /// is returned, so a failed ADD leaks nothing the plugins can clean up.
    pub async fn add(&self, a: &Attachment<'_>) -> Result<NetworkStatus, Error> {
        validate_ids(a.container_id, a.ifname)?;
        let netns = path_str("netns path", a.netns)?;
        if netns.is_empty() {
            return Err(Error::InvalidArgument {
                what: "netns path",
                value: String::new(),
                reason: "ADD needs the pod's network namespace",
            });
        }
        let started = Instant::now();
        let net = self.ready()?;
        let cap_args = config::capability_args(&a.capabilities);
        let cni_args = exec::cni_args_string(&a.args);
        let env = exec::Env {
            container_id: a.container_id,
            netns,
            ifname: a.ifname,
            args: &cni_args,
            path: &self.cni_path,
        };
        let mut prev: Option<Value> = None;
        for plugin in &net.plugins {
            let stdin = config::plugin_stdin(&net, plugin, prev.as_ref(), &cap_args, &[]);
            let step = match self.run_plugin(&net, plugin, Verb::Add, &env, stdin).await {
                Ok(out) => {
                    result::normalise(&out, &net.cni_version).map_err(|reason| Error::Plugin {
                        plugin: plugin.plugin_type.clone(),
                        verb: Verb::Add,
                        code: None,
                        msg: format!("unusable result ({reason}): {}", exec::quote(&out)),
                        details: String::new(),
                    })
                }
                Err(e) => Err(e),
            };
            match step {
                Ok(r) => prev = Some(r),
                Err(e) => {
                    self.undo_add(&net, &env, &cap_args).await;
                    return Err(e);
                }
            }
        }
        // A parsed config has at least one plugin.
        let result = prev.unwrap_or_else(|| json!({}));
        let entry = cache::Entry {
            kind: cache::KIND.into(),
            container_id: a.container_id.into(),
            if_name: a.ifname.into(),
            network_name: net.name.clone(),
            config_file: net.file.clone(),
            config: net.raw.clone(),
            netns: netns.into(),
            cni_args: a.args.clone(),
            capability_args: cap_args.clone(),
            result,
        };
        if let Err(e) = self.store(&entry).await {
            self.undo_add(&net, &env, &cap_args).await;
            return Err(e);
        }
        let status = result::network_status(&net.name, a.ifname, &entry.result);
        tracing::debug!(
            container_id = a.container_id,
            network = %net.name,
            ips = ?status.ips,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "CNI ADD done"
        );
        Ok(status)
    }

    async fn undo_add(
        &self,
        net: &NetworkConfig,
        env: &exec::Env<'_>,
        cap_args: &Map<String, Value>,
    ) {
        if let Err(e) = self.del_chain(net, env, None, cap_args).await {
            tracing::warn!(container_id = env.container_id, error = %e, "CNI DEL after a failed ADD failed too");
        }
    }

    async fn del_chain(
        &self,
        net: &NetworkConfig,
        env: &exec::Env<'_>,
        prev: Option<&Value>,
        cap_args: &Map<String, Value>,
    ) -> Result<(), Error> {
        for plugin in net.plugins.iter().rev() {
            let stdin = config::plugin_stdin(net, plugin, prev, cap_args, &[]);
            self.run_plugin(net, plugin, Verb::Del, env, stdin).await?;
        }
        Ok(())
    }

    async fn store(&self, entry: &cache::Entry) -> Result<(), Error> {
        let dir = self.cache_dir.clone();
        let name = cache::file_name(&entry.container_id, &entry.if_name);
        let path = dir.join(&name);
        let bytes = cache::encode(entry);
        tokio::task::spawn_blocking(move || cache::write_atomic(&dir, &name, &bytes))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
            .map_err(|e| Error::Io {
                what: "cannot write the CNI result cache".into(),
                path,
                source: Arc::new(e),
            })
    }

    /// The cache entry; a corrupt one is logged and treated as absent (as libcni).
    fn read_entry(&self, container_id: &str, ifname: &str) -> Result<Option<cache::Entry>, Error> {
        let path = cache::path(&self.cache_dir, container_id, ifname);
        let bytes = cache::read(&self.cache_dir, container_id, ifname).map_err(|e| Error::Io {
            what: "cannot read the CNI result cache".into(),
            path: path.clone(),
            source: Arc::new(e),
        })?;
        let Some(bytes) = bytes else { return Ok(None) };
        match cache::decode(&bytes) {
            Ok(e) if e.container_id == container_id && e.if_name == ifname => Ok(Some(e)),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "CNI result cache entry is for another attachment; ignored");
                Ok(None)
            }
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "corrupt CNI result cache entry ignored");
                Ok(None)
            }
        }
    }

    /// The config, prevResult and args of a cached attachment.
    fn cached_plan(&self, entry: cache::Entry) -> Result<Plan, Error> {
        let file = cache::path(&self.cache_dir, &entry.container_id, &entry.if_name);
        let net = config::parse_list(&file, entry.config).map_err(|e| match e {
            Error::InvalidConfig { file, reason } => Error::InvalidConfig {
                file,
                reason: format!(
                    "cached config (from {}): {reason}",
                    entry.config_file.display()
                ),
            },
            e => e,
        })?;
        // A cached prevResult goes to DEL/CHECK from 0.4.0 on (libcni).
        let prev_result = net.version_at_least("0.4.0").then_some(entry.result);
        Ok(Plan {
            net,
            prev_result,
            cap_args: entry.capability_args,
            cni_args: exec::cni_args_string(&entry.cni_args),
            cached_netns: Some(entry.netns),
        })
    }

    /// DEL in reverse plugin order. Uses the cached config, CNI_ARGS, capability
    /// args (so portmap gets the same `portMappings`) and result when there is a
    /// cache entry — after a restart, and whatever the conf dir holds now.
    /// Without one (an ADD that never finished) the current config is used
    /// without `prevResult`; with neither there is nothing to do: Ok. A netns
    /// path that no longer is a network namespace is passed as an empty
    /// CNI_NETNS. The cache entry is removed on success.
    pub async fn del(&self, a: &Attachment<'_>) -> Result<(), Error> {
        validate_ids(a.container_id, a.ifname)?;
        let entry = self.read_entry(a.container_id, a.ifname)?;
        let plan = match entry.map(|e| self.cached_plan(e)) {
            Some(Ok(plan)) => plan,
            cached => {
                if let Some(Err(e)) = cached {
                    tracing::warn!(container_id = a.container_id, error = %e, "unusable cached CNI config; using the current one");
                }
                match self.ready() {
                    Ok(net) => Plan {
                        net,
                        prev_result: None,
                        cap_args: config::capability_args(&a.capabilities),
                        cni_args: exec::cni_args_string(&a.args),
                        cached_netns: None,
                    },
                    Err(e) => {
                        tracing::debug!(container_id = a.container_id, reason = %e, "no CNI cache entry and no usable config: nothing to delete");
                        self.remove_entry(a.container_id, a.ifname)?;
                        return Ok(());
                    }
                }
            }
        };
        let netns = [a.netns.to_str(), plan.cached_netns.as_deref()]
            .into_iter()
            .flatten()
            .find(|p| is_netns(p))
            .unwrap_or("");
        let env = exec::Env {
            container_id: a.container_id,
            netns,
            ifname: a.ifname,
            args: &plan.cni_args,
            path: &self.cni_path,
        };
        let started = Instant::now();
        self.del_chain(&plan.net, &env, plan.prev_result.as_ref(), &plan.cap_args)
            .await?;
        self.remove_entry(a.container_id, a.ifname)?;
        tracing::debug!(
            container_id = a.container_id,
            network = %plan.net.name,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "CNI DEL done"
        );
        Ok(())
    }

    fn remove_entry(&self, container_id: &str, ifname: &str) -> Result<(), Error> {
        cache::remove(&self.cache_dir, container_id, ifname).map_err(|e| Error::Io {
            what: "cannot remove the CNI result cache entry".into(),
            path: cache::path(&self.cache_dir, container_id, ifname),
            source: Arc::new(e),
        })
    }

    /// CHECK through the chain with the cached config, args and result as
    /// `prevResult`. Ok without running anything when the cached config's
    /// cniVersion is below 0.4.0 (no CHECK there) or it sets `disableCheck`.
    /// [`Error::NotCached`] if the attachment has no cache entry.
    pub async fn check(&self, a: &Attachment<'_>) -> Result<(), Error> {
        validate_ids(a.container_id, a.ifname)?;
        let entry = self
            .read_entry(a.container_id, a.ifname)?
            .ok_or_else(|| Error::NotCached {
                container_id: a.container_id.into(),
                ifname: a.ifname.into(),
                cache_dir: self.cache_dir.clone(),
            })?;
        let plan = self.cached_plan(entry)?;
        if plan.prev_result.is_none() || plan.net.disable_check {
            tracing::debug!(container_id = a.container_id, version = %plan.net.cni_version, "CNI CHECK not applicable");
            return Ok(());
        }
        let env = exec::Env {
            container_id: a.container_id,
            netns: path_str("netns path", a.netns)?,
            ifname: a.ifname,
            args: &plan.cni_args,
            path: &self.cni_path,
        };
        for plugin in &plan.net.plugins {
            let stdin = config::plugin_stdin(
                &plan.net,
                plugin,
                plan.prev_result.as_ref(),
                &plan.cap_args,
                &[],
            );
            self.run_plugin(&plan.net, plugin, Verb::Check, &env, stdin)
                .await?;
        }
        Ok(())
    }

    /// STATUS (CNI 1.1) on every plugin of the current config, when its
    /// cniVersion is at least 1.1.0; otherwise Ok. Errors of [`Cni::ready`]
    /// come first.
    pub async fn status(&self) -> Result<(), Error> {
        let net = self.ready()?;
        if !net.version_at_least("1.1.0") {
            return Ok(());
        }
        let env = self.empty_env();
        for plugin in &net.plugins {
            let stdin = config::plugin_stdin(&net, plugin, None, &Map::new(), &[]);
            self.run_plugin(&net, plugin, Verb::Status, &env, stdin)
                .await?;
        }
        Ok(())
    }

    fn empty_env(&self) -> exec::Env<'_> {
        exec::Env {
            container_id: "",
            netns: "",
            ifname: "",
            args: "",
            path: &self.cni_path,
        }
    }

    /// GC (CNI 1.1, like libcni's `GCNetworkList`): every cached attachment not
    /// in `keep` (container id, ifname) is DELeted with its cached config; then,
    /// if the current config is at least 1.1.0, each of its plugins gets GC with
    /// `cni.dev/valid-attachments` = `keep`. Nothing happens when the current
    /// config sets `disableGC`. All stale attachments are tried; the first error
    /// is returned.
    pub async fn gc(&self, keep: &[(String, String)]) -> Result<(), Error> {
        let current = self.ready().ok();
        if current.as_ref().is_some_and(|n| n.disable_gc) {
            return Ok(());
        }
        let cached = cache::list(&self.cache_dir).map_err(|e| Error::Io {
            what: "cannot list the CNI result cache".into(),
            path: self.cache_dir.clone(),
            source: Arc::new(e),
        })?;
        let mut first_err = None;
        for (container_id, ifname) in cached {
            if keep.iter().any(|(c, i)| *c == container_id && *i == ifname) {
                continue;
            }
            let a = Attachment {
                container_id: &container_id,
                netns: Path::new(""),
                ifname: &ifname,
                args: Vec::new(),
                capabilities: Capabilities::default(),
            };
            tracing::info!(container_id, ifname, "CNI GC: deleting a stale attachment");
            if let Err(e) = self.del(&a).await {
                tracing::warn!(container_id, ifname, error = %e, "CNI GC: DEL of a stale attachment failed");
                first_err.get_or_insert(e);
            }
        }
        if let Some(net) = current.filter(|n| n.version_at_least("1.1.0")) {
            let valid = Value::Array(
                keep.iter()
                    .map(|(c, i)| json!({"containerID": c, "ifname": i}))
                    .collect(),
            );
            // The spec's key, and the one libcni also sends (spec erratum #1101).
            let extra = [
                ("cni.dev/valid-attachments", valid.clone()),
                ("cni.dev/attachments", valid),
            ];
            let env = self.empty_env();
            for plugin in &net.plugins {
                let stdin = config::plugin_stdin(&net, plugin, None, &Map::new(), &extra);
                if let Err(e) = self.run_plugin(&net, plugin, Verb::Gc, &env, stdin).await {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The cached status of an attachment (for recovery after a restart).
    pub fn cached(&self, container_id: &str, ifname: &str) -> Option<NetworkStatus> {
        validate_ids(container_id, ifname).ok()?;
        let entry = self.read_entry(container_id, ifname).ok()??;
        Some(result::network_status(
            &entry.network_name,
            &entry.if_name,
            &entry.result,
        ))
    }
}

fn path_str<'a>(what: &'static str, p: &'a Path) -> Result<&'a str, Error> {
    p.to_str().ok_or_else(|| Error::InvalidArgument {
        what,
        value: p.to_string_lossy().into_owned(),
        reason: "not UTF-8",
    })
}

/// Whether `path` is (a bind mount of) a network namespace file.
fn is_netns(path: &str) -> bool {
    !path.is_empty()
        && nix::sys::statfs::statfs(path)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// libcni's checks: container id as a network name, ifname as Linux allows.
fn validate_ids(container_id: &str, ifname: &str) -> Result<(), Error> {
    if !config::valid_name(container_id) {
        return Err(Error::InvalidArgument {
            what: "container id",
            value: container_id.into(),
            reason: "must be letters, digits, '_', '.' or '-', starting with a letter or digit",
        });
    }
    if ifname.is_empty()
        || ifname.len() > 15
        || ifname == "."
        || ifname == ".."
        || ifname
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(Error::InvalidArgument {
            what: "interface name",
            value: ifname.into(),
            reason: "must be 1 to 15 bytes without '/', ':' or whitespace, and not '.' or '..'",
        });
    }
    Ok(())
}
