//! A campaign's message for one recipient, before anyone is mailed: rendered as the send would
//! render it, with the headers it would carry and what a sender should know about it (Gmail's clip,
//! CSS that stayed in `<style>` and why, no text part of its own, links that are not https).

use std::path::Path;

use renderer::{
    context, CompiledTemplate, Mailbox, NotInlined, RecipientData, RenderInput, RenderLimits,
    RenderedParts, Tracking, UnsubscribeLink,
};
use serde::{Deserialize, Serialize};

use crate::domain::validate::{
    self, check_row, field, has_line_break, CampaignRequest, Invalid, RecipientIn, Row,
    GMAIL_CLIP_BYTES,
};

/// `POST /v1/preview`: a campaign as `POST /v1/campaigns` takes it (its list left out) and the one
/// recipient to render it for: given here, or row `row` of the list sent with it (multipart, the
/// list as a create takes it).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    pub campaign: CampaignRequest,
    /// The recipient to render the message for.
    #[serde(default)]
    pub recipient: Option<RecipientIn>,
    /// Which recipient of the `recipients` part, 1 the first (a CSV's header row not counted).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub row: Option<u64>,
}

impl PreviewRequest {
    /// The row to render when no list came with the request: `recipient`, which is then required.
    pub fn given(&self) -> Result<Row, Invalid> {
        match (&self.recipient, self.row) {
            (Some(r), None) => Ok(Row {
                at: "recipient".into(),
                recipient: r.clone(),
            }),
            (_, Some(_)) => Err(Invalid::Fields(vec![field(
                "row",
                "a row needs the list: send multipart/form-data with this JSON as the `preview` part, then a `recipients` part",
            )])),
            (None, None) => Err(Invalid::Fields(vec![field(
                "recipient",
                "give `recipient` ({email, name?, data?}), or `row` with the list",
            )])),
        }
    }

    /// Which row of the list sent with the request to render.
    pub fn wanted(&self) -> Result<u64, Invalid> {
        match (&self.recipient, self.row) {
            (None, Some(n)) if n >= 1 => Ok(n),
            (None, Some(_)) => Err(Invalid::Fields(vec![field(
                "row",
                "rows are counted from 1",
            )])),
            (Some(_), _) => Err(Invalid::Fields(vec![field(
                "recipient",
                "give either `recipient` or `row` of the list sent with it, not both",
            )])),
            (None, None) => Err(Invalid::Fields(vec![field(
                "row",
                "with a `recipients` part, say which of its rows to show (`row`, 1 the first)",
            )])),
        }
    }
}

/// The message as it would be sent.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Preview {
    /// In the order they are written; `Message-ID` and `Date` are added when it is sent.
    pub headers: Vec<Header>,
    pub subject: String,
    pub html: String,
    pub text: String,
    /// Whether the `<style>` rules were inlined into `style=""` attributes.
    pub css_inlined: bool,
    pub warnings: Vec<Warning>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Warning {
    pub kind: WarningKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// The HTML is over the ~102 KB Gmail shows before "View entire message".
    GmailClip,
    /// The template has a `<style>` block that could not be inlined: clients that ignore
    /// `<style>` (Outlook desktop, many webmail and app clients) show the message unstyled.
    CssNotInlined,
    /// No text template: the text part is derived from the HTML.
    NoTextPart,
    /// A link that is not https.
    InsecureLink,
}

/// How many insecure links one preview names.
const MAX_LINKS_NAMED: usize = 5;

/// Renders `req` for its recipient. `links` stand for the recipient's unsubscribe link and web
/// view when links are signed. A problem is what creating the campaign with this recipient would say.
pub fn preview(
    campaign: &CampaignRequest,
    row: Row,
    templates: &Path,
    render: RenderLimits,
    links: Option<(UnsubscribeLink, String)>,
    tracking: Option<Tracking>,
) -> Result<Preview, Invalid> {
    let signed = links.is_some();
    let open = no_sandbox();
    let prepared = validate::prepare(campaign, templates, &open, render)?;
    validate::check_links(&prepared, signed)?;
    let (_, mut recipient) = check_row(row, &open).map_err(|e| Invalid::Fields(vec![e]))?;
    (recipient.unsubscribe, recipient.web_url) = signed_links(links);
    recipient.tracking = tracking;
    message(
        prepared.rows.template(),
        prepared.template.text.is_some(),
        &prepared.from,
        prepared.reply_to.as_ref(),
        &recipient,
    )
}

/// A stored campaign's message for one of its recipients (`input` holds that one), rendered from
/// the campaign's stored template as its renderer renders it.
pub fn stored(
    input: &RenderInput,
    render: RenderLimits,
    link: Option<(UnsubscribeLink, String)>,
    tracking: Option<Tracking>,
) -> Result<Preview, Invalid> {
    let open = no_sandbox();
    let rules = validate::RowRules::new(&input.template, &open, render)?;
    let mut recipient = input
        .recipients
        .first()
        .cloned()
        .ok_or_else(|| Invalid::Fields(vec![field("recipient", "no recipient to render")]))?;
    (recipient.unsubscribe, recipient.web_url) = signed_links(link);
    recipient.tracking = tracking;
    message(
        rules.template(),
        input.template.text.is_some(),
        &input.from,
        input.reply_to.as_ref(),
        &recipient,
    )
}

/// One recipient's message from a compiled template, with its headers and warnings.
fn message(
    compiled: &CompiledTemplate,
    has_text: bool,
    from: &Mailbox,
    reply_to: Option<&Mailbox>,
    recipient: &RecipientData,
) -> Result<Preview, Invalid> {
    let parts: RenderedParts = compiled
        .render(context(recipient))
        .map_err(|e| Invalid::Fields(vec![field("recipient", e.to_string())]))?;
    if has_line_break(&parts.subject) {
        return Err(Invalid::Fields(vec![field(
            "recipient",
            "the rendered subject contains CR or LF (header injection)",
        )]));
    }
    let to = renderer::Mailbox {
        name: recipient.name.clone(),
        email: recipient.email.clone(),
    };
    let mut headers = vec![
        header("From", from.to_string()),
        header("To", to.to_string()),
    ];
    if let Some(r) = reply_to {
        headers.push(header("Reply-To", r.to_string()));
    }
    headers.push(header("Subject", parts.subject.clone()));
    if let Some(u) = &recipient.unsubscribe {
        headers.push(header("List-Unsubscribe", u.header()));
        headers.push(header(
            "List-Unsubscribe-Post",
            "List-Unsubscribe=One-Click",
        ));
    }
    headers.push(header("MIME-Version", "1.0"));
    headers.push(header("Content-Type", "multipart/alternative"));

    // Links as written: a tracked one still leads to its target.
    let insecure = insecure_links(&parts.html);
    let html = recipient.tracked(parts.html);
    let mut warnings = Vec::new();
    if html.len() > GMAIL_CLIP_BYTES {
        warnings.push(Warning {
            kind: WarningKind::GmailClip,
            message: format!(
                "the HTML is {} KB: Gmail clips messages over about 102 KB behind a \"View entire message\" link",
                html.len() / 1000
            ),
        });
    }
    if let Some(why) = compiled
        .css_not_inlined
        .as_ref()
        .filter(|w| **w != NotInlined::NoStyle)
    {
        warnings.push(Warning {
            kind: WarningKind::CssNotInlined,
            message: format!("the CSS stays in <style>, which many clients ignore: {why}"),
        });
    }
    if !has_text {
        warnings.push(Warning {
            kind: WarningKind::NoTextPart,
            message: "no text template: the text part is derived from the HTML".into(),
        });
    }
    if !insecure.is_empty() {
        warnings.push(Warning {
            kind: WarningKind::InsecureLink,
            message: format!("links that are not https: {}", insecure.join(", ")),
        });
    }
    Ok(Preview {
        headers,
        subject: parts.subject,
        html,
        text: parts.text,
        css_inlined: compiled.css_inlined,
        warnings,
    })
}

/// A recipient's unsubscribe link and web-view URL, both or neither.
fn signed_links(
    links: Option<(UnsubscribeLink, String)>,
) -> (Option<UnsubscribeLink>, Option<String>) {
    links.map_or((None, None), |(u, w)| (Some(u), Some(w)))
}

/// Nobody is mailed: the sandbox is for sends, and a preview may show anyone's data.
fn no_sandbox() -> sender::safety::Safety {
    sender::safety::Safety {
        sandbox: false,
        allow_domains: Vec::new(),
        allow_addresses: Vec::new(),
    }
}

fn header(name: &str, value: impl Into<String>) -> Header {
    Header {
        name: name.into(),
        value: value.into(),
    }
}

/// The distinct `http://` targets of `href` and `src` attributes, the first few.
fn insecure_links(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut out: Vec<String> = Vec::new();
    for attr in ["href=", "src="] {
        let mut from = 0;
        while let Some(i) = lower[from..].find(attr) {
            let start = from + i + attr.len();
            from = start;
            let rest = &html[start..];
            let (quote, rest) = match rest.chars().next() {
                Some(q @ ('"' | '\'')) => (Some(q), &rest[1..]),
                _ => (None, rest),
            };
            let end = rest
                .find(|c: char| {
                    Some(c) == quote || (quote.is_none() && (c.is_whitespace() || c == '>'))
                })
                .unwrap_or(rest.len());
            let url = rest[..end].trim();
            if url.len() > 7
                && url[..7].eq_ignore_ascii_case("http://")
                && !out.iter().any(|u| u == url)
            {
                out.push(url.to_string());
                if out.len() == MAX_LINKS_NAMED {
                    return out;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(html: &str, text: Option<&str>) -> PreviewRequest {
        serde_json::from_value(serde_json::json!({
            "campaign": {"name": "P", "from": "News <news@example.com>", "reply_to": "help@example.com",
                         "subject": "Hi {{name}}", "html": html, "text": text},
            "recipient": {"email": "zoe@example.org", "name": "Zoë", "data": {"price": 3.0}},
        }))
        .unwrap()
    }

    fn show(
        req: &PreviewRequest,
        links: Option<(UnsubscribeLink, String)>,
    ) -> Result<Preview, Invalid> {
        let row = req.given()?;
        preview(
            &req.campaign,
            row,
            &no_templates(),
            RenderLimits::default(),
            links,
            None,
        )
    }

    fn no_templates() -> std::path::PathBuf {
        std::path::PathBuf::from("/nonexistent-templates-dir")
    }

    #[test]
    fn a_preview_is_the_message_with_its_headers() {
        let link = UnsubscribeLink {
            url: "https://mail.example.com/u/preview".into(),
            mailto: None,
        };
        let p = show(
            &request(
                "<p>{{price}} for {{name}} <a href=\"{{web_url}}\">web</a></p>",
                Some("{{price}}"),
            ),
            Some((link, "https://mail.example.com/v/preview".into())),
        )
        .unwrap();
        assert_eq!(p.subject, "Hi Zoë");
        assert_eq!(
            p.html,
            "<p>3 for Zoë <a href=\"https://mail.example.com/v/preview\">web</a></p>"
        );
        assert_eq!(p.text, "3");
        let names: Vec<&str> = p.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "From",
                "To",
                "Reply-To",
                "Subject",
                "List-Unsubscribe",
                "List-Unsubscribe-Post",
                "MIME-Version",
                "Content-Type"
            ]
        );
        assert_eq!(p.headers[1].value, "\"Zoë\" <zoe@example.org>");
        assert_eq!(p.headers[4].value, "<https://mail.example.com/u/preview>");
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn warnings_name_what_a_sender_should_know() {
        let html = format!(
            "<style>td {{ color: red }}</style><table><tbody><tr><td>x</td></tr></tbody>{{{{#each list}}}}<div>d</div>{{{{/each}}}}</table>\
             <a href=\"http://example.com/a\">a</a><img src='HTTP://cdn.example.com/i.png'><a href=\"https://ok.example\">ok</a>\
             <!-- {} -->",
            "x".repeat(GMAIL_CLIP_BYTES)
        );
        let mut req = request(&html, None);
        req.recipient.as_mut().unwrap().data =
            Some(serde_json::from_str(r#"{"list": [1]}"#).unwrap());
        let p = show(&req, None).unwrap();
        let kinds: Vec<WarningKind> = p.warnings.iter().map(|w| w.kind).collect();
        assert_eq!(
            kinds,
            [
                WarningKind::GmailClip,
                WarningKind::CssNotInlined,
                WarningKind::NoTextPart,
                WarningKind::InsecureLink
            ]
        );
        assert!(
            p.warnings[1]
                .message
                .contains("move an element across a Handlebars block"),
            "{:?}",
            p.warnings[1]
        );
        assert_eq!(
            p.warnings[3].message,
            "links that are not https: http://example.com/a, HTTP://cdn.example.com/i.png"
        );
        assert!(!p.css_inlined);
        assert!(!p.headers.iter().any(|h| h.name == "List-Unsubscribe"));
    }

    #[test]
    fn a_recipient_the_template_cannot_render_is_named() {
        let mut req = request("<p>{{missing}}</p>", None);
        let err = show(&req, None).unwrap_err();
        assert!(err.to_string().contains("missing field `missing`"), "{err}");
        // `{{web_url}}` without signed links: every message would carry a link to nowhere.
        req.campaign.html = Some("<a href=\"{{web_url}}\">web</a>".into());
        let err = show(&req, None).unwrap_err();
        assert!(err.to_string().contains("needs signed links"), "{err}");
        req.campaign.html = Some("<p>{{missing}}</p>".into());
        req.recipient.as_mut().unwrap().email = "not an address".into();
        let err = show(&req, None).unwrap_err();
        assert!(err.to_string().starts_with("recipient.email"), "{err}");
    }
}
