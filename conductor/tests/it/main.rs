//! Black-box tests of the conductor: one test binary, several modules.

mod api;
mod aws;
mod cli;
mod dashboard;
mod distributed;
mod e2e;
mod engagement;
mod events;
mod feedback;
mod governor;
mod hostile;
mod ingest;
mod layers;
mod moto;
mod ses_feedback;
mod sink;
#[path = "../../../renderer/tests/common/sns_signing.rs"]
mod sns_signing;
mod store;
mod support;
mod test_send;
mod throttling;
