//! Rendezvous (highest-random-weight) hashing: every node ranks the
//! candidates for a key the same way without talking, and removing a
//! candidate moves only the keys it ranked first.
//!
//! Weighted by the logarithm method (Schindelhauer & Schomaker): score =
//! −weight / ln(u) with u uniform in (0, 1) from the hash, so a candidate's
//! share of keys is proportional to its weight.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::key::Key;

/// A candidate's score for `key`; higher wins.
pub fn score(key: Key, candidate: &str, weight: u32) -> f64 {
    let h = xxh3_64_with_seed(candidate.as_bytes(), (key as u64) ^ ((key >> 64) as u64));
    // 53 random bits → u in (0, 1).
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(weight.max(1)) / u.ln()
}

/// Indices of `candidates` (name, weight) from best to worst for `key`.
pub fn rank(key: Key, candidates: &[(&str, u32)]) -> Vec<usize> {
    let mut scored: Vec<(f64, usize)> =
        candidates.iter().enumerate().map(|(i, (name, w))| (score(key, name, *w), i)).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(key: Key, names: &[&str]) -> String {
        let c: Vec<(&str, u32)> = names.iter().map(|n| (*n, 1)).collect();
        names[rank(key, &c)[0]].to_string()
    }

    #[test]
    fn every_node_agrees_and_order_does_not_matter() {
        for key in 0..1000u128 {
            let k = key.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834);
            assert_eq!(
                owner(k, &["shield-1", "shield-2", "shield-3"]),
                owner(k, &["shield-3", "shield-1", "shield-2"])
            );
        }
    }

    #[test]
    fn removing_a_candidate_moves_only_its_keys() {
        let all = ["a", "b", "c", "d"];
        let without_c = ["a", "b", "d"];
        let mut moved = 0;
        let mut owned_by_c = 0;
        for key in 0..20_000u128 {
            let k = key.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834);
            let before = owner(k, &all);
            let after = owner(k, &without_c);
            if before == "c" {
                owned_by_c += 1;
            } else {
                assert_eq!(before, after, "a key not owned by c moved");
            }
            if before != after {
                moved += 1;
            }
        }
        assert_eq!(moved, owned_by_c, "exactly c's keys moved");
        // And they spread: roughly a quarter each.
        assert!((4000..6000).contains(&owned_by_c), "{owned_by_c}");
    }

    #[test]
    fn weights_set_the_share() {
        let c = [("light", 1), ("heavy", 3)];
        let heavy = (0..20_000u128)
            .filter(|k| rank(k.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834), &c)[0] == 1)
            .count();
        assert!((14_000..16_000).contains(&heavy), "heavy got {heavy} of 20000, want about 75%");
    }
}
