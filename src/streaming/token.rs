//! Single-use tokens naming a pending streaming request, as kubelet's
//! streaming library keeps them: random, looked up once, expired after a
//! TTL, and capped in number so a caller that never connects cannot grow
//! the cache without bound.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::error::StreamError;
use super::request::{AttachRequest, ExecRequest, PortForwardRequest};

/// Random bytes per token (kubelet uses 8).
const TOKEN_BYTES: usize = 16;
/// Requests handed out and not yet used, at most (kubelet's limit).
pub const MAX_IN_FLIGHT: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachedRequest {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

struct Entry {
    request: CachedRequest,
    expires: Instant,
}

pub struct TokenCache {
    ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Tokens in insertion order, hence expiry order; may hold tokens
    /// already consumed.
    order: VecDeque<(Instant, String)>,
}

impl TokenCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Stores `request` and returns its new token.
    pub fn insert(&self, request: CachedRequest) -> Result<String, StreamError> {
        let mut raw = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut raw).map_err(|e| StreamError::Random(e.to_string()))?;
        let token = URL_SAFE_NO_PAD.encode(raw);
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.collect_expired(now);
        if inner.entries.len() >= MAX_IN_FLIGHT {
            return Err(StreamError::TooManyRequests(MAX_IN_FLIGHT));
        }
        let expires = now + self.ttl;
        inner
            .entries
            .insert(token.clone(), Entry { request, expires });
        inner.order.push_back((expires, token.clone()));
        Ok(token)
    }

    /// Takes the request named by `token` out of the cache; `None` if it is
    /// unknown, already used, or expired.
    pub fn consume(&self, token: &str) -> Option<CachedRequest> {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.collect_expired(now);
        let entry = inner.entries.remove(token)?;
        (entry.expires > now).then_some(entry.request)
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .len()
    }
}

impl Inner {
    fn collect_expired(&mut self, now: Instant) {
        while let Some((expires, _)) = self.order.front() {
            if *expires > now {
                break;
            }
            if let Some((_, token)) = self.order.pop_front() {
                self.entries.remove(&token);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf() -> CachedRequest {
        CachedRequest::PortForward(PortForwardRequest {
            pod_sandbox_id: "p".into(),
            ports: vec![],
        })
    }

    #[test]
    fn tokens_are_random_urlsafe_and_single_use() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let a = cache.insert(pf()).unwrap();
        let b = cache.insert(pf()).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 22);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(cache.consume(&a), Some(pf()));
        assert_eq!(cache.consume(&a), None);
        assert_eq!(cache.consume("nope"), None);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn tokens_expire() {
        let cache = TokenCache::new(Duration::from_millis(20));
        let a = cache.insert(pf()).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.consume(&a), None);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn in_flight_requests_are_capped() {
        let cache = TokenCache::new(Duration::from_secs(60));
        for _ in 0..MAX_IN_FLIGHT {
            cache.insert(pf()).unwrap();
        }
        assert!(matches!(
            cache.insert(pf()),
            Err(StreamError::TooManyRequests(_))
        ));
    }
}
