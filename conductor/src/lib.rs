//! The conductor: REST API, campaign state, minute ledger, work hand-out and progress.

pub mod api;
pub mod config;
pub mod config_watch;
pub mod demo;
pub mod dispatch;
pub mod eta;
pub mod events;
pub mod fair;
pub mod feedback;
pub mod feedback_api;
pub mod governor_api;
pub mod ledger;
pub mod planner;
pub mod problem;
pub mod retry;
pub mod schedule;
pub mod secret;
pub mod service;
pub mod startup;
pub mod store;
pub mod throttle;
pub mod unsubscribe;
pub mod unsubscribe_api;
pub mod validate;
pub mod work;
pub mod workers_api;
