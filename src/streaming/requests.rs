//! The one-time tokens in streaming URLs: each names a request waiting for its client, as
//! kubelet's and containerd's request cache does (8 random URL-safe characters, valid for
//! one minute, at most 1000 waiting).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

/// How long a URL stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
const MAX_IN_FLIGHT: usize = 1000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("maximum number of in-flight streaming requests ({MAX_IN_FLIGHT}) exceeded")]
    TooManyInFlight,
    #[error("cannot generate a streaming token: {0}")]
    Random(String),
}

pub struct RequestCache<T> {
    entries: Mutex<HashMap<String, (Instant, T)>>,
    ttl: Duration,
}

impl<T> RequestCache<T> {
    pub fn new(ttl: Duration) -> RequestCache<T> {
        RequestCache {
            entries: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// Stores `req` and returns its fresh token.
    pub fn insert(&self, req: T) -> Result<String, Error> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        entries.retain(|_, (expires, _)| *expires > now);
        if entries.len() >= MAX_IN_FLIGHT {
            return Err(Error::TooManyInFlight);
        }
        loop {
            let mut raw = [0u8; 6];
            getrandom::fill(&mut raw).map_err(|e| Error::Random(e.to_string()))?;
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
            if !entries.contains_key(&token) {
                entries.insert(token.clone(), (now + self.ttl, req));
                return Ok(token);
            }
        }
    }

    /// Takes the request of `token` out, if it is there and has not expired.
    pub fn consume(&self, token: &str) -> Option<T> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (expires, req) = entries.remove(token)?;
        (expires > Instant::now()).then_some(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_use_and_url_safe() {
        let c = RequestCache::new(TOKEN_TTL);
        let t = c.insert(1).unwrap();
        assert_eq!(t.len(), 8);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let t2 = c.insert(2).unwrap();
        assert_ne!(t, t2);
        assert_eq!(c.consume(&t), Some(1));
        assert_eq!(c.consume(&t), None);
        assert_eq!(c.consume("nosuchtk"), None);
        assert_eq!(c.consume(&t2), Some(2));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let c = RequestCache::new(Duration::from_millis(1));
        let t = c.insert("x").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.consume(&t), None);
    }

    #[test]
    fn in_flight_requests_are_bounded() {
        let c = RequestCache::new(TOKEN_TTL);
        for i in 0..MAX_IN_FLIGHT {
            c.insert(i).unwrap();
        }
        assert_eq!(c.insert(0), Err(Error::TooManyInFlight));
    }
}
