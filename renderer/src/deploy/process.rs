//! How this project's binaries run: one place for the runtime, logging and exit status.

use std::future::Future;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

/// `[log]`: how every binary of the deployment writes its logs (stderr, one event per line). Read
/// at start; a change applies when the process restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `warn,conductor=debug`; `RUST_LOG` still wins.
    pub level: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people: aligned, coloured on a terminal.
    #[default]
    Text,
    /// For log shippers: one JSON object per line with `timestamp`, `level`, `target`, `message`,
    /// the event's fields at the top level and the spans it happened in.
    Json,
}

impl LogConfig {
    pub fn validate(&self) -> Result<(), crate::deploy::config::ConfigError> {
        if let Some(level) = &self.level {
            EnvFilter::try_new(level)
                .map_err(|e| crate::deploy::config::invalid("log.level", e.to_string()))?;
        }
        Ok(())
    }

    /// What is logged: `RUST_LOG` when set (`rust_log`), else `level`, else `default_filter`.
    fn filter(&self, default_filter: &str, rust_log: Option<String>) -> EnvFilter {
        rust_log
            .and_then(|f| EnvFilter::try_new(f).ok())
            .or_else(|| {
                self.level
                    .as_deref()
                    .and_then(|l| EnvFilter::try_new(l).ok())
            })
            .unwrap_or_else(|| EnvFilter::new(default_filter))
    }

    /// The subscriber this config describes, writing to `writer`; colours only when `ansi`.
    fn dispatch<W>(&self, filter: EnvFilter, ansi: bool, writer: W) -> tracing::Dispatch
    where
        W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi)
            .with_writer(writer);
        match self.format {
            LogFormat::Text => builder.finish().into(),
            LogFormat::Json => builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(true)
                .finish()
                .into(),
        }
    }

    /// Checks the settings, then installs the subscriber for the process, on stderr, with `log`
    /// records bridged into it. The first call wins: a process logs in one format.
    pub fn install(&self, default_filter: &str) -> Result<(), crate::deploy::config::ConfigError> {
        use tracing_subscriber::util::SubscriberInitExt;
        self.validate()?;
        let filter = self.filter(default_filter, std::env::var("RUST_LOG").ok());
        // Escape codes belong on a terminal, not in a file or a journal.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        if self
            .dispatch(filter, ansi, std::io::stderr)
            .try_init()
            .is_ok()
        {
            let _ = INSTALLED.set(self.format);
        }
        Ok(())
    }
}

/// The format [`LogConfig::install`] put in place, if it ran.
static INSTALLED: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Runs `work` on a multi-threaded runtime and turns an error into its one-line chain and a failing
/// exit status — never a panic or a backtrace in front of a user. Logging is the work's to install
/// ([`LogConfig::install`]) once it has read its config, which says in what format.
pub fn run<E: std::fmt::Display>(work: impl Future<Output = Result<(), E>>) -> ExitCode {
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
            // A log shipper reading JSON lines gets the reason as one more of them.
            if INSTALLED.get() == Some(&LogFormat::Json) {
                tracing::error!(error = %format!("{e:#}"), "exiting on an error");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what process managers and container runtimes send).
/// The handlers are in place when this returns, not when the future is first polled: call it before
/// announcing readiness, or a SIGTERM sent on seeing that announcement can still kill the process
/// the default way, with nothing shut down.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(cfg: &LogConfig, emit: impl FnOnce()) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let dispatch = cfg.dispatch(cfg.filter("info", None), false, move || writer.clone());
        tracing::dispatcher::with_default(&dispatch, emit);
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn json_format_writes_one_object_per_event_with_fields_at_the_top() {
        let cfg = crate::deploy::config::from_toml::<Wrapper>(
            "[log]\nformat = \"json\"\nlevel = \"debug\"",
            [],
        )
        .unwrap()
        .log;
        assert_eq!(cfg.format, LogFormat::Json);
        let text = logged(&cfg, || {
            let span = tracing::info_span!("lease", lease = "l-7");
            let _g = span.enter();
            tracing::info!(campaign = "c-1", sent = 12, "lease reported");
            tracing::debug!("fine detail");
            tracing::trace!("below the level");
        });
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first = &lines[0];
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["message"], "lease reported");
        assert_eq!(first["campaign"], "c-1");
        assert_eq!(first["sent"], 12);
        assert_eq!(first["spans"][0]["name"], "lease");
        assert_eq!(first["spans"][0]["lease"], "l-7");
        assert!(first["timestamp"].as_str().is_some_and(|t| t.contains('T')));
        assert_eq!(lines[1]["level"], "DEBUG");
    }

    #[test]
    fn rust_log_wins_over_the_configured_level() {
        let cfg = LogConfig {
            level: Some("debug".into()),
            ..Default::default()
        };
        let out = Captured::default();
        let writer = out.clone();
        let d = cfg.dispatch(cfg.filter("info", Some("warn".into())), false, move || {
            writer.clone()
        });
        tracing::dispatcher::with_default(&d, || {
            tracing::info!("quiet now");
            tracing::warn!("still heard");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("still heard") && !text.contains("quiet now"),
            "{text}"
        );
    }

    #[test]
    fn text_format_is_the_default_and_is_not_json() {
        let text = logged(&LogConfig::default(), || {
            tracing::info!(campaign = "c-1", "lease reported");
            tracing::debug!("not at info");
        });
        assert!(
            text.contains("lease reported") && text.contains("campaign=\"c-1\""),
            "{text}"
        );
        assert!(!text.contains("not at info"));
        assert!(serde_json::from_str::<serde_json::Value>(text.trim()).is_err());
    }

    #[test]
    fn bad_log_settings_name_their_key() {
        let e =
            crate::deploy::config::from_toml::<Wrapper>("[log]\nformat = \"xml\"", []).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("xml") && msg.contains("text") && msg.contains("json"),
            "{msg}"
        );
        assert!(msg.contains("format"), "{msg}");
        let e = crate::deploy::config::from_toml::<Wrapper>("[log]\nlevel = \"info,=[\"", [])
            .unwrap()
            .log
            .validate()
            .unwrap_err();
        assert!(e.to_string().starts_with("config key `log.level`"), "{e}");
        let e =
            crate::deploy::config::from_toml::<Wrapper>("[log]\nformt = \"json\"", []).unwrap_err();
        assert!(e.to_string().contains("formt"), "{e}");
        let env = [("CONDUCTOR__LOG__FORMAT".to_string(), "json".to_string())];
        let w = crate::deploy::config::from_toml::<Wrapper>("", env).unwrap();
        assert_eq!(w.log.format, LogFormat::Json);
    }

    #[derive(Debug, serde::Deserialize)]
    struct Wrapper {
        #[serde(default)]
        log: LogConfig,
    }

    impl crate::deploy::config::Secrets for Wrapper {
        fn secrets() -> Vec<crate::deploy::config::SecretPath> {
            Vec::new()
        }
    }
}
