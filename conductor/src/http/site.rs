//! Who may talk to the API at all, before any route runs: the `Host` a request was sent to must be one
//! this server answers to (`[server] allowed_hosts`: loopback names by default), which defeats DNS
//! rebinding — a page on `rebind.evil` whose name now points at 127.0.0.1 still says `Host:
//! rebind.evil`; and a request that changes something must not come from another site's page
//! (`Origin` or `Sec-Fetch-Site` say so whenever a browser sends one), whatever the token setting, so
//! no web page elsewhere can post a campaign through a visitor's browser. Servers (webhooks, workers,
//! the CLI) send neither header and are unaffected.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::problem::{Problem, ProblemType};
use crate::http::service::Service;

/// The host part of a `Host` value (`name`, `name:port`, `[::1]:port`), lower-cased, without brackets.
pub fn host_of(authority: &str) -> Option<String> {
    let a = authority.trim();
    let host = if let Some(rest) = a.strip_prefix('[') {
        rest.split_once(']')?.0
    } else {
        match a.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => a,
        }
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Whether `host` (from [`host_of`]) is one this server answers to.
pub fn allowed(host: &str, allowed_hosts: &[String], listen: Option<IpAddr>) -> bool {
    if allowed_hosts.iter().any(|h| h == "*") {
        return true;
    }
    let listed = allowed_hosts.iter().any(|h| {
        let h = h.trim().trim_start_matches('[').trim_end_matches(']');
        h.eq_ignore_ascii_case(host)
    });
    // The address the server listens on, written as an IP, cannot be rebound by DNS.
    let own_ip = listen
        .filter(|ip| !ip.is_unspecified())
        .zip(host.parse::<IpAddr>().ok())
        .is_some_and(|(a, b)| a == b);
    listed || own_ip
}

/// Why a state-changing request is cross-site, if it is.
fn cross_site(headers: &HeaderMap, host_header: &str) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return Some(format!("the browser says it comes from a {site} page"));
        }
    }
    let origin = headers.get(header::ORIGIN)?.to_str().unwrap_or("null");
    let same = url::Url::parse(origin).ok().is_some_and(|u| {
        let authority = match u.port() {
            Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
            None => u.host_str().unwrap_or_default().to_string(),
        };
        authority.eq_ignore_ascii_case(host_header.trim())
    });
    (!same).then(|| format!("it comes from a page at {origin}, not from this server"))
}

pub async fn check(State(svc): State<Arc<Service>>, req: Request, next: Next) -> Response {
    let (allowed_hosts, listen) = {
        let c = svc.work.config.borrow();
        (
            c.server.allowed_hosts.clone(),
            c.listen_addr().ok().map(|a| a.ip()),
        )
    };
    let host_header = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let host = host_of(&host_header);
    if !host
        .as_deref()
        .is_some_and(|h| allowed(h, &allowed_hosts, listen))
    {
        return Problem::new(
            StatusCode::MISDIRECTED_REQUEST,
            ProblemType::HostNotAllowed,
            "Host not allowed",
            "this server does not answer to that Host; list the name it is reached by in [server] allowed_hosts",
        )
        .into_response();
    }
    let reads = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !reads {
        if let Some(why) = cross_site(req.headers(), &host_header) {
            tracing::warn!(method = %req.method(), path = %req.uri().path(), %why, "cross-site request refused");
            return Problem::new(
                StatusCode::FORBIDDEN,
                ProblemType::CrossSite,
                "Cross-site request refused",
                format!("requests that change something must come from this server's own pages or from a program: {why}"),
            )
            .into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn hosts_are_read_without_port_or_brackets() {
        assert_eq!(host_of("127.0.0.1:8080").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_of("[::1]:8080").as_deref(), Some("::1"));
        assert_eq!(host_of("LocalHost").as_deref(), Some("localhost"));
        assert_eq!(host_of("").as_deref(), None);
        let loopback = hosts(&["localhost", "127.0.0.1", "::1"]);
        for ok in ["localhost", "127.0.0.1", "::1"] {
            assert!(allowed(ok, &loopback, None), "{ok}");
        }
        assert!(!allowed("rebind.evil", &loopback, None));
        assert!(!allowed("localhost.evil", &loopback, None));
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(allowed("10.1.2.3", &loopback, Some(ip)));
        assert!(!allowed("10.1.2.4", &loopback, Some(ip)));
        assert!(!allowed(
            "0.0.0.0",
            &loopback,
            Some("0.0.0.0".parse().unwrap())
        ));
        assert!(allowed("anything", &hosts(&["*"]), None));
    }

    #[test]
    fn cross_site_is_told_by_origin_or_fetch_metadata() {
        let mut h = HeaderMap::new();
        assert_eq!(
            cross_site(&h, "127.0.0.1:8080"),
            None,
            "no browser headers: a program"
        );
        h.insert(header::ORIGIN, "http://127.0.0.1:8080".parse().unwrap());
        assert_eq!(cross_site(&h, "127.0.0.1:8080"), None);
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(cross_site(&h, "127.0.0.1:8080").is_some());
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(cross_site(&h, "127.0.0.1:8080").is_some());
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(cross_site(&h, "127.0.0.1:8080").is_some());
        h.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert_eq!(cross_site(&h, "127.0.0.1:8080"), None);
    }
}
