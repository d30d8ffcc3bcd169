//! Which container (and Kubernetes pod) a process runs in, from its cgroup path in
//! `/proc/PID/cgroup`. Pure string logic except `read`; no root needed.
//!
//! The container is the innermost path component that names one:
//!
//! | who                              | component                                          |
//! |----------------------------------|----------------------------------------------------|
//! | kubelet systemd driver           | `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope` (cri-dockerd) |
//! | kubelet cgroupfs driver          | `<id>` (containerd, docker), `crio-<id>` (CRI-O)    |
//! | containerd `SystemdCgroup` on v1 | `kubepods-…-pod<uid>.slice:cri-containerd:<id>` (the name=systemd line) |
//! | Docker                           | `/docker/<id>`, `/system.slice/docker-<id>.scope`   |
//! | containerd without Kubernetes    | `/default/<id>` (ctr, nerdctl cgroupfs), `nerdctl-<id>.scope` |
//! | Podman                           | `libpod-<id>.scope`, `/libpod_parent/libpod-<id>`   |
//!
//! where `<id>` is the full 64-hex container id. Innermost, because nodes nest: a kind or k3d node
//! is itself a Docker container (`/system.slice/docker-<node>.scope/kubelet.slice/…/cri-containerd-<id>.scope`),
//! docker-in-docker has `/docker/<outer>/docker/<inner>`, and a container may have sub-cgroups of its
//! own (CRI-O with crun puts the process in `crio-<id>.scope/container`; systemd in a container makes
//! `…/init.scope`). Components past the container are skipped, but two stop the search: the
//! runtime's monitor (`crio-conmon-<id>.scope`, `libpod-conmon-<id>.scope`: not the container,
//! though named after it) and a pod cgroup itself (a process of the pod outside its containers).
//!
//! The pod uid comes from the nearest enclosing pod cgroup: `pod<uid>` (cgroupfs, dashed uid) or
//! `…-pod<uid>.slice` (systemd; dashes are systemd's hierarchy separator, so the uid's are
//! underscores). Static pods have a 32-hex config hash instead of a UUID. The QoS class is the
//! level above the pod: `burstable` / `besteffort`, or none (the pod directly under `kubepods`)
//! for `guaranteed`.
//!
//! On cgroup v1 every hierarchy has its own line; the memory, then pids, then name=systemd line is
//! preferred, then the v2 line (`0::`), then any other, taking the first that names a container:
//! on a hybrid host a runtime may have placed the process in only some hierarchies.
//!
//! This module picks the line and walks the path; `component` names what one path component is.

mod component;
#[cfg(test)]
mod tests;

use std::fmt;

use component::{classify, pod_of, Component};

/// The container runtime, as far as the cgroup path tells. A bare `<id>` under kubepods (the
/// cgroupfs driver) could be containerd or Docker: `Unknown`, as is Podman.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Unknown,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The container a process runs in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    pub runtime: Runtime,
    /// The full 64-hex container id (lowercase).
    pub container_id: String,
    /// The Kubernetes pod uid, dashed (`0f2a…-…`) as the API shows it, or the 32-hex hash of a
    /// static pod. None outside Kubernetes.
    pub pod_uid: Option<String>,
    /// `guaranteed`, `burstable` or `besteffort`; None outside Kubernetes.
    pub qos: Option<String>,
}

impl ContainerRef {
    /// The 12-character id `docker ps` and `crictl ps` show.
    pub fn short_id(&self) -> &str {
        self.container_id.get(..12).unwrap_or(&self.container_id)
    }
}

/// The container of the process whose `/proc/PID/cgroup` is `text`; None if it is not in one.
pub fn from_proc_cgroup(text: &str) -> Option<ContainerRef> {
    let mut paths: Vec<(u8, &str)> = text
        .lines()
        .filter_map(|line| {
            // "hierarchy-id:controllers:path"; the path may itself contain ':'.
            let mut fields = line.splitn(3, ':');
            let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let has = |c: &str| controllers.split(',').any(|x| x == c);
            let rank = if has("memory") {
                0
            } else if has("pids") {
                1
            } else if has("name=systemd") {
                2
            } else if id == "0" && controllers.is_empty() {
                3
            } else {
                4
            };
            Some((rank, path))
        })
        .collect();
    paths.sort_by_key(|&(rank, _)| rank); // stable: file order within a rank
    paths.into_iter().find_map(|(_, path)| from_cgroup_path(path))
}

/// The container of a process in the cgroup at `path` (as in `/proc/PID/cgroup`, e.g.
/// `/kubepods/burstable/pod<uid>/<id>`); None if the path names none.
pub fn from_cgroup_path(path: &str) -> Option<ContainerRef> {
    // ".." appears when the reader is in another cgroup namespace than the process.
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != "." && *c != "..").collect();
    for i in (0..parts.len()).rev() {
        let (outer, part) = (&parts[..i], parts[i]);
        match classify(part, outer) {
            Component::Container { runtime, id, pod_slice } => {
                let pod = match pod_slice {
                    Some(slice) => pod_of(slice, None),
                    None => {
                        outer.iter().enumerate().rev().find_map(|(j, p)| pod_of(p, j.checked_sub(1).map(|k| outer[k])))
                    }
                };
                let (pod_uid, qos) = pod.map_or((None, None), |(uid, qos)| (Some(uid), qos.map(str::to_string)));
                return Some(ContainerRef { runtime, container_id: id.to_string(), pod_uid, qos });
            }
            Component::Monitor | Component::Pod => return None,
            Component::Other => {}
        }
    }
    None
}

/// The container of process `pid`, from `/proc/PID/cgroup`; None if it is not in one or is gone.
pub fn read(pid: u32) -> Option<ContainerRef> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok().and_then(|text| from_proc_cgroup(&text))
}
