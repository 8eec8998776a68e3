//! HTTP-01 answers (RFC 8555 §8.3) for sites with `[tls] acme = true`: the
//! control plane logs each challenge of an order it runs, every node keeps
//! it until it expires and answers `GET /.well-known/acme-challenge/{token}`
//! on the site's hosts with its key authorization, whichever node the CA
//! reaches. Nothing else about the site changes: other paths are cached and
//! proxied as always, and the answer is never stored.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

/// Where CAs ask (RFC 8555 §8.3).
pub const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// Challenges a node keeps at most: a fleet orders a handful at a time;
/// an event log that sends more loses the oldest.
const MAX_CHALLENGES: usize = 1024;

#[derive(Debug)]
struct Challenge {
    site: String,
    answer: Bytes,
    until_ms: u64,
}

/// The challenges of running orders, by token.
#[derive(Debug, Default)]
pub struct Challenges {
    by_token: Mutex<HashMap<String, Challenge>>,
}

impl Challenges {
    /// Keeps a challenge until `until_ms` (epoch milliseconds).
    pub fn add(&self, site: &str, token: &str, key_authorization: &str, until_ms: u64, now_ms: u64) {
        let mut map = self.by_token.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, c| c.until_ms > now_ms);
        if map.len() >= MAX_CHALLENGES
            && let Some(oldest) = map.iter().min_by_key(|(_, c)| c.until_ms).map(|(t, _)| t.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            token.to_string(),
            Challenge { site: site.to_string(), answer: Bytes::from(key_authorization.to_string()), until_ms },
        );
    }

    /// The key authorization for `token` on `site`, if a running order
    /// of that site gave it: a token of another site's order is not
    /// answered on this one's hosts.
    pub fn answer(&self, site: &str, token: &str, now_ms: u64) -> Option<Bytes> {
        let map = self.by_token.lock().unwrap_or_else(|p| p.into_inner());
        map.get(token).filter(|c| c.site == site && c.until_ms > now_ms).map(|c| c.answer.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_challenge_is_answered_for_its_site_until_it_expires() {
        let c = Challenges::default();
        c.add("shop", "tok1", "tok1.thumb", 2_000, 1_000);
        assert_eq!(c.answer("shop", "tok1", 1_500).as_deref(), Some(&b"tok1.thumb"[..]));
        assert_eq!(c.answer("blog", "tok1", 1_500), None, "another site's hosts do not answer it");
        assert_eq!(c.answer("shop", "tok2", 1_500), None);
        assert_eq!(c.answer("shop", "tok1", 2_000), None, "expired");
        for i in 0..MAX_CHALLENGES + 10 {
            c.add("shop", &format!("t{i}"), "x", 10_000 + i as u64, 1_000);
        }
        let kept = c.by_token.lock().unwrap().len();
        assert_eq!(kept, MAX_CHALLENGES, "bounded, the oldest going first");
        assert_eq!(c.answer("shop", "t0", 1_000), None);
        assert!(c.answer("shop", &format!("t{}", MAX_CHALLENGES + 9), 1_000).is_some());
    }
}
