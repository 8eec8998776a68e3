//! The console: pages for operators, served by the control plane under
//! `/console/` beside the API, reading and writing through the same
//! [`Control`] the API handlers use.
//!
//! - **Fleet** (`/console/`): every node with its state, lag, load and hit
//!   ratio, and the PoPs DNS answers with; refreshed every two seconds.
//! - **Sites**: the list, an editor that checks the text as it is typed
//!   (the `line:column` problems `outpost check` gives), saving as a new
//!   version, diffs between kept versions and rollback.
//! - **Purge**: the form, then each node's acknowledgement as it comes.
//! - **Events**: the log, newest first.
//!
//! Sign-in and forms are in [`auth`]: a signed cookie (`HttpOnly`,
//! `SameSite=Strict`, `Secure` over HTTPS), a CSRF token in every form that
//! changes something, and the browser's own origin headers. Every page is
//! sent with a content security policy that allows only the console's own
//! script and style, `no-store`, and no framing.

mod auth;
mod view;

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Form, FromRequestParts, Path as UrlPath, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use outpost_config::Site;
use outpost_config::api::PurgeRequest;
use serde::Deserialize;

use self::auth::{Keys, Role, Session};
use self::view::{Frame, Section};
use crate::api::{ApiError, Control, DEFAULT_PURGE_WAIT};
use crate::store::{PurgeRecord, now_ms};

/// Sign-ins one client address may try per second (sustained), and in a
/// burst.
const SIGN_IN_RATE: f64 = 0.2;
const SIGN_IN_BURST: f64 = 10.0;
/// Events a page of the log shows.
const EVENTS_PER_PAGE: u64 = 50;
/// Purges the purge page lists, and how far back in the log it looks.
const RECENT_PURGES: usize = 20;
const PURGE_SCAN: u64 = 500;

/// What the console's handlers share.
#[derive(Debug)]
pub struct Console {
    control: Arc<Control>,
    keys: Keys,
    /// Served over HTTPS: cookies are `Secure`, and browsers are told to
    /// keep to HTTPS.
    secure: bool,
    /// Sign-in attempts per client address.
    sign_ins: crate::api::RateLimiter,
}

type Shared = State<Arc<Console>>;

/// The console's routes.
/// The most a sign-in or sign-out form may hold: a token, a CSRF token.
const SMALL_FORM: usize = 4096;

pub fn router(control: Arc<Control>, secure: bool) -> Router {
    let keys =
        Keys::new(control.admin_token(), control.node_token(), control.viewer_token(), control.shares_node_token());
    let sign_ins = crate::api::RateLimiter::new(SIGN_IN_RATE, SIGN_IN_BURST);
    let console = Arc::new(Console { control, keys, secure, sign_ins });
    let first = axum::middleware::from_fn_with_state(Arc::clone(&console), session_first);
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(fleet))
        .route("/console/fleet/live", get(fleet_live))
        .route("/console/login", get(login_page).post(login).layer(DefaultBodyLimit::max(SMALL_FORM)))
        .route("/console/logout", post(logout).layer(DefaultBodyLimit::max(SMALL_FORM)))
        .route("/console/sites", get(sites))
        .route("/console/sites/new", get(new_site))
        .route("/console/sites/check", post(check_site))
        .route("/console/sites/save", post(save_site))
        .route("/console/sites/{id}", get(site))
        .route("/console/sites/{id}/diff", get(diff))
        .route("/console/sites/{id}/rollback", post(rollback))
        .route("/console/purge", get(purge_page).post(purge))
        .route("/console/purges/{id}", get(report))
        .route("/console/purges/{id}/live", get(report_live))
        .route("/console/events", get(events))
        .route("/console/{*rest}", get(missing).post(missing))
        .route("/console/assets/console.css", get(|| async { asset("text/css", include_str!("console.css")) }))
        .route("/console/assets/console.js", get(|| async { asset("text/javascript", include_str!("console.js")) }))
        .route_layer(first)
        .route_layer(axum::middleware::from_fn(crate::api::count_requests))
        .layer(axum::middleware::from_fn_with_state(secure, guard))
        .layer(DefaultBodyLimit::max(crate::api::MAX_BODY))
        .with_state(console)
}

/// A form posted without a session (the sign-in's aside) is refused
/// before it is read: a client that has not signed in cannot make the
/// console wait for and buffer a body of up to the API's limit. (The
/// editor's check, a fragment, says so itself, with a 401; signing in and
/// out take small forms, [`SMALL_FORM`].)
async fn session_first(State(c): Shared, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let exempt = matches!(req.uri().path(), "/console/login" | "/console/logout" | "/console/sites/check");
    if req.method() == axum::http::Method::POST && !exempt {
        // In the order `may_change` refuses them.
        if !auth::same_origin(req.headers()) {
            return Refused::OtherSite.into_response();
        }
        if c.session(req.headers()).is_none() {
            return Refused::NoSession.into_response();
        }
    }
    next.run(req).await
}

/// The headers every console response carries.
async fn guard(State(secure): State<bool>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if secure {
        h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// A console path that is no page.
async fn missing() -> Response {
    html(StatusCode::NOT_FOUND, view::problem(None, "Not found", "There is no such console page."))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

fn html(status: StatusCode, markup: Markup) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response()
}

fn see(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// A page request's session; without one, the answer is a redirect to
/// sign in.
struct Page(Session);

impl FromRequestParts<Arc<Console>> for Page {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Console>) -> Result<Page, Response> {
        c.session(&parts.headers).map(Page).ok_or_else(|| see("/console/login"))
    }
}

/// A refreshed fragment's session; without one, 401 (the script then goes
/// to the sign-in page).
struct Fragment;

impl FromRequestParts<Arc<Console>> for Fragment {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Console>) -> Result<Fragment, Response> {
        match c.session(&parts.headers) {
            Some(_) => Ok(Fragment),
            None => Err((StatusCode::UNAUTHORIZED, "sign in again").into_response()),
        }
    }
}

/// Why a request that changes something is refused (403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    OtherSite,
    NoSession,
    BadToken,
    ReadOnly,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let (title, detail) = match self {
            Refused::OtherSite => ("Refused", "This request was sent from another site."),
            Refused::NoSession => ("Refused", "Sign in first: this request carries no console session."),
            Refused::BadToken => ("Refused", "The form's token is missing or stale; reload the page and try again."),
            Refused::ReadOnly => ("Read-only", "Signed in read-only: nothing can be changed from here."),
        };
        // Any client can send one: not a warning each.
        tracing::debug!(?self, "console request refused");
        html(StatusCode::FORBIDDEN, view::problem(None, title, detail))
    }
}

impl Console {
    /// The session a request carries, if any.
    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        self.keys.verify(auth::cookie(headers)?, now_ms() / 1000)
    }

    fn frame<'a>(&self, s: &Session, csrf: &'a str, section: Section) -> Frame<'a> {
        Frame { role: s.role, csrf, section }
    }

    /// A request that changes something: a session, sent from a console
    /// page (origin headers and the CSRF token), by an operator.
    fn may_change(&self, headers: &HeaderMap, csrf: &str) -> Result<Session, Refused> {
        if !auth::same_origin(headers) {
            return Err(Refused::OtherSite);
        }
        let s = self.session(headers).ok_or(Refused::NoSession)?;
        if !self.keys.csrf_ok(&s, csrf) {
            return Err(Refused::BadToken);
        }
        if s.role != Role::Operator {
            return Err(Refused::ReadOnly);
        }
        Ok(s)
    }

    /// An error page in the frame, with the API's status. What went wrong
    /// inside (a store's message) goes to the log, not the page.
    fn error(&self, s: &Session, section: Section, e: &ApiError) -> Response {
        let csrf = self.keys.csrf(s);
        let detail = if e.status.is_server_error() {
            tracing::error!(error = %e.detail, "console request failed");
            "The control plane could not do that just now; its log says why."
        } else {
            e.detail.as_str()
        };
        html(e.status, view::problem(Some(&self.frame(s, &csrf, section)), "Something went wrong", detail))
    }
}

async fn login_page(State(c): Shared, headers: HeaderMap) -> Response {
    if c.session(&headers).is_some() {
        return see("/console/");
    }
    html(StatusCode::OK, view::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login(
    State(c): Shared,
    conn: Option<axum::Extension<outpost_net::Conn>>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if !auth::same_origin(&headers) {
        return html(StatusCode::FORBIDDEN, view::login(Some("This sign-in was sent from another site.")));
    }
    // Guesses are limited per client address (tokens are 192 random bits;
    // this keeps the log and the CPU from a flood).
    let who = conn.map_or_else(|| "unknown".to_string(), |axum::Extension(c)| crate::api::client_network(c.peer.ip()));
    if !c.sign_ins.allow(&who) {
        return html(StatusCode::TOO_MANY_REQUESTS, view::login(Some("Too many sign-ins from here; wait a minute.")));
    }
    match c.keys.role_of(&f.token) {
        Some(role) => {
            let cookie = auth::set_cookie(&c.keys.issue(role, now_ms() / 1000), c.secure);
            tracing::info!(read_only = role == Role::ReadOnly, "console sign-in");
            ([(header::SET_COOKIE, cookie)], Redirect::to("/console/")).into_response()
        }
        None => {
            tracing::warn!(client = %who, "console sign-in with a wrong token");
            html(StatusCode::UNAUTHORIZED, view::login(Some("That token is not valid.")))
        }
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(c): Shared, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    let out = || ([(header::SET_COOKIE, auth::clear_cookie(c.secure))], Redirect::to("/console/login")).into_response();
    match c.session(&headers) {
        // Expired or not ours: nothing to protect, the cookie goes.
        None => out(),
        Some(s) if c.keys.csrf_ok(&s, &f.csrf) && auth::same_origin(&headers) => out(),
        Some(_) => {
            html(StatusCode::FORBIDDEN, view::problem(None, "Refused", "This sign-out was not sent from the console."))
        }
    }
}

impl Console {
    async fn fleet_data(&self) -> Result<view::Fleet, ApiError> {
        let store = &self.control.store;
        let nodes = self.control.node_statuses().await?;
        let weights = store.pops().await.map_err(ApiError::from)?;
        Ok(view::Fleet {
            pops: view::pop_views(&nodes, &weights),
            nodes,
            sites: store.sites().await.map_err(ApiError::from)?.len(),
            last_seq: store.last_seq().await.map_err(ApiError::from)?,
            quorum: self.control.has_quorum(),
        })
    }
}

async fn fleet(State(c): Shared, Page(s): Page) -> Response {
    match c.fleet_data().await {
        Ok(f) => {
            let csrf = c.keys.csrf(&s);
            html(StatusCode::OK, view::fleet(&c.frame(&s, &csrf, Section::Fleet), &f))
        }
        Err(e) => c.error(&s, Section::Fleet, &e),
    }
}

async fn fleet_live(State(c): Shared, _: Fragment) -> Response {
    match c.fleet_data().await {
        Ok(f) => html(StatusCode::OK, view::fleet_live(&f)),
        Err(e) => e.into_response(),
    }
}

async fn sites(State(c): Shared, Page(s): Page) -> Response {
    let list = match c.control.store.sites().await {
        Ok(l) => l,
        Err(e) => return c.error(&s, Section::Sites, &e.into()),
    };
    let lines: Vec<view::SiteLine> = list
        .into_iter()
        .map(|r| view::SiteLine {
            hosts: Site::parse(Path::new(&r.id), &r.toml)
                .map(|site| site.hosts.iter().map(|h| h.value.to_string()).collect())
                .unwrap_or_default(),
            id: r.id,
            version: r.version,
            updated_ms: r.updated_ms,
        })
        .collect();
    let csrf = c.keys.csrf(&s);
    html(StatusCode::OK, view::sites(&c.frame(&s, &csrf, Section::Sites), &lines))
}

/// What a new site's editor starts with.
const NEW_SITE: &str = "[site]\nid = \"\"\nhosts = [\"\"]\n\n[[origin]]\nurl = \"http://\"\n";

async fn new_site(State(c): Shared, Page(s): Page) -> Response {
    let csrf = c.keys.csrf(&s);
    let e = view::Editor { id: None, text: NEW_SITE, base: None, problems: &[], notice: None, history: &[] };
    html(StatusCode::OK, view::editor(&c.frame(&s, &csrf, Section::Sites), &e))
}

#[derive(Deserialize)]
struct Saved {
    saved: Option<u64>,
}

async fn site(State(c): Shared, Page(s): Page, UrlPath(id): UrlPath<String>, Query(q): Query<Saved>) -> Response {
    let history = match c.control.store.site_history(&id).await {
        Ok(h) => h,
        Err(e) => return c.error(&s, Section::Sites, &e.into()),
    };
    let Some(current) = history.first() else {
        let e = ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("There is no site `{id}`."));
        return c.error(&s, Section::Sites, &e);
    };
    let notice = q.saved.map(|v| format!("Saved as version {v}; nodes apply it as the event reaches them."));
    let csrf = c.keys.csrf(&s);
    let e = view::Editor {
        id: Some(&id),
        text: &current.toml,
        base: Some(current.version),
        problems: &[],
        notice: notice.as_deref(),
        history: &history,
    };
    html(StatusCode::OK, view::editor(&c.frame(&s, &csrf, Section::Sites), &e))
}

/// Every problem of a site file's text, as the editor shows them.
fn site_problems(text: &str) -> Result<Site, Vec<String>> {
    Site::parse(Path::new("site.toml"), text).map_err(|e| e.diagnostics.iter().map(view::diagnostic).collect())
}

/// `POST /console/sites/check` (the text as the body, the CSRF token in a
/// header): the problems fragment, 200 when there are none, 400 otherwise.
async fn check_site(State(c): Shared, headers: HeaderMap, body: axum::body::Body) -> Response {
    let Some(s) = c.session(&headers) else {
        return (StatusCode::UNAUTHORIZED, "sign in again").into_response();
    };
    let token = headers.get(auth::CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !c.keys.csrf_ok(&s, token) || !auth::same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "refused").into_response();
    }
    let body = match crate::api::read_text(body).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    match site_problems(&body) {
        Ok(_) => html(StatusCode::OK, view::problems(&[])),
        Err(p) => html(StatusCode::BAD_REQUEST, view::problems(&p)),
    }
}

#[derive(Deserialize)]
struct SaveForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    base: String,
    #[serde(default)]
    toml: String,
}

async fn save_site(State(c): Shared, headers: HeaderMap, Form(f): Form<SaveForm>) -> Response {
    let s = match c.may_change(&headers, &f.csrf) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    // Browsers send text areas with CRLF line ends.
    let text = f.toml.replace("\r\n", "\n");
    let editing = (!f.id.is_empty()).then_some(f.id.as_str());
    let base = f.base.parse::<u64>().ok();
    let history = match editing {
        Some(id) => c.control.store.site_history(id).await.unwrap_or_default(),
        None => Vec::new(),
    };
    let csrf = c.keys.csrf(&s);
    let again = |status: StatusCode, problems: &[String], notice: Option<&str>| {
        let e = view::Editor { id: editing, text: &text, base, problems, notice, history: &history };
        html(status, view::editor(&c.frame(&s, &csrf, Section::Sites), &e))
    };
    let site = match site_problems(&text) {
        Ok(site) => site,
        Err(p) => return again(StatusCode::BAD_REQUEST, &p, Some("Not saved: the file has problems.")),
    };
    if editing.is_some_and(|id| id != site.id) {
        let m = format!("Not saved: this is site `{}`; the file says `{}`.", editing.unwrap_or(""), site.id);
        return again(StatusCode::BAD_REQUEST, &[], Some(&m));
    }
    // Stored only if the site is still at the version the editor started
    // from: the store's compare-and-swap, so no one's save is lost.
    match c.control.upsert_site_text(&text, Some(&site.id), Some(base)).await {
        Ok(stored) => {
            tracing::info!(site = %stored.id, version = stored.version, "site saved from the console");
            see(&format!("/console/sites/{}?saved={}", stored.id, stored.version))
        }
        Err(e) if e.status == StatusCode::CONFLICT => {
            let m = format!("Not saved: {}. Your text is kept below.", e.detail);
            again(e.status, &[], Some(&m))
        }
        Err(e) if e.status.is_server_error() => c.error(&s, Section::Sites, &e),
        Err(e) => again(e.status, &[], Some(&format!("Not saved: {}", e.detail))),
    }
}

#[derive(Deserialize)]
struct DiffQuery {
    from: Option<u64>,
    to: Option<u64>,
}

async fn diff(State(c): Shared, Page(s): Page, UrlPath(id): UrlPath<String>, Query(q): Query<DiffQuery>) -> Response {
    let history = match c.control.store.site_history(&id).await {
        Ok(h) => h,
        Err(e) => return c.error(&s, Section::Sites, &e.into()),
    };
    let find = |v: Option<u64>, default: usize| match v {
        Some(v) => history.iter().find(|r| r.version == v),
        None => history.get(default),
    };
    // A site with one version is compared with itself.
    match (find(q.from, 1).or_else(|| find(q.from, 0)), find(q.to, 0)) {
        (Some(from), Some(to)) => {
            let csrf = c.keys.csrf(&s);
            html(StatusCode::OK, view::diff(&c.frame(&s, &csrf, Section::Sites), &id, from, to))
        }
        _ => {
            let m = format!("Site `{id}` has no such versions kept (the last {} are).", crate::store::HISTORY);
            c.error(&s, Section::Sites, &ApiError::new(StatusCode::NOT_FOUND, "not_found", m))
        }
    }
}

#[derive(Deserialize)]
struct RollbackForm {
    #[serde(default)]
    csrf: String,
    version: u64,
    /// The current version as the page showed it.
    base: u64,
}

async fn rollback(
    State(c): Shared,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    Form(f): Form<RollbackForm>,
) -> Response {
    let s = match c.may_change(&headers, &f.csrf) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let history = match c.control.store.site_history(&id).await {
        Ok(h) => h,
        Err(e) => return c.error(&s, Section::Sites, &e.into()),
    };
    let Some(old) = history.iter().find(|r| r.version == f.version) else {
        let m = format!("Site `{id}` keeps no version {}.", f.version);
        return c.error(&s, Section::Sites, &ApiError::new(StatusCode::NOT_FOUND, "not_found", m));
    };
    match c.control.upsert_site_text(&old.toml, Some(&id), Some(Some(f.base))).await {
        Ok(stored) => {
            tracing::info!(site = %id, from = f.version, version = stored.version, "site rolled back from the console");
            see(&format!("/console/sites/{id}?saved={}", stored.version))
        }
        Err(e) => c.error(&s, Section::Sites, &e),
    }
}

impl Console {
    /// The latest purges in the log, newest first, with their reports.
    async fn recent_purges(&self) -> Result<Vec<outpost_config::api::PurgeStatus>, ApiError> {
        let store = &self.control.store;
        let last = store.last_seq().await.map_err(ApiError::from)?;
        let from =
            last.saturating_sub(PURGE_SCAN).max(store.first_seq().await.map_err(ApiError::from)?.saturating_sub(1));
        let events = store.events_after(from, PURGE_SCAN as usize).await.map_err(ApiError::from)?;
        let nodes: Vec<String> = store.nodes().await.map_err(ApiError::from)?.into_keys().collect();
        let mut out = Vec::new();
        for e in events.into_iter().rev() {
            if let outpost_config::Event::Purge(purge) = e.event {
                out.push(self.control.purge_status_among(&PurgeRecord { purge, seq: e.seq, at_ms: e.at_ms }, &nodes));
                if out.len() == RECENT_PURGES {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn purge_page(
        &self,
        s: &Session,
        form: &view::PurgeForm,
        problem: Option<&str>,
        status: StatusCode,
    ) -> Response {
        let sites: Vec<String> = match self.control.store.sites().await {
            Ok(l) => l.into_iter().map(|r| r.id).collect(),
            Err(e) => return self.error(s, Section::Purge, &e.into()),
        };
        let recent = match self.recent_purges().await {
            Ok(r) => r,
            Err(e) => return self.error(s, Section::Purge, &e),
        };
        let csrf = self.keys.csrf(s);
        html(status, view::purge(&self.frame(s, &csrf, Section::Purge), &sites, form, problem, &recent))
    }

    async fn report(&self, id: &str) -> Result<view::Report, ApiError> {
        let Some(p) = self.control.store.purge(id).await.map_err(ApiError::from)? else {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("There is no purge `{id}`.")));
        };
        let nodes: Vec<(String, bool)> =
            self.control.node_statuses().await?.into_iter().map(|n| (n.node.name, n.connected)).collect();
        let names: Vec<String> = nodes.iter().map(|(name, _)| name.clone()).collect();
        let status = self.control.purge_status_among(&p, &names);
        let overdue = now_ms().saturating_sub(p.at_ms) > DEFAULT_PURGE_WAIT.as_millis() as u64;
        Ok(view::Report { status, nodes, overdue })
    }
}

async fn purge_page(State(c): Shared, Page(s): Page) -> Response {
    c.purge_page(&s, &view::PurgeForm::default(), None, StatusCode::OK).await
}

async fn purge(State(c): Shared, headers: HeaderMap, Form(f): Form<view::PurgeForm>) -> Response {
    let s = match c.may_change(&headers, &f.csrf) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    // URLs may hold commas (in their query); tags are split on commas too.
    let split = |on_comma: bool| {
        f.value
            .split(|ch: char| ch.is_whitespace() || (on_comma && ch == ','))
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut req = PurgeRequest { site: f.site.clone(), soft: f.soft.is_some(), ..PurgeRequest::default() };
    match f.by.as_str() {
        "url" => req.urls = split(false),
        "prefix" => req.prefix = Some(f.value.trim().to_string()).filter(|p| !p.is_empty()),
        "tag" => req.tags = split(true),
        "all" => req.all = true,
        _ => {}
    }
    // The admin token's bucket: purges from the console and the API share it.
    let who = c.control.admin_token().to_string();
    match c.control.submit_purge(&req, &who).await {
        Ok(rec) => {
            tracing::info!(purge = %rec.purge.id, site = %rec.purge.site_id, "purge from the console");
            see(&format!("/console/purges/{}", rec.purge.id))
        }
        Err(e) => c.purge_page(&s, &f, Some(&e.detail), e.status).await,
    }
}

async fn report(State(c): Shared, Page(s): Page, UrlPath(id): UrlPath<String>) -> Response {
    match c.report(&id).await {
        Ok(r) => {
            let csrf = c.keys.csrf(&s);
            html(StatusCode::OK, view::report(&c.frame(&s, &csrf, Section::Purge), &r))
        }
        Err(e) => c.error(&s, Section::Purge, &e),
    }
}

/// The report's live part; `X-Console-Done` tells the script to stop once
/// every connected node has applied the purge.
async fn report_live(State(c): Shared, _: Fragment, UrlPath(id): UrlPath<String>) -> Response {
    match c.report(&id).await {
        Ok(r) => {
            let mut resp = html(StatusCode::OK, view::report_live(&r));
            if r.done() {
                resp.headers_mut().insert("x-console-done", HeaderValue::from_static("1"));
            }
            resp
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    before: Option<u64>,
}

async fn events(State(c): Shared, Page(s): Page, Query(q): Query<EventsQuery>) -> Response {
    let store = &c.control.store;
    let (last, first) = match (store.last_seq().await, store.first_seq().await) {
        (Ok(l), Ok(f)) => (l, f),
        (Err(e), _) | (_, Err(e)) => return c.error(&s, Section::Events, &e.into()),
    };
    let upto = q.before.map_or(last, |b| b.saturating_sub(1).min(last));
    // Never before the log's start (a link made before it was compacted).
    let from = upto.saturating_sub(EVENTS_PER_PAGE).max(first.saturating_sub(1)).min(upto);
    let mut list = match upto - from {
        0 => Vec::new(),
        n => match store.events_after(from, n as usize).await {
            Ok(l) => l,
            Err(e) => return c.error(&s, Section::Events, &e.into()),
        },
    };
    list.reverse();
    let older = (from >= first && from > 0).then_some(from + 1);
    let csrf = c.keys.csrf(&s);
    html(StatusCode::OK, view::events(&c.frame(&s, &csrf, Section::Events), &list, older))
}
