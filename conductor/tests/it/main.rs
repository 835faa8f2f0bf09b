//! Black-box tests of the conductor: one test binary, several modules.

mod api;
mod aws;
mod distributed;
mod e2e;
mod feedback;
mod moto;
mod sink;
mod store;
mod support;
mod throttling;
