//! The render contract: what a job names, what a worker loads for it, and how it reports back.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::batch::Mailbox;
use crate::template::TemplateSource;

/// One batch of one campaign to render. Small on purpose: it travels as a doorbell (a channel
/// message or an SNS notification); the store holds the data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RenderJob {
    pub campaign_id: String,
    pub batch: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecipientData {
    pub id: i64,
    pub email: String,
    pub name: Option<String>,
    /// The recipient's own fields (a JSON object).
    pub data: serde_json::Value,
    /// One-click unsubscribe for this recipient, when the conductor signs links (`[unsubscribe]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<UnsubscribeLink>,
    /// `{{web_url}}`: where the recipient sees this message in a browser, when links are signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_url: Option<String>,
    /// Opens and clicks tracked for this recipient, when its campaign tracks them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking: Option<crate::track::Tracking>,
}

impl RecipientData {
    /// `html` as this recipient is sent it: its links tracked and the open pixel added, when it has
    /// [`Tracking`](crate::track::Tracking) — never its own unsubscribe link or web view.
    pub fn tracked(&self, html: String) -> String {
        let Some(t) = &self.tracking else { return html };
        let keep: Vec<&str> = self
            .unsubscribe
            .iter()
            .map(|u| u.url.as_str())
            .chain(self.web_url.as_deref())
            .collect();
        crate::track::apply(&html, t, &keep)
    }
}

/// Where this recipient unsubscribes (RFC 8058): a signed HTTPS URL and, optionally, a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsubscribeLink {
    pub url: String,
    pub mailto: Option<String>,
}

impl UnsubscribeLink {
    /// The `List-Unsubscribe` header value: the URL first, so one-click clients use it.
    pub fn header(&self) -> String {
        match &self.mailto {
            Some(m) => format!("<{}>, <mailto:{m}>", self.url),
            None => format!("<{}>", self.url),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenderInput {
    pub from: Mailbox,
    pub reply_to: Option<Mailbox>,
    pub template: TemplateSource,
    pub recipients: Vec<RecipientData>,
    /// What one recipient's render may cost: the conductor's `[campaigns]` settings.
    #[serde(default)]
    pub limits: crate::bounds::RenderLimits,
    /// What the campaign tracks; each recipient's [`RecipientData::tracking`] says how.
    #[serde(default)]
    pub track: crate::track::Track,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The campaign or batch no longer exists, or no longer needs rendering (cancelled, already done).
    #[error("job is gone: {0}")]
    Gone(String),
    #[error("render source unavailable: {0}")]
    Unavailable(String),
}

/// Where a renderer gets its input and reports its result: the conductor, in-process or over HTTP.
#[async_trait]
pub trait RenderSource: Send + Sync + 'static {
    async fn load(&self, job: &RenderJob) -> Result<RenderInput, SourceError>;
    /// The batch object is written at `key`. `failed` are recipients whose message could not be
    /// rendered (they end `failed` with the reason instead of waiting forever).
    async fn rendered(
        &self,
        job: &RenderJob,
        key: &str,
        failed: Vec<(i64, String)>,
    ) -> Result<(), SourceError>;
}

/// The data a template sees for one recipient: its own fields (numbers as handlebars.js prints
/// them, see [`js_number`](crate::js_number)), plus `email`, `name`, `unsubscribe_url` and, when
/// links are signed, `web_url`. The
/// trial render at creation and the real render use this one function, so what validated is what
/// renders.
pub fn context(r: &RecipientData) -> serde_json::Value {
    let mut ctx = match &r.data {
        serde_json::Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    ctx.values_mut().for_each(crate::js_number::normalize);
    ctx.insert("email".into(), r.email.clone().into());
    ctx.entry("name")
        .or_insert_with(|| r.name.clone().map_or(serde_json::Value::Null, Into::into));
    // The conductor's signed one-click link wins; without one (no `[unsubscribe] base_url`), the
    // recipient's own field or Mailgun's tag, which Mailgun replaces with its own link.
    match &r.unsubscribe {
        Some(u) => {
            ctx.insert("unsubscribe_url".into(), u.url.clone().into());
        }
        None => {
            ctx.entry("unsubscribe_url")
                .or_insert_with(|| "%unsubscribe_url%".into());
        }
    }
    if let Some(url) = &r.web_url {
        ctx.insert("web_url".into(), url.clone().into());
    }
    serde_json::Value::Object(ctx)
}
