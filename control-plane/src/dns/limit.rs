//! Response-rate limiting over UDP, as authoritative servers do it (BIND's
//! and Knot's RRL): a spoofed query makes the server answer someone who
//! never asked, at many times the query's size, so answers to one client
//! network are counted per second, by what they answer, and past the
//! limit they are dropped — every second one sent truncated instead, so a
//! real resolver, which a drop would leave waiting, asks again over TCP,
//! which a spoofed source cannot.
//!
//! Answers are counted by the client's network (an IPv4 /24, an IPv6 /56:
//! what one resolver's addresses share) and by their kind: a positive
//! answer or NODATA by its name and type, any other (NXDOMAIN, REFUSED,
//! FORMERR…) by its response code alone, so a flood of random names is
//! one count. Resolvers cache an answer for its TTL and seldom ask one
//! name often; a flood asks the same thing again and again.
//!
//! The counts live in a fixed table of atomics, one per hashed key and
//! second (keys that collide share a count: a limit met a little early,
//! never a table that grows). The hash is keyed at random per process, so
//! a sender cannot pick keys that collide with another client's.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counts kept: 64 Ki slots, half a MiB.
const SLOTS: usize = 1 << 16;
/// Every this many answers past the limit, one is sent truncated.
const SLIP: u64 = 2;

/// TC, the truncation flag, and the RCODE bits, in the header's flags word.
const TC: u16 = 0x0200;
const RCODE: u16 = 0x000F;

/// What to do with an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Send,
    /// Send it truncated: the header and question, TC set, nothing else.
    Truncate,
    Drop,
}

/// The counts of one DNS node's UDP answers.
#[derive(Debug)]
pub(super) struct RateLimit {
    per_second: u64,
    started: Instant,
    hasher: std::collections::hash_map::RandomState,
    /// Each slot: the second (since `started`) in the high 32 bits, the
    /// answers counted in it in the low 32.
    slots: Box<[AtomicU64]>,
}

impl RateLimit {
    /// `None` for 0: no limit.
    pub(super) fn new(per_second: u32) -> Option<RateLimit> {
        (per_second > 0).then(|| RateLimit {
            per_second: u64::from(per_second),
            started: Instant::now(),
            hasher: std::collections::hash_map::RandomState::new(),
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Counts `answer` to `query` from `client`, and says whether it goes.
    pub(super) fn check(&self, client: IpAddr, query: &[u8], answer: &[u8]) -> Verdict {
        self.check_at(client, query, answer, self.started.elapsed().as_secs())
    }

    fn check_at(&self, client: IpAddr, query: &[u8], answer: &[u8], second: u64) -> Verdict {
        let slot = &self.slots[self.key(client, query, answer) as usize % SLOTS];
        let second = second & 0xFFFF_FFFF;
        let mut seen = slot.load(Ordering::Relaxed);
        let count = loop {
            let count = if seen >> 32 == second { (seen & 0xFFFF_FFFF).saturating_add(1).min(0xFFFF_FFFF) } else { 1 };
            match slot.compare_exchange_weak(seen, second << 32 | count, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break count,
                Err(now) => seen = now,
            }
        };
        match count.checked_sub(self.per_second) {
            None | Some(0) => Verdict::Send,
            Some(over) if over % SLIP == 0 => Verdict::Truncate,
            Some(_) => Verdict::Drop,
        }
    }

    fn key(&self, client: IpAddr, query: &[u8], answer: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(&network(client));
        let rcode = answer.get(3).map_or(0, |b| u16::from(*b)) & RCODE;
        match (rcode, question(query)) {
            (0, Some(q)) => {
                // The name without regard to case, and the type; a NODATA
                // (no answer record) by the name alone, or a flood cycling
                // through the 65,536 types would get one count per type.
                for b in &query[12..q - 4] {
                    h.write_u8(b.to_ascii_lowercase());
                }
                if answer.get(6..8).is_some_and(|n| n != [0, 0]) {
                    h.write(&query[q - 4..q - 2]);
                } else {
                    h.write_u8(0xFE);
                }
            }
            _ => {
                h.write_u8(0xFF);
                h.write_u16(rcode);
            }
        }
        h.finish()
    }
}

/// A client's network as limits count it: an IPv4 /24 or an IPv6 /56. An
/// IPv4 client of a dual-stack socket comes as `::ffff:a.b.c.d`; its
/// network is its IPv4 /24, not the mapped range's /56.
pub(super) fn network(ip: IpAddr) -> [u8; 8] {
    let mut key = [0u8; 8];
    match ip.to_canonical() {
        IpAddr::V4(v4) => key[..3].copy_from_slice(&v4.octets()[..3]),
        IpAddr::V6(v6) => {
            key[0] = 6;
            key[1..].copy_from_slice(&v6.octets()[..7]);
        }
    }
    key
}

/// Where the question of `query` ends (its name, type and class after the
/// 12-byte header), when it has exactly one in plain labels.
fn question(query: &[u8]) -> Option<usize> {
    if query.get(4..6)? != [0, 1] {
        return None;
    }
    let mut at = 12;
    loop {
        let len = usize::from(*query.get(at)?);
        if len == 0 {
            break;
        }
        // A compression pointer (or a reserved label type) in a question
        // is not something a resolver sends.
        if len & 0xC0 != 0 {
            return None;
        }
        at += 1 + len;
    }
    let end = at + 1 + 4;
    (end <= query.len()).then_some(end)
}

/// Makes `out`, an answer to `query`, the truncated answer sent in its
/// place: its header with TC set, the question, and its OPT record (RFC
/// 6891 §7: a response to a query with one has one), without options.
pub(super) fn truncate(query: &[u8], out: &mut Vec<u8>) {
    let Some(header) = out.get(..4) else { return };
    let flags = (u16::from_be_bytes([header[2], header[3]]) | TC).to_be_bytes();
    let question = question(query).map(|end| query[12..end].to_vec());
    let opt = opt_of(out);
    out.truncate(2);
    out.extend_from_slice(&flags);
    out.extend_from_slice(&[0, u8::from(question.is_some()), 0, 0, 0, 0, 0, u8::from(opt.is_some())]);
    out.extend_from_slice(question.as_deref().unwrap_or_default());
    out.extend_from_slice(opt.as_ref().map_or(&[][..], |o| &o[..]));
}

/// The OPT record of `answer` with its options left out (an empty
/// RDATA): the payload size, extended RCODE, version and flags it says.
fn opt_of(answer: &[u8]) -> Option<[u8; 11]> {
    let count = |at: usize| answer.get(at..at + 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    let (questions, records) = (count(4)?, count(6)? + count(8)?);
    let additional = count(10)?;
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(answer, at)? + 4;
    }
    for i in 0..records + additional {
        let name_at = at;
        at = skip_name(answer, at)?;
        let fixed = answer.get(at..at + 10)?;
        let rdata = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        if i >= records && fixed[..2] == [0, 41] && answer.get(name_at) == Some(&0) {
            let mut opt = [0u8; 11];
            opt[1..9].copy_from_slice(&fixed[..8]);
            return Some(opt);
        }
        at += 10 + rdata;
    }
    None
}

/// Where the name at `at` in `message` ends: its labels, or a compression
/// pointer ending it.
fn skip_name(message: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *message.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xC0 == 0xC0 => return message.get(at + 1).map(|_| at + 2),
            l if l & 0xC0 != 0 => return None,
            l => at += 1 + usize::from(l),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` (dotted) of type `qtype`, with id 7.
    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    /// An answer with response code `rcode` and one record's worth of
    /// bytes after the question.
    fn answer(query: &[u8], rcode: u8) -> Vec<u8> {
        let mut a = query.to_vec();
        a[2] = 0x84;
        a[3] = 0x80 | rcode;
        a[6..8].copy_from_slice(&[0, 1]);
        a.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 127, 0, 0, 11]);
        a
    }

    fn verdicts(limit: &RateLimit, client: &str, q: &[u8], rcode: u8, n: usize, second: u64) -> Vec<Verdict> {
        let a = answer(q, rcode);
        (0..n).map(|_| limit.check_at(client.parse().unwrap(), q, &a, second)).collect()
    }

    #[test]
    fn past_the_limit_answers_are_dropped_every_second_one_truncated_until_the_next_second() {
        let limit = RateLimit::new(3).unwrap();
        let q = query("shop.cdn.test", 1);
        let got = verdicts(&limit, "192.0.2.1", &q, 0, 7, 5);
        use Verdict::*;
        assert_eq!(got, [Send, Send, Send, Drop, Truncate, Drop, Truncate]);
        assert_eq!(verdicts(&limit, "192.0.2.1", &q, 0, 1, 6), [Send], "a new second");
    }

    #[test]
    fn answers_are_counted_by_network_and_by_name_type_or_error() {
        let limit = RateLimit::new(1).unwrap();
        let (shop, news) = (query("shop.cdn.test", 1), query("news.cdn.test", 1));
        assert_eq!(verdicts(&limit, "192.0.2.1", &shop, 0, 1, 0), [Verdict::Send]);
        // The same network, the name in other case: the same count.
        assert_eq!(verdicts(&limit, "192.0.2.200", &query("SHOP.cdn.test", 1), 0, 1, 0), [Verdict::Drop]);
        assert_eq!(verdicts(&limit, "192.0.2.1", &news, 0, 1, 0), [Verdict::Send], "another name");
        assert_eq!(
            verdicts(&limit, "192.0.2.1", &query("shop.cdn.test", 28), 0, 1, 0),
            [Verdict::Send],
            "another type"
        );
        assert_eq!(verdicts(&limit, "192.0.3.1", &shop, 0, 1, 0), [Verdict::Send], "another network");
        assert_eq!(verdicts(&limit, "2001:db8:0:1::1", &shop, 0, 1, 0), [Verdict::Send]);
        assert_eq!(verdicts(&limit, "2001:db8:0:1:ffff::2", &shop, 0, 1, 0), [Verdict::Drop], "the same /56");
        // IPv4 clients of a dual-stack socket: by their own /24.
        assert_eq!(verdicts(&limit, "::ffff:198.51.100.7", &shop, 0, 1, 0), [Verdict::Send]);
        assert_eq!(verdicts(&limit, "::ffff:203.0.113.7", &shop, 0, 1, 0), [Verdict::Send], "another IPv4 network");
        assert_eq!(verdicts(&limit, "198.51.100.9", &shop, 0, 1, 0), [Verdict::Drop], "mapped or not, one network");
        // NXDOMAIN for any name: one count.
        assert_eq!(verdicts(&limit, "192.0.2.1", &query("a1.cdn.test", 1), 3, 1, 0), [Verdict::Send]);
        assert_eq!(verdicts(&limit, "192.0.2.1", &query("b2.cdn.test", 1), 3, 1, 0), [Verdict::Drop]);
        assert_eq!(verdicts(&limit, "192.0.2.1", &query("c3.cdn.test", 1), 5, 1, 0), [Verdict::Send], "REFUSED");
        // NODATA for one name: one count whatever the type.
        let nodata = |qtype| {
            let q = query("news.cdn.test", qtype);
            let mut a = answer(&q, 0);
            a.truncate(q.len());
            a[6..8].copy_from_slice(&[0, 0]);
            limit.check_at("192.0.2.1".parse().unwrap(), &q, &a, 0)
        };
        assert_eq!((nodata(16), nodata(99), nodata(1000)), (Verdict::Send, Verdict::Drop, Verdict::Truncate));
    }

    #[test]
    fn a_truncated_answer_keeps_the_id_flags_and_question_and_sets_tc() {
        let q = query("shop.cdn.test", 1);
        let mut out = answer(&q, 0);
        truncate(&q, &mut out);
        let mut want = q.clone();
        want[2..4].copy_from_slice(&[0x86, 0x80]);
        assert_eq!(out, want);
        // A question that cannot be read is left out.
        let mut bad = q.clone();
        bad[12] = 0xC0;
        let mut out = answer(&q, 0);
        truncate(&bad, &mut out);
        assert_eq!(out, [0, 7, 0x86, 0x80, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    /// A query with an OPT record (EDNS, payload 1232, DO set) has its
    /// truncated answer keep one: the answer's, without its options.
    #[test]
    fn a_truncated_answer_keeps_the_opt_record_without_its_options() {
        let mut q = query("shop.cdn.test", 1);
        q[11] = 1;
        q.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, 0x80, 0, 0, 0]);
        let mut out = answer(&q[..q.len() - 11], 0);
        out[11] = 1;
        // The answer's OPT, with a client-subnet option (RFC 7871).
        out.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, 0x80, 0, 0, 11]);
        out.extend_from_slice(&[0, 8, 0, 7, 0, 1, 24, 24, 192, 0, 2]);
        truncate(&q, &mut out);
        let mut want = q[..q.len() - 11].to_vec();
        want[2..4].copy_from_slice(&[0x86, 0x80]);
        want[11] = 1;
        want.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, 0x80, 0, 0, 0]);
        assert_eq!(out, want);
        // A record cut short: no OPT is made up.
        assert_eq!(opt_of(&want[..want.len() - 3]), None);
    }

    /// Whatever a sender puts in a datagram (cut anywhere, any byte
    /// changed), counting it and truncating its answer neither panics nor
    /// reads past it.
    #[test]
    fn hostile_datagrams_are_counted_and_truncated_without_a_panic() {
        let limit = RateLimit::new(1).unwrap();
        let mut q = query("shop.cdn.test", 1);
        q[11] = 1;
        q.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, 0x80, 0, 0, 0]);
        let a = answer(&q, 0);
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..20_000 {
            let (mut bad_q, mut bad_a) = (q.clone(), a.clone());
            for _ in 0..1 + round % 4 {
                let (i, j) = (next() as usize % bad_q.len(), next() as usize % bad_a.len());
                bad_q[i] = next() as u8;
                bad_a[j] = next() as u8;
            }
            bad_q.truncate(next() as usize % (bad_q.len() + 1));
            bad_a.truncate(next() as usize % (bad_a.len() + 1));
            limit.check("192.0.2.1".parse().unwrap(), &bad_q, &bad_a);
            truncate(&bad_q, &mut bad_a);
            assert!(bad_a.len() <= 12 + bad_q.len() + 11, "a truncated answer is never longer than its parts");
        }
    }

    #[test]
    fn questions_are_read_only_when_whole() {
        let q = query("shop.cdn.test", 1);
        assert_eq!(question(&q), Some(q.len()));
        assert_eq!(question(&q[..q.len() - 1]), None);
        assert_eq!(question(&q[..10]), None);
        let mut two = q.clone();
        two[5] = 2;
        assert_eq!(question(&two), None);
    }
}
