//! A campaign request → a campaign that can be stored, or every reason it cannot. Pure apart from
//! reading a named template from disk: nothing is stored unless all of this holds.

use std::collections::HashSet;
use std::path::Path;

use renderer::{
    context, CompiledTemplate, Mailbox, RecipientData, RenderLimits, TemplateError, TemplateSource,
};
use sender::safety::Safety;
use serde::Deserialize;

/// How many problems one answer lists; the first is in `detail`.
const MAX_ERRORS: usize = 20;
/// Columns of a recipients CSV (email, name and data fields).
pub const MAX_COLUMNS: usize = 100;
/// One CSV field, or a column name.
pub const MAX_FIELD_BYTES: usize = 8 * 1024;
/// One recipient's data: a CSV row, or the JSON of a recipient's `data`.
pub const MAX_ROW_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignRequest {
    pub name: String,
    pub from: String,
    #[serde(default)]
    pub reply_to: Option<String>,
    /// A directory under the templates folder; or give `subject` and `html` (and `text`) inline.
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    /// Absent when the recipients come as a CSV or NDJSON part, or later (`draft`).
    #[serde(default)]
    pub recipients: Option<Vec<RecipientIn>>,
    /// Store it as a draft with no list: `PUT /v1/campaigns/{id}/recipients` gives it one (a list
    /// of any length, streamed) and `POST /v1/campaigns/{id}/start` starts it.
    #[serde(default)]
    pub draft: bool,
    /// This campaign's own cap, under the global one.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub per_minute: Option<u32>,
    /// Weight in the fair share of the global cap between running campaigns (1–100, default 1).
    #[serde(default)]
    #[schemars(range(min = 1, max = MAX_PRIORITY))]
    pub priority: Option<u32>,
    /// RFC 3339: not before then.
    #[serde(default)]
    #[schemars(extend("format" = "date-time"))]
    pub send_at: Option<String>,
    /// Only within this daily window.
    #[serde(default)]
    pub window: Option<crate::domain::schedule::SendWindow>,
    /// Opens and clicks to track (nothing by default); needs signed links (`[unsubscribe]`).
    #[serde(default)]
    pub track: crate::domain::engagement::TrackRequest,
}

/// How a campaign is paced and when it may send, as given at creation (and, for `per_minute` and
/// `priority`, changed by `PUT /v1/campaigns/{id}`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, Deserialize)]
pub struct Limits {
    pub per_minute: Option<u32>,
    pub priority: u32,
    pub send_at_ms: Option<i64>,
    pub window: Option<crate::domain::schedule::SendWindow>,
}

pub const MAX_PRIORITY: u32 = 100;

/// Checks a campaign's own cap and priority; errors name the field.
pub fn check_limits(per_minute: Option<u32>, priority: Option<u32>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if per_minute == Some(0) {
        errors.push(field(
            "per_minute",
            "must be at least 1 (pause the campaign to stop it sending)",
        ));
    }
    if let Some(p) = priority.filter(|p| !(1..=MAX_PRIORITY).contains(p)) {
        errors.push(field(
            "priority",
            format!("{p} is not between 1 and {MAX_PRIORITY}"),
        ));
    }
    errors
}

fn limits(req: &CampaignRequest, errors: &mut Vec<FieldError>) -> Limits {
    errors.extend(check_limits(req.per_minute, req.priority));
    let send_at_ms = req.send_at.as_deref().and_then(|t| {
        chrono::DateTime::parse_from_rfc3339(t.trim())
            .map(|t| t.timestamp_millis())
            .map_err(|e| {
                errors.push(field(
                    "send_at",
                    format!("{t:?} is not an RFC 3339 time like 2026-12-24T09:00:00+01:00: {e}"),
                ))
            })
            .ok()
    });
    if let Some(w) = &req.window {
        if let Err((f, e)) = w.check() {
            errors.push(field(f, e));
        }
    }
    Limits {
        per_minute: req.per_minute,
        priority: req.priority.unwrap_or(1),
        send_at_ms,
        window: req.window.clone(),
    }
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecipientIn {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A recipient with the words that point a user at it: `recipients[3]` or `line 5`.
#[derive(Debug, Clone)]
pub struct Row {
    pub at: String,
    pub recipient: RecipientIn,
}

/// A campaign checked whole, its list in memory (see [`validate`]).
#[derive(Debug)]
pub struct ValidCampaign {
    pub head: Prepared,
    pub recipients: Vec<RecipientData>,
    pub duplicates: usize,
    /// Things that will not stop the send but that a sender should know (Gmail's clip).
    pub warnings: Vec<String>,
}

/// One thing wrong, and where.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct FieldError {
    /// `from`, `recipients[3].email`, `line 5: email`, `html line 2, column 4`, …
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Invalid {
    #[error("{0}")]
    UnknownTemplate(String),
    #[error("template syntax error in {0}")]
    TemplateSyntax(String),
    #[error("{}", .0.first().map(|e| format!("{}: {}", e.field, e.message)).unwrap_or_default())]
    Fields(Vec<FieldError>),
    #[error("the recipient list is empty")]
    NoRecipients,
    #[error("{0}")]
    Csv(String),
}

pub(crate) fn field(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks an address the way providers do: one `@`, a sensible local part and a dotted domain of
/// letters, digits and hyphens (internationalised letters allowed), nothing that could break a header.
pub fn check_email(email: &str) -> Result<(), &'static str> {
    if email.is_empty() {
        return Err("is empty");
    }
    if email.len() > 254 {
        return Err("is longer than 254 characters");
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters");
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Err("has no @");
    };
    if local.is_empty() || local.len() > 64 {
        return Err("has an empty or over-long local part");
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err("has a misplaced dot in the local part");
    }
    let local_ok = local
        .chars()
        .all(|c| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
    if !local_ok {
        return Err("has a character not allowed in the local part");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err("has no dot in the domain");
    }
    for label in &labels {
        if label.is_empty() || label.len() > 63 {
            return Err("has an empty or over-long domain label");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("has a domain label starting or ending with '-'");
        }
        if !label.chars().all(|c| c.is_alphanumeric() || c == '-') {
            return Err("has a character not allowed in the domain");
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err("has a numeric top-level domain");
    }
    Ok(())
}

pub(crate) fn has_line_break(s: &str) -> bool {
    s.contains(['\r', '\n'])
}

/// `addr`, `Name <addr>` or `"Name" <addr>`.
pub fn parse_mailbox(key: &str, s: &str) -> Result<Mailbox, FieldError> {
    if has_line_break(s) {
        return Err(field(key, "must not contain CR or LF (header injection)"));
    }
    let s = s.trim();
    let (name, email) = match (s.rfind('<'), s.ends_with('>')) {
        (Some(i), true) => {
            let name = s[..i].trim().trim_matches('"').trim();
            (
                (!name.is_empty()).then(|| name.to_string()),
                s[i + 1..s.len() - 1].trim(),
            )
        }
        _ => (None, s),
    };
    check_email(email)
        .map_err(|why| field(key, format!("{email:?} is not a valid address: it {why}")))?;
    Ok(Mailbox {
        name,
        email: email.to_string(),
    })
}

/// Parses a recipients CSV: a header row naming `email` (required) and `name` (optional); every other
/// column becomes a data field. Rows are named by their line number in the file.
pub fn json_rows(recipients: Vec<RecipientIn>) -> Vec<Row> {
    recipients
        .into_iter()
        .enumerate()
        .map(|(i, recipient)| Row {
            at: format!("recipients[{i}]"),
            recipient,
        })
        .collect()
}

/// A campaign's own fields checked and its template compiled: what each recipient row is then
/// checked against, one chunk at a time ([`RowCheck`]), however long the list.
pub struct Prepared {
    pub name: String,
    pub from: Mailbox,
    pub reply_to: Option<Mailbox>,
    pub template: TemplateSource,
    pub template_name: Option<String>,
    pub css_inlined: bool,
    pub limits: Limits,
    pub track: renderer::Track,
    pub rows: RowRules,
}

/// What each recipient row is checked against: the compiled template (a strict trial render) and
/// the sandbox in force.
pub struct RowRules {
    compiled: CompiledTemplate,
    safety: Safety,
}

impl RowRules {
    /// The compiled template rows are trial-rendered with.
    pub fn template(&self) -> &CompiledTemplate {
        &self.compiled
    }

    /// The rules for a stored campaign's template (a draft taking a new list).
    pub fn new(
        template: &TemplateSource,
        safety: &Safety,
        render: RenderLimits,
    ) -> Result<Self, Invalid> {
        Ok(Self {
            compiled: compile(template, render)?,
            safety: safety.clone(),
        })
    }
}

fn compile(template: &TemplateSource, render: RenderLimits) -> Result<CompiledTemplate, Invalid> {
    CompiledTemplate::compile_with(template, render).map_err(|e| match e {
        TemplateError::Syntax { .. } => Invalid::TemplateSyntax(e.to_string()),
        other => Invalid::Fields(vec![field("template", other.to_string())]),
    })
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("name", &self.name)
            .field("template_name", &self.template_name)
            .finish_non_exhaustive()
    }
}

/// Checks everything about a campaign but its recipients (`req.recipients` is ignored).
pub fn prepare(
    req: &CampaignRequest,
    templates: &Path,
    safety: &Safety,
    render: RenderLimits,
) -> Result<Prepared, Invalid> {
    let mut errors = Vec::new();
    let name = req.name.trim().to_string();
    if name.is_empty() || name.len() > 200 {
        errors.push(field("name", "must be 1 to 200 characters"));
    }
    let from = parse_mailbox("from", &req.from)
        .map_err(|e| errors.push(e))
        .ok();
    let limits = limits(req, &mut errors);
    let reply_to = match req.reply_to.as_deref().filter(|r| !r.trim().is_empty()) {
        Some(r) => parse_mailbox("reply_to", r)
            .map_err(|e| errors.push(e))
            .ok(),
        None => None,
    };

    let (template, template_name) = match (&req.template, &req.subject, &req.html) {
        (Some(t), None, None) => (
            TemplateSource::load_dir(templates, t).map_err(|e| match e {
                TemplateError::BadName(_) | TemplateError::NotFound(_) => {
                    Invalid::UnknownTemplate(e.to_string())
                }
                other => Invalid::TemplateSyntax(other.to_string()),
            })?,
            Some(t.clone()),
        ),
        (None, Some(subject), Some(html)) => (
            TemplateSource {
                subject: subject.clone(),
                html: html.clone(),
                text: req.text.clone(),
                // Inline templates may use the shared partials and layouts too.
                partials: TemplateSource::load_partials(templates)
                    .map_err(|e| Invalid::TemplateSyntax(e.to_string()))?,
            },
            None,
        ),
        (Some(_), _, _) => {
            errors.push(field(
                "template",
                "give either `template` or inline `subject` and `html`, not both",
            ));
            return Err(Invalid::Fields(errors));
        }
        _ => {
            errors.push(field(
                "template",
                "give a `template` name, or inline `subject` and `html`",
            ));
            return Err(Invalid::Fields(errors));
        }
    };
    let compiled = compile(&template, render)?;
    if !errors.is_empty() {
        return Err(Invalid::Fields(errors));
    }
    Ok(Prepared {
        name,
        from: from.expect("no errors means from parsed"),
        reply_to,
        css_inlined: compiled.css_inlined,
        template,
        template_name,
        limits,
        track: req.track.into(),
        rows: RowRules {
            compiled,
            safety: safety.clone(),
        },
    })
}

/// Recipient rows checked against a [`Prepared`] campaign a chunk at a time, in list order: each
/// address, name and data, then a strict trial render of the chunk on every core. Ids are given in
/// order; the first problems are kept (at most [`MAX_ERRORS`]) with the line or index of their row.
pub struct RowCheck<'a> {
    rules: &'a RowRules,
    next_id: i64,
    errors: Vec<FieldError>,
    largest_html: Option<(String, usize)>,
}

impl<'a> RowCheck<'a> {
    pub fn new(rules: &'a RowRules) -> Self {
        Self {
            rules,
            next_id: 0,
            errors: Vec::new(),
            largest_html: None,
        }
    }

    /// Whether enough problems were found that reading on would add none to the answer.
    pub fn full(&self) -> bool {
        self.errors.len() >= MAX_ERRORS
    }

    pub fn failed(&self) -> bool {
        !self.errors.is_empty()
    }

    /// Rows given ids so far.
    pub fn rows(&self) -> i64 {
        self.next_id
    }

    /// The chunk's valid recipients (none once anything failed: nothing is stored then).
    pub fn check(&mut self, rows: Vec<Row>) -> Vec<RecipientData> {
        let mut kept: Vec<(String, RecipientData)> = Vec::with_capacity(rows.len());
        for row in rows {
            if self.full() {
                break;
            }
            match check_row(row, &self.rules.safety) {
                Ok((at, mut r)) => {
                    r.id = self.next_id;
                    self.next_id += 1;
                    kept.push((at, r));
                }
                Err(e) => self.errors.push(e),
            }
        }
        let trial = trial_render(&self.rules.compiled, &kept);
        self.errors.extend(trial.errors);
        self.errors.truncate(MAX_ERRORS);
        if let Some((at, bytes)) = trial.largest_html {
            if self.largest_html.as_ref().is_none_or(|(_, b)| bytes > *b) {
                self.largest_html = Some((at, bytes));
            }
        }
        if self.failed() {
            return Vec::new();
        }
        kept.into_iter().map(|(_, r)| r).collect()
    }

    /// Every problem found, or the warnings for a list that passed.
    pub fn finish(self) -> Result<Vec<String>, Invalid> {
        if !self.errors.is_empty() {
            return Err(Invalid::Fields(self.errors));
        }
        if self.next_id == 0 {
            return Err(Invalid::NoRecipients);
        }
        let mut warnings = Vec::new();
        if let Some((at, bytes)) = self.largest_html.filter(|(_, b)| *b > GMAIL_CLIP_BYTES) {
            warnings.push(format!(
                "the HTML of {at} is {} KB: Gmail clips messages over about 102 KB behind a \"View entire message\" link",
                bytes / 1000
            ));
        }
        Ok(warnings)
    }
}

/// One row's address, name and data, or what is wrong with the first of them that is.
pub(crate) fn check_row(row: Row, safety: &Safety) -> Result<(String, RecipientData), FieldError> {
    let r = row.recipient;
    let email = r.email.trim().to_string();
    if let Err(why) = check_email(&email) {
        return Err(field(
            format!("{}.email", row.at),
            format!("{email:?} is not a valid address: it {why}"),
        ));
    }
    if !safety.allows(&email) {
        return Err(field(
            format!("{}.email", row.at),
            format!("{email} may not be mailed: sandbox mode allows only [safety] allow_domains and allow_addresses"),
        ));
    }
    let data_bytes = r.data.as_ref().map_or(0, |d| {
        serde_json::to_string(d).map_or(usize::MAX, |s| s.len())
    });
    if data_bytes > MAX_ROW_BYTES || r.name.as_deref().is_some_and(|n| n.len() > 256) {
        return Err(field(
            format!("{}.data", row.at),
            format!("a recipient's data is at most {MAX_ROW_BYTES} bytes of JSON and its name 256 bytes"),
        ));
    }
    if r.name.as_deref().is_some_and(has_line_break) {
        return Err(field(
            format!("{}.name", row.at),
            "must not contain CR or LF (header injection)",
        ));
    }
    Ok((
        row.at,
        RecipientData {
            id: 0,
            email,
            name: r
                .name
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty()),
            data: serde_json::Value::Object(r.data.unwrap_or_default()),
            unsubscribe: None,
            // Where links are signed the real one is set at render time; a trial render only
            // needs the field to be there (creation refuses `{{web_url}}` where they are not).
            web_url: Some(TRIAL_WEB_URL.into()),
            tracking: None,
        },
    ))
}

/// A whole campaign checked in memory: a small list, or a test's. Duplicates (by canonical
/// address, first one kept) are dropped and counted here; a streamed list leaves that to the store.
pub fn validate(
    req: CampaignRequest,
    rows: Vec<Row>,
    templates: &Path,
    safety: &Safety,
    render: RenderLimits,
) -> Result<ValidCampaign, Invalid> {
    let prepared = prepare(&req, templates, safety, render)?;
    let mut seen = HashSet::with_capacity(rows.len());
    let mut duplicates = 0;
    let rows: Vec<Row> = rows
        .into_iter()
        .filter(|r| {
            let fresh = check_email(r.recipient.email.trim()).is_err()
                || seen.insert(sender::safety::canonical(r.recipient.email.trim()));
            duplicates += usize::from(!fresh);
            fresh
        })
        .collect();
    let mut check = RowCheck::new(&prepared.rows);
    let recipients = check.check(rows);
    let warnings = check.finish()?;
    Ok(ValidCampaign {
        head: prepared,
        recipients,
        duplicates,
        warnings,
    })
}

/// Refuses what needs signed links where they are not: `{{web_url}}` (see [`check_web_url`])
/// and tracking, whose pixel and redirects are signed like an unsubscribe link.
pub fn check_links(prepared: &Prepared, links_signed: bool) -> Result<(), Invalid> {
    check_web_url(&prepared.template, links_signed)?;
    if prepared.track.any() && !links_signed {
        return Err(Invalid::Fields(vec![field(
            "track",
            "tracking opens or clicks needs signed links: set [unsubscribe] base_url and CONDUCTOR__UNSUBSCRIBE__SECRET",
        )]));
    }
    Ok(())
}

/// Refuses a template that uses `{{web_url}}` where links are not signed: every message would
/// carry a link to nowhere. (A mention of `web_url` anywhere in it counts: the refusal says why.)
pub fn check_web_url(template: &TemplateSource, links_signed: bool) -> Result<(), Invalid> {
    let parts = [
        Some(&template.subject),
        Some(&template.html),
        template.text.as_ref(),
    ];
    let uses = parts
        .into_iter()
        .flatten()
        .chain(template.partials.values())
        .any(|p| p.contains("web_url"));
    if uses && !links_signed {
        return Err(Invalid::Fields(vec![field(
            "template",
            "uses {{web_url}}, which needs signed links: set [unsubscribe] base_url and CONDUCTOR__UNSUBSCRIBE__SECRET",
        )]));
    }
    Ok(())
}

/// What `{{web_url}}` is in a trial render: a URL that can never resolve (RFC 2606).
pub const TRIAL_WEB_URL: &str = "https://web-view.invalid/";

/// Gmail shows only the first ~102 KB of a message's HTML.
pub const GMAIL_CLIP_BYTES: usize = 102 * 1024;

struct Trial {
    errors: Vec<FieldError>,
    /// The largest rendered HTML and the row it belongs to.
    largest_html: Option<(String, usize)>,
}

/// Renders every recipient in strict mode, on every core, and reports the first problems in list
/// order, and the largest HTML seen.
fn trial_render(t: &CompiledTemplate, rows: &[(String, RecipientData)]) -> Trial {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let chunk = rows.len().div_ceil(threads).max(1);
    type Part = (Vec<(i64, FieldError)>, Option<(i64, usize)>);
    let parts: Vec<Part> = std::thread::scope(|s| {
        let handles: Vec<_> = rows
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut errs = Vec::new();
                    let mut largest: Option<(i64, usize)> = None;
                    for (at, r) in part {
                        let problem = match t.trial(context(r)) {
                            Err(e) => Some(field(format!("{at} ({})", r.email), format!("{e}"))),
                            Ok(p) if has_line_break(&p.subject) => Some(field(
                                format!("{at} ({})", r.email),
                                "the rendered subject contains CR or LF (header injection)",
                            )),
                            Ok(p) => {
                                if largest.is_none_or(|(_, b)| p.html.len() > b) {
                                    largest = Some((r.id, p.html.len()));
                                }
                                None
                            }
                        };
                        if let Some(p) = problem {
                            errs.push((r.id, p));
                            if errs.len() >= MAX_ERRORS {
                                break;
                            }
                        }
                    }
                    (errs, largest)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let largest = parts
        .iter()
        .filter_map(|(_, l)| *l)
        .max_by_key(|(id, b)| (*b, std::cmp::Reverse(*id)));
    let mut errors: Vec<(i64, FieldError)> = parts.into_iter().flat_map(|(e, _)| e).collect();
    // The trial left out the text derived from the HTML; the largest message, rendered whole, is
    // the one it could push over the size limit.
    if let Some((at, r)) = largest.and_then(|(id, _)| rows.iter().find(|(_, r)| r.id == id)) {
        if let Err(e) = t.render(context(r)) {
            errors.push((r.id, field(format!("{at} ({})", r.email), format!("{e}"))));
        }
    }
    errors.sort_by_key(|(id, _)| *id);
    Trial {
        errors: errors
            .into_iter()
            .take(MAX_ERRORS)
            .map(|(_, e)| e)
            .collect(),
        largest_html: largest.and_then(|(id, b)| {
            rows.iter()
                .find(|(_, r)| r.id == id)
                .map(|(at, _)| (at.clone(), b))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(html: &str) -> CampaignRequest {
        CampaignRequest {
            name: "Test".into(),
            from: "News <news@example.com>".into(),
            reply_to: None,
            template: None,
            subject: Some("Hi {{name}}".into()),
            html: Some(html.into()),
            ..Default::default()
        }
    }

    fn rows(emails: &[&str]) -> Vec<Row> {
        json_rows(
            emails
                .iter()
                .map(|e| RecipientIn {
                    email: e.to_string(),
                    name: Some("N".into()),
                    data: None,
                })
                .collect(),
        )
    }

    #[test]
    fn emails() {
        for ok in [
            "a@example.com",
            "first.last+tag@sub.example.co.uk",
            "zoë@bücher.de",
            "x@xn--80ak6aa92e.com",
        ] {
            assert_eq!(check_email(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "plain",
            "a@b",
            "a@@b.com",
            "a b@c.com",
            ".a@b.com",
            "a..b@c.com",
            "a@-b.com",
            "a@b.123",
            "a@b..com",
            "a@b.com\r\nBcc: x@y.com",
            "a\"b@c.com",
        ] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mailboxes() {
        assert_eq!(
            parse_mailbox("from", "\"Acme News\" <news@example.com>").unwrap(),
            Mailbox {
                name: Some("Acme News".into()),
                email: "news@example.com".into()
            }
        );
        assert_eq!(
            parse_mailbox("from", "news@example.com").unwrap().name,
            None
        );
        let e =
            parse_mailbox("from", "News <news@example.com>\r\nBcc: all@example.com").unwrap_err();
        assert_eq!(e.field, "from");
        assert!(e.message.contains("header injection"));
        let e = parse_mailbox("reply_to", "Nobody <nope>").unwrap_err();
        assert_eq!(e.field, "reply_to");
    }

    #[test]
    fn duplicates_are_dropped_and_counted_case_insensitively() {
        let v = validate(
            req("<p>{{name}}</p>"),
            rows(&["a@example.com", "A@Example.com", "b@example.com"]),
            Path::new("/nonexistent"),
            &Safety::default(),
            RenderLimits::default(),
        )
        .unwrap();
        assert_eq!(v.recipients.len(), 2);
        assert_eq!(v.duplicates, 1);
        assert_eq!(v.recipients[1].id, 1);
        assert_eq!(v.recipients[1].email, "b@example.com");
    }

    #[test]
    fn a_missing_field_names_the_row_and_the_field() {
        let mut rs = rows(&["a@example.com", "b@example.com"]);
        rs[0].recipient.data = Some(
            serde_json::json!({"city": "Köln"})
                .as_object()
                .unwrap()
                .clone(),
        );
        let err = validate(
            req("<p>{{city}}</p>"),
            rs,
            Path::new("/nonexistent"),
            &Safety::default(),
            RenderLimits::default(),
        )
        .unwrap_err();
        match err {
            Invalid::Fields(errs) => {
                assert_eq!(errs.len(), 1);
                assert_eq!(errs[0].field, "recipients[1] (b@example.com)");
                assert!(
                    errs[0].message.contains("missing field `city`"),
                    "{}",
                    errs[0].message
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_derived_text_counts_against_the_size_limit_though_the_trial_skips_it() {
        // A link's text part repeats its address, so the whole message is about twice the HTML.
        let mut rs = rows(&["a@example.com", "b@example.com"]);
        for (r, len) in rs.iter_mut().zip([100, 3000]) {
            r.recipient.data = Some(
                serde_json::json!({"url": format!("https://example.com/{}", "x".repeat(len))})
                    .as_object()
                    .unwrap()
                    .clone(),
            );
        }
        let limits = RenderLimits {
            max_message_bytes: 5000,
            ..RenderLimits::default()
        };
        let html = "<p><a href=\"{{url}}\">read</a></p>";
        let subject_and_html = 5 + html.len() + 3000;
        assert!(subject_and_html < 5000, "the HTML alone fits");
        match validate(req(html), rs, Path::new("/x"), &Safety::default(), limits).unwrap_err() {
            Invalid::Fields(errs) => {
                assert_eq!(errs.len(), 1, "{errs:?}");
                assert_eq!(errs[0].field, "recipients[1] (b@example.com)");
                assert!(errs[0].message.contains("5000"), "{}", errs[0].message);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_rendered_subject_with_a_line_break_is_header_injection() {
        let mut r = req("<p>x</p>");
        r.subject = Some("Hi {{name}}".into());
        let mut rs = rows(&["a@example.com"]);
        rs[0].recipient.name = None;
        rs[0].recipient.data = Some(
            serde_json::json!({"name": "x\r\nBcc: all@example.com"})
                .as_object()
                .unwrap()
                .clone(),
        );
        match validate(
            r,
            rs,
            Path::new("/nonexistent"),
            &Safety::default(),
            RenderLimits::default(),
        )
        .unwrap_err()
        {
            Invalid::Fields(errs) => assert!(errs[0].message.contains("header injection")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn empty_and_invalid_recipients() {
        assert_eq!(
            validate(
                req("<p>x</p>"),
                vec![],
                Path::new("/x"),
                &Safety::default(),
                RenderLimits::default()
            )
            .unwrap_err(),
            Invalid::NoRecipients
        );
        match validate(
            req("<p>x</p>"),
            rows(&["ok@example.com", "not-an-address"]),
            Path::new("/x"),
            &Safety::default(),
            RenderLimits::default(),
        )
        .unwrap_err()
        {
            Invalid::Fields(errs) => assert_eq!(errs[0].field, "recipients[1].email"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_sandbox_refuses_strangers_by_row() {
        let sandbox = Safety {
            sandbox: true,
            allow_domains: vec!["example.com".into()],
            allow_addresses: vec![],
        };
        match validate(
            req("<p>x</p>"),
            rows(&["ok@example.com", "real.person@gmail.com"]),
            Path::new("/x"),
            &sandbox,
            RenderLimits::default(),
        )
        .unwrap_err()
        {
            Invalid::Fields(errs) => {
                assert_eq!(errs.len(), 1);
                assert_eq!(errs[0].field, "recipients[1].email");
                assert!(errs[0].message.contains("sandbox"), "{}", errs[0].message);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        /// Addresses: checked, parsed as a mailbox and put in canonical form without a panic, and a
        /// valid one keeps its canonical form stable.
        #[test]
        fn any_address_is_judged_without_panic(s in "\\PC{0,80}", at in "[a-zA-Z0-9._%+-]{1,20}@[a-zA-Zäöü0-9-]{1,20}\\.[a-z]{2,6}") {
            let _ = check_email(&s);
            let _ = parse_mailbox("from", &s);
            let _ = sender::safety::canonical(&s);
            if check_email(&at).is_ok() {
                let once = sender::safety::canonical(&at);
                prop_assert_eq!(sender::safety::canonical(&once), once.clone());
            }
        }
    }
}
