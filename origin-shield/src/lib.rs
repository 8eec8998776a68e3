//! The origin-shield role: the engine in front of the origins, with origin
//! pools, active health checks, per-origin concurrency caps and retries with
//! backoff, so a burst of misses from every edge costs the origin one request.
