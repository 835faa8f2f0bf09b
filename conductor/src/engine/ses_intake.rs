//! The SES feedback endpoint's standing parts, built from the live `[feedback.ses]`.

use std::sync::Arc;

use crate::domain::feedback;

/// The SES feedback endpoint's parts: who may post (SNS, on the configured topics) and the client
/// that confirms its subscriptions.
pub struct SesIntake {
    pub verifier: renderer::sns::Verifier,
    pub confirm: reqwest::Client,
    /// The section it was built from: a config edit builds a new one.
    pub built_from: feedback::SesFeedback,
}

impl SesIntake {
    /// `None` when `[feedback.ses] topic_arns` is empty: the endpoint is closed.
    pub fn new(
        cfg: &feedback::SesFeedback,
        certs: Arc<dyn renderer::sns::CertFetcher>,
    ) -> Option<Self> {
        if cfg.topic_arns.is_empty() {
            return None;
        }
        Some(Self {
            verifier: renderer::sns::Verifier::new(
                cfg.topic_arns.iter().cloned(),
                cfg.verify_signatures,
                certs,
            ),
            confirm: renderer::sns::confirm_client(),
            built_from: cfg.clone(),
        })
    }
}
