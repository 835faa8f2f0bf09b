//! The conductor: REST API, campaign state, minute ledger, work hand-out and progress.
//!
//! The layers are the folders, and each imports only the ones below it:
//!
//! - `http`: the routes, the state they share (`service::Service`, through which every campaign
//!   action goes), the problem documents, auth, the dashboard and the OpenAPI document.
//! - `engine`: what runs on its own: the work hand-out and reconcile loop (`work`), render dispatch,
//!   lifecycle events, list import, metrics, and the shared views and progress hubs that pollers
//!   read.
//! - `store`: the database (SQLite or PostgreSQL) that applies the domain's decisions.
//! - `domain`: pure rules: recipient states and their transitions, the minute ledger, the planner,
//!   fair share, throttling, schedules, the forecast, list parsing and validation, webhook and
//!   unsubscribe tokens. No I/O, and nothing else of this crate (`tests/layers.rs` checks it).
//!
//! Beside them: `config` (the file, its live handle and its watcher), `cli` (the command line and the
//! demo) and `startup` (which wires the layers into a running service).

pub mod cli;
pub mod config;
pub mod domain;
mod engine;
pub mod http;
pub mod startup;
pub mod store;
