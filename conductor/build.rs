//! `sqlx::migrate!` embeds the migrations when the crate compiles, and on stable Rust a proc macro
//! cannot tell cargo which files it read: without this, a new or edited migration is not built in
//! until some Rust source changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
