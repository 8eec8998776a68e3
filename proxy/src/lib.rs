//! The caching reverse-proxy engine that edges and shields both run:
//! listeners, HTTP/1.1 and HTTP/2 serving, RFC 9111 cache policy, cache keys,
//! foyer-backed memory and disk storage, purge rules, miss coalescing, the
//! upstream client, stale handling and the control-plane subscriber.
