//! `POST /v1/feedback/{provider}`: delivery events from providers' webhooks. The body is read as
//! raw bytes and verified before anything is parsed for meaning.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use crate::domain::feedback::{self, FeedbackError};
use crate::http::problem::{Problem, ProblemType};
use crate::http::service::Service;
use renderer::deploy::config::Secret;

pub fn router() -> Router<Arc<Service>> {
    Router::new()
        .route("/v1/feedback/mailgun", post(mailgun))
        .route("/v1/feedback/sendgrid", post(sendgrid))
        .route("/v1/feedback/postmark", post(postmark))
        .route("/v1/feedback/ses", post(ses))
}

fn disabled(provider: &'static str, how: &str) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        ProblemType::FeedbackDisabled,
        "Feedback from this provider is not enabled",
        format!("{provider}: {how}"),
    )
}

fn unauthorised(e: impl ToString) -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        ProblemType::BadSignature,
        "Signature does not verify",
        e.to_string(),
    )
}

fn malformed(provider: &str, e: FeedbackError) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        ProblemType::Validation,
        "Not a webhook payload",
        format!("{provider}: {e}"),
    )
}

/// Records events; an event seen before changes nothing. Returns how many were new.
async fn record(svc: &Service, events: &[feedback::Event]) -> Result<usize, Problem> {
    let now = svc.work.clock.now_ms();
    let mut new = 0;
    for event in events {
        if svc.store.record_feedback(event, now).await? {
            new += 1;
            tracing::info!(provider = event.provider, event = event.kind.as_str(), email = %event.email, "feedback recorded");
        }
    }
    Ok(new)
}

/// SendGrid's Signed Event Webhook: a JSON array, ECDSA-signed; retried on anything but 2xx.
async fn sendgrid(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let config = svc.work.config.borrow().feedback.sendgrid.clone();
    let Some(key) = config.public_key.as_deref() else {
        return Err(disabled(
            "sendgrid",
            "set [feedback.sendgrid] public_key to the Signed Event Webhook's verification key",
        ));
    };
    // Checked at startup; a key that stopped parsing is a server fault, not the caller's.
    let key = feedback::sendgrid_key(key).map_err(|e| {
        tracing::error!(error = %e, "feedback.sendgrid.public_key");
        Problem::internal()
    })?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // The signature covers the body, so the body must be read; a post without one is not.
    if header("x-twilio-email-event-webhook-signature").is_none() {
        return Err(unauthorised(FeedbackError::BadSignature));
    }
    let body =
        crate::http::body::read(body, crate::http::body::WEBHOOK, "a SendGrid webhook").await?;
    let events = match feedback::sendgrid(
        &body,
        header("x-twilio-email-event-webhook-timestamp"),
        header("x-twilio-email-event-webhook-signature"),
        &key,
    ) {
        Ok(events) => events,
        Err(e @ FeedbackError::BadSignature) => return Err(unauthorised(e)),
        Err(e) => return Err(malformed("sendgrid", e)),
    };
    record(&svc, &events).await?;
    Ok(StatusCode::OK.into_response())
}

/// Postmark signs nothing: the webhook URL carries basic-auth credentials only it knows.
async fn postmark(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let p = svc.work.config.borrow().feedback.postmark.clone();
    let (Some(user), Some(password)) = (
        p.username.as_deref(),
        p.password.as_ref().map(Secret::expose),
    ) else {
        return Err(disabled(
            "postmark",
            "set [feedback.postmark] username and CONDUCTOR__FEEDBACK__POSTMARK__PASSWORD",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !feedback::basic_auth_matches(given, user, password) {
        let mut response = Problem::new(
            StatusCode::UNAUTHORIZED,
            ProblemType::Unauthorised,
            "Credentials required",
            "the webhook URL's basic-auth credentials do not match [feedback.postmark]",
        )
        .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"feedback\""),
        );
        return Ok(response);
    }
    let body =
        crate::http::body::read(body, crate::http::body::WEBHOOK, "a Postmark webhook").await?;
    match feedback::postmark(&body) {
        Ok(event) => {
            record(&svc, &[event]).await?;
            Ok(StatusCode::OK.into_response())
        }
        Err(FeedbackError::Ignored(_)) => Ok(StatusCode::OK.into_response()),
        Err(e) => Err(malformed("postmark", e)),
    }
}

/// Mailgun retries anything but 200 and 406 for hours; 406 tells it to stop (stale or replayed).
async fn mailgun(State(svc): State<Arc<Service>>, body: Body) -> Result<Response, Problem> {
    let config = svc.work.config.borrow().feedback.mailgun.clone();
    let Some(key) = config.signing_key.as_ref().map(Secret::expose) else {
        return Err(disabled(
            "mailgun",
            "set CONDUCTOR__FEEDBACK__MAILGUN__SIGNING_KEY to the webhook signing key",
        ));
    };
    // Mailgun's signature is inside the JSON, so the body is read first, but never past a webhook's size.
    let body =
        crate::http::body::read(body, crate::http::body::WEBHOOK, "a Mailgun webhook").await?;
    let now = svc.work.clock.now_ms();
    let verified = match feedback::mailgun_verify(&body, key, now) {
        Ok(v) => v,
        Err(e @ FeedbackError::BadSignature) => return Err(unauthorised(e)),
        Err(e @ FeedbackError::Stale { .. }) => {
            return Err(Problem::new(
                StatusCode::NOT_ACCEPTABLE,
                ProblemType::StaleWebhook,
                "Webhook too old",
                e.to_string(),
            ))
        }
        Err(e) => return Err(malformed("mailgun", e)),
    };
    // Spent before the event is read, whatever it turns out to be.
    let forget_before = now - 2 * feedback::MAX_AGE_MS;
    if !svc
        .store
        .spend_token(&verified.token_key, now, forget_before)
        .await?
    {
        return Err(Problem::new(
            StatusCode::NOT_ACCEPTABLE,
            ProblemType::ReplayedWebhook,
            "Already received",
            "this signature's token was used before",
        ));
    }
    match verified.event() {
        Ok(event) => {
            record(&svc, std::slice::from_ref(&event)).await?;
            Ok(StatusCode::OK.into_response())
        }
        Err(FeedbackError::Ignored(_)) => Ok(StatusCode::OK.into_response()),
        Err(e) => Err(malformed("mailgun", e)),
    }
}

/// SES feedback through SNS: the envelope is verified (topic, certificate host, signature) on the raw
/// bytes before the SES notification inside is read. SNS retries anything but 2xx, so what can never
/// succeed (garbage, a stale replay) is answered 4xx once and only a fetch failure asks for a retry.
async fn ses(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    use renderer::sns::{MessageType, SnsError};
    let Some(intake) = svc.ses_intake() else {
        return Err(disabled(
            "ses",
            "set [feedback.ses] topic_arns to the SNS topics SES publishes feedback to",
        ));
    };
    // SNS names the topic in a header: a post for a topic we do not take is refused unread.
    let topic = headers
        .get("x-amz-sns-topic-arn")
        .and_then(|v| v.to_str().ok());
    if topic.is_some_and(|t| !intake.built_from.topic_arns.iter().any(|known| known == t)) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            ProblemType::BadSignature,
            "Not a genuine SNS delivery",
            "the topic is not one of [feedback.ses] topic_arns",
        ));
    }
    let body = crate::http::body::read(body, crate::http::body::WEBHOOK, "an SNS delivery").await?;
    let msg = match intake.verifier.check(&body).await {
        Ok(m) => m,
        Err(e @ (SnsError::Malformed(_) | SnsError::UnknownType(_))) => {
            return Err(malformed("ses", FeedbackError::Malformed(e.to_string())))
        }
        Err(e @ SnsError::CertFetch(_)) => {
            tracing::warn!(error = %e, "SES feedback not verified yet");
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ProblemType::Unavailable,
                "Cannot verify the signature now",
                e.to_string(),
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "SES feedback refused");
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                ProblemType::BadSignature,
                "Not a genuine SNS delivery",
                e.to_string(),
            ));
        }
    };
    let declared = headers
        .get("x-amz-sns-message-type")
        .and_then(|v| v.to_str().ok());
    if declared.is_some_and(|d| d != msg.kind) {
        return Err(malformed(
            "ses",
            FeedbackError::Malformed(
                "x-amz-sns-message-type disagrees with the message's Type".into(),
            ),
        ));
    }
    match msg.message_type() {
        Ok(MessageType::SubscriptionConfirmation) => {
            let url = msg.subscribe_url.as_deref().unwrap_or_default();
            match renderer::sns::confirm_subscription(&intake.confirm, &intake.verifier, url).await
            {
                Ok(()) => {
                    tracing::info!(topic = %msg.topic_arn, "SES feedback subscription confirmed");
                    Ok(StatusCode::OK.into_response())
                }
                Err(e) => {
                    tracing::warn!(topic = %msg.topic_arn, error = %e, "SES feedback subscription not confirmed");
                    Err(Problem::new(
                        StatusCode::BAD_GATEWAY,
                        ProblemType::Unavailable,
                        "Subscription not confirmed",
                        e,
                    ))
                }
            }
        }
        Ok(MessageType::UnsubscribeConfirmation) => {
            tracing::warn!(topic = %msg.topic_arn, "SES feedback subscription ended");
            Ok(StatusCode::OK.into_response())
        }
        Ok(MessageType::Notification) => {
            match feedback::ses::events(&msg, svc.work.clock.now_ms()) {
                Ok(events) => {
                    record(&svc, &events).await?;
                    Ok(StatusCode::OK.into_response())
                }
                Err(FeedbackError::Ignored(_)) => Ok(StatusCode::OK.into_response()),
                Err(e @ FeedbackError::Stale { .. }) => Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    ProblemType::StaleWebhook,
                    "Webhook too old",
                    e.to_string(),
                )),
                Err(e) => Err(malformed("ses", e)),
            }
        }
        Err(e) => Err(malformed("ses", FeedbackError::Malformed(e.to_string()))),
    }
}
