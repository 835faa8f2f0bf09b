//! The HTTP face: the router and its shared state, one file per resource, problems, auth.

pub mod api;
pub mod auth;
mod body;
mod engagement;
mod extract;
mod feedback;
mod governor;
mod openapi;
pub mod payloads;
mod preview;
mod problem;
pub mod service;
mod site;
pub mod stream;
mod test_send;
mod unsubscribe;
mod view;
mod webview;
mod workers;
