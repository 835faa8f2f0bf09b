//! Test sends: a campaign's message mailed to the few people checking it, before or while the
//! campaign itself sends. Pure: which addresses may receive one, what the message looks like;
//! `engine/test_send.rs` takes the tokens and sends.
//!
//! A test is not a recipient: it is never stored, never counted in the campaign's progress and
//! never carries a link that acts on anyone (its unsubscribe link and web view are the preview's,
//! whose tokens no signature makes valid). Its Message-ID is its own, so a mailbox that drops
//! repeated Message-IDs still shows every test.

use renderer::batch::FORMAT_VERSION;
use renderer::{Mailbox, RenderedBatch, RenderedMessage};
use serde::{Deserialize, Serialize};

use crate::domain::preview::Preview;
use crate::domain::validate::{check_email, field, FieldError, Invalid, RecipientIn};

/// At most this many addresses per test: a test is for the people checking a campaign, not a
/// way around its list.
pub const MAX_ADDRESSES: usize = 10;

/// What the subject of every test starts with, so nobody takes it for the real send.
pub const SUBJECT_MARK: &str = "[Test] ";

/// `POST /v1/campaigns/{id}/test`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestSendRequest {
    /// Who receives the test: 1 to 10 addresses. In sandbox mode each must be one `[safety]`
    /// allows; a suppressed address is refused.
    pub to: Vec<String>,
    /// Render with the data of this recipient of the campaign (its id, as in
    /// `GET /v1/campaigns/{id}/recipients`).
    #[serde(default)]
    pub recipient_id: Option<i64>,
    /// Or with this data, as a recipient of `POST /v1/campaigns`. With neither, the campaign's
    /// first recipient's data is used (a draft without a list needs one of the two).
    #[serde(default)]
    pub recipient: Option<RecipientIn>,
}

/// What happened to each address, in the order given.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct TestSendReport {
    /// The calendar minute whose tokens the test spent (RFC 3339); they are in that minute's
    /// `global` and `test` ledger rows.
    pub minute: String,
    pub subject: String,
    pub results: Vec<TestResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct TestResult {
    pub to: String,
    pub outcome: TestOutcome,
    /// The provider's message id, when it accepted the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    /// Why not, when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TestOutcome {
    /// Accepted by the provider.
    Sent,
    /// Refused by the provider (for now or for good); a test is not retried.
    Failed,
    /// The request may have reached the provider: the message may arrive.
    Unknown,
}

impl TestOutcome {
    pub fn of(outcome: &sender::Outcome) -> (Self, Option<String>, Option<String>) {
        use sender::Outcome as O;
        match outcome {
            O::Sent { provider_id } => (Self::Sent, provider_id.clone(), None),
            O::Unknown { reason } => (Self::Unknown, None, Some(reason.clone())),
            O::Failed { reason }
            | O::Deferred { reason, .. }
            | O::Throttled { reason, .. }
            | O::AccountStop { reason } => (Self::Failed, None, Some(reason.clone())),
            O::Released => (Self::Failed, None, Some("not attempted".into())),
            other => (Self::Failed, None, Some(format!("{other:?}"))),
        }
    }
}

/// The addresses of `req`, checked: 1 to [`MAX_ADDRESSES`], each valid, none twice (compared as
/// the suppression list compares them), each allowed by `safety`. Every wrong one is named.
pub fn addresses(
    req: &TestSendRequest,
    safety: &sender::safety::Safety,
) -> Result<Vec<String>, Invalid> {
    let mut errors: Vec<FieldError> = Vec::new();
    if req.to.is_empty() {
        errors.push(field("to", "names no address: give 1 to 10"));
    }
    if req.to.len() > MAX_ADDRESSES {
        errors.push(field(
            "to",
            format!(
                "names {} addresses: a test goes to at most {MAX_ADDRESSES}",
                req.to.len()
            ),
        ));
    }
    if req.recipient_id.is_some() && req.recipient.is_some() {
        errors.push(field(
            "recipient",
            "give recipient_id or recipient, not both",
        ));
    }
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::with_capacity(req.to.len());
    for (i, raw) in req.to.iter().enumerate() {
        let email = raw.trim();
        let at = format!("to[{i}]");
        if let Err(why) = check_email(email) {
            errors.push(field(at, why));
            continue;
        }
        let key = sender::safety::canonical(email);
        if let Some(j) = seen.iter().position(|k| *k == key) {
            errors.push(field(at, format!("repeats to[{j}]")));
            seen.push(key);
            continue;
        }
        seen.push(key);
        if !safety.allows(email) {
            errors.push(field(
                at,
                format!("{email} may not be mailed: sandbox mode allows only [safety] allow_domains and allow_addresses"),
            ));
            continue;
        }
        out.push(email.to_string());
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(Invalid::Fields(errors))
    }
}

/// The refusal for addresses on the suppression list (`(canonical address, reason)`), naming each
/// by its place in `to`.
pub fn suppressed(to: &[String], found: &[(String, String)]) -> Result<(), Invalid> {
    let errors: Vec<FieldError> = to
        .iter()
        .enumerate()
        .filter_map(|(i, email)| {
            let key = sender::safety::canonical(email);
            found.iter().find(|(k, _)| *k == key).map(|(_, why)| {
                field(
                    format!("to[{i}]"),
                    format!("{email} is suppressed ({why}) and is never mailed again"),
                )
            })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Invalid::Fields(errors))
    }
}

/// The test's messages: the previewed message once per address, its subject marked. `test_id`
/// makes the batch's campaign id (and so each Message-ID and the provider's variables) the test's
/// own: feedback about a test finds no recipient of the campaign to act on.
pub fn batch(
    campaign_id: &str,
    test_id: &str,
    from: &Mailbox,
    reply_to: Option<&Mailbox>,
    shown: &Preview,
    to: &[String],
) -> RenderedBatch {
    let list_unsubscribe = shown
        .headers
        .iter()
        .find(|h| h.name == "List-Unsubscribe")
        .map(|h| h.value.clone());
    let messages = to
        .iter()
        .zip(1..)
        .map(|(email, n)| RenderedMessage {
            recipient_id: n,
            to: email.clone(),
            to_name: None,
            subject: mark(&shown.subject),
            html: shown.html.clone(),
            text: shown.text.clone(),
            list_unsubscribe: list_unsubscribe.clone(),
        })
        .collect();
    RenderedBatch {
        version: FORMAT_VERSION,
        campaign_id: format!("{campaign_id}.test-{test_id}"),
        batch: 0,
        from: from.clone(),
        reply_to: reply_to.cloned(),
        headers: Default::default(),
        messages,
    }
}

/// `subject` with the test mark in front (once).
pub fn mark(subject: &str) -> String {
    if subject.starts_with(SUBJECT_MARK) {
        subject.to_string()
    } else {
        format!("{SUBJECT_MARK}{subject}")
    }
}

#[cfg(test)]
mod tests {
    use sender::safety::Safety;

    use super::*;

    fn request(to: &[&str]) -> TestSendRequest {
        TestSendRequest {
            to: to.iter().map(|s| s.to_string()).collect(),
            recipient_id: None,
            recipient: None,
        }
    }

    fn fields(e: Invalid) -> Vec<String> {
        match e {
            Invalid::Fields(f) => f
                .into_iter()
                .map(|f| format!("{}: {}", f.field, f.message))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn addresses_are_checked_and_each_wrong_one_named() {
        let open = Safety::default();
        assert_eq!(
            addresses(&request(&[" qa@example.com ", "boss@example.org"]), &open).unwrap(),
            vec!["qa@example.com", "boss@example.org"]
        );
        let errs = fields(
            addresses(
                &request(&["qa@example.com", "nope", "QA@Example.com"]),
                &open,
            )
            .unwrap_err(),
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("to[1]:"), "{errs:?}");
        assert_eq!(errs[1], "to[2]: repeats to[0]");
        let errs = fields(addresses(&request(&[]), &open).unwrap_err());
        assert!(errs[0].contains("names no address"), "{errs:?}");
        let eleven: Vec<String> = (0..11).map(|i| format!("qa{i}@example.com")).collect();
        let many: Vec<&str> = eleven.iter().map(String::as_str).collect();
        let errs = fields(addresses(&request(&many), &open).unwrap_err());
        assert!(errs[0].contains("at most 10"), "{errs:?}");
    }

    #[test]
    fn the_sandbox_refuses_a_stranger_by_place() {
        let sandbox = Safety {
            sandbox: true,
            allow_domains: vec!["example.com".into()],
            allow_addresses: vec![],
        };
        let errs = fields(
            addresses(&request(&["qa@example.com", "ceo@gmail.com"]), &sandbox).unwrap_err(),
        );
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("to[1]: ceo@gmail.com may not be mailed: sandbox"));
    }

    #[test]
    fn a_suppressed_address_is_refused() {
        let to = vec!["qa@example.com".to_string(), "Gone@Example.com".to_string()];
        assert!(suppressed(&to, &[]).is_ok());
        let errs = fields(
            suppressed(&to, &[("gone@example.com".into(), "complained".into())]).unwrap_err(),
        );
        assert_eq!(
            errs,
            vec!["to[1]: Gone@Example.com is suppressed (complained) and is never mailed again"]
        );
    }

    #[test]
    fn the_subject_is_marked_once() {
        assert_eq!(mark("Hello"), "[Test] Hello");
        assert_eq!(mark("[Test] Hello"), "[Test] Hello");
    }
}
