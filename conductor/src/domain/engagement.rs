//! Opens and clicks: what a campaign tracks, what an event is, and whether a person or a machine
//! made it. Pure: `http/engagement.rs` takes the requests, the store keeps the figures.
//!
//! Machines open and click too, and counting them as people inflates every figure a marketer
//! acts on. Apple Mail Privacy Protection fetches every image of every message on delivery
//! through a proxy whose user agent is a bare `Mozilla/5.0`; corporate link scanners (Microsoft
//! Safe Links, Proofpoint, Mimecast, Barracuda…) follow every link before the person sees it,
//! often with `HEAD` or a library's user agent. Such events are recorded and shown apart
//! (`machine`), never as human opens or clicks. Gmail's and Yahoo's image proxies fetch when the
//! person opens the message, so they count as people.

use serde::{Deserialize, Serialize};

/// `"track"` in a campaign request: off unless asked for.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(default, deny_unknown_fields)]
pub struct TrackRequest {
    /// An open pixel in every message.
    pub opens: bool,
    /// Every `http(s)` link a signed redirect through this server (the unsubscribe link and the
    /// web view never; a link with `data-track="off"` neither).
    pub clicks: bool,
}

impl From<TrackRequest> for renderer::Track {
    fn from(t: TrackRequest) -> Self {
        renderer::Track {
            opens: t.opens,
            clicks: t.clicks,
        }
    }
}

impl From<renderer::Track> for TrackRequest {
    fn from(t: renderer::Track) -> Self {
        TrackRequest {
            opens: t.opens,
            clicks: t.clicks,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Open,
    Click,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Open => "open",
            Kind::Click => "click",
        }
    }
}

/// Who made an event, as far as its request tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    Human,
    Machine(Why),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// No user agent at all: no mail client or browser sends none.
    NoUserAgent,
    /// Apple Mail Privacy Protection's prefetch (a bare `Mozilla/5.0`).
    PrivacyPrefetch,
    /// A `HEAD` request: a scanner checking where a link goes.
    Probe,
    /// A known scanner, crawler or HTTP library.
    Scanner,
}

/// Substrings (lower case) of the user agents of link scanners, crawlers, link previews and HTTP
/// libraries: none of them is a person reading the message.
const MACHINES: &[&str] = &[
    "bot",
    "crawler",
    "spider",
    "preview",
    "barracuda",
    "proofpoint",
    "mimecast",
    "messagelabs",
    "symantec",
    "forcepoint",
    "trendmicro",
    "trend micro",
    "ironport",
    "zscaler",
    "safelinks",
    "headlesschrome",
    "phantomjs",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "go-http-client",
    "curl/",
    "wget/",
    "java/",
    "okhttp",
    "libwww",
    "httpclient",
    "axios/",
    "node-fetch",
    "facebookexternalhit",
    "whatsapp",
    "slackbot",
    "discordbot",
    "telegrambot",
];

/// Who made a request with this method and `User-Agent`.
pub fn agent(head: bool, user_agent: Option<&str>) -> Agent {
    if head {
        return Agent::Machine(Why::Probe);
    }
    let Some(ua) = user_agent.map(str::trim).filter(|u| !u.is_empty()) else {
        return Agent::Machine(Why::NoUserAgent);
    };
    if ua == "Mozilla/5.0" {
        return Agent::Machine(Why::PrivacyPrefetch);
    }
    let lower = ua.to_ascii_lowercase();
    if MACHINES.iter().any(|m| lower.contains(m)) {
        return Agent::Machine(Why::Scanner);
    }
    Agent::Human
}

/// One open or click of one recipient's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub campaign_id: String,
    pub recipient_id: i64,
    pub kind: Kind,
    /// The link's target, for a click.
    pub url: Option<String>,
    pub machine: bool,
    pub at_ms: i64,
}

/// How many distinct links a campaign's per-link figures keep; clicks on links past them still
/// count in the campaign's totals. A template has tens of links; personalised targets could
/// otherwise make a row per recipient.
pub const MAX_LINKS: i64 = 1_000;
/// How many links `GET /v1/campaigns/{id}` shows, the most clicked first.
pub const LINKS_SHOWN: u32 = 50;

/// A campaign's figures: people's events, and machines' apart.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct Figures {
    /// Recipients with at least one human event.
    pub unique: i64,
    /// Human events, every one.
    pub total: i64,
    /// Events of machines (privacy prefetch, link scanners), not counted in the two above.
    pub machine: i64,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct Engagement {
    pub opens: Figures,
    pub clicks: Figures,
}

/// One link's clicks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LinkClicks {
    pub url: String,
    /// Human clicks.
    pub clicks: i64,
    /// Recipients who clicked it.
    pub unique: i64,
    pub machine: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_are_told_from_people() {
        let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";
        assert_eq!(agent(false, Some(iphone)), Agent::Human);
        let gmail = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
        assert_eq!(agent(false, Some(gmail)), Agent::Human);
        assert_eq!(
            agent(false, Some("Mozilla/5.0")),
            Agent::Machine(Why::PrivacyPrefetch)
        );
        assert_eq!(agent(false, None), Agent::Machine(Why::NoUserAgent));
        assert_eq!(agent(false, Some("  ")), Agent::Machine(Why::NoUserAgent));
        assert_eq!(agent(true, Some(iphone)), Agent::Machine(Why::Probe));
        for scanner in [
            "python-requests/2.31.0",
            "Mozilla/5.0 (compatible; Barracuda Sentinel)",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0 Safari/537.36",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        ] {
            assert_eq!(agent(false, Some(scanner)), Agent::Machine(Why::Scanner), "{scanner}");
        }
    }
}
