//! berthd's TOML configuration (`/etc/berth/berth.toml`). Every path is configurable, every
//! key has a default, and an unknown key is an error that names it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/berth.toml";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Persistent data: metadata DB, unpacked layers, container upper dirs.
    pub root: PathBuf,
    /// Runtime state that does not survive a reboot: pod namespaces, shim sockets.
    pub state_dir: PathBuf,
    /// The CRI socket kubelet and crictl connect to.
    pub socket: PathBuf,
    /// `tracing` filter directive, e.g. `info` or `berth=debug,info`.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Reported by the `RuntimeConfig` RPC; kubelet must use the same driver.
    pub cgroup_driver: CgroupDriver,
    /// The per-pod shim binary; by default `berth-shim` next to berthd.
    pub shim_path: Option<PathBuf>,
    /// `IP:PORT` of the streaming server behind Exec, Attach and PortForward URLs; port 0
    /// picks a free one (the URLs carry the real port).
    pub stream_address: String,
    /// CDI spec directories, in increasing priority (a device defined in a later one
    /// overrides an earlier one's).
    pub cdi_spec_dirs: Vec<PathBuf>,
    pub cni: CniConfig,
    pub registry: RegistryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/var/lib/berth"),
            state_dir: PathBuf::from("/run/berth"),
            socket: PathBuf::from("/run/berth/berth.sock"),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            cgroup_driver: CgroupDriver::Cgroupfs,
            shim_path: None,
            stream_address: "127.0.0.1:0".into(),
            cdi_spec_dirs: vec![PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")],
            cni: CniConfig::default(),
            registry: RegistryConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    /// Directory of `.conflist` files; the first in lexical order is used.
    pub conf_dir: PathBuf,
    /// Directories searched for plugin binaries, in order.
    pub bin_dirs: Vec<PathBuf>,
}

impl Default for CniConfig {
    fn default() -> Self {
        Self {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Per registry host (`docker.io`, `registry.k8s.io`, `127.0.0.1:5000`, …).
    pub hosts: BTreeMap<String, RegistryHost>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryHost {
    /// Mirrors tried in order before the registry itself, as `http://host:port` or
    /// `https://host:port`; the repository path is kept.
    pub mirrors: Vec<String>,
    /// Speak plain HTTP to this host.
    pub plain_http: bool,
    /// Accept any TLS certificate from this host.
    pub insecure_skip_verify: bool,
    /// Credentials for this host when the CRI request carries none.
    pub username: Option<String>,
    pub password: Option<String>,
}

/// A registry endpoint to try: host[:port] and whether it speaks plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub plain_http: bool,
}

impl RegistryConfig {
    /// Endpoints to try for `registry`, mirrors first, the registry itself last.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mut out = Vec::new();
        let cfg = self.hosts.get(registry);
        if let Some(cfg) = cfg {
            for m in &cfg.mirrors {
                if let Ok(ep) = parse_mirror(m) {
                    let plain = ep.plain_http || self.host(&ep.host).is_some_and(|h| h.plain_http);
                    out.push(Endpoint {
                        plain_http: plain,
                        ..ep
                    });
                }
            }
        }
        out.push(Endpoint {
            host: registry.to_string(),
            plain_http: cfg.is_some_and(|c| c.plain_http),
        });
        out
    }

    pub fn host(&self, host: &str) -> Option<&RegistryHost> {
        self.hosts.get(host)
    }

    fn validate(&self) -> Result<(), Error> {
        for (host, cfg) in &self.hosts {
            for m in &cfg.mirrors {
                parse_mirror(m).map_err(|e| {
                    Error::Invalid(format!("registry.hosts.\"{host}\".mirrors: {m:?}: {e}"))
                })?;
            }
        }
        Ok(())
    }
}

fn parse_mirror(m: &str) -> Result<Endpoint, &'static str> {
    let (plain_http, rest) = if let Some(r) = m.strip_prefix("http://") {
        (true, r)
    } else if let Some(r) = m.strip_prefix("https://") {
        (false, r)
    } else {
        (false, m)
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() {
        return Err("empty host");
    }
    if host.contains('/') {
        return Err("a mirror is a host[:port]; path prefixes are not supported");
    }
    Ok(Endpoint {
        host: host.to_string(),
        plain_http,
    })
}

impl Config {
    /// Reads `path`. A missing file at the default path means all defaults; a missing
    /// file that was asked for explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Config::default());
            }
            Err(source) => {
                return Err(Error::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Self::parse(&text).map_err(|e| match e {
            Error::Parse { message, .. } => Error::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, Error> {
        let cfg: Config = toml::from_str(text).map_err(|e| Error::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        cfg.registry.validate()?;
        cfg.stream_socket_addr()?;
        Ok(cfg)
    }

    /// `stream_address` parsed.
    pub fn stream_socket_addr(&self) -> Result<std::net::SocketAddr, Error> {
        self.stream_address.parse().map_err(|_| {
            Error::Invalid(format!(
                "stream_address: {:?} is not IP:PORT (e.g. \"127.0.0.1:0\" or \"[::1]:10010\")",
                self.stream_address
            ))
        })
    }

    pub fn db_path(&self) -> PathBuf {
        self.root.join("meta.redb")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_empty() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.socket, PathBuf::from("/run/berth/berth.sock"));
        assert_eq!(c.cgroup_driver, CgroupDriver::Cgroupfs);
        assert_eq!(
            c.cdi_spec_dirs,
            vec![PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")]
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("root = \"/x\"\nbogus_key = 1\n").unwrap_err();
        assert!(err.to_string().contains("bogus_key"), "{err}");
        let err = Config::parse("[registry.hosts.\"docker.io\"]\nmirror = []\n").unwrap_err();
        assert!(err.to_string().contains("mirror"), "{err}");
    }

    #[test]
    fn mirrors_come_first_and_keep_scheme() {
        let c = Config::parse(
            r#"
            [registry.hosts."docker.io"]
            mirrors = ["http://127.0.0.1:5000", "https://mirror.example"]
            "#,
        )
        .unwrap();
        let eps = c.registry.endpoints("docker.io");
        assert_eq!(
            eps,
            vec![
                Endpoint {
                    host: "127.0.0.1:5000".into(),
                    plain_http: true
                },
                Endpoint {
                    host: "mirror.example".into(),
                    plain_http: false
                },
                Endpoint {
                    host: "docker.io".into(),
                    plain_http: false
                },
            ]
        );
        assert_eq!(c.registry.endpoints("quay.io").len(), 1);
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let c = Config::parse(include_str!("../config/berth.toml")).unwrap();
        assert_eq!(c.root, PathBuf::from("/var/lib/berth"));
    }

    #[test]
    fn stream_address_is_ip_and_port() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.stream_socket_addr().unwrap().to_string(), "127.0.0.1:0");
        let c = Config::parse("stream_address = \"[::1]:10010\"").unwrap();
        assert_eq!(c.stream_socket_addr().unwrap().port(), 10010);
        let err = Config::parse("stream_address = \"localhost\"").unwrap_err();
        assert!(err.to_string().contains("stream_address"), "{err}");
    }

    #[test]
    fn mirror_with_path_is_rejected() {
        let err =
            Config::parse("[registry.hosts.\"docker.io\"]\nmirrors = [\"http://h:1/prefix\"]\n")
                .unwrap_err();
        assert!(err.to_string().contains("path prefixes"), "{err}");
    }
}
