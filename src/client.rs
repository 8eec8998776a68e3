//! The operator's client of the control-plane API: `outpost sites`,
//! `outpost purge`, `outpost status`. The token comes from `OUTPOST_TOKEN`,
//! or from `.outpost/admin.token` as `outpost up` writes it. An `https://`
//! control plane is verified against the public roots and, when set, the CA
//! file in `OUTPOST_CA`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Where `outpost up` keeps the admin token.
pub(crate) const UP_TOKEN_FILE: &str = ".outpost/admin.token";

pub(crate) struct Api {
    base: String,
    token: String,
    tls: std::sync::Arc<rustls::ClientConfig>,
}

impl Api {
    pub(crate) fn new(base: &str) -> anyhow::Result<Api> {
        let token = match std::env::var("OUTPOST_TOKEN") {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => std::fs::read_to_string(Path::new(UP_TOKEN_FILE)).map(|t| t.trim().to_string()).map_err(|_| {
                anyhow::anyhow!(
                    "no token: set OUTPOST_TOKEN, or run from the folder where `outpost up` keeps .outpost/admin.token"
                )
            })?,
        };
        let ca = std::env::var_os("OUTPOST_CA").filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
        let tls = outpost_proxy::tls::client_config(ca.as_deref().as_slice(), None).context("OUTPOST_CA")?;
        Ok(Api { base: base.trim_end_matches('/').to_string(), token, tls })
    }

    pub(crate) async fn call(&self, method: Method, path: &str, body: Vec<u8>) -> anyhow::Result<serde_json::Value> {
        let connector = outpost_proxy::tls::client::connector(
            std::sync::Arc::clone(&self.tls),
            outpost_proxy::resolve::Resolve::system(),
            Duration::from_secs(5),
        );
        let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
        let url = format!("{}{path}", self.base);
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .body(Full::new(Bytes::from(body)))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
            .await
            .context("the control plane did not answer within 30 s")?
            .with_context(|| format!("cannot reach the control plane at {}: is `outpost up` or `outpost control` running? (--control URL chooses another)", self.base))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        if status == StatusCode::UNAUTHORIZED {
            bail!(
                "the control plane refused the token: set OUTPOST_TOKEN to the admin token ({})",
                json["detail"].as_str().unwrap_or("")
            );
        }
        if !status.is_success() {
            bail!(
                "{} ({}):\n{}",
                json["error"].as_str().unwrap_or("error"),
                status,
                json["detail"].as_str().unwrap_or("")
            );
        }
        Ok(json)
    }
}

fn ago(ms: u64) -> String {
    match ms {
        0..=1999 => format!("{ms} ms"),
        _ => format!("{} s", ms / 1000),
    }
}

pub(crate) fn print_sites(v: &serde_json::Value) {
    println!("{:<20} {:>7}  HOSTS", "SITE", "VERSION");
    for s in v.as_array().into_iter().flatten() {
        let hosts: Vec<&str> = s["hosts"].as_array().into_iter().flatten().filter_map(|h| h.as_str()).collect();
        println!("{:<20} {:>7}  {}", s["id"].as_str().unwrap_or(""), s["version"], hosts.join(", "));
    }
}

pub(crate) fn print_nodes(v: &serde_json::Value) {
    println!(
        "{:<14} {:<7} {:<5} {:<10} {:>6} {:>12} {:>8}  ADDRESSES",
        "NODE", "ROLE", "POP", "CONNECTED", "LAG", "LAST SEEN", "REQ/S"
    );
    for n in v.as_array().into_iter().flatten() {
        let addrs: Vec<&str> = n["addrs"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).collect();
        println!(
            "{:<14} {:<7} {:<5} {:<10} {:>6} {:>12} {:>8}  {}",
            n["name"].as_str().unwrap_or(""),
            n["role"].as_str().unwrap_or(""),
            n["pop"].as_str().unwrap_or("-"),
            if n["connected"] == true { "yes" } else { "no" },
            n["lag"].as_u64().unwrap_or(0),
            ago(n["since_contact_ms"].as_u64().unwrap_or(0)),
            n["load_rps"].as_u64().map_or("-".to_string(), |r| r.to_string()),
            addrs.join(", ")
        );
    }
}

pub(crate) fn print_purge(v: &serde_json::Value) {
    let list =
        |k: &str| v[k].as_array().into_iter().flatten().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", ");
    println!(
        "purge {} (event {}) for site {}",
        v["id"].as_str().unwrap_or("?"),
        v["seq"],
        v["site"].as_str().unwrap_or("?")
    );
    println!("  applied by: {}", if list("acked").is_empty() { "-".into() } else { list("acked") });
    if !list("pending").is_empty() {
        println!("  not yet:    {}", list("pending"));
    }
}
