//! Hot reload: the config file is watched (notify, on its folder, so editors that save by writing a
//! new file and renaming it over the old one are seen too) and re-read when it changes. A valid new
//! config replaces the old one — caps apply from the next calendar minute, since a minute's cap is
//! fixed when its ledger row is created — and every cap it changes goes into the governor's audit log;
//! an invalid one is refused, the old one kept, and the reason logged and audited.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Governor};
use crate::domain::scope::Scope;
use crate::store::{rfc3339, AuditEntry, Store};

const SOURCE: &str = "config file";

/// What one look at the file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    /// Applied; these caps changed.
    Applied(Vec<AuditEntry>),
    /// Refused, with the reason; the running config is kept.
    Rejected(String),
}

fn entry(
    now: i64,
    scope: &str,
    kind: &str,
    old: Option<String>,
    new: Option<String>,
) -> AuditEntry {
    AuditEntry {
        at: rfc3339(now),
        scope: scope.to_string(),
        kind: kind.to_string(),
        old,
        new,
        source: SOURCE.to_string(),
    }
}

/// The caps that differ between two governor sections, as audit entries.
pub fn cap_changes(old: &Governor, new: &Governor, now: i64) -> Vec<AuditEntry> {
    let mut out = Vec::new();
    if old.per_minute != new.per_minute {
        out.push(entry(
            now,
            &Scope::Global.to_string(),
            "cap",
            Some(old.per_minute.to_string()),
            Some(new.per_minute.to_string()),
        ));
    }
    let domains: std::collections::BTreeSet<&String> =
        old.domains.keys().chain(new.domains.keys()).collect();
    for d in domains {
        let (a, b) = (old.domains.get(d), new.domains.get(d));
        if a != b {
            out.push(entry(
                now,
                &Scope::Domain(d.clone()).to_string(),
                "cap",
                a.map(u32::to_string),
                b.map(u32::to_string),
            ));
        }
    }
    if old.schedule != new.schedule {
        let show = |s: &crate::domain::schedule::ScheduleConfig| {
            serde_json::json!({
                "timezone": s.timezone, "warmup_start": s.warmup_start, "warmup": s.warmup,
                "quiet_hours": s.quiet_hours,
            })
            .to_string()
        };
        out.push(entry(
            now,
            "schedule",
            "schedule",
            Some(show(&old.schedule)),
            Some(show(&new.schedule)),
        ));
    }
    out
}

/// How an edit of a config key takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// Read where it is used, every time: the edit applies at once (caps from the next minute).
    Live,
    /// Built into something at start (a listener, a pool, a client): an edit is refused until a
    /// restart, never reported applied.
    OnRestart,
}

/// The one declaration of how each part of the config takes an edit. Every section is named (the
/// destructuring below fails to compile when a section is added and not declared); a section
/// with keys of both kinds names its restart-only keys and declares the rest live.
macro_rules! edits {
    ($( $section:ident => $applies:ident $({ $($key:ident => $kapplies:ident),* $(,)? })? ),* $(,)?) => {
        /// The keys that differ between `old` and `new` and apply only on restart.
        pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
            let Config { $( $section: _, )* } = old;
            let mut out = Vec::new();
            $(
                if Applies::$applies == Applies::OnRestart && old.$section != new.$section {
                    out.push(stringify!($section));
                }
                $($(
                    if Applies::$kapplies == Applies::OnRestart
                        && old.$section.$key != new.$section.$key
                    {
                        out.push(concat!(stringify!($section), ".", stringify!($key)));
                    }
                )*)?
            )*
            out
        }
    };
}

edits! {
    server => Live { listen => OnRestart, max_body_bytes => OnRestart, max_upload_bytes => OnRestart },
    store => OnRestart,
    bodies => OnRestart,
    campaigns => Live,
    governor => Live,
    provider => OnRestart,
    sender => OnRestart,
    workers => Live { embedded_sender => OnRestart },
    dispatch => Live { mode => OnRestart, sns => OnRestart },
    events => OnRestart,
    safety => Live,
    feedback => Live,
    unsubscribe => Live,
    renderer => Live,
    log => OnRestart,
}

/// Reads the file once and applies it if it is valid and different. An edit of a key that only a
/// restart applies is refused as a whole (nothing of it is applied), naming the keys.
pub fn reload(path: &Path, tx: &watch::Sender<Arc<Config>>, now: i64) -> Reload {
    match Config::load(Some(path), std::env::vars()) {
        Ok(new) if *tx.borrow().as_ref() == new => Reload::Unchanged,
        Ok(new) => {
            let old = tx.borrow().clone();
            let restart = restart_only_changes(&old, &new);
            if !restart.is_empty() {
                let why = format!(
                    "{} can only change on restart; this edit is not applied (restart the conductor, or undo the change to apply the rest)",
                    restart.join(", ")
                );
                tracing::warn!(path = %path.display(), keys = ?restart, "config change refused until restart");
                return Reload::Rejected(why);
            }
            let changes = cap_changes(&old.governor, &new.governor, now);
            for c in &changes {
                tracing::info!(scope = %c.scope, from = ?c.old, to = ?c.new, "cap changed; applies from the next minute");
            }
            tx.send_replace(Arc::new(new));
            Reload::Applied(changes)
        }
        Err(e) => {
            tracing::error!(error = %e, path = %path.display(), "config change refused; keeping the running config");
            Reload::Rejected(e.to_string())
        }
    }
}

/// Watches `path` until stopped. Events are coalesced for `settle` (an editor's save is several), and
/// the file is also looked at every `fallback` in case the watch itself fails (no inotify, a
/// network file system).
pub async fn watch_file(
    path: PathBuf,
    tx: watch::Sender<Arc<Config>>,
    store: Arc<dyn Store>,
    clock: Arc<dyn sender::Clock>,
    fallback: Duration,
    stop: CancellationToken,
) {
    let (events_tx, mut events) = mpsc::unbounded_channel::<()>();
    let _watcher = watch_folder(&path, events_tx);
    // The first look happens at once, so a change made between loading the config and starting this
    // task is not missed (a reload that finds the same config changes nothing).
    let mut first = true;
    let mut last_rejected: Option<String> = None;
    loop {
        if !first {
            tokio::select! {
                Some(()) = events.recv() => {
                    // Let the save finish, then take every event it caused at once.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    while events.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(fallback) => {}
                _ = stop.cancelled() => return,
            }
        }
        first = false;
        let now = clock.now_ms();
        let entries = match reload(&path, &tx, now) {
            Reload::Unchanged => continue,
            Reload::Applied(changes) => {
                last_rejected = None;
                changes
            }
            // The same broken file seen again by the fallback look is one refusal, not many.
            Reload::Rejected(why) if last_rejected.as_ref() == Some(&why) => continue,
            Reload::Rejected(why) => {
                last_rejected = Some(why.clone());
                vec![entry(now, "config", "rejected", None, Some(why))]
            }
        };
        if !entries.is_empty() {
            if let Err(e) = store.record_audit(&entries, now).await {
                tracing::warn!(error = %e, "governor audit log not written");
            }
        }
    }
}

/// A notify watcher on the file's folder that pokes `events` whenever the file may have changed.
/// `None` (with a warning) if the platform refuses; the fallback look still runs.
fn watch_folder(
    path: &Path,
    events: mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let name = path.file_name()?.to_os_string();
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let handler = move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            if event.paths.iter().any(|p| p.file_name() == Some(&name)) {
                let _ = events.send(());
            }
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; looking at it periodically instead");
            return None;
        }
    };
    if let Err(e) = watcher.watch(&folder, RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, folder = %folder.display(), "cannot watch the config folder; looking at it periodically instead");
        return None;
    }
    Some(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_changes_name_each_scope_once() {
        let mut old = Governor::default();
        old.domains.insert("gmail.com".into(), 2_000);
        old.domains.insert("outlook.com".into(), 1_000);
        let mut new = old.clone();
        new.per_minute = 1_200;
        new.domains.insert("gmail.com".into(), 1_500);
        new.domains.remove("outlook.com");
        new.domains.insert("example.org".into(), 300);
        let c = cap_changes(&old, &new, 0);
        let seen: Vec<(&str, Option<&str>, Option<&str>)> = c
            .iter()
            .map(|e| (e.scope.as_str(), e.old.as_deref(), e.new.as_deref()))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("global", Some("6000"), Some("1200")),
                ("domain:example.org", None, Some("300")),
                ("domain:gmail.com", Some("2000"), Some("1500")),
                ("domain:outlook.com", Some("1000"), None),
            ]
        );
        assert!(cap_changes(&old, &old, 0).is_empty());
    }
}
