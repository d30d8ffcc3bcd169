//! What one component of a cgroup path is: a container (and which runtime's), a runtime's
//! monitor, a pod's own cgroup, or something else; and a pod cgroup's uid and QoS class. The
//! naming rules per runtime and cgroup driver are in the table of the parent module.

use super::Runtime;

pub(super) enum Component<'a> {
    Container {
        runtime: Runtime,
        id: &'a str,
        /// The pod slice named in the same component (`<slice>:cri-containerd:<id>`).
        pod_slice: Option<&'a str>,
    },
    /// A runtime's container monitor (conmon): named after the container, but not in it.
    Monitor,
    /// A pod's own cgroup.
    Pod,
    Other,
}

pub(super) fn classify<'a>(part: &'a str, outer: &[&str]) -> Component<'a> {
    // runc's "slice:prefix:name" cgroupsPath, seen verbatim in the name=systemd hierarchy when
    // containerd runs with SystemdCgroup on a v1 host.
    let fields: Vec<&str> = part.split(':').collect();
    if let [slice, prefix, id] = fields[..] {
        return if !is_container_id(id) {
            Component::Other
        } else if prefix.ends_with("conmon") {
            Component::Monitor
        } else {
            Component::Container { runtime: runtime_of_prefix(prefix), id, pod_slice: Some(slice) }
        };
    }
    let name = part.strip_suffix(".scope").unwrap_or(part);
    if is_container_id(name) {
        return Component::Container { runtime: runtime_of_bare_id(outer), id: name, pod_slice: None };
    }
    if let Some((prefix, id)) = name.rsplit_once('-').filter(|(_, id)| is_container_id(id)) {
        if prefix.ends_with("conmon") {
            return Component::Monitor;
        }
        return Component::Container { runtime: runtime_of_prefix(prefix), id, pod_slice: None };
    }
    let parent = outer.last().copied();
    if pod_of(part, parent).is_some() {
        return Component::Pod;
    }
    Component::Other
}

fn runtime_of_prefix(prefix: &str) -> Runtime {
    match prefix {
        "cri-containerd" | "nerdctl" => Runtime::Containerd,
        "crio" => Runtime::CriO,
        "docker" => Runtime::Docker,
        _ => Runtime::Unknown,
    }
}

/// A bare `<id>` component: its runtime from where it sits.
fn runtime_of_bare_id(outer: &[&str]) -> Runtime {
    if outer.iter().any(|p| p.starts_with("kubepods")) {
        return Runtime::Unknown; // kubelet's cgroupfs driver: containerd or cri-dockerd
    }
    match outer.last().copied() {
        Some("docker") => Runtime::Docker,
        // ctr and nerdctl (cgroupfs) put containers under their containerd namespace.
        Some("default" | "k8s.io") => Runtime::Containerd,
        _ => Runtime::Unknown,
    }
}

/// If `part` is a pod's cgroup, its uid and QoS class. `parent` is the component above it (the
/// cgroupfs driver says the class there).
pub(super) fn pod_of(part: &str, parent: Option<&str>) -> Option<(String, Option<&'static str>)> {
    if let Some(name) = part.strip_suffix(".slice") {
        // systemd: [prefix-]kubepods[-burstable|-besteffort]-pod<uid with '_'>.slice
        let mut segments = name.rsplit('-');
        let uid = pod_uid(segments.next()?.strip_prefix("pod")?)?;
        let qos = match segments.next() {
            Some("kubepods") => Some("guaranteed"),
            Some(class) => qos_class(class),
            None => None,
        };
        return Some((uid, qos));
    }
    // cgroupfs: kubepods[/burstable|/besteffort]/pod<uid>
    let uid = pod_uid(part.strip_prefix("pod")?)?;
    let qos = match parent {
        Some("kubepods") => Some("guaranteed"),
        Some(class) => qos_class(class),
        None => None,
    };
    Some((uid, qos))
}

fn qos_class(name: &str) -> Option<&'static str> {
    match name {
        "burstable" => Some("burstable"),
        "besteffort" => Some("besteffort"),
        _ => None,
    }
}

/// A pod uid in the API's dashed form: from a UUID with '-' or '_' separators, or a static pod's
/// 32-hex hash (kept as is).
fn pod_uid(raw: &str) -> Option<String> {
    let uid = raw.replace('_', "-").to_ascii_lowercase();
    let b = uid.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    let is_uuid = b.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && hex(0..8)
        && hex(9..13)
        && hex(14..18)
        && hex(19..23)
        && hex(24..36);
    let is_hash = b.len() == 32 && hex(0..32);
    (is_uuid || is_hash).then_some(uid)
}

/// A full container id: 64 lowercase hex digits.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}
