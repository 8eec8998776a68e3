//! The console's pages and the fragments its scripts refresh, as HTML.
//! Everything interpolated is escaped by `maud`; times are written as
//! `<time>` with the absolute UTC time in `datetime` and `title`, and the
//! relative one as text (the script keeps it current).

use std::time::{Duration, UNIX_EPOCH};

use maud::{DOCTYPE, Markup, html};
use outpost_config::api::{FULL_WEIGHT, NodeStatus, PopRecord, PurgeStatus, SiteRecord};
use outpost_config::{Diagnostic, EventRecord, PurgeTarget};

use super::auth::{CSRF_FIELD, Role};

/// What every page's frame needs: who is signed in and the form token.
#[derive(Debug)]
pub(super) struct Frame<'a> {
    pub(super) role: Role,
    pub(super) csrf: &'a str,
    /// The section the page belongs to (highlighted in the menu).
    pub(super) section: Section,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Fleet,
    Sites,
    Purge,
    Events,
}

const SECTIONS: [(Section, &str, &str); 4] = [
    (Section::Fleet, "Fleet", "/console/"),
    (Section::Sites, "Sites", "/console/sites"),
    (Section::Purge, "Purge", "/console/purge"),
    (Section::Events, "Events", "/console/events"),
];

fn head(title: &str, csrf: Option<&str>) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            @if let Some(t) = csrf { meta name="csrf-token" content=(t); }
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Outpost" }
            link rel="stylesheet" href="/console/assets/console.css";
            script src="/console/assets/console.js" defer {}
        }
    }
}

/// A page of a signed-in operator.
pub(super) fn page(frame: &Frame<'_>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, Some(frame.csrf)))
            body {
                header.top {
                    a.brand href="/console/" { "Outpost" }
                    nav {
                        @for (section, label, href) in SECTIONS {
                            @if section == frame.section {
                                a href=(href) aria-current="page" { (label) }
                            } @else {
                                a href=(href) { (label) }
                            }
                        }
                    }
                    div.who {
                        @if frame.role == Role::ReadOnly {
                            span.badge.muted title="Signed in read-only: nothing can be changed from here" { "read-only" }
                        }
                        form method="post" action="/console/logout" {
                            input type="hidden" name=(CSRF_FIELD) value=(frame.csrf);
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The sign-in page.
pub(super) fn login(problem: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in", None))
            body.login {
                main {
                    form.card method="post" action="/console/login" {
                        h1 { "Outpost console" }
                        p.muted { "The admin token signs you in as an operator; the read-only token, to look." }
                        @if let Some(p) = problem {
                            p.error role="alert" { (p) }
                        }
                        label for="token" { "Token" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        button.primary type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

/// A refusal or a missing page, in the frame when there is one.
pub(super) fn problem(frame: Option<&Frame<'_>>, title: &str, detail: &str) -> Markup {
    let body = html! {
        h1 { (title) }
        p.error role="alert" { (detail) }
        p { a href="/console/" { "Back to the fleet" } }
    };
    match frame {
        Some(f) => page(f, title, body),
        None => html! { (DOCTYPE) html lang="en" { (head(title, None)) body.login { main { div.card { (body) } } } } },
    }
}

/// An instant as a `<time>`: relative text, the absolute UTC time on hover.
pub(super) fn when(ms: u64) -> Markup {
    let at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string();
    html! { time datetime=(at) title=(at) data-ms=(ms) { (ago(ms)) } }
}

fn ago(ms: u64) -> String {
    let s = super::now_ms().saturating_sub(ms) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..172_800 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// How a PoP stands with the DNS servers, by the rules they answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PopView {
    pub(super) name: String,
    pub(super) weight: u8,
    pub(super) reason: Option<String>,
    /// Live edges without problems, and live ones with.
    pub(super) sound: Vec<String>,
    pub(super) degraded: Vec<String>,
    /// Edges registered in it that DNS does not answer (dead or silent).
    pub(super) down: Vec<String>,
    /// Whether DNS servers answer clients with it now.
    pub(super) answered: bool,
}

/// Everything the fleet page shows.
#[derive(Debug)]
pub(super) struct Fleet {
    pub(super) nodes: Vec<NodeStatus>,
    pub(super) pops: Vec<PopView>,
    pub(super) sites: usize,
    pub(super) last_seq: u64,
    pub(super) quorum: bool,
}

pub(super) fn fleet(frame: &Frame<'_>, fleet: &Fleet) -> Markup {
    page(
        frame,
        "Fleet",
        html! {
            h1 { "Fleet" }
            div #fleet data-live="/console/fleet/live" data-every="2000" aria-live="polite" { (fleet_live(fleet)) }
        },
    )
}

/// The part of the fleet page that refreshes.
pub(super) fn fleet_live(f: &Fleet) -> Markup {
    let connected = f.nodes.iter().filter(|n| n.connected).count();
    html! {
        div.stats {
            div.stat { span.figure { (connected) " / " (f.nodes.len()) } span.label { "nodes connected" } }
            div.stat { span.figure { (f.pops.iter().filter(|p| p.answered).count()) " / " (f.pops.len()) } span.label { "PoPs in DNS" } }
            div.stat { span.figure { (f.sites) } span.label { "sites" } }
            div.stat { span.figure { (f.last_seq) } span.label { "events logged" } }
            @if !f.quorum {
                div.stat.bad { span.figure { "no quorum" } span.label { "this replica takes no writes" } }
            }
        }
        h2 { "Nodes" }
        div.scroll {
            table #nodes {
                thead { tr {
                    th { "Node" } th { "Role" } th { "PoP" } th { "State" }
                    th.num { "Lag" } th.num.wide { "Req/s" } th.num.wide { "Hits" } th.wide { "Last seen" }
                } }
                tbody {
                    @for n in &f.nodes {
                        tr data-node=(n.node.name) {
                            td {
                                strong { (n.node.name) }
                                div.muted data-credential=(n.node.credential_generation.map_or("shared".to_string(), |g| g.to_string())) {
                                    (n.node.credential_generation.map_or("shared node token".to_string(), |g| format!("credential generation {g}")))
                                }
                            }
                            td { (n.node.role.as_str()) }
                            td { (n.node.pop.as_deref().unwrap_or("–")) }
                            td {
                                @if n.connected {
                                    span.badge.ok data-state="connected" { "connected" }
                                } @else {
                                    span.badge.bad data-state="disconnected" { "disconnected" }
                                }
                                @for p in &n.node.problems { div.problem { (p) } }
                            }
                            td.num title="events not yet applied" { (n.lag) }
                            td.num.wide { (n.node.load_rps.map_or("–".to_string(), |r| r.to_string())) }
                            td.num.wide { (n.node.hit_permille.map_or("–".to_string(), |h| format!("{:.1} %", f64::from(h) / 10.0))) }
                            td.wide { (when(super::now_ms().saturating_sub(n.since_contact_ms))) }
                        }
                    }
                    @if f.nodes.is_empty() {
                        tr { td colspan="8" .muted { "No node has connected yet." } }
                    }
                }
            }
        }
        h2 { "DNS answers" }
        p.muted { "Which PoPs the DNS servers send clients to now: those with a live edge that serves well and a weight above 0; edges with problems only when no PoP has a sound one." }
        div.scroll {
            table #pops {
                thead { tr { th { "PoP" } th { "In DNS" } th.num { "Weight" } th { "Edges" } } }
                tbody {
                    @for p in &f.pops {
                        tr data-pop=(p.name) {
                            td { strong { (p.name) } }
                            td {
                                @if p.answered {
                                    span.badge.ok data-dns="answered" { "answered" }
                                } @else {
                                    span.badge.bad data-dns="not-answered" { "not answered" }
                                }
                            }
                            td.num {
                                (p.weight) "%"
                                @if let Some(r) = &p.reason { div.muted { (r) } }
                            }
                            td.edges {
                                @for e in &p.sound { span.chip.ok { (e) } }
                                @for e in &p.degraded { span.chip.warn title="reports a problem" { (e) } }
                                @for e in &p.down { span.chip.bad title="dead or silent" { (e) } }
                            }
                        }
                    }
                    @if f.pops.is_empty() {
                        tr { td colspan="4" .muted { "No edge has registered a PoP yet." } }
                    }
                }
            }
        }
    }
}

/// What DNS servers answer, per PoP, from the registry and the weights:
/// the rules of `dns::steer` (sound edges in PoPs with weight first, then
/// degraded ones, then weights ignored), without the addresses each DNS
/// server's own file allows.
pub(super) fn pop_views(nodes: &[NodeStatus], weights: &[PopRecord]) -> Vec<PopView> {
    let mut pops: std::collections::BTreeMap<String, PopView> = std::collections::BTreeMap::new();
    for n in nodes.iter().filter(|n| n.node.role == outpost_config::Role::Edge) {
        let Some(name) = &n.node.pop else { continue };
        let weight = weights.iter().find(|w| w.name == *name);
        let view = pops.entry(name.clone()).or_insert_with(|| PopView {
            name: name.clone(),
            weight: weight.map_or(FULL_WEIGHT, |w| w.weight),
            reason: weight.and_then(|w| w.reason.clone()),
            sound: Vec::new(),
            degraded: Vec::new(),
            down: Vec::new(),
            answered: false,
        });
        let list = if !crate::dns::registry::answerable(n) {
            &mut view.down
        } else if n.node.problems.is_empty() {
            &mut view.sound
        } else {
            &mut view.degraded
        };
        list.push(n.node.name.clone());
    }
    let mut pops: Vec<PopView> = pops.into_values().collect();
    let tiers: [&dyn Fn(&PopView) -> bool; 3] =
        [&|p| p.weight > 0 && !p.sound.is_empty(), &|p| p.weight > 0 && !p.degraded.is_empty(), &|p| {
            !p.sound.is_empty() || !p.degraded.is_empty()
        }];
    for tier in tiers {
        if pops.iter().any(tier) {
            for p in &mut pops {
                p.answered = tier(p);
            }
            break;
        }
    }
    pops
}

/// A site's line in the list.
#[derive(Debug)]
pub(super) struct SiteLine {
    pub(super) id: String,
    pub(super) version: u64,
    pub(super) updated_ms: u64,
    pub(super) hosts: Vec<String>,
}

pub(super) fn sites(frame: &Frame<'_>, sites: &[SiteLine]) -> Markup {
    page(
        frame,
        "Sites",
        html! {
            div.heading {
                h1 { "Sites" }
                @if frame.role == Role::Operator { a.button.primary href="/console/sites/new" { "New site" } }
            }
            div.scroll {
                table #sites {
                    thead { tr { th { "Site" } th { "Hosts" } th.num { "Version" } th.wide { "Changed" } } }
                    tbody {
                        @for s in sites {
                            tr {
                                td { a href=(format!("/console/sites/{}", s.id)) { strong { (s.id) } } }
                                td { @for h in &s.hosts { code { (h) } " " } }
                                td.num { (s.version) }
                                td.wide { (when(s.updated_ms)) }
                            }
                        }
                        @if sites.is_empty() {
                            tr { td colspan="4" .muted { "No site yet." } }
                        }
                    }
                }
            }
        },
    )
}

/// The site editor: the text, what is wrong with it, the kept versions.
#[derive(Debug)]
pub(super) struct Editor<'a> {
    /// The site being edited (`None`: a new one).
    pub(super) id: Option<&'a str>,
    pub(super) text: &'a str,
    /// The version the text was started from.
    pub(super) base: Option<u64>,
    pub(super) problems: &'a [String],
    pub(super) notice: Option<&'a str>,
    pub(super) history: &'a [SiteRecord],
}

pub(super) fn editor(frame: &Frame<'_>, e: &Editor<'_>) -> Markup {
    let title = e.id.map_or_else(|| "New site".to_string(), |id| format!("Site {id}"));
    let operator = frame.role == Role::Operator;
    page(
        frame,
        &title,
        html! {
            div.heading {
                h1 { (title) }
                @if let Some(v) = e.base { span.badge.muted { "version " (v) } }
            }
            @if let Some(n) = e.notice { p.notice role="status" { (n) } }
            div.editor {
                form method="post" action="/console/sites/save" {
                    input type="hidden" name=(CSRF_FIELD) value=(frame.csrf);
                    input type="hidden" name="id" value=(e.id.unwrap_or(""));
                    input type="hidden" name="base" value=(e.base.map_or(String::new(), |v| v.to_string()));
                    label for="toml" { "Site file (TOML)" }
                    textarea #toml name="toml" rows="24" spellcheck="false" autocapitalize="off"
                        data-check="/console/sites/check" data-out="problems" readonly[!operator] { (e.text) }
                    div #problems aria-live="polite" { (problems(e.problems)) }
                    @if operator {
                        div.actions { button.primary type="submit" { "Save as a new version" } }
                    }
                }
                @if !e.history.is_empty() {
                    aside.history {
                        h2 { "Versions" }
                        ol {
                            @for (i, r) in e.history.iter().enumerate() {
                                li {
                                    strong { "v" (r.version) } " " (when(r.updated_ms))
                                    @if let Some(prev) = e.history.get(i + 1) {
                                        " · " a href=(format!("/console/sites/{}/diff?from={}&to={}", r.id, prev.version, r.version)) { "diff with v" (prev.version) }
                                    }
                                    @if i > 0 && operator {
                                        " · "
                                        form.inline method="post" action=(format!("/console/sites/{}/rollback", r.id)) {
                                            input type="hidden" name=(CSRF_FIELD) value=(frame.csrf);
                                            input type="hidden" name="version" value=(r.version);
                                            input type="hidden" name="base" value=(e.base.unwrap_or(0));
                                            button.link type="submit" { "roll back to v" (r.version) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// A site file's problems as `line:column` and message, or that it is fine.
pub(super) fn problems(list: &[String]) -> Markup {
    html! {
        @if list.is_empty() {
            p.ok data-valid="yes" { "No problems." }
        } @else {
            ul.problems data-valid="no" {
                @for p in list { li { (p) } }
            }
        }
    }
}

/// A diagnostic as the editor shows it: `line:column: message` (the file
/// is the one in the editor).
pub(super) fn diagnostic(d: &Diagnostic) -> String {
    format!("{}:{}: {}", d.loc.line, d.loc.column, d.message)
}

pub(super) fn diff(frame: &Frame<'_>, id: &str, from: &SiteRecord, to: &SiteRecord) -> Markup {
    let diff = similar::TextDiff::from_lines(&from.toml, &to.toml);
    page(
        frame,
        &format!("Site {id}: v{} → v{}", from.version, to.version),
        html! {
            div.heading {
                h1 { "Site " (id) ": v" (from.version) " → v" (to.version) }
                a href=(format!("/console/sites/{id}")) { "Back to the site" }
            }
            div.scroll {
                table.diff {
                    tbody {
                        @for (i, group) in diff.grouped_ops(3).iter().enumerate() {
                            @if i > 0 { tr.gap { td colspan="3" { "⋯" } } }
                            @for op in group {
                                @for change in diff.iter_changes(op) {
                                    @let (class, sign) = match change.tag() {
                                        similar::ChangeTag::Delete => ("del", "-"),
                                        similar::ChangeTag::Insert => ("ins", "+"),
                                        similar::ChangeTag::Equal => ("eq", " "),
                                    };
                                    tr class=(class) {
                                        td.num { (change.old_index().map_or(String::new(), |n| (n + 1).to_string())) }
                                        td.num { (change.new_index().map_or(String::new(), |n| (n + 1).to_string())) }
                                        td { code { (sign) " " (change.value().trim_end_matches('\n')) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if from.toml == to.toml { p.muted { "The two versions are the same." } }
        },
    )
}

/// The purge form's values, kept when it is sent back with a problem.
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct PurgeForm {
    #[serde(default)]
    pub(super) site: String,
    #[serde(default)]
    pub(super) by: String,
    #[serde(default)]
    pub(super) value: String,
    #[serde(default)]
    pub(super) soft: Option<String>,
    #[serde(default)]
    pub(super) csrf: String,
}

pub(super) fn purge(
    frame: &Frame<'_>,
    sites: &[String],
    form: &PurgeForm,
    problem: Option<&str>,
    recent: &[PurgeStatus],
) -> Markup {
    let by = if form.by.is_empty() { "prefix" } else { form.by.as_str() };
    page(
        frame,
        "Purge",
        html! {
            h1 { "Purge" }
            @if frame.role == Role::Operator {
                form.card.purge method="post" action="/console/purge" {
                    input type="hidden" name=(CSRF_FIELD) value=(frame.csrf);
                    @if let Some(p) = problem { p.error role="alert" { (p) } }
                    div.row {
                        label { "Site"
                            select name="site" required {
                                @for s in sites { option value=(s) selected[*s == form.site] { (s) } }
                            }
                        }
                        label { "By"
                            select name="by" {
                                @for (v, l) in [("url", "URLs"), ("prefix", "prefix"), ("tag", "tags"), ("all", "everything")] {
                                    option value=(v) selected[v == by] { (l) }
                                }
                            }
                        }
                        label.check { input type="checkbox" name="soft" value="1" checked[form.soft.is_some()]; " soft (mark stale, revalidate)" }
                    }
                    label for="value" { "URLs (one per line), a prefix, or tags (by everything: leave empty)" }
                    textarea #value name="value" rows="3" spellcheck="false" placeholder="/img/" { (form.value) }
                    div.actions { button.primary type="submit" { "Purge" } }
                }
            }
            h2 { "Recent purges" }
            div.scroll { (purge_table(recent)) }
        },
    )
}

fn target(t: &PurgeTarget) -> String {
    match t {
        PurgeTarget::Urls { urls } => format!("URLs {}", urls.join(" ")),
        PurgeTarget::Prefix { prefix } => format!("prefix {prefix}"),
        PurgeTarget::Tags { tags } => format!("tags {}", tags.join(" ")),
        PurgeTarget::All => "everything".to_string(),
    }
}

fn purge_table(recent: &[PurgeStatus]) -> Markup {
    html! {
        table #purges {
            thead { tr { th { "Purge" } th { "Site" } th { "What" } th.num { "Applied" } th.wide { "When" } } }
            tbody {
                @for p in recent {
                    tr {
                        td { a href=(format!("/console/purges/{}", p.id)) { (p.id) } }
                        td { (p.site) }
                        td { (target(&p.target)) @if p.soft { " " span.badge.muted { "soft" } } }
                        td.num { (p.acked.len()) @if !p.pending.is_empty() { " (" (p.pending.len()) " pending)" } }
                        td.wide { (when(p.at_ms)) }
                    }
                }
                @if recent.is_empty() { tr { td colspan="5" .muted { "No purge yet." } } }
            }
        }
    }
}

/// One purge's report: every registered node and whether it applied it.
#[derive(Debug)]
pub(super) struct Report {
    pub(super) status: PurgeStatus,
    /// Registered nodes, and whether each is connected.
    pub(super) nodes: Vec<(String, bool)>,
    /// Past the wait an API purge gives its acknowledgements.
    pub(super) overdue: bool,
}

impl Report {
    /// Every connected node has applied it.
    pub(super) fn done(&self) -> bool {
        self.status.pending.is_empty()
    }
}

pub(super) fn report(frame: &Frame<'_>, r: &Report) -> Markup {
    let s = &r.status;
    page(
        frame,
        &format!("Purge {}", s.id),
        html! {
            div.heading {
                h1 { "Purge " (s.id) }
                a href="/console/purge" { "All purges" }
            }
            p { "Site " strong { (s.site) } ", " (target(&s.target)) @if s.soft { " (soft)" } ", event " (s.seq) ", " (when(s.at_ms)) }
            div #report data-live=(format!("/console/purges/{}/live", s.id)) data-every="1000" aria-live="polite" { (report_live(r)) }
        },
    )
}

pub(super) fn report_live(r: &Report) -> Markup {
    let s = &r.status;
    html! {
        @if r.done() {
            p.ok #outcome data-done="yes" { "Applied by every connected node (" (s.acked.len()) ")." }
        } @else if r.overdue {
            p.error #outcome data-done="no" role="alert" { "Not applied yet by: " (s.pending.join(", ")) }
        } @else {
            p.notice #outcome data-done="no" { "Waiting for " (s.pending.len()) " node(s)…" }
        }
        div.scroll {
            table #acks {
                thead { tr { th { "Node" } th { "State" } } }
                tbody {
                    @for (name, connected) in &r.nodes {
                        tr data-node=(name) {
                            td { strong { (name) } }
                            td {
                                @if s.acked.contains(name) {
                                    span.badge.ok data-ack="applied" { "applied" }
                                } @else if *connected {
                                    span.badge.warn data-ack="pending" { "pending" }
                                } @else {
                                    span.badge.muted data-ack="disconnected" { "disconnected: applies it on reconnecting" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(super) fn events(frame: &Frame<'_>, events: &[EventRecord], older: Option<u64>) -> Markup {
    page(
        frame,
        "Events",
        html! {
            h1 { "Events" }
            div.scroll {
                table #events {
                    thead { tr { th.num { "Seq" } th { "When" } th { "Event" } th { "Site" } th { "Detail" } } }
                    tbody {
                        @for e in events {
                            tr {
                                td.num { (e.seq) }
                                td { (when(e.at_ms)) }
                                @match &e.event {
                                    outpost_config::Event::SiteUpserted { site_id, version, .. } => {
                                        td { "site saved" } td { (site_id) } td { "version " (version) }
                                    }
                                    outpost_config::Event::SiteDeleted { site_id } => {
                                        td { "site deleted" } td { (site_id) } td {}
                                    }
                                    outpost_config::Event::Purge(p) => {
                                        td { "purge" } td { (p.site_id) }
                                        td { a href=(format!("/console/purges/{}", p.id)) { (p.id) } " " (target(&p.target)) @if p.soft { " (soft)" } }
                                    }
                                    outpost_config::Event::Certificate { site_id, certificate } => {
                                        td { "certificate" } td { (site_id) }
                                        td { (certificate.names.join(", ")) ", valid until " (when(certificate.not_after_ms)) }
                                    }
                                    outpost_config::Event::AcmeChallenge { site_id, token, .. } => {
                                        td { "ACME challenge" } td { (site_id) } td { (token) }
                                    }
                                }
                            }
                        }
                        @if events.is_empty() { tr { td colspan="5" .muted { "The log is empty." } } }
                    }
                }
            }
            @if let Some(before) = older {
                p { a.button href=(format!("/console/events?before={before}")) { "Older events" } }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_config::api::NodeRecord;

    fn edge(name: &str, pop: &str, connected: bool, problems: &[&str]) -> NodeStatus {
        NodeStatus {
            node: NodeRecord {
                name: name.into(),
                role: outpost_config::Role::Edge,
                pop: Some(pop.into()),
                addrs: vec!["127.0.0.1:80".into()],
                acked_seq: 0,
                last_contact_ms: 0,
                load_rps: None,
                hit_permille: None,
                problems: problems.iter().map(|p| p.to_string()).collect(),
                credential_generation: None,
            },
            connected,
            lag: 0,
            since_contact_ms: if connected { 100 } else { 60_000 },
        }
    }

    fn answered(views: &[PopView]) -> Vec<&str> {
        views.iter().filter(|p| p.answered).map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn dns_answers_follow_the_steering_rules() {
        let drained =
            |name: &str| PopRecord { name: name.into(), weight: 0, reason: Some("work".into()), updated_ms: 0 };
        let nodes =
            [edge("a1", "fra", true, &[]), edge("b1", "iad", true, &["disk full"]), edge("c1", "sin", false, &[])];
        let v = pop_views(&nodes, &[]);
        assert_eq!(answered(&v), ["fra"], "sound first; a dead edge's PoP is not answered");
        assert_eq!(v.iter().find(|p| p.name == "sin").unwrap().down, ["c1"]);
        assert_eq!(answered(&pop_views(&nodes, &[drained("fra")])), ["iad"], "then degraded in PoPs with weight");
        assert_eq!(
            answered(&pop_views(&nodes, &[drained("fra"), drained("iad")])),
            ["fra", "iad"],
            "then weights ignored"
        );
        assert!(answered(&pop_views(&nodes[2..], &[])).is_empty());
    }

    #[test]
    fn what_nodes_and_operators_wrote_is_escaped() {
        let mut n = edge("<script>alert(1)</script>", "p\"><b>", true, &["<img src=x onerror=alert(1)>"]);
        n.node.role = outpost_config::Role::Edge;
        let f = Fleet {
            pops: pop_views(std::slice::from_ref(&n), &[]),
            nodes: vec![n],
            sites: 0,
            last_seq: 0,
            quorum: true,
        };
        let html = fleet_live(&f).into_string();
        assert!(!html.contains("<script>") && !html.contains("<img") && !html.contains("\"><b>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }
}
