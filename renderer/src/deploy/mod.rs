//! What the three binaries (`conductor`, `renderer`, `sender`) share to run as services: the config
//! loader with its environment overrides and secret rules, logging and the process entry, the AWS
//! SDK's config, and the HTTP client workers use to reach the conductor.
//!
//! It lives here because the renderer is the lowest crate: the sender and the conductor depend on it
//! and it depends on neither, so this is the one place all three can share without a fourth crate or
//! a dependency pointing back. Each binary's config declares its own secret keys
//! ([`config::Secrets`]); nothing here knows the others' settings.

pub mod aws;
pub mod config;
pub mod process;
pub mod remote;
