//! Pod and container ids: generation, resolution of the unique prefixes crictl users type,
//! and one async lock per id so that the lifecycle calls of one object do not interleave.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A new 64-hex id, as containerd and CRI-O make them.
pub fn new_id() -> String {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    hex::encode(b)
}

#[derive(Debug, PartialEq, Eq)]
pub enum Resolve {
    Found(String),
    NotFound,
    Ambiguous,
}

/// `id` itself when `exists(id)`, else the one id of `all` it is a prefix of.
pub fn resolve(id: &str, exists: bool, all: impl IntoIterator<Item = String>) -> Resolve {
    if exists {
        return Resolve::Found(id.to_string());
    }
    let mut found = None;
    for candidate in all {
        if candidate.starts_with(id) {
            if found.is_some() {
                return Resolve::Ambiguous;
            }
            found = Some(candidate);
        }
    }
    found.map_or(Resolve::NotFound, Resolve::Found)
}

/// One async lock per id.
#[derive(Default)]
pub struct Locks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Locks {
    pub fn get(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut l = self.map.lock().unwrap_or_else(|e| e.into_inner());
        l.entry(id.to_string()).or_default().clone()
    }

    pub fn forget(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_and_differ() {
        let (a, b) = (new_id(), new_id());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn prefixes_resolve_when_unique() {
        let all = || vec!["abc1".to_string(), "abd2".to_string()];
        assert_eq!(resolve("abc1", true, all()), Resolve::Found("abc1".into()));
        assert_eq!(resolve("abc", false, all()), Resolve::Found("abc1".into()));
        assert_eq!(resolve("ab", false, all()), Resolve::Ambiguous);
        assert_eq!(resolve("x", false, all()), Resolve::NotFound);
    }
}
