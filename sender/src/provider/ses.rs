//! Amazon SES v2 `SendEmail` through aws-sdk-sesv2, credentials from the SDK's normal chain (or
//! the section's own keys).
//!
//! The SDK's own retries are off: a retried request is a new send as far as the recipient can tell,
//! and the state machine already retries what is safe to retry, under the minute ledger. The client
//! is made on the first send (loading the credential chain is async; building providers is not).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sesv2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sesv2::operation::send_email::SendEmailError;
use aws_sdk_sesv2::types::{
    Body, Content, Destination, EmailContent, Message, MessageHeader, MessageTag,
};
use tokio::sync::OnceCell;

use renderer::deploy::aws::{sdk_config, Access};

use super::{OutgoingMessage, Provider};
use crate::config::SesConfig;
use crate::lease::Outcome;

#[derive(Debug)]
pub struct Ses {
    config: SesConfig,
    timeout: Duration,
    client: OnceCell<aws_sdk_sesv2::Client>,
}

impl Ses {
    pub fn new(config: SesConfig, timeout: Duration) -> Self {
        Self {
            config,
            timeout,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> &aws_sdk_sesv2::Client {
        self.client
            .get_or_init(|| async {
                let c = &self.config;
                let shared = sdk_config(Access {
                    region: c.region.as_deref(),
                    endpoint: c.endpoint.as_deref(),
                    keys: Access::keys_of(&c.access_key_id, &c.secret_access_key),
                })
                .await;
                let config = aws_sdk_sesv2::config::Builder::from(&shared)
                    .retry_config(aws_sdk_sesv2::config::retry::RetryConfig::disabled())
                    .timeout_config(
                        aws_sdk_sesv2::config::timeout::TimeoutConfig::builder()
                            .operation_timeout(self.timeout)
                            .connect_timeout(self.timeout.min(Duration::from_secs(10)))
                            .build(),
                    )
                    .build();
                aws_sdk_sesv2::Client::from_conf(config)
            })
            .await
    }

    fn content(msg: OutgoingMessage<'_>) -> Result<EmailContent, String> {
        let m = msg.message;
        let text = |s: &str| {
            Content::builder()
                .data(s)
                .charset("UTF-8")
                .build()
                .map_err(|e| e.to_string())
        };
        let mut message = Message::builder().subject(text(&m.subject)?).body(
            Body::builder()
                .html(text(&m.html)?)
                .text(text(&m.text)?)
                .build(),
        );
        for (name, value) in msg.headers() {
            // SES sets Message-ID itself and refuses it as a custom header.
            if name.eq_ignore_ascii_case("message-id") {
                continue;
            }
            message = message.headers(
                MessageHeader::builder()
                    .name(name)
                    .value(value)
                    .build()
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(EmailContent::builder().simple(message.build()).build())
    }
}

/// An SES error, by its code, into an outcome. Pure.
pub fn classify(code: Option<&str>, message: Option<&str>, status: Option<u16>) -> Outcome {
    let reason = format!(
        "SES {}: {}",
        code.unwrap_or("error"),
        message.unwrap_or("no message")
    );
    match code {
        Some("TooManyRequestsException") => Outcome::Throttled {
            reason,
            retry_after_ms: None,
        },
        // The daily quota, or the account or its configuration: the rest of the list would fail
        // the same way.
        Some(
            "LimitExceededException"
            | "AccountSuspendedException"
            | "SendingPausedException"
            | "MailFromDomainNotVerifiedException"
            | "NotFoundException"
            | "AccessDeniedException"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch"
            | "ExpiredTokenException",
        ) => Outcome::AccountStop { reason },
        // Refused for this message: an unverified recipient in the SES sandbox, a bad address.
        Some("MessageRejected" | "BadRequestException") => Outcome::Failed { reason },
        _ => match status {
            Some(429) => Outcome::Throttled {
                reason,
                retry_after_ms: None,
            },
            Some(401 | 403) => Outcome::AccountStop { reason },
            Some(400..=499) => Outcome::Failed { reason },
            _ => Outcome::Deferred {
                reason,
                retry_after_ms: None,
            },
        },
    }
}

fn outcome(e: SdkError<SendEmailError>) -> Outcome {
    match &e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            classify(err.code(), err.message(), Some(s.raw().status().as_u16()))
        }
        SdkError::ConstructionFailure(_) => Outcome::Failed {
            reason: format!(
                "SES request not built: {}",
                renderer::deploy::aws::describe(&e)
            ),
        },
        // Only a failure to connect proves the request never left.
        SdkError::DispatchFailure(d) if d.is_io() && !d.is_timeout() => {
            let detail = renderer::deploy::aws::describe(&e);
            crate::provider::classify::transport_error(
                detail.to_ascii_lowercase().contains("connect"),
                &detail,
            )
        }
        _ => Outcome::Unknown {
            reason: format!(
                "no answer from SES after the request was sent: {}",
                renderer::deploy::aws::describe(&e)
            ),
        },
    }
}

#[async_trait]
impl Provider for Ses {
    fn name(&self) -> &'static str {
        "ses"
    }

    async fn send(&self, msg: OutgoingMessage<'_>) -> Outcome {
        let (b, m) = (msg.batch, msg.message);
        let content = match Self::content(msg) {
            Ok(c) => c,
            Err(reason) => return Outcome::Failed { reason },
        };
        let tag =
            |name: &str, value: String| MessageTag::builder().name(name).value(value).build().ok();
        let mut request = self
            .client()
            .await
            .send_email()
            .from_email_address(b.from.to_string())
            .destination(
                Destination::builder()
                    .to_addresses(msg.to().to_string())
                    .build(),
            )
            .content(content)
            .set_configuration_set_name(self.config.configuration_set.clone());
        if let Some(r) = &b.reply_to {
            request = request.reply_to_addresses(r.to_string());
        }
        // Echoed in event publishing: how feedback finds its recipient.
        for t in [
            tag("campaign_id", b.campaign_id.clone()),
            tag("recipient_id", m.recipient_id.to_string()),
        ]
        .into_iter()
        .flatten()
        {
            request = request.email_tags(t);
        }
        match request.send().await {
            Ok(out) => Outcome::Sent {
                provider_id: out.message_id().map(str::to_string),
            },
            Err(e) => outcome(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes() {
        assert!(matches!(
            classify(
                Some("TooManyRequestsException"),
                Some("Maximum sending rate exceeded."),
                Some(429)
            ),
            Outcome::Throttled { .. }
        ));
        for code in [
            "AccountSuspendedException",
            "SendingPausedException",
            "MailFromDomainNotVerifiedException",
            "LimitExceededException",
        ] {
            assert!(
                matches!(
                    classify(Some(code), None, Some(400)),
                    Outcome::AccountStop { .. }
                ),
                "{code}"
            );
        }
        assert_eq!(
            classify(
                Some("MessageRejected"),
                Some("Email address is not verified."),
                Some(400)
            ),
            Outcome::Failed {
                reason: "SES MessageRejected: Email address is not verified.".into()
            }
        );
        assert!(matches!(
            classify(Some("InternalFailure"), None, Some(500)),
            Outcome::Deferred { .. }
        ));
        assert!(matches!(
            classify(None, None, Some(403)),
            Outcome::AccountStop { .. }
        ));
    }
}
