//! Loading the plugin directory again while serving: a new file adds its format, a changed one
//! replaces its plugin, a removed one takes its format away. Whatever does not load is refused
//! with the reason and changes nothing: the plugin that served before keeps serving.
//!
//! The directory is polled (`POLL`) rather than watched with inotify (`notify`): a poll sees
//! every filesystem the same way (bind mounts, network and overlay filesystems, a directory
//! replaced by a symbolic link flip), needs no thread or descriptor per directory, and a
//! changed file has to be seen unchanged on two polls anyway before it is loaded (a copy in
//! progress). One `read_dir` and a `stat` per file each second costs nothing measurable.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use super::registry::{self, FileStamp, Refused, Registry};
use super::{LoadedPlugin, Plugins};

/// How often the plugin directory is looked at.
pub const POLL: Duration = Duration::from_secs(1);

/// Whether a changed file is loaded at once or once it stopped changing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// At start and on `POST /api/plugins/reload`: the operator says the files are ready.
    No,
    /// Polling: only a file seen the same at the previous poll.
    Settled,
}

impl Plugins {
    /// Brings the plugins in line with the directory; true when anything changed (a plugin
    /// added, replaced or removed, a file refused or no longer there).
    pub async fn reload(&self, wait: Wait) -> bool {
        let mut settling = self.reloading.lock().await;
        let files = match registry::scan(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                // A directory that cannot be read now (being replaced, say) changes nothing.
                tracing::warn!(dir = %self.dir.display(), error = %e, "plugin directory unreadable; plugins unchanged");
                return false;
            }
        };
        let current = self.registry();
        // What keeps serving, by format: every present file's plugin until a new build replaces it.
        let mut serving: HashMap<String, Arc<LoadedPlugin>> = HashMap::new();
        for (file, _) in &files {
            if let Some(p) = current.from_file(file) {
                serving.insert(p.meta.format.clone(), p.clone());
            }
        }
        let present: HashSet<&PathBuf> = files.iter().map(|(f, _)| f).collect();
        let mut changed =
            current.plugins().any(|p| !present.contains(&p.meta.file)) || current.refused().iter().any(|r| !present.contains(&r.file));
        let mut refused: Vec<Refused> = Vec::new();
        let mut candidates: Vec<(PathBuf, FileStamp, Option<Arc<LoadedPlugin>>)> = Vec::new();
        let mut next_settling = registry::Settling::default();
        for (file, stamp) in &files {
            let old = current.from_file(file).cloned();
            let previously_refused = current.refusal_of(file);
            if old.as_ref().is_some_and(|p| p.stamp == *stamp) {
                continue;
            }
            if let Some(r) = previously_refused.filter(|r| r.stamp == *stamp) {
                refused.push(r.clone());
                continue;
            }
            if wait == Wait::Settled && !settling.settled(&mut next_settling, file, *stamp) {
                refused.extend(previously_refused.cloned());
                continue;
            }
            candidates.push((file.clone(), *stamp, old));
        }
        *settling = next_settling;

        for (file, stamp, old) in candidates {
            changed = true;
            let outcome = match self.load_one(&file, stamp).await {
                Ok(p) => match serving.get(&p.meta.format).filter(|other| other.meta.file != file) {
                    Some(other) => Err(format!("format {:?} is already provided by {}", p.meta.format, other.meta.file.display())),
                    None => Ok(p),
                },
                Err(reason) => Err(reason),
            };
            match outcome {
                Ok(p) => {
                    let replaced = old.inspect(|o| {
                        serving.remove(&o.meta.format);
                    });
                    tracing::info!(
                        format = %p.meta.format,
                        contract = %p.meta.contract,
                        roots = ?p.meta.roots,
                        file = %file.display(),
                        sha256 = %p.sha256,
                        replaced = replaced.as_ref().map(|o| o.sha256.as_str()),
                        "plugin loaded"
                    );
                    serving.insert(p.meta.format.clone(), Arc::new(p));
                }
                Err(reason) => {
                    tracing::warn!(
                        file = %file.display(),
                        reason = %reason,
                        still_serving = old.as_ref().map(|o| o.meta.format.as_str()),
                        "plugin refused"
                    );
                    refused.push(Refused { file, reason, at: SystemTime::now(), stamp });
                }
            }
        }
        if !changed {
            return false;
        }
        let next = Registry::new(serving.into_values(), refused);
        let retired: Vec<Arc<LoadedPlugin>> =
            current.plugins().filter(|p| next.get(&p.meta.format).is_none_or(|n| n.id != p.id)).cloned().collect();
        for p in &retired {
            if next.get(&p.meta.format).is_none() {
                tracing::warn!(format = %p.meta.format, file = %p.meta.file.display(), "plugin removed; repositories of this format answer 503 until a plugin provides it");
            }
        }
        *self.registry.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        // After the swap: a request that resolved the old plugin and finishes later has its
        // instance dropped (`is_current`) and its plan refused (the epoch moved on).
        if !retired.is_empty() {
            self.plans.clear();
        }
        for p in &retired {
            self.warm.forget(p.id);
        }
        true
    }
}

/// Polls the plugin directory for as long as the server runs.
pub fn watch(app: Weak<crate::App>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(app) = app.upgrade() else { return };
            if *app.shutdown.borrow() {
                return;
            }
            app.plugins.reload(Wait::Settled).await;
        }
    });
}
