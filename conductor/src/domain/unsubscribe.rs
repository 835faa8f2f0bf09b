//! RFC 8058 one-click unsubscribe: signed links that name a campaign's recipient. Pure: the endpoint
//! (`http/unsubscribe.rs`) does the I/O.
//!
//! A token is `{campaign}.{recipient}.{mac}`, the MAC an HMAC-SHA256 of both under
//! `[unsubscribe] secret`, cut to 128 bits and base64url-encoded. Nothing is stored per link, so a
//! link works for as long as the secret does, from any conductor that shares it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use renderer::deploy::config::Secret;
use renderer::UnsubscribeLink;
use serde::Deserialize;
use sha2::Sha256;

use renderer::deploy::config::{invalid, ConfigError};

/// Bytes of the MAC kept in a token: forging one means guessing 128 bits.
const MAC_BYTES: usize = 16;
/// A shorter secret is guessable offline from any link a recipient forwards.
const MIN_SECRET_LEN: usize = 32;

/// `[unsubscribe]`. Without `base_url` messages carry no `List-Unsubscribe` and `{{unsubscribe_url}}`
/// is Mailgun's `%unsubscribe_url%` tag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UnsubscribeConfig {
    /// Where recipients reach this conductor, e.g. `https://mail.example.com`; links are
    /// `{base_url}/u/{token}`.
    pub base_url: Option<String>,
    /// An address for `List-Unsubscribe`'s `mailto:` alternative (handled outside this service).
    pub mailto: Option<String>,
    /// The signing key, only from `CONDUCTOR__UNSUBSCRIBE__SECRET`.
    pub secret: Option<Secret>,
}

impl UnsubscribeConfig {
    pub fn check(&self) -> Result<(), ConfigError> {
        if let Some(m) = &self.mailto {
            let ok = m.split_once('@').is_some_and(|(l, d)| {
                !l.is_empty()
                    && d.contains('.')
                    && !m.contains(|c: char| c.is_whitespace() || "<>,".contains(c))
            });
            if !ok {
                return Err(invalid("unsubscribe.mailto", "is not an email address"));
            }
            if self.base_url.is_none() {
                return Err(invalid(
                    "unsubscribe.mailto",
                    "needs unsubscribe.base_url: one-click unsubscribe (RFC 8058) requires an HTTPS link",
                ));
            }
        }
        let Some(base) = &self.base_url else {
            return Ok(());
        };
        let url = parse_url(base)?;
        let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
        if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
            return Err(invalid(
                "unsubscribe.base_url",
                "must be an https:// URL (RFC 8058); http:// is accepted only for localhost",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid(
                "unsubscribe.base_url",
                "must not carry a query or fragment",
            ));
        }
        match &self.secret {
            None => Err(invalid(
                "unsubscribe.secret",
                "is required with unsubscribe.base_url: set CONDUCTOR__UNSUBSCRIBE__SECRET",
            )),
            Some(s) if s.expose().trim().len() < MIN_SECRET_LEN => Err(invalid(
                "unsubscribe.secret",
                format!("must be at least {MIN_SECRET_LEN} characters"),
            )),
            Some(_) => Ok(()),
        }
    }

    /// The signer, when links are configured (after [`Self::check`]).
    pub fn links(&self) -> Option<Links> {
        Some(Links {
            base_url: self.base_url.as_ref()?.trim_end_matches('/').to_string(),
            mailto: self.mailto.clone(),
            secret: self.secret.as_ref()?.expose().as_bytes().to_vec(),
        })
    }
}

fn parse_url(raw: &str) -> Result<url::Url, ConfigError> {
    url::Url::parse(raw).map_err(|e| invalid("unsubscribe.base_url", e.to_string()))
}

/// Signs and checks unsubscribe tokens.
#[derive(Clone)]
pub struct Links {
    base_url: String,
    mailto: Option<String>,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("base_url", &self.base_url)
            .finish()
    }
}

/// Who a valid token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    pub campaign_id: String,
    pub recipient_id: i64,
}

/// What a signed link does. Each purpose signs under its own tag, so a web-view link cannot be
/// turned into an unsubscribe link (or back) by changing its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `/u/{token}`: one-click unsubscribe.
    Unsubscribe,
    /// `/v/{token}`: the recipient's message in a browser (`{{web_url}}`).
    WebView,
    /// `/o/{token}`: the open pixel.
    Open,
    /// The recipient's key for its tracked links (`/c/{campaign}.{recipient}.{mac}?u=…`), each
    /// link's MAC made under it (see `renderer::track`).
    Click,
}

impl Purpose {
    fn tag(self) -> &'static [u8] {
        match self {
            Purpose::Unsubscribe => b"unsubscribe/1\0",
            Purpose::WebView => b"webview/1\0",
            Purpose::Open => b"open/1\0",
            Purpose::Click => b"click/1\0",
        }
    }
}

impl Links {
    fn full_mac(&self, purpose: Purpose, campaign_id: &str, recipient_id: i64) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key");
        // Domain-separated and length-unambiguous: the id cannot contain NUL.
        mac.update(purpose.tag());
        mac.update(campaign_id.as_bytes());
        mac.update(b"\0");
        mac.update(recipient_id.to_string().as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn mac(&self, purpose: Purpose, campaign_id: &str, recipient_id: i64) -> [u8; MAC_BYTES] {
        let full = self.full_mac(purpose, campaign_id, recipient_id);
        let mut out = [0u8; MAC_BYTES];
        out.copy_from_slice(&full[..MAC_BYTES]);
        out
    }

    /// What a recipient's renderer needs to track its message as `track` says; `None` when the
    /// campaign tracks nothing. The click key is this recipient's alone: it signs links to any
    /// target for this recipient only, and it is never in the message.
    pub fn tracking(
        &self,
        campaign_id: &str,
        recipient_id: i64,
        track: renderer::Track,
    ) -> Option<renderer::Tracking> {
        track.any().then(|| renderer::Tracking {
            pixel: track.opens.then(|| {
                format!(
                    "{}/o/{}",
                    self.base_url,
                    self.signed(Purpose::Open, campaign_id, recipient_id)
                )
            }),
            clicks: track.clicks.then(|| renderer::track::ClickSigner {
                prefix: format!("{}/c/{campaign_id}.{recipient_id}", self.base_url),
                key: URL_SAFE_NO_PAD.encode(self.full_mac(
                    Purpose::Click,
                    campaign_id,
                    recipient_id,
                )),
            }),
        })
    }

    /// [`Self::tracking`] as a preview shows it: this server's addresses, tokens that name no one.
    pub fn preview_tracking(&self, track: renderer::Track) -> Option<renderer::Tracking> {
        track.any().then(|| renderer::Tracking {
            pixel: track.opens.then(|| format!("{}/o/preview", self.base_url)),
            clicks: track.clicks.then(|| renderer::track::ClickSigner {
                prefix: format!("{}/c/preview", self.base_url),
                key: URL_SAFE_NO_PAD.encode(b"preview"),
            }),
        })
    }

    /// Who a click token names, if this secret's key for that recipient signed `target` with it.
    pub fn verify_click(&self, token: &str, target: &str) -> Option<Subscriber> {
        let (who, mac) = parse_token(token)?;
        let key = self.full_mac(Purpose::Click, &who.campaign_id, who.recipient_id);
        let expected = renderer::track::link_mac(&key, target);
        crate::domain::secret::same(&expected, &mac).then_some(who)
    }

    pub fn token(&self, campaign_id: &str, recipient_id: i64) -> String {
        self.signed(Purpose::Unsubscribe, campaign_id, recipient_id)
    }

    fn signed(&self, purpose: Purpose, campaign_id: &str, recipient_id: i64) -> String {
        let mac = URL_SAFE_NO_PAD.encode(self.mac(purpose, campaign_id, recipient_id));
        format!("{campaign_id}.{recipient_id}.{mac}")
    }

    /// `{{web_url}}`: where this recipient sees its message in a browser.
    pub fn web_url(&self, campaign_id: &str, recipient_id: i64) -> String {
        format!(
            "{}/v/{}",
            self.base_url,
            self.signed(Purpose::WebView, campaign_id, recipient_id)
        )
    }

    pub fn link(&self, campaign_id: &str, recipient_id: i64) -> UnsubscribeLink {
        UnsubscribeLink {
            url: format!(
                "{}/u/{}",
                self.base_url,
                self.token(campaign_id, recipient_id)
            ),
            mailto: self.mailto.clone(),
        }
    }

    /// What a preview shows where a recipient's link will be: this service's address, and a
    /// token no signature makes valid (a preview names no recipient to unsubscribe).
    pub fn preview_link(&self) -> UnsubscribeLink {
        UnsubscribeLink {
            url: format!("{}/u/preview", self.base_url),
            mailto: self.mailto.clone(),
        }
    }

    /// The web view's counterpart of [`Self::preview_link`].
    pub fn preview_web_url(&self) -> String {
        format!("{}/v/preview", self.base_url)
    }

    /// Who an unsubscribe `token` names, if this secret signed it.
    pub fn verify(&self, token: &str) -> Option<Subscriber> {
        self.verify_for(Purpose::Unsubscribe, token)
    }

    /// Who `token` names, if this secret signed it for `purpose`.
    pub fn verify_for(&self, purpose: Purpose, token: &str) -> Option<Subscriber> {
        let (who, given) = parse_token(token)?;
        let expected = self.mac(purpose, &who.campaign_id, who.recipient_id);
        crate::domain::secret::same(&expected, &given).then_some(who)
    }
}

/// `{campaign}.{recipient}.{mac}`: who it names and the MAC's bytes.
fn parse_token(token: &str) -> Option<(Subscriber, Vec<u8>)> {
    let mut parts = token.rsplitn(3, '.');
    let (mac, recipient, campaign) = (parts.next()?, parts.next()?, parts.next()?);
    let recipient_id: i64 = recipient.parse().ok()?;
    // One spelling per recipient: `07` or `+7` is not a token this service wrote.
    if campaign.is_empty() || recipient != recipient_id.to_string() {
        return None;
    }
    let given = URL_SAFE_NO_PAD.decode(mac).ok()?;
    Some((
        Subscriber {
            campaign_id: campaign.to_string(),
            recipient_id,
        },
        given,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(base: &str) -> UnsubscribeConfig {
        UnsubscribeConfig {
            base_url: Some(base.into()),
            mailto: Some("unsubscribe@example.com".into()),
            secret: Some("s".repeat(40).into()),
        }
    }

    #[test]
    fn a_link_verifies_and_names_its_recipient() {
        let links = config("https://mail.example.com/").links().unwrap();
        let link = links.link("0193-abc", 42);
        assert!(
            link.url
                .starts_with("https://mail.example.com/u/0193-abc.42."),
            "{}",
            link.url
        );
        assert_eq!(
            link.header(),
            format!("<{}>, <mailto:unsubscribe@example.com>", link.url)
        );
        let token = link.url.rsplit('/').next().unwrap();
        assert_eq!(
            links.verify(token),
            Some(Subscriber {
                campaign_id: "0193-abc".into(),
                recipient_id: 42
            })
        );
    }

    #[test]
    fn forged_and_altered_tokens_do_not_verify() {
        let links = config("https://mail.example.com").links().unwrap();
        let token = links.token("c1", 7);
        let other = UnsubscribeConfig {
            secret: Some("t".repeat(40).into()),
            ..config("https://mail.example.com")
        }
        .links()
        .unwrap();
        assert!(other.verify(&token).is_none(), "another secret");
        let mac = token.rsplit('.').next().unwrap();
        for forged in [
            format!("c1.8.{mac}"),
            format!("c2.7.{mac}"),
            format!("c1.+7.{mac}"),
            format!("c1.07.{mac}"),
            "c1.7.".to_string(),
            "c1.7".to_string(),
            format!("c1.7.{}", &mac[..mac.len() - 1]),
            format!(".7.{mac}"),
            "garbage".to_string(),
        ] {
            assert!(links.verify(&forged).is_none(), "{forged}");
        }
        assert!(links.verify(&token).is_some());
    }

    #[test]
    fn a_web_view_link_is_signed_for_its_own_purpose() {
        let links = config("https://mail.example.com").links().unwrap();
        let url = links.web_url("c1", 7);
        let token = url.strip_prefix("https://mail.example.com/v/").unwrap();
        assert_eq!(
            links.verify_for(Purpose::WebView, token),
            Some(Subscriber {
                campaign_id: "c1".into(),
                recipient_id: 7
            })
        );
        // Neither link works as the other.
        assert_eq!(links.verify(token), None);
        let unsubscribe = links.token("c1", 7);
        assert_eq!(links.verify_for(Purpose::WebView, &unsubscribe), None);
        assert_ne!(token, unsubscribe);
    }

    #[test]
    fn a_tracked_link_verifies_for_its_own_target_and_recipient_only() {
        let links = config("https://mail.example.com").links().unwrap();
        let t = links
            .tracking(
                "c1",
                7,
                renderer::Track {
                    opens: true,
                    clicks: true,
                },
            )
            .unwrap();
        let link = t
            .clicks
            .as_ref()
            .unwrap()
            .link("https://shop.example/a?b=1")
            .unwrap();
        let (path, _) = link.split_once("?u=").unwrap();
        let token = path.strip_prefix("https://mail.example.com/c/").unwrap();
        let who = links
            .verify_click(token, "https://shop.example/a?b=1")
            .unwrap();
        assert_eq!((who.campaign_id.as_str(), who.recipient_id), ("c1", 7));
        // Another target, recipient or secret: refused.
        assert!(links.verify_click(token, "https://evil.example/").is_none());
        let mac = token.rsplit('.').next().unwrap();
        assert!(links
            .verify_click(&format!("c1.8.{mac}"), "https://shop.example/a?b=1")
            .is_none());
        let other = UnsubscribeConfig {
            secret: Some("t".repeat(40).into()),
            ..config("https://mail.example.com")
        }
        .links()
        .unwrap();
        assert!(other
            .verify_click(token, "https://shop.example/a?b=1")
            .is_none());
        // The pixel is signed for opens only.
        let pixel = t.pixel.unwrap();
        let token = pixel.strip_prefix("https://mail.example.com/o/").unwrap();
        assert!(links.verify_for(Purpose::Open, token).is_some());
        assert!(links.verify(token).is_none());
        assert!(links
            .tracking("c1", 7, renderer::Track::default())
            .is_none());
    }

    #[test]
    fn configuration_is_checked() {
        assert!(UnsubscribeConfig::default().check().is_ok());
        assert!(config("https://mail.example.com").check().is_ok());
        assert!(config("http://127.0.0.1:8080").check().is_ok());
        let cases = [
            (config("http://mail.example.com"), "https"),
            (config("not a url"), "base_url"),
            (config("https://mail.example.com/?x=1"), "query"),
            (
                UnsubscribeConfig {
                    secret: None,
                    ..config("https://mail.example.com")
                },
                "CONDUCTOR__UNSUBSCRIBE__SECRET",
            ),
            (
                UnsubscribeConfig {
                    secret: Some("short".into()),
                    ..config("https://mail.example.com")
                },
                "at least 32",
            ),
            (
                UnsubscribeConfig {
                    mailto: Some("not an address".into()),
                    ..config("https://mail.example.com")
                },
                "mailto",
            ),
            (
                UnsubscribeConfig {
                    base_url: None,
                    ..config("https://mail.example.com")
                },
                "needs unsubscribe.base_url",
            ),
        ];
        for (c, want) in cases {
            let err = c.check().unwrap_err().to_string();
            assert!(err.contains(want), "{err} should mention {want}");
        }
        let shown = format!("{:?}", config("https://mail.example.com"));
        assert!(!shown.contains("ssss"), "{shown}");
    }
}
