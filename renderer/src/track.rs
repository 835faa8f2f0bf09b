//! Engagement tracking, applied to a recipient's rendered HTML: each `<a href="http…">` becomes a
//! signed redirect on the conductor, and an open pixel goes before `</body>`.
//!
//! The conductor signs, the renderer only applies: a recipient's [`Tracking`] carries a key
//! derived for that recipient alone, and each link's MAC is an HMAC of its target under that key.
//! The target travels in the link and is inside the signature, so the redirect cannot be pointed
//! anywhere else (no open redirect), and the conductor's secret never leaves the conductor.
//!
//! Left as written: the unsubscribe link and the web view (the recipient's own signed links, and
//! `List-Unsubscribe` is a header this never sees), anything not `http(s)://` (`mailto:`, `tel:`,
//! `#top`, Mailgun's `%unsubscribe_url%`), a link marked `data-track="off"` or SendGrid's
//! `clicktracking="off"`, and targets longer than [`MAX_TARGET`]. The text part is not touched.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Bytes of a link's MAC kept: forging one means guessing 128 bits.
pub const MAC_BYTES: usize = 16;
/// Longer targets are left as written: a tracked link would be longer still, and PostgreSQL's
/// index on a link's URL holds at most about 2.7 KB.
pub const MAX_TARGET: usize = 2_000;

/// What a campaign tracks (`"track": {"opens": true, "clicks": true}`); nothing by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Track {
    pub opens: bool,
    pub clicks: bool,
}

impl Track {
    pub fn any(self) -> bool {
        self.opens || self.clicks
    }
}

/// One recipient's tracking, signed by the conductor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracking {
    /// The open pixel's URL, when opens are tracked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixel: Option<String>,
    /// Click tracking, when clicks are tracked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clicks: Option<ClickSigner>,
}

/// Makes this recipient's tracked links: `{prefix}.{mac}?u={target}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClickSigner {
    /// `{base_url}/c/{campaign}.{recipient}`.
    pub prefix: String,
    /// The recipient's own key (base64url), derived by the conductor from its secret.
    pub key: String,
}

impl std::fmt::Debug for ClickSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickSigner")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A link's MAC under a recipient's key: what the conductor checks a click against.
pub fn link_mac(key: &[u8], target: &str) -> [u8; MAC_BYTES] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(b"link/1\0");
    mac.update(target.as_bytes());
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; MAC_BYTES];
    out.copy_from_slice(&full[..MAC_BYTES]);
    out
}

impl ClickSigner {
    /// The tracked link for `target`; `None` when the key is not base64url (never signed here).
    pub fn link(&self, target: &str) -> Option<String> {
        let key = URL_SAFE_NO_PAD.decode(&self.key).ok()?;
        let mac = URL_SAFE_NO_PAD.encode(link_mac(&key, target));
        Some(format!(
            "{}.{mac}?u={}",
            self.prefix,
            percent_encode(target)
        ))
    }
}

/// `html` with its links tracked and the pixel added, as `tracking` says; `keep` are targets left
/// as written (the recipient's unsubscribe link and web view).
pub fn apply(html: &str, tracking: &Tracking, keep: &[&str]) -> String {
    let mut out = match &tracking.clicks {
        Some(signer) => rewrite_links(html, signer, keep),
        None => html.to_string(),
    };
    if let Some(pixel) = &tracking.pixel {
        let img = format!(
            "<img src=\"{}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;width:1px;height:1px;border:0\" />",
            escape_attr(pixel)
        );
        match rfind_ascii_ci(&out, "</body") {
            Some(at) => out.insert_str(at, &img),
            None => out.push_str(&img),
        }
    }
    out
}

fn rewrite_links(html: &str, signer: &ClickSigner, keep: &[&str]) -> String {
    let bytes = html.as_bytes();
    let mut out = String::with_capacity(html.len() + html.len() / 8);
    let mut copied = 0;
    let mut i = 0;
    while let Some(off) = html[i..].find('<') {
        let start = i + off;
        i = start + 1;
        let is_a = bytes
            .get(start + 1)
            .is_some_and(|b| b.eq_ignore_ascii_case(&b'a'))
            && bytes
                .get(start + 2)
                .is_some_and(|b| b.is_ascii_whitespace());
        if !is_a {
            continue;
        }
        let Some(tag) = parse_tag(html, start + 2) else {
            continue;
        };
        i = tag.end;
        let Some((vs, ve)) = tag.href else { continue };
        if tag.opted_out {
            continue;
        }
        let target = decode_entities(html[vs..ve].trim());
        if !trackable(&target) || keep.contains(&target.as_str()) {
            continue;
        }
        let Some(link) = signer.link(&target) else {
            continue;
        };
        out.push_str(&html[copied..vs]);
        out.push_str(&escape_attr(&link));
        copied = ve;
    }
    out.push_str(&html[copied..]);
    out
}

/// Where a tag's attributes end and its `href` value is (byte range), from just after `<a`.
struct Tag {
    end: usize,
    href: Option<(usize, usize)>,
    opted_out: bool,
}

fn parse_tag(html: &str, from: usize) -> Option<Tag> {
    let b = html.as_bytes();
    let mut i = from;
    let mut tag = Tag {
        end: from,
        href: None,
        opted_out: false,
    };
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        if i >= b.len() {
            return None;
        }
        if b[i] == b'>' {
            tag.end = i + 1;
            return Some(tag);
        }
        let name_start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && !b"=>/".contains(&b[i]) {
            i += 1;
        }
        let name = &html[name_start..i];
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = None;
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            match b.get(i) {
                Some(&q @ (b'"' | b'\'')) => {
                    let vs = i + 1;
                    let ve = vs + html[vs..].find(q as char)?;
                    value = Some((vs, ve));
                    i = ve + 1;
                }
                Some(_) => {
                    let vs = i;
                    while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'>' {
                        i += 1;
                    }
                    value = Some((vs, i));
                }
                None => return None,
            }
        }
        if name.eq_ignore_ascii_case("href") && tag.href.is_none() {
            tag.href = value;
        } else if name.eq_ignore_ascii_case("data-track")
            || name.eq_ignore_ascii_case("clicktracking")
        {
            tag.opted_out |= value.is_some_and(|(s, e)| html[s..e].eq_ignore_ascii_case("off"));
        }
    }
}

fn trackable(target: &str) -> bool {
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://"))
        && target.len() <= MAX_TARGET
        && !target.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The character references an attribute value may hold after a render (Handlebars escapes
/// `&<>"'`=`), decoded; any other `&…;` is kept as written.
fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let end = rest[..rest.len().min(12)].find(';');
        let decoded = end.and_then(|end| {
            let name = &rest[1..end];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => {
                    let n = if let Some(h) = name.strip_prefix("#x").or(name.strip_prefix("#X")) {
                        u32::from_str_radix(h, 16).ok()
                    } else {
                        name.strip_prefix('#').and_then(|d| d.parse().ok())
                    };
                    n.and_then(char::from_u32)
                }
            };
            c.map(|c| (c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn escape_attr(s: &str) -> String {
    s.replace('&', "&amp;").replace('"', "&quot;")
}

/// Every byte but the unreserved ones (`A–Z a–z 0–9 - . _ ~`) as `%XX`: a query value any
/// form decoder reads back byte for byte.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn rfind_ascii_ci(hay: &str, needle: &str) -> Option<usize> {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    (0..=h.len().checked_sub(n.len())?)
        .rev()
        .find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> ClickSigner {
        ClickSigner {
            prefix: "https://t.example.com/c/c1.7".into(),
            key: URL_SAFE_NO_PAD.encode([7u8; 32]),
        }
    }

    fn tracking(pixel: bool) -> Tracking {
        Tracking {
            pixel: pixel.then(|| "https://t.example.com/o/c1.7.mac".into()),
            clicks: Some(signer()),
        }
    }

    /// The target a tracked link carries, decoded as a form decoder would.
    fn target_of(link: &str) -> String {
        let q = link.split_once("?u=").unwrap().1;
        let mut out = Vec::new();
        let b = q.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(&q[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    fn hrefs(html: &str) -> Vec<String> {
        html.split("href=\"")
            .skip(1)
            .map(|s| s[..s.find('"').unwrap()].replace("&amp;", "&"))
            .collect()
    }

    #[test]
    fn http_links_become_signed_redirects_carrying_their_target() {
        let html = "<p><a href=\"https://shop.example.com/a?x=1&amp;y=2\" class=b>Shop</a> \
                    <A\nHREF='http://example.org/'>old</A></p>";
        let out = apply(html, &tracking(false), &[]);
        let links = hrefs(&out);
        assert_eq!(links.len(), 1, "{out}");
        assert!(
            links[0].starts_with("https://t.example.com/c/c1.7."),
            "{out}"
        );
        assert_eq!(target_of(&links[0]), "https://shop.example.com/a?x=1&y=2");
        assert!(out.contains("class=b>Shop</a>"));
        // Single-quoted and upper-case: tracked too, its quotes kept.
        assert!(out.contains("HREF='https://t.example.com/c/c1.7."), "{out}");
        // The MAC is the target's under the recipient's key.
        let mac = links[0]
            .split_once("?u=")
            .unwrap()
            .0
            .rsplit('.')
            .next()
            .unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(mac).unwrap(),
            link_mac(&[7u8; 32], "https://shop.example.com/a?x=1&y=2")
        );
    }

    #[test]
    fn what_must_stay_as_written_does() {
        let html = "<a href=\"https://mail.example.com/u/c1.7.x\">unsubscribe</a>\
                    <a href=\"mailto:a@example.com\">mail</a><a href=\"#top\">top</a>\
                    <a href=\"%unsubscribe_url%\">mg</a><a data-track=\"off\" href=\"https://a.example/\">a</a>\
                    <a clicktracking=off href=\"https://b.example/\">b</a><a name=x>anchor</a>\
                    <abbr href=\"https://c.example/\">c</abbr>";
        let out = apply(
            html,
            &tracking(false),
            &["https://mail.example.com/u/c1.7.x"],
        );
        assert_eq!(out, html);
    }

    #[test]
    fn handlebars_escapes_are_read_as_the_browser_reads_them() {
        // `{{url}}` renders `=` as `&#x3D;`: the link's target is what a click would open.
        let html = "<a href=\"https://x.example/?a&#x3D;1&amp;b&#61;2&nbsp;\">x</a>";
        let out = apply(html, &tracking(false), &[]);
        assert_eq!(
            target_of(&hrefs(&out)[0]),
            "https://x.example/?a=1&b=2&nbsp;"
        );
    }

    #[test]
    fn the_pixel_goes_before_the_body_ends() {
        let out = apply("<html><body><p>Hi</p></BODY></html>", &tracking(true), &[]);
        assert!(
            out.contains("<p>Hi</p><img src=\"https://t.example.com/o/c1.7.mac\" width=\"1\""),
            "{out}"
        );
        assert!(out.ends_with("</BODY></html>"));
        let bare = apply("<p>Hi</p>", &tracking(true), &[]);
        assert!(bare.starts_with("<p>Hi</p><img "), "{bare}");
    }

    #[test]
    fn broken_markup_is_left_alone_without_a_panic() {
        for html in [
            "<a href=\"https://x.example/",
            "<a href=",
            "<a ",
            "<a",
            "<",
            "<a href=x>",
        ] {
            let _ = apply(html, &tracking(true), &[]);
        }
        assert_eq!(
            apply("<a href=\"https://x.example/", &tracking(false), &[]),
            "<a href=\"https://x.example/"
        );
    }
}
