//! A pod list read into what the agent keeps of it: pod UID -> namespace, name and container
//! names by container id.

use std::collections::HashMap;

/// One pod, as far as the agent cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct PodEntry {
    pub(super) namespace: String,
    pub(super) name: String,
    /// Container id (64 hex, lowercase, no runtime prefix) -> container name.
    pub(super) containers: HashMap<String, String>,
}

/// A pod list (`GET /api/v1/pods`) as pod UID -> namespace, name and container ids -> names.
///
/// A mirror pod (the API's copy of a static pod) is also found under its config hash, which is
/// what the static pod's cgroup names. Container ids are taken from the statuses of containers,
/// init containers and ephemeral containers, current (`containerID`) and, for a restarted
/// container, previous (`lastState.terminated.containerID`), runtime prefix removed.
pub(super) fn index(pod_list: &serde_json::Value) -> HashMap<String, PodEntry> {
    let mut pods = HashMap::new();
    for pod in pod_list["items"].as_array().into_iter().flatten() {
        let meta = &pod["metadata"];
        let Some(uid) = meta["uid"].as_str().filter(|u| !u.is_empty()) else { continue };
        let mut entry = PodEntry {
            namespace: meta["namespace"].as_str().unwrap_or_default().to_string(),
            name: meta["name"].as_str().unwrap_or_default().to_string(),
            containers: HashMap::new(),
        };
        for kind in ["containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"] {
            for status in pod["status"][kind].as_array().into_iter().flatten() {
                let Some(name) = status["name"].as_str() else { continue };
                let ids = [&status["containerID"], &status["lastState"]["terminated"]["containerID"]];
                for id in ids.into_iter().filter_map(|id| id.as_str()) {
                    // "containerd://<id>", "cri-o://<id>", "docker://<id>".
                    let id = id.rsplit_once("://").map_or(id, |(_, id)| id);
                    if !id.is_empty() {
                        entry.containers.insert(id.to_ascii_lowercase(), name.to_string());
                    }
                }
            }
        }
        if let Some(hash) = meta["annotations"]["kubernetes.io/config.hash"].as_str().filter(|h| !h.is_empty()) {
            let hash = hash.to_ascii_lowercase();
            if hash != uid.to_ascii_lowercase() {
                pods.insert(hash, entry.clone());
            }
        }
        pods.insert(uid.to_ascii_lowercase(), entry);
    }
    pods
}
