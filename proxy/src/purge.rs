//! Purges as timestamped rules, checked when a stored object is served.
//!
//! A purge records "everything matching X stored before T is invalid (hard)
//! or stale (soft)". A purge costs nothing per stored object; a lookup costs
//! one site lookup plus one per tag of the object and per prefix rule of its
//! site. Rules are persisted (written whole, atomically) beside the disk
//! cache, so a purge survives a restart, and rules older than any object can
//! live are dropped.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outpost_config::{MAX_TTL, PurgeTarget};
use serde::{Deserialize, Serialize};

use crate::clock::micros;
use crate::store::StoredObject;

/// A rule outlives every object it could apply to: an object is served
/// without asking upstream for at most its lifetime plus one stale window,
/// each capped at [`MAX_TTL`].
pub(crate) const RULE_RETENTION: Duration = Duration::from_secs(2 * MAX_TTL.as_secs() + 86_400);

/// The newest hard and soft purge times of one rule, in microseconds since
/// the epoch (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Times {
    hard: u64,
    soft: u64,
}

impl Times {
    fn record(&mut self, at: u64, soft: bool) {
        let slot = if soft { &mut self.soft } else { &mut self.hard };
        *slot = (*slot).max(at);
    }

    fn verdict(&self, fetched_at: u64) -> Verdict {
        if self.hard != 0 && self.hard >= fetched_at {
            Verdict::Invalid
        } else if self.soft != 0 && self.soft >= fetched_at {
            Verdict::Stale
        } else {
            Verdict::Valid
        }
    }

    fn newest(&self) -> u64 {
        self.hard.max(self.soft)
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SiteRules {
    all: Times,
    tags: HashMap<String, Times>,
    prefixes: Vec<(String, Times)>,
    urls: HashMap<String, Times>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Rules {
    /// Every site: set when a node catches up from a snapshot.
    global: Times,
    sites: HashMap<String, SiteRules>,
    /// The sites a node served from its own files at its last start
    /// ([`PurgeRules::note_sites`]); `None` before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    known_sites: Option<std::collections::BTreeSet<String>>,
    /// How far the engine's stamps (`Clock::stamp`) had gone when the node
    /// last stopped, in microseconds since the epoch (0: not recorded).
    #[serde(default, skip_serializing_if = "is_zero")]
    stamped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What the rules say about a stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Valid,
    /// Soft-purged: revalidate before use; usable under stale-if-error.
    Stale,
    /// Hard-purged: as if absent.
    Invalid,
}

/// Most URL and tag rules a site keeps: past it, the older half is folded
/// into its whole-site rule (more than they asked, never less), so a site
/// purged URL by URL for years does not grow every node's rules, and the
/// file written at each purge, without end.
const MAX_SITE_RULES: usize = 100_000;

/// Most prefix rules a site keeps (each hit of the site reads them all):
/// past it, the older half is folded the same way.
const MAX_SITE_PREFIXES: usize = 1_000;

/// A site's rules, there since the purge just recorded.
fn s_of<'a>(rules: &'a mut Rules, site: &str) -> &'a mut SiteRules {
    rules.sites.entry(site.to_string()).or_default()
}

/// The node's purge rules.
#[derive(Debug)]
pub struct PurgeRules {
    rules: RwLock<Rules>,
    file: Option<PathBuf>,
    /// Held from a change to its rules' write, so the file ends with the
    /// last change, while lookups wait only for the change itself.
    writing: std::sync::Mutex<()>,
}

impl PurgeRules {
    /// Rules kept only in memory (a memory-only node).
    pub fn in_memory() -> PurgeRules {
        PurgeRules { rules: RwLock::new(Rules::default()), file: None, writing: std::sync::Mutex::default() }
    }

    /// Rules persisted in `dir/purges.json`, loading what is there.
    pub fn open(dir: &Path) -> io::Result<PurgeRules> {
        std::fs::create_dir_all(dir)?;
        let file = dir.join("purges.json");
        let rules = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", file.display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Rules::default(),
            Err(e) => return Err(e),
        };
        Ok(PurgeRules { rules: RwLock::new(rules), file: Some(file), writing: std::sync::Mutex::default() })
    }

    fn read(&self) -> RwLockReadGuard<'_, Rules> {
        self.rules.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Rules> {
        self.rules.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The verdict of every rule that matches `object` of `site`.
    pub fn check(&self, site: &str, object: &StoredObject) -> Verdict {
        let fetched = micros(object.fetched_at);
        let rules = self.read();
        let mut v = rules.global.verdict(fetched);
        let Some(s) = rules.sites.get(site) else { return v };
        v = v.max(s.all.verdict(fetched));
        if let Some(t) = s.urls.get(&object.url) {
            v = v.max(t.verdict(fetched));
        }
        for tag in &object.tags {
            if let Some(t) = s.tags.get(tag) {
                v = v.max(t.verdict(fetched));
            }
        }
        for (prefix, t) in &s.prefixes {
            if object.url.starts_with(prefix.as_str()) {
                v = v.max(t.verdict(fetched));
            }
        }
        v
    }

    /// Records a purge applied at `at` and persists the rules. `urls` are
    /// already normalised the way objects store them.
    pub fn apply(
        &self,
        site: &str,
        target: &PurgeTarget,
        urls: &[String],
        soft: bool,
        at: SystemTime,
    ) -> io::Result<()> {
        let at = micros(at);
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut rules = self.write();
            let s = rules.sites.entry(site.to_string()).or_default();
            match target {
                PurgeTarget::All => s.all.record(at, soft),
                PurgeTarget::Urls { .. } => {
                    for u in urls {
                        s.urls.entry(u.clone()).or_default().record(at, soft);
                    }
                }
                PurgeTarget::Tags { tags } => {
                    for t in tags {
                        s.tags.entry(t.clone()).or_default().record(at, soft);
                    }
                }
                PurgeTarget::Prefix { prefix } => match s.prefixes.iter_mut().find(|(p, _)| p == prefix) {
                    Some((_, t)) => t.record(at, soft),
                    None => {
                        let mut t = Times::default();
                        t.record(at, soft);
                        s.prefixes.push((prefix.clone(), t));
                    }
                },
            }
            // By the wall clock, which copies' freshness follows: stamps
            // may run ahead of it (`Clock::stamp`).
            Self::compact(&mut rules, at.min(micros(SystemTime::now())));
            Self::fold(site, s_of(&mut rules, site));
        }
        self.persist()
    }

    /// Notes the sites a node serves from its own files as it starts: a site
    /// id it did not serve at its last start gets a hard purge of
    /// everything of its id, as a deleted site's does (a site removed from
    /// the files, and another given its id since, would otherwise be served
    /// the old one's copies, kept by the disk tier). The first start that
    /// keeps this record purges nothing. The ids purged.
    pub fn note_sites(&self, ids: impl IntoIterator<Item = String>, at: SystemTime) -> io::Result<Vec<String>> {
        let ids: std::collections::BTreeSet<String> = ids.into_iter().collect();
        let at = micros(at);
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let new = {
            let mut rules = self.write();
            if rules.known_sites.as_ref() == Some(&ids) {
                return Ok(Vec::new());
            }
            let new: Vec<String> =
                rules.known_sites.as_ref().map_or_else(Vec::new, |known| ids.difference(known).cloned().collect());
            for id in &new {
                rules.sites.entry(id.clone()).or_default().all.record(at, false);
            }
            rules.known_sites = Some(ids);
            new
        };
        self.persist()?;
        Ok(new)
    }

    /// The newest time any rule holds, or the stamps had reached when the
    /// node last stopped (the epoch when there is neither).
    pub fn newest(&self) -> SystemTime {
        let rules = self.read();
        let sites = rules.sites.values().flat_map(|s| {
            std::iter::once(&s.all)
                .chain(s.tags.values())
                .chain(s.urls.values())
                .chain(s.prefixes.iter().map(|(_, t)| t))
        });
        let newest = std::iter::once(&rules.global).chain(sites).map(Times::newest).max().unwrap_or(0);
        UNIX_EPOCH + Duration::from_micros(newest.max(rules.stamped))
    }

    /// Records how far the engine's stamps have gone, as the node stops: the
    /// next run's stamps start past it, whatever its wall clock says.
    pub fn note_stamped(&self, at: SystemTime) -> io::Result<()> {
        if self.file.is_none() {
            return Ok(());
        }
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut rules = self.write();
            rules.stamped = rules.stamped.max(micros(at));
        }
        self.persist()
    }

    /// Marks everything stored before `at`, on every site, as soft-purged:
    /// what a node does when it catches up from a snapshot.
    pub fn soft_purge_everything(&self, at: SystemTime) -> io::Result<()> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        self.write().global.record(micros(at), true);
        self.persist()
    }

    /// Folds the older half of a site's URL and tag rules, or of its
    /// prefix rules, into its whole-site rule once there are more than
    /// [`MAX_SITE_RULES`] or [`MAX_SITE_PREFIXES`].
    fn fold(site: &str, s: &mut SiteRules) {
        let fold_in = |all: &mut Times, t: &Times| {
            all.hard = all.hard.max(t.hard);
            all.soft = all.soft.max(t.soft);
        };
        if s.urls.len() + s.tags.len() > MAX_SITE_RULES {
            let mut times: Vec<u64> = s.urls.values().chain(s.tags.values()).map(Times::newest).collect();
            let half = times.len() / 2;
            let (older, cut, _) = times.select_nth_unstable(half);
            let cut = *cut;
            // Those older than the middle one; all up to it when every
            // rule is as new as it (one purge of many URLs).
            let folds_none = older.iter().all(|t| *t >= cut);
            let mut all = s.all;
            let mut keep = |t: &Times| {
                let kept = if folds_none { t.newest() > cut } else { t.newest() >= cut };
                if !kept {
                    fold_in(&mut all, t);
                }
                kept
            };
            s.urls.retain(|_, t| keep(t));
            s.tags.retain(|_, t| keep(t));
            s.all = all;
            tracing::warn!(
                site,
                kept = s.urls.len() + s.tags.len(),
                "a site's purge rules passed {MAX_SITE_RULES}: the older half is now a purge of the whole site"
            );
        }
        if s.prefixes.len() > MAX_SITE_PREFIXES {
            s.prefixes.sort_by_key(|(_, t)| std::cmp::Reverse(t.newest()));
            let mut all = s.all;
            for (_, t) in s.prefixes.drain(MAX_SITE_PREFIXES / 2..) {
                fold_in(&mut all, &t);
            }
            s.all = all;
            tracing::warn!(
                site,
                "a site's prefix purge rules passed {MAX_SITE_PREFIXES}: the older half is now a purge of the whole site"
            );
        }
    }

    /// Drops rules too old to match any object that could still be served.
    fn compact(rules: &mut Rules, now: u64) {
        let horizon = now.saturating_sub(RULE_RETENTION.as_micros() as u64);
        let keep = |t: &Times| t.newest() >= horizon;
        for s in rules.sites.values_mut() {
            s.tags.retain(|_, t| keep(t));
            s.urls.retain(|_, t| keep(t));
            s.prefixes.retain(|(_, t)| keep(t));
            if !keep(&s.all) {
                s.all = Times::default();
            }
        }
        rules.sites.retain(|_, s| {
            s.all != Times::default() || !s.tags.is_empty() || !s.urls.is_empty() || !s.prefixes.is_empty()
        });
    }

    /// Writes the rules as they stand; called with `writing` held.
    fn persist(&self) -> io::Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        let tmp = file.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&*self.read()).map_err(io::Error::other)?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, file)?;
        // The rename itself on the disk: until then a power loss may leave
        // the older rules in place.
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        std::fs::File::open(dir)?.sync_all()
    }

    /// Number of rules held (for metrics).
    pub fn len(&self) -> usize {
        let r = self.read();
        r.sites.values().map(|s| 1 + s.tags.len() + s.urls.len() + s.prefixes.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::entry::tests::sample;
    use crate::store::{BodyRef, Entry};

    fn object(url: &str, tags: &[&str], fetched_secs: u64) -> StoredObject {
        let Entry::Object(o) = sample(BodyRef::Inline(bytes::Bytes::new().into())) else { unreachable!() };
        StoredObject {
            url: url.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            fetched_at: UNIX_EPOCH + Duration::from_secs(fetched_secs),
            ..(*o).clone()
        }
    }

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn rules_apply_to_objects_stored_before_them() {
        let p = PurgeRules::in_memory();
        let old = object("/img/a.png", &["brand", "img"], 1_000);
        let new = object("/img/a.png", &["brand", "img"], 3_000);
        assert_eq!(p.check("s", &old), Verdict::Valid);
        p.apply("s", &PurgeTarget::Tags { tags: vec!["brand".into()] }, &[], false, t(2_000)).unwrap();
        assert_eq!(p.check("s", &old), Verdict::Invalid);
        assert_eq!(p.check("s", &new), Verdict::Valid, "fetched after the purge");
        assert_eq!(p.check("other", &old), Verdict::Valid, "rules are per site");
    }

    #[test]
    fn each_kind_of_target() {
        let o = object("/docs/x?y=1", &["t"], 1_000);
        let cases: Vec<(PurgeTarget, Vec<String>, Verdict)> = vec![
            (PurgeTarget::Urls { urls: vec!["/docs/x?y=1".into()] }, vec!["/docs/x?y=1".into()], Verdict::Invalid),
            (PurgeTarget::Urls { urls: vec!["/docs/x".into()] }, vec!["/docs/x".into()], Verdict::Valid),
            (PurgeTarget::Prefix { prefix: "/docs/".into() }, vec![], Verdict::Invalid),
            (PurgeTarget::Prefix { prefix: "/img/".into() }, vec![], Verdict::Valid),
            (PurgeTarget::Tags { tags: vec!["u".into()] }, vec![], Verdict::Valid),
            (PurgeTarget::All, vec![], Verdict::Invalid),
        ];
        for (target, urls, want) in cases {
            let p = PurgeRules::in_memory();
            p.apply("s", &target, &urls, false, t(2_000)).unwrap();
            assert_eq!(p.check("s", &o), want, "{target:?}");
        }
    }

    #[test]
    fn soft_purges_mark_stale_and_hard_wins() {
        let p = PurgeRules::in_memory();
        let o = object("/a", &[], 1_000);
        p.apply("s", &PurgeTarget::All, &[], true, t(2_000)).unwrap();
        assert_eq!(p.check("s", &o), Verdict::Stale);
        p.apply("s", &PurgeTarget::Prefix { prefix: "/".into() }, &[], false, t(1_500)).unwrap();
        assert_eq!(p.check("s", &o), Verdict::Invalid);
        let q = PurgeRules::in_memory();
        q.soft_purge_everything(t(2_000)).unwrap();
        assert_eq!(q.check("any", &o), Verdict::Stale);
    }

    #[test]
    fn a_site_new_since_the_last_start_is_purged_and_the_first_start_purges_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let o = object("/a", &[], 1_000);
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = PurgeRules::open(dir.path()).unwrap();
        assert_eq!(p.note_sites(ids(&["a", "b"]), t(2_000)).unwrap(), Vec::<String>::new(), "the first start");
        assert_eq!(p.check("a", &o), Verdict::Valid);
        let p = PurgeRules::open(dir.path()).unwrap();
        assert_eq!(p.note_sites(ids(&["b", "a"]), t(3_000)).unwrap(), Vec::<String>::new(), "the same sites");
        assert_eq!(p.note_sites(ids(&["b"]), t(4_000)).unwrap(), Vec::<String>::new(), "one removed");
        let p = PurgeRules::open(dir.path()).unwrap();
        assert_eq!(p.note_sites(ids(&["a", "b", "c"]), t(5_000)).unwrap(), ids(&["a", "c"]), "back, and new");
        assert_eq!((p.check("a", &o), p.check("b", &o)), (Verdict::Invalid, Verdict::Valid));
    }

    #[test]
    fn rules_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let o = object("/a", &["x"], 1_000);
        {
            let p = PurgeRules::open(dir.path()).unwrap();
            p.apply("s", &PurgeTarget::Tags { tags: vec!["x".into()] }, &[], false, t(2_000)).unwrap();
        }
        let p = PurgeRules::open(dir.path()).unwrap();
        assert_eq!(p.check("s", &o), Verdict::Invalid);
        std::fs::write(dir.path().join("purges.json"), b"{not json").unwrap();
        assert!(PurgeRules::open(dir.path()).is_err(), "a corrupt rules file is an error, not an empty rule set");
    }

    #[test]
    fn old_rules_are_dropped() {
        let p = PurgeRules::in_memory();
        p.apply("s", &PurgeTarget::Tags { tags: vec!["old".into()] }, &[], false, t(1_000)).unwrap();
        assert_eq!(p.len(), 2);
        let later = t(1_000) + RULE_RETENTION + Duration::from_secs(10);
        p.apply("s", &PurgeTarget::Tags { tags: vec!["new".into()] }, &[], false, later).unwrap();
        assert_eq!(p.len(), 2, "the old tag rule is gone, the new one is there");
        assert_eq!(p.check("s", &object("/a", &["new"], 5)), Verdict::Invalid);
    }

    /// Rules are dropped by the wall clock, which copies' freshness
    /// follows, not by a purge's stamp, which may run ahead of it.
    #[test]
    fn rules_are_dropped_by_the_wall_clock_not_a_stamp_ahead_of_it() {
        let p = PurgeRules::in_memory();
        let now = SystemTime::now();
        p.apply("s", &PurgeTarget::Tags { tags: vec!["old".into()] }, &[], false, now).unwrap();
        let ahead = now + RULE_RETENTION + Duration::from_secs(10);
        p.apply("s", &PurgeTarget::Tags { tags: vec!["new".into()] }, &[], false, ahead).unwrap();
        assert_eq!(p.len(), 3, "both tag rules are kept");
        assert_eq!(p.check("s", &object("/a", &["old"], 5)), Verdict::Invalid);
    }

    /// A site purged rule by rule without end keeps a bounded number of
    /// rules: the older half is folded into a purge of the whole site at
    /// their times, which removes at least what they did.
    #[test]
    fn a_site_past_its_rule_cap_folds_the_older_half_into_a_whole_site_rule() {
        let p = PurgeRules::in_memory();
        let urls: Vec<String> = (0..=MAX_SITE_RULES).map(|i| format!("/u{i}")).collect();
        // Half the URLs purged at 2,000 s (soft), the rest at 4,000 s (hard).
        let (first, second) = urls.split_at(urls.len() / 2);
        p.apply("s", &PurgeTarget::Urls { urls: Vec::new() }, first, true, t(2_000)).unwrap();
        p.apply("s", &PurgeTarget::Urls { urls: Vec::new() }, second, false, t(4_000)).unwrap();
        let rules = p.read().sites["s"].urls.len();
        assert!(rules <= MAX_SITE_RULES / 2 + 1, "{rules} URL rules kept");
        assert_eq!(p.check("s", &object("/u5", &[], 1_000)), Verdict::Stale, "a folded rule still applies");
        assert_eq!(p.check("s", &object(&second[3], &[], 3_000)), Verdict::Invalid, "a kept one too");
        assert_eq!(
            p.check("s", &object("/never-purged", &[], 1_000)),
            Verdict::Stale,
            "more than asked: the whole site, at the folded rules' time"
        );
        assert_eq!(p.check("s", &object("/never-purged", &[], 2_500)), Verdict::Valid, "fetched after them");
        // One purge of more URLs than the cap, all of one time: folded whole.
        let once = PurgeRules::in_memory();
        once.apply("s", &PurgeTarget::Urls { urls: Vec::new() }, &urls, false, t(2_000)).unwrap();
        assert!(once.read().sites["s"].urls.is_empty());
        assert_eq!(once.check("s", &object("/anything", &[], 1_000)), Verdict::Invalid);
        let prefixes = PurgeRules::in_memory();
        for i in 0..=MAX_SITE_PREFIXES {
            prefixes
                .apply("s", &PurgeTarget::Prefix { prefix: format!("/p{i}/") }, &[], false, t(1_000 + i as u64))
                .unwrap();
        }
        assert_eq!(prefixes.read().sites["s"].prefixes.len(), MAX_SITE_PREFIXES / 2);
        assert_eq!(prefixes.check("s", &object("/p1/a", &[], 900)), Verdict::Invalid);
    }
}
