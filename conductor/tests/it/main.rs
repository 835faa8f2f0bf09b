//! Black-box tests of the conductor: one test binary, several modules.

mod api;
mod distributed;
mod e2e;
mod sink;
mod store;
mod support;
