//! How this project's binaries run: one place for the runtime, logging and exit status.

use std::future::Future;
use std::process::ExitCode;

/// Runs `work` on a multi-threaded runtime with logs on stderr (filtered by `RUST_LOG`, else by
/// `default_filter`) and turns an error into its one-line chain and a failing exit status — never a
/// panic or a backtrace in front of a user.
pub fn run<E: std::fmt::Display>(
    default_filter: &str,
    work: impl Future<Output = Result<(), E>>,
) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // File writes and rendering run on blocking threads; each new thread brings its own allocator
    // arena, so an unbounded pool (tokio's default is 512) turns bursts of outbox writes into
    // resident memory.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads((cores * 4).max(16))
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what process managers and container runtimes send).
pub async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
