//! Container logs in the CRI format, as kubelet and `crictl logs` read them:
//!
//! ```text
//! <RFC3339Nano UTC time> <stdout|stderr> <F|P> <content>\n
//! ```
//!
//! The rules are containerd's (`internal/cri/io/logger.go`): a line ending in `\n` (or
//! `\r\n`, both dropped) is written with tag `F`; a line longer than [`MAX_LINE`] bytes is
//! cut into `P` (partial) records of exactly [`MAX_LINE`] bytes followed by an `F` record
//! with the rest; a last line without a newline at end of stream is written as `P`. An
//! empty line is an `F` record with empty content. A terminal's output goes through the
//! same rules as stdout, which turns its `\r\n` into `\n`.
//!
//! [`LineSplitter`] is the pure part (bytes in, log records out); [`LogFile`] is the file.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest content of one record; longer lines are split (kubelet's and containerd's
/// default `max_container_log_line_size`).
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The unfinished last line of one stream between reads.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Appends to `out` the records for `data`, read from `stream` at time `ts` (see
    /// [`timestamp`]). With `eof`, what is left of an unfinished line goes out as `P`.
    pub fn push(&mut self, stream: Stream, ts: &str, data: &[u8], eof: bool, out: &mut Vec<u8>) {
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let segment = &rest[..nl];
            rest = &rest[nl + 1..];
            if self.pending.is_empty() {
                full_line(stream, ts, segment, out);
            } else {
                self.pending.extend_from_slice(segment);
                full_line(stream, ts, &self.pending, out);
                self.pending.clear();
            }
        }
        if !rest.is_empty() {
            self.pending.extend_from_slice(rest);
        }
        // Cut what cannot be a line of MAX_LINE any more. A trailing '\r' is held back: it
        // is dropped if a '\n' follows.
        let held = usize::from(self.pending.last() == Some(&b'\r'));
        let mut start = 0;
        while self.pending.len() - start - held > MAX_LINE {
            record(
                stream,
                ts,
                b'P',
                &self.pending[start..start + MAX_LINE],
                out,
            );
            start += MAX_LINE;
        }
        if start > 0 {
            self.pending.drain(..start);
        }
        if eof && !self.pending.is_empty() {
            record(stream, ts, b'P', &self.pending, out);
            self.pending.clear();
        }
        if self.pending.is_empty() && self.pending.capacity() > MAX_LINE * 2 {
            self.pending = Vec::new();
        }
    }

    /// Whether an unfinished line waits for more bytes.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// A whole line (without its `\n`): `P` records while more than [`MAX_LINE`] is left, then
/// `F` with the rest.
fn full_line(stream: Stream, ts: &str, line: &[u8], out: &mut Vec<u8>) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut rest = line;
    while rest.len() > MAX_LINE {
        record(stream, ts, b'P', &rest[..MAX_LINE], out);
        rest = &rest[MAX_LINE..];
    }
    record(stream, ts, b'F', rest, out);
}

fn record(stream: Stream, ts: &str, tag: u8, content: &[u8], out: &mut Vec<u8>) {
    out.reserve(ts.len() + content.len() + 12);
    out.extend_from_slice(ts.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.name().as_bytes());
    out.push(b' ');
    out.push(tag);
    out.push(b' ');
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// `t` as RFC 3339 in UTC with nanoseconds, always nine digits (kubelet parses it with
/// Go's `time.RFC3339Nano`, which accepts any number of fraction digits).
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = super::server::civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// A container's log file, opened for appending. Write errors are counted, not fatal:
/// the container's output is drained whatever happens to the file.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Option<File>,
    /// Write errors since the file was (re)opened; the first is logged by the caller.
    pub errors: u64,
}

impl LogFile {
    /// Opens (creates) `path` for appending, with its directory.
    pub fn open(path: &Path) -> io::Result<LogFile> {
        let file = open_append(path)?;
        Ok(LogFile {
            path: path.to_path_buf(),
            file: Some(file),
            errors: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the file and opens `path` again (kubelet renamed it to rotate it).
    pub fn reopen(&mut self) -> io::Result<()> {
        self.file = None;
        self.file = Some(open_append(&self.path)?);
        self.errors = 0;
        Ok(())
    }

    /// Appends `bytes`; returns the error of a failed write.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        f.write_all(bytes).inspect_err(|_| self.errors += 1)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: &str = "2024-01-02T03:04:05.000000006Z";

    fn split(chunks: &[&[u8]], eof: bool) -> String {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            s.push(
                Stream::Stdout,
                TS,
                c,
                eof && i == chunks.len() - 1,
                &mut out,
            );
        }
        String::from_utf8(out).unwrap()
    }

    fn rec(tag: &str, content: &str) -> String {
        format!("{TS} stdout {tag} {content}\n")
    }

    #[test]
    fn whole_lines() {
        assert_eq!(split(&[b"a\nbb\n"], false), rec("F", "a") + &rec("F", "bb"));
        assert_eq!(split(&[b"\n"], false), rec("F", ""));
        assert_eq!(split(&[b""], false), "");
        assert_eq!(split(&[b""], true), "");
    }

    #[test]
    fn lines_across_reads() {
        assert_eq!(split(&[b"he", b"llo\nwo", b"rld\n"], false), {
            rec("F", "hello") + &rec("F", "world")
        });
        // Unfinished: nothing yet.
        assert_eq!(split(&[b"abc"], false), "");
    }

    #[test]
    fn crlf_is_dropped_even_across_reads() {
        assert_eq!(split(&[b"a\r\nb\r", b"\n"], false), {
            rec("F", "a") + &rec("F", "b")
        });
        // A lone '\r' inside a line stays.
        assert_eq!(split(&[b"a\rb\n"], false), rec("F", "a\rb"));
    }

    #[test]
    fn tail_at_eof_is_partial() {
        assert_eq!(
            split(&[b"x\nno newline"], true),
            rec("F", "x") + &rec("P", "no newline")
        );
        assert_eq!(split(&[b"abc", b""], true), rec("P", "abc"));
    }

    #[test]
    fn long_lines_are_cut() {
        let long = "a".repeat(MAX_LINE);
        // Exactly MAX_LINE: one F.
        assert_eq!(
            split(&[format!("{long}\n").as_bytes()], false),
            rec("F", &long)
        );
        // One more byte: P of MAX_LINE, then F of the rest.
        assert_eq!(
            split(&[format!("{long}b\n").as_bytes()], false),
            rec("P", &long) + &rec("F", "b")
        );
        // Twice MAX_LINE: P, then F of MAX_LINE.
        assert_eq!(
            split(&[format!("{long}{long}\n").as_bytes()], false),
            rec("P", &long) + &rec("F", &long)
        );
        // Cut before the newline arrives, a byte at a time.
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        let data = format!("{long}xyz\n");
        for b in data.as_bytes() {
            s.push(Stream::Stdout, TS, std::slice::from_ref(b), false, &mut out);
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            rec("P", &long) + &rec("F", "xyz")
        );
        // A '\r' right after MAX_LINE bytes waits for its '\n'.
        assert_eq!(
            split(&[format!("{long}\r").as_bytes(), b"\n"], false),
            rec("F", &long)
        );
        // MAX_LINE + 1 without newline at EOF: P, P.
        assert_eq!(
            split(&[format!("{long}z").as_bytes()], true),
            rec("P", &long) + &rec("P", "z")
        );
    }

    #[test]
    fn stderr_and_timestamps() {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        s.push(Stream::Stderr, TS, b"oops\n", false, &mut out);
        assert_eq!(out, format!("{TS} stderr F oops\n").as_bytes());
        assert!(!s.has_pending());

        let t = UNIX_EPOCH + std::time::Duration::new(1_704_164_645, 6);
        assert_eq!(timestamp(t), TS);
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn log_file_appends_and_reopens() {
        let dir = std::env::temp_dir().join(format!("berth-logs-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/0.log");
        let mut f = LogFile::open(&path).unwrap();
        f.write(b"one\n").unwrap();
        std::fs::rename(&path, dir.join("sub/0.log.1")).unwrap();
        f.write(b"two\n").unwrap();
        f.reopen().unwrap();
        f.write(b"three\n").unwrap();
        assert_eq!(
            std::fs::read(dir.join("sub/0.log.1")).unwrap(),
            b"one\ntwo\n"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"three\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
