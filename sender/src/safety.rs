//! `[safety]`: sandbox mode. With `sandbox = true` only listed domains and addresses can be mailed;
//! every other recipient is refused when a campaign is created and again just before each send, so
//! a staging system pointed at a copy of the production list cannot reach real people.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use crate::lease::Outcome;
use crate::provider::{OutgoingMessage, Provider};
use renderer::deploy::config::{invalid, ConfigError};

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Safety {
    pub sandbox: bool,
    /// Domains whose addresses (and whose subdomains' addresses) may be mailed in sandbox mode.
    pub allow_domains: Vec<String>,
    /// Single addresses that may be mailed in sandbox mode.
    pub allow_addresses: Vec<String>,
}

impl Safety {
    pub fn check(&self) -> Result<(), ConfigError> {
        if let Some(d) = self
            .allow_domains
            .iter()
            .find(|d| d.trim().is_empty() || d.contains('@'))
        {
            return Err(invalid(
                "safety.allow_domains",
                format!("{d:?} is not a domain"),
            ));
        }
        if let Some(a) = self.allow_addresses.iter().find(|a| !a.contains('@')) {
            return Err(invalid(
                "safety.allow_addresses",
                format!("{a:?} is not an address"),
            ));
        }
        if self.sandbox && self.allow_domains.is_empty() && self.allow_addresses.is_empty() {
            return Err(invalid(
                "safety.sandbox",
                "sandbox mode with nothing allowed would refuse every recipient: list allow_domains or allow_addresses",
            ));
        }
        Ok(())
    }

    /// Whether `email` may be mailed, compared in [`canonical`] form; always true outside sandbox
    /// mode.
    pub fn allows(&self, email: &str) -> bool {
        if !self.sandbox {
            return true;
        }
        let email = canonical(email);
        if self.allow_addresses.iter().any(|a| canonical(a) == email) {
            return true;
        }
        let Some((_, domain)) = email.rsplit_once('@') else {
            return false;
        };
        self.allow_domains.iter().any(|d| {
            let d = canonical_domain(d.trim().trim_start_matches('.'));
            domain == d || domain.ends_with(&format!(".{d}"))
        })
    }

    /// The provider behind a check that asks `live` for the settings at every send, so turning the
    /// sandbox on in a watched config protects the very next message.
    pub fn guard_live(provider: Arc<dyn Provider>, live: Arc<LiveSafety>) -> Arc<dyn Provider> {
        Arc::new(Sandboxed {
            inner: provider,
            safety: live,
        })
    }
}

/// Where the sandbox settings in force are read from.
pub type LiveSafety = dyn Fn() -> Safety + Send + Sync;

/// The one form in which addresses are compared everywhere (suppression list, duplicates, sandbox):
/// trimmed, the local part lower-cased (Unicode, as mailbox providers treat it), the domain in its
/// IDNA ASCII form (`Bücher.DE` and `xn--bcher-kva.de` are one domain).
pub fn canonical(email: &str) -> String {
    let email = email.trim();
    match email.rsplit_once('@') {
        Some((local, domain)) => format!("{}@{}", local.to_lowercase(), canonical_domain(domain)),
        None => email.to_lowercase(),
    }
}

/// A domain in the form [`canonical`] gives it: IDNA ASCII, lower case.
pub fn canonical_domain(domain: &str) -> String {
    idna::domain_to_ascii(domain.trim()).unwrap_or_else(|_| domain.trim().to_lowercase())
}

/// Refuses, without a request, any recipient the sandbox does not allow.
struct Sandboxed {
    inner: Arc<dyn Provider>,
    safety: Arc<LiveSafety>,
}

#[async_trait]
impl Provider for Sandboxed {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn send(&self, msg: OutgoingMessage<'_>) -> Outcome {
        if (self.safety)().allows(&msg.message.to) {
            self.inner.send(msg).await
        } else {
            refused(msg)
        }
    }

    fn batch_limit(&self) -> usize {
        self.inner.batch_limit()
    }

    /// Only the allowed messages reach the provider's request; the outcomes keep the input's order.
    async fn send_batch(&self, msgs: &[OutgoingMessage<'_>]) -> Vec<Outcome> {
        let safety = (self.safety)();
        let allowed: Vec<OutgoingMessage<'_>> = msgs
            .iter()
            .copied()
            .filter(|m| safety.allows(&m.message.to))
            .collect();
        let mut sent = if allowed.is_empty() {
            Vec::new()
        } else {
            self.inner.send_batch(&allowed).await
        }
        .into_iter();
        msgs.iter()
            .map(|m| {
                if safety.allows(&m.message.to) {
                    sent.next().unwrap_or(Outcome::Unknown {
                        reason: "the provider gave fewer answers than messages".into(),
                    })
                } else {
                    refused(*m)
                }
            })
            .collect()
    }
}

fn refused(msg: OutgoingMessage<'_>) -> Outcome {
    Outcome::Failed {
        reason: refusal(&msg.message.to),
    }
}

/// Why `email` is not mailed in sandbox mode: the reason a refused recipient ends `failed` with,
/// whether the conductor's lease or a sender's last check refused it.
pub fn refusal(email: &str) -> String {
    format!("sandbox: {email} is not in [safety] allow_domains or allow_addresses")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use renderer::{Mailbox, RenderedBatch, RenderedMessage};

    use super::*;

    fn sandbox() -> Safety {
        Safety {
            sandbox: true,
            allow_domains: vec!["example.com".into()],
            allow_addresses: vec!["QA@Partner.org".into()],
        }
    }

    #[test]
    fn only_listed_domains_and_addresses_pass() {
        let s = sandbox();
        for ok in [
            "a@example.com",
            "A@EXAMPLE.COM",
            "b@mail.example.com",
            "qa@partner.org",
        ] {
            assert!(s.allows(ok), "{ok}");
        }
        for no in [
            "a@notexample.com",
            "a@example.com.evil.org",
            "other@partner.org",
            "nobody",
        ] {
            assert!(!s.allows(no), "{no}");
        }
        assert!(Safety::default().allows("anyone@anywhere.org"));
    }

    #[test]
    fn settings_are_checked() {
        assert!(sandbox().check().is_ok());
        let empty = Safety {
            sandbox: true,
            ..Default::default()
        };
        assert!(empty
            .check()
            .unwrap_err()
            .to_string()
            .contains("safety.sandbox"));
        let bad = Safety {
            allow_domains: vec!["a@b.com".into()],
            ..Default::default()
        };
        assert!(bad
            .check()
            .unwrap_err()
            .to_string()
            .contains("allow_domains"));
    }

    struct Counting(AtomicUsize);

    #[async_trait]
    impl Provider for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        async fn send(&self, _: OutgoingMessage<'_>) -> Outcome {
            self.0.fetch_add(1, Ordering::SeqCst);
            Outcome::Sent { provider_id: None }
        }
    }

    #[tokio::test]
    async fn a_sandboxed_provider_never_sees_a_stranger() {
        let inner = Arc::new(Counting(AtomicUsize::new(0)));
        let fixed = sandbox();
        let guarded = Safety::guard_live(inner.clone(), Arc::new(move || fixed.clone()));
        let batch = RenderedBatch {
            version: renderer::batch::FORMAT_VERSION,
            campaign_id: "c".into(),
            batch: 0,
            from: Mailbox {
                name: None,
                email: "news@example.com".into(),
            },
            reply_to: None,
            headers: Default::default(),
            messages: ["ok@example.com", "real.person@gmail.com"]
                .iter()
                .enumerate()
                .map(|(i, to)| RenderedMessage {
                    recipient_id: i as i64,
                    to: to.to_string(),
                    to_name: None,
                    subject: "s".into(),
                    html: "h".into(),
                    text: "t".into(),
                    list_unsubscribe: None,
                })
                .collect(),
        };
        let outcomes: Vec<Outcome> = futures::future::join_all(batch.messages.iter().map(|m| {
            guarded.send(OutgoingMessage {
                batch: &batch,
                message: m,
            })
        }))
        .await;
        assert_eq!(outcomes[0], Outcome::Sent { provider_id: None });
        assert!(
            matches!(&outcomes[1], Outcome::Failed { reason } if reason.starts_with("sandbox:"))
        );
        assert_eq!(
            inner.0.load(Ordering::SeqCst),
            1,
            "the stranger was never sent"
        );
        // Batched, the stranger is taken out of the request and keeps its place in the answers.
        let msgs: Vec<OutgoingMessage<'_>> = batch
            .messages
            .iter()
            .rev()
            .map(|m| OutgoingMessage {
                batch: &batch,
                message: m,
            })
            .collect();
        let outcomes = guarded.send_batch(&msgs).await;
        assert!(
            matches!(&outcomes[0], Outcome::Failed { reason } if reason.contains("real.person@gmail.com"))
        );
        assert_eq!(outcomes[1], Outcome::Sent { provider_id: None });
        assert_eq!(inner.0.load(Ordering::SeqCst), 2);
    }
}
