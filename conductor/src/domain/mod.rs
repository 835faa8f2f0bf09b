//! Pure rules: no I/O, no async runtime, no database, and nothing of the crate outside `domain`.

pub mod columns;
pub mod engagement;
pub mod fair;
pub mod feedback;
pub mod forecast;
pub mod ledger;
pub mod lists;
pub mod planner;
pub mod preview;
pub mod recipient;
pub mod retry;
pub mod schedule;
pub mod scope;
pub mod secret;
pub mod test_send;
pub mod throttle;
pub mod unsubscribe;
pub mod validate;
