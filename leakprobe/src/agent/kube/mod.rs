//! Optional: names from the Kubernetes API. The cgroup path gives a pod UID and a container id
//! (`containers`); the API turns them into namespace, pod name and container name.
//!
//! Only the pods of this node are listed (`fieldSelector=spec.nodeName=…`, served from the API
//! server's watch cache with `resourceVersion=0`), now and again every `refresh`, on a background
//! std thread; each list replaces the map, so memory stays bounded by the node's pods. A lookup
//! that misses (a pod or container newer than the last list) asks for an early list, at most one
//! per key and never more than one per [`MIN_GAP`]. Errors are said once per distinct message on
//! stderr and never stop the agent: the last good map is kept, and without one labels fall back
//! to pod UID and container id.
//!
//! `api` reaches the API server (configuration, TLS, one list request); `pod_list` reads a list
//! into the map; this module keeps the map fresh and answers lookups.

mod api;
mod pod_list;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        mpsc::{self, RecvTimeoutError, SyncSender},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

pub use self::api::ApiConfig;
use self::{
    api::{encode, http_agent, list},
    pod_list::{index, PodEntry},
};

/// `start` waits this long for the first list, so that the processes found at start are named.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(5);
/// The least time between two lists when a lookup miss asks for an early one.
const MIN_GAP: Duration = Duration::from_secs(2);
/// Keys (pod UID, container id) that already asked for an early list; forgotten past this many.
const MAX_ASKED: usize = 4096;

/// Names of a process's pod and container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub pod: String,
    /// The container's name, "" when the container id is not (yet) in the pod's status.
    pub container: String,
}

/// The pods of this node by UID, kept fresh by a background thread; see the module's doc.
pub struct PodDirectory {
    pods: Arc<RwLock<HashMap<String, PodEntry>>>,
    /// Asks the thread for an early list; dropped (with the directory), it stops the thread.
    wake: SyncSender<()>,
    asked: Mutex<HashSet<String>>,
}

impl PodDirectory {
    /// Lists the pods of `node_name` now (waiting up to [`FIRST_LIST_WAIT`] for the answer) and
    /// every `refresh` after, on a background thread that ends when the directory is dropped.
    /// Fails only on a configuration error (a CA bundle with no certificate) or if the thread
    /// cannot start; the API's errors are said on stderr and retried.
    pub fn start(api: ApiConfig, node_name: String, refresh: Duration) -> Result<PodDirectory> {
        let agent = http_agent(&api)?;
        let url = format!(
            "{}/api/v1/pods?fieldSelector={}&resourceVersion=0",
            api.base_url.trim_end_matches('/'),
            encode(&format!("spec.nodeName={node_name}"))
        );
        let pods = Arc::new(RwLock::new(HashMap::new()));
        let shared = pods.clone();
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let (first_tx, first_rx) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("lp-kubernetes".into())
            .spawn(move || {
                let mut token = api.token.clone();
                let mut reporter = Reporter::default();
                let mut first = Some(first_tx);
                loop {
                    if let Some(fresh) = api.token_file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
                        token = Some(fresh.trim().to_string());
                    }
                    let listed = list(&agent, &url, token.as_deref()).map(|list| index(&list));
                    let line = match listed {
                        Ok(map) => {
                            let count = map.len();
                            *shared.write().unwrap_or_else(|e| e.into_inner()) = map;
                            reporter.success(count)
                        }
                        Err(e) => reporter.error(format!("{e:#}")),
                    };
                    if let Some(line) = line {
                        eprintln!("leakprobe agent: kubernetes: {line}");
                    }
                    if let Some(first) = first.take() {
                        let _ = first.send(());
                    }
                    let listed_at = Instant::now();
                    match woken.recv_timeout(refresh) {
                        Ok(()) => {
                            // An early list, but not right after the last one (further asks
                            // meanwhile are merged into it).
                            loop {
                                let left = MIN_GAP.saturating_sub(listed_at.elapsed());
                                if left.is_zero() {
                                    break;
                                }
                                if let Err(RecvTimeoutError::Disconnected) = woken.recv_timeout(left) {
                                    return;
                                }
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .context("--kubernetes: cannot start the pod lookup thread")?;
        let _ = first_rx.recv_timeout(FIRST_LIST_WAIT);
        Ok(PodDirectory { pods, wake, asked: Mutex::new(HashSet::new()) })
    }

    /// Names for a pod UID (dashed, lowercase; or a static pod's config hash) and a full
    /// container id. None if the pod is not (yet) known; `container` is "" if the container is
    /// not (yet) in the pod's status. A miss asks for an early list (once per key).
    pub fn lookup(&self, pod_uid: &str, container_id: &str) -> Option<PodInfo> {
        let found = {
            let pods = self.pods.read().unwrap_or_else(|e| e.into_inner());
            pods.get(pod_uid).map(|pod| PodInfo {
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                container: pod.containers.get(container_id).cloned().unwrap_or_default(),
            })
        };
        if found.as_ref().is_none_or(|info| info.container.is_empty()) {
            let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
            if asked.len() >= MAX_ASKED {
                asked.clear();
            }
            if asked.insert(format!("{pod_uid}/{container_id}")) {
                let _ = self.wake.try_send(()); // full: an early list is already asked for
            }
        }
        found
    }
}

/// Says each distinct error once (until a list succeeds again), and the recovery.
#[derive(Default)]
struct Reporter {
    last_error: Option<String>,
}

impl Reporter {
    fn error(&mut self, message: String) -> Option<String> {
        if self.last_error.as_ref() == Some(&message) {
            return None;
        }
        self.last_error = Some(message.clone());
        Some(message)
    }

    fn success(&mut self, pods: usize) -> Option<String> {
        self.last_error.take().map(|_| format!("listing this node's pods works again ({pods} pods)"))
    }
}
