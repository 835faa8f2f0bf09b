//! Templates → personalised subject/HTML/text, written as one object per batch.
//!
//! This crate owns the render contract: [`RenderJob`], the [`RenderSource`] a worker pulls its input from,
//! the rendered-batch format ([`RenderedBatch`]) that senders read, and the [`BodyStore`] both sides share.

pub mod batch;
pub mod body_store;
mod bounds;
mod css;
pub mod deploy;
pub mod job;
mod js_number;
pub mod service;
pub mod sns;
pub mod template;
pub mod track;
pub mod worker;

pub use batch::{BatchCodecError, Mailbox, RenderedBatch, RenderedMessage};
pub use body_store::{BodyError, BodyStore, LocalBodyStore};
pub use bounds::RenderLimits;
pub use css::NotInlined;
pub use job::{
    context, RecipientData, RenderInput, RenderJob, RenderSource, SourceError, UnsubscribeLink,
};
pub use template::{CompiledTemplate, RenderError, RenderedParts, TemplateError, TemplateSource};
pub use track::{Track, Tracking};
pub use worker::{render_batch, Renderer, WorkerError};
