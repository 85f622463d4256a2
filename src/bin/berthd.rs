//! berthd: the CRI daemon. Flags, config, logging, the socket, then serve until signalled.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Parser;
use nix::fcntl::{Flock, FlockArg};
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};

use berth::config::{self, Config, LogFormat};
use berth::container::ContainerService;
use berth::cri::{self, Cri};
use berth::image::ImageService;
use berth::sandbox::SandboxService;
use berth::store::Db;
use berth::streaming::StreamServer;

#[derive(Parser, Debug)]
#[command(
    name = "berthd",
    version,
    about = "berth: a Kubernetes CRI container runtime"
)]
struct Flags {
    /// Config file (TOML). Missing is fine at the default path.
    #[arg(long, short = 'c', default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Persistent data directory (overrides `root`).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Runtime state directory (overrides `state_dir`).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// CRI socket path (overrides `socket`).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Log filter, e.g. `debug` or `berth=debug,info` (overrides `log_level`; RUST_LOG wins).
    #[arg(long)]
    log_level: Option<String>,
    /// `text` or `json` (overrides `log_format`).
    #[arg(long)]
    log_format: Option<String>,
}

fn load_config(flags: &Flags) -> Result<Config> {
    let explicit = flags.config != Path::new(config::DEFAULT_CONFIG_PATH);
    let mut cfg = Config::load(&flags.config, explicit)?;
    if let Some(r) = &flags.root {
        cfg.root = r.clone();
    }
    if let Some(s) = &flags.state_dir {
        cfg.state_dir = s.clone();
    }
    if let Some(s) = &flags.socket {
        cfg.socket = s.clone();
    }
    if let Some(l) = &flags.log_level {
        cfg.log_level = l.clone();
    }
    if let Some(f) = &flags.log_format {
        cfg.log_format = match f.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => bail!("--log-format: expected text or json, got {other:?}"),
        };
    }
    Ok(cfg)
}

fn init_tracing(cfg: &Config) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    // A bare level applies to berth; libraries (h2, hyper, …) stay at warn.
    let level = &cfg.log_level;
    let directive = if level.contains('=') || level.contains(',') {
        level.clone()
    } else {
        format!("warn,berth={level},berthd={level}")
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v),
        _ => EnvFilter::try_new(directive),
    }
    .context("invalid log filter")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
    Ok(())
}

/// Holds an exclusive lock on `<root>/berthd.lock` for the daemon's life: a second
/// daemon on the same root would corrupt its state.
fn lock_root(root: &Path) -> Result<Flock<std::fs::File>> {
    let path = root.join("berthd.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(l),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => bail!(
            "another berthd is already running on root {} (lock {} is held)",
            root.display(),
            path.display()
        ),
        Err((_, e)) => bail!("cannot lock {}: {e}", path.display()),
    }
}

fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // We hold the root lock, so a socket file here is a stale one from a dead daemon.
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e)
                .with_context(|| format!("cannot remove stale socket {}", path.display()));
        }
        _ => {}
    }
    // Bound under a temporary name, made 0660, then renamed: the socket never appears with
    // other permissions (a client waiting for the file cannot see it half made).
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let l = UnixListener::bind(&tmp).with_context(|| format!("cannot bind {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;
    Ok(l)
}

async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = which, "shutting down");
}

fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    let cfg = match load_config(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berthd: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Err(e) = init_tracing(&cfg) {
        eprintln!("berthd: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    match start(cfg) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn start(cfg: Config) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("berthd")
        .build()?;
    rt.block_on(run(cfg))
}

async fn run(cfg: Config) -> Result<()> {
    for dir in [&cfg.root, &cfg.state_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let _lock = lock_root(&cfg.root)?;
    let db = Arc::new(Db::open(&cfg.db_path()).context("cannot open the metadata store")?);
    let images = ImageService::open(&cfg, db.clone()).map_err(anyhow::Error::msg)?;
    let sandboxes = SandboxService::open(&cfg, db.clone()).map_err(anyhow::Error::msg)?;
    sandboxes
        .recover()
        .await
        .context("cannot recover pod sandboxes")?;
    let containers = ContainerService::open(&cfg, db.clone(), images.clone(), sandboxes.clone())
        .map_err(anyhow::Error::msg)?;
    containers
        .recover()
        .await
        .context("cannot recover containers")?;
    let stream_addr = cfg.stream_socket_addr()?;
    let stream_listener = tokio::net::TcpListener::bind(stream_addr)
        .await
        .with_context(|| format!("cannot bind the streaming server to {stream_addr}"))?;
    let streaming = StreamServer::new(
        stream_listener.local_addr()?,
        containers.clone(),
        sandboxes.clone(),
    );
    let listener = bind_socket(&cfg.socket)?;
    let socket = cfg.socket.clone();
    tracing::info!(
        socket = %socket.display(),
        root = %cfg.root.display(),
        streaming = %stream_listener.local_addr()?,
        version = env!("CARGO_PKG_VERSION"),
        "berthd serving the CRI"
    );
    tokio::spawn(streaming.clone().serve(stream_listener));
    let cri = Arc::new(Cri {
        config: Arc::new(cfg),
        images,
        sandboxes,
        containers,
        streaming,
    });
    cri::serve(listener, cri::routes(cri), shutdown_signal()).await;
    let _ = std::fs::remove_file(&socket);
    tracing::info!("stopped");
    Ok(())
}
