//! Running one CNI plugin: finding its binary, the `CNI_*` environment, its
//! stdin/stdout, the timeout (the plugin's whole process group is killed), and
//! turning a failure into an [`Error`] (the spec's error JSON on stdout).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};

use super::{Error, Verb};

/// The `CNI_*` variables of one call (libcni `invoke.Args`).
pub(super) struct Env<'a> {
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    /// `CNI_ARGS`, already joined.
    pub args: &'a str,
    /// `CNI_PATH`: the bin dirs joined by `:`.
    pub path: &'a str,
}

/// `CNI_ARGS`: `K=V;K=V` (libcni `stringify`, no escaping).
pub(super) fn cni_args_string(args: &[(String, String)]) -> String {
    args.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// The first `dir/<plugin_type>` that is an executable file (libcni `FindInPath`).
pub(super) fn find_plugin(bin_dirs: &[PathBuf], plugin_type: &str) -> Option<PathBuf> {
    bin_dirs
        .iter()
        .map(|d| d.join(plugin_type))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Some bytes for a message: trimmed, lossy UTF-8, at most 512 characters, quoted.
pub(super) fn quote(bytes: &[u8]) -> String {
    const MAX: usize = 512;
    let s = String::from_utf8_lossy(bytes.trim_ascii());
    if s.chars().count() > MAX {
        format!("{:?}…", s.chars().take(MAX).collect::<String>())
    } else {
        format!("{s:?}")
    }
}

/// The spec's error object.
#[derive(Deserialize)]
struct PluginError {
    code: Option<u32>,
    msg: Option<String>,
    details: Option<String>,
}

/// The error of a plugin that exited unsuccessfully (`status` describes how).
pub(super) fn failure(
    plugin: &str,
    verb: Verb,
    status: &str,
    stdout: &[u8],
    stderr: &[u8],
) -> Error {
    let out = stdout.trim_ascii();
    if let Ok(e) = serde_json::from_slice::<PluginError>(out)
        && (e.code.is_some() || e.msg.is_some())
    {
        return Error::Plugin {
            plugin: plugin.into(),
            verb,
            code: e.code,
            msg: e.msg.unwrap_or_default(),
            details: e.details.unwrap_or_default(),
        };
    }
    let msg = if !out.is_empty() {
        format!("{status}, printing {}", quote(out))
    } else if !stderr.trim_ascii().is_empty() {
        format!("{status}, stderr {}", quote(stderr))
    } else {
        format!("{status} without an error message")
    };
    Error::Plugin {
        plugin: plugin.into(),
        verb,
        code: None,
        msg,
        details: String::new(),
    }
}

async fn read_all<R: AsyncRead + Unpin>(r: Option<R>) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(mut r) = r {
        r.read_to_end(&mut buf).await?;
    }
    Ok(buf)
}

async fn write_all(w: Option<ChildStdin>, data: Vec<u8>) -> io::Result<()> {
    let Some(mut w) = w else { return Ok(()) };
    match w.write_all(&data).await {
        // The plugin need not read its stdin.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
    // Dropping `w` closes the plugin's stdin.
}

/// Spawns, retrying briefly on ETXTBSY (a binary being installed right now, or
/// written by a thread of ours while another one forked).
async fn spawn(cmd: &mut Command) -> io::Result<Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 10 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            r => return r,
        }
    }
}

/// Runs `binary` for `verb` with `stdin`; its stdout on success.
pub(super) async fn run(
    binary: &Path,
    plugin: &str,
    verb: Verb,
    env: &Env<'_>,
    stdin: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, Error> {
    let io_err = |what: &str, e: io::Error| Error::Io {
        what: format!("{what} CNI plugin {plugin:?} for {verb}"),
        path: binary.to_path_buf(),
        source: Arc::new(e),
    };
    let mut cmd = Command::new(binary);
    cmd.env("CNI_COMMAND", verb.as_str())
        .env("CNI_CONTAINERID", env.container_id)
        .env("CNI_NETNS", env.netns)
        .env("CNI_ARGS", env.args)
        .env("CNI_IFNAME", env.ifname)
        .env("CNI_PATH", env.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills whatever it started too.
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = spawn(&mut cmd)
        .await
        .map_err(|e| io_err("cannot execute", e))?;
    let pid = child.id();
    let (cin, cout, cerr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let outcome = tokio::time::timeout(timeout, async {
        let (w, out, err, status) = tokio::join!(
            write_all(cin, stdin),
            read_all(cout),
            read_all(cerr),
            child.wait()
        );
        w?;
        Ok::<_, io::Error>((status?, out?, err?))
    })
    .await;
    let (status, stdout, stderr) = match outcome {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(io_err("cannot talk to", e));
        }
        Err(_elapsed) => {
            if let Some(pgid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
            tracing::warn!(plugin, %verb, container_id = env.container_id, ?timeout, "CNI plugin timed out and was killed");
            return Err(Error::Timeout {
                plugin: plugin.into(),
                verb,
                timeout,
            });
        }
    };
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    if !stderr.trim_ascii().is_empty() {
        tracing::debug!(plugin, %verb, stderr = %String::from_utf8_lossy(&stderr), "CNI plugin stderr");
    }
    tracing::debug!(plugin, %verb, container_id = env.container_id, %status, elapsed_ms, "CNI plugin ran");
    if status.success() {
        Ok(stdout)
    } else {
        Err(failure(plugin, verb, &status.to_string(), &stdout, &stderr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_table() {
        let kv = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let cases = [
            (kv(&[]), ""),
            (kv(&[("IgnoreUnknown", "1")]), "IgnoreUnknown=1"),
            (
                kv(&[
                    ("IgnoreUnknown", "1"),
                    ("K8S_POD_NAMESPACE", "default"),
                    ("K8S_POD_NAME", "web-0"),
                    ("K8S_POD_INFRA_CONTAINER_ID", "abc"),
                    ("K8S_POD_UID", "1-2-3"),
                ]),
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1-2-3",
            ),
            (kv(&[("K", "")]), "K="),
        ];
        for (args, want) in cases {
            assert_eq!(cni_args_string(&args), want);
        }
    }

    #[test]
    fn failure_table() {
        let long = "x".repeat(2000);
        // (stdout, stderr, code, msg part, details)
        let cases: Vec<(&str, &str, Option<u32>, &str, &str)> = vec![
            (
                r#"{"cniVersion":"1.0.0","code":11,"msg":"no IP addresses available","details":"range is full"}"#,
                "",
                Some(11),
                "no IP addresses available",
                "range is full",
            ),
            (
                r#"{"code":7,"msg":"bad config"}"#,
                "ignored",
                Some(7),
                "bad config",
                "",
            ),
            (
                r#"{"msg":"only a message"}"#,
                "",
                None,
                "only a message",
                "",
            ),
            (
                "panic: runtime error\ngoroutine 1",
                "",
                None,
                "exit status: 2, printing \"panic: runtime error\\ngoroutine 1\"",
                "",
            ),
            (
                r#"{"unrelated":true}"#,
                "",
                None,
                "printing \"{\\\"unrelated\\\":true}\"",
                "",
            ),
            (
                "",
                "  something on stderr\n",
                None,
                "exit status: 2, stderr \"something on stderr\"",
                "",
            ),
            ("", "", None, "exit status: 2 without an error message", ""),
            (&long, "", None, "…", ""),
        ];
        for (out, err, code, msg, details) in cases {
            match failure(
                "bridge",
                Verb::Add,
                "exit status: 2",
                out.as_bytes(),
                err.as_bytes(),
            ) {
                Error::Plugin {
                    plugin,
                    verb,
                    code: c,
                    msg: m,
                    details: d,
                } => {
                    assert_eq!(plugin, "bridge");
                    assert_eq!(verb, Verb::Add);
                    assert_eq!(c, code, "{out}");
                    assert!(m.contains(msg), "{out}: {m:?} lacks {msg:?}");
                    assert!(m.len() < 600, "truncated");
                    assert_eq!(d, details);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn quote_truncates() {
        assert_eq!(quote(b" a\"b \n"), "\"a\\\"b\"");
        let q = quote("é".repeat(600).as_bytes());
        assert_eq!(q.chars().filter(|c| *c == 'é').count(), 512);
        assert!(q.ends_with('…'));
    }
}
