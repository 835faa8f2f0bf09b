//! Hot reload: the config file is re-read when it changes; a valid new config replaces the old one
//! (caps apply from the next calendar minute, since a minute's cap is fixed when its ledger row is
//! created), an invalid one is refused and the old one kept, with the reason logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// What identifies a version of the file. Editors that save by writing a new file and renaming it
/// over the old one change the modification time too, so polling the path catches both kinds of save.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Checks the file once; returns whether the config was replaced.
pub fn reload(path: &Path, tx: &watch::Sender<Arc<Config>>) -> bool {
    match Config::load(Some(path), std::env::vars()) {
        Ok(new) if *tx.borrow().as_ref() == new => false,
        Ok(new) => {
            let old = tx.borrow().clone();
            if old.governor.per_minute != new.governor.per_minute {
                tracing::info!(
                    from = old.governor.per_minute,
                    to = new.governor.per_minute,
                    "per-minute cap changed; applies from the next minute"
                );
            }
            if old.store != new.store
                || old.bodies != new.bodies
                || old.server != new.server
                || old.provider != new.provider
                || old.safety != new.safety
                || old.dispatch.mode != new.dispatch.mode
                || old.dispatch.sns != new.dispatch.sns
                || old.events != new.events
            {
                tracing::warn!(
                    "changes to [server], [store], [bodies], [provider], [safety], [dispatch] mode and topic, or [events] take effect on restart"
                );
            }
            tx.send_replace(Arc::new(new));
            true
        }
        Err(e) => {
            tracing::error!(error = %e, path = %path.display(), "config change refused; keeping the running config");
            false
        }
    }
}

pub async fn watch_file(
    path: PathBuf,
    tx: watch::Sender<Arc<Config>>,
    every: Duration,
    stop: CancellationToken,
) {
    // No stamp yet: the first tick reads the file, so a change made between loading the config and
    // starting this task is not missed (a reload that finds the same config changes nothing).
    let mut last = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let now = stamp(&path);
        if now.is_some() && now != last {
            last = now;
            reload(&path, &tx);
        }
    }
}
