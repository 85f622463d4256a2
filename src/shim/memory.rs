//! Keeping the shim's resident memory small between requests (DESIGN.md: per-pod shim
//! RSS target).
//!
//! Creating a container or an exec runs a lot of libcontainer's code in the shim (spec
//! parsing, state files, cgroups, clone): megabytes of the binary's text that the kernel
//! keeps mapped in the shim's page tables, counted in its RSS, long after the request.
//! [`trim`] gives back what the shim does not use between requests:
//!
//! - freed heap memory, with `malloc_trim`;
//! - the pages of read-only file mappings (the binary's and libc's code and constants)
//!   that hold no private copy: `MADV_DONTNEED` drops them from this process's page
//!   tables only; they stay in the page cache, and what runs next faults them back in
//!   (minor faults). Mappings that are writable or hold any anonymous (copied-on-write)
//!   page, such as RELRO after relocation, are never touched: dropping those would lose
//!   data.
//!
//! The server calls it once the loop has been idle for a moment after container work.

/// One mapping of /proc/self/smaps.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    /// Read-only, private, backed by a file.
    candidate: bool,
    rss_kb: u64,
    anonymous_kb: u64,
}

impl Mapping {
    fn droppable(&self) -> bool {
        self.candidate && self.rss_kb > 0 && self.anonymous_kb == 0
    }
}

/// A header line: `start-end perms offset dev inode [path]`.
fn parse_header(line: &str) -> Option<Mapping> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?.as_bytes();
    if perms.len() != 4 {
        return None;
    }
    let (_offset, _dev, _inode) = (fields.next()?, fields.next()?, fields.next()?);
    let path = fields.next().unwrap_or("");
    Some(Mapping {
        start,
        end,
        candidate: perms[0] == b'r'
            && perms[1] == b'-'
            && perms[3] == b'p'
            && path.starts_with('/'),
        rss_kb: 0,
        anonymous_kb: 0,
    })
}

fn kb(value: &str) -> u64 {
    value
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or(u64::MAX)
}

/// The mappings that can be dropped, from the text of /proc/self/smaps.
fn droppable(smaps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut cur: Option<Mapping> = None;
    for line in smaps.lines() {
        if let Some(m) = parse_header(line) {
            if let Some(prev) = cur.take().filter(Mapping::droppable) {
                out.push((prev.start, prev.end));
            }
            cur = Some(m);
        } else if let Some(m) = cur.as_mut() {
            if let Some(v) = line.strip_prefix("Rss:") {
                m.rss_kb = kb(v);
            } else if let Some(v) = line.strip_prefix("Anonymous:") {
                m.anonymous_kb = kb(v);
            }
        }
    }
    if let Some(prev) = cur.filter(Mapping::droppable) {
        out.push((prev.start, prev.end));
    }
    out
}

/// Returns freed heap memory (every malloc arena) to the kernel. berthd calls it after a
/// pod is removed: without it the heap of hundreds of pods stays resident after they go.
#[allow(unsafe_code)]
pub fn release_free_heap() {
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe { libc::malloc_trim(0) };
}

/// Gives back freed heap and the resident pages of clean read-only file mappings.
#[allow(unsafe_code)]
pub fn trim() {
    release_free_heap();
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for (start, end) in droppable(&smaps) {
        // SAFETY: the range is a whole private, read-only file mapping with no anonymous
        // page: every page of it equals the file's, so dropping it from the page tables
        // changes no byte the process can read (the next access reads the page cache).
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r--p 00000000 08:01 42                         /usr/bin/berth-shim
Size:               1024 kB
Rss:                 468 kB
Anonymous:             0 kB
55d0c0100000-55d0c0500000 r-xp 00100000 08:01 42                         /usr/bin/berth-shim
Size:               4096 kB
Rss:                3072 kB
Anonymous:             0 kB
55d0c0500000-55d0c0520000 r--p 00500000 08:01 42                         /usr/bin/berth-shim
Rss:                 128 kB
Anonymous:           128 kB
55d0c0520000-55d0c0530000 rw-p 00520000 08:01 42                         /usr/bin/berth-shim
Rss:                  64 kB
Anonymous:            64 kB
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0                          [heap]
Rss:                 300 kB
Anonymous:           300 kB
7f0000000000-7f0000001000 r--p 00000000 08:01 43                         /usr/lib/libc.so.6
Rss:                   0 kB
Anonymous:             0 kB
7f0000001000-7f0000100000 r-xp 00001000 08:01 43                         /usr/lib/libc.so.6
Rss:                 624 kB
Anonymous:             0 kB
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   4 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_file_mappings() {
        assert_eq!(
            droppable(SMAPS),
            [
                (0x55d0c0000000, 0x55d0c0100000),
                (0x55d0c0100000, 0x55d0c0500000),
                (0x7f0000001000, 0x7f0000100000),
            ]
        );
    }

    #[test]
    fn trimming_this_process_keeps_it_working() {
        let v: Vec<u64> = (0..1000).collect();
        trim();
        assert_eq!(v.iter().sum::<u64>(), 499_500);
        assert!(!droppable(&std::fs::read_to_string("/proc/self/smaps").unwrap()).is_empty());
    }
}
