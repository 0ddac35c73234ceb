//! Reloading files that change under a running server: the serving
//! certificate pair and the config file.
//!
//! By polling contents, not by inotify: Kubernetes updates Secret and
//! ConfigMap volumes by atomically swapping a `..data` symlink, and a watch
//! on the old files goes stale after the first swap. Reading a few KiB every
//! few seconds is cheap and follows whatever the path resolves to now.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{debug, warn};

/// Calls `apply(contents, forced)` whenever the contents of `paths` differ
/// from the last contents seen (starting from `initial`), or when `force`
/// is notified (SIGHUP). Runs until the task is dropped. A file that cannot
/// be read (mid-swap, deleted) is retried on the next tick.
pub async fn watch_files<F>(
    paths: Vec<PathBuf>,
    initial: Vec<Vec<u8>>,
    interval: Duration,
    force: Option<Arc<Notify>>,
    mut apply: F,
) where
    F: FnMut(Vec<Vec<u8>>, bool) + Send,
{
    let mut last = initial;
    loop {
        let forced = match &force {
            Some(n) => tokio::select! {
                _ = tokio::time::sleep(interval) => false,
                _ = n.notified() => true,
            },
            None => {
                tokio::time::sleep(interval).await;
                false
            }
        };
        let mut current = Vec::with_capacity(paths.len());
        for p in &paths {
            match tokio::fs::read(p).await {
                Ok(bytes) => current.push(bytes),
                Err(e) => {
                    if forced {
                        warn!(path = %p.display(), error = %e, "cannot read file for reload");
                    } else {
                        debug!(path = %p.display(), error = %e, "cannot read file; retrying");
                    }
                    break;
                }
            }
        }
        if current.len() != paths.len() || (current == last && !forced) {
            continue;
        }
        last.clone_from(&current);
        apply(current, forced);
    }
}
