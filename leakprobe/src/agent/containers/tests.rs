use super::*;

const ID: &str = "3f5c8a9b2e7d41c6a0b8f9e2d1c3b4a5968778695a4b3c2d1e0f9a8b7c6d5e4f";
const ID2: &str = "9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d";
const NODE: &str = "b0f2e1c4d5a6978812ab34cd56ef7890a1b2c3d4e5f60718293a4b5c6d7e8f90";
const UID: &str = "2fc932ce-fdcc-454b-97bd-aadfdeb4c340";
const UID_: &str = "2fc932ce_fdcc_454b_97bd_aadfdeb4c340";

fn container(runtime: Runtime, id: &str, pod_uid: Option<&str>, qos: Option<&str>) -> Option<ContainerRef> {
    Some(ContainerRef {
        runtime,
        container_id: id.to_string(),
        pod_uid: pod_uid.map(str::to_string),
        qos: qos.map(str::to_string),
    })
}

/// A cgroup v1 file with every hierarchy at `path`, as runc leaves it, plus the v2 line.
fn v1_file(path: &str, unified: &str) -> String {
    format!(
        "12:hugetlb:{path}\n11:devices:{path}\n10:perf_event:{path}\n9:net_cls,net_prio:{path}\n\
         8:cpuset:{path}\n7:freezer:{path}\n6:blkio:{path}\n5:memory:{path}\n4:pids:{path}\n\
         3:cpu,cpuacct:{path}\n2:rdma:/\n1:name=systemd:{path}\n0::{unified}\n"
    )
}

// --- Kubernetes, systemd cgroup driver (cgroup v2) ---

#[test]
fn v2_systemd_containerd_burstable() {
    let text = format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
    );
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Containerd, ID, Some(UID), Some("burstable")));
}

#[test]
fn v2_systemd_besteffort() {
    let text = format!(
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
    );
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Containerd, ID, Some(UID), Some("besteffort")));
}

#[test]
fn v2_systemd_guaranteed_has_no_qos_slice() {
    let text = format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope\n");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Containerd, ID, Some(UID), Some("guaranteed")));
}

#[test]
fn v2_systemd_crio() {
    let text =
        format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope\n");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::CriO, ID, Some(UID), Some("burstable")));
}

#[test]
fn crio_with_crun_container_subgroup() {
    let text = format!(
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope/container\n"
    );
    assert_eq!(from_proc_cgroup(&text), container(Runtime::CriO, ID, Some(UID), Some("besteffort")));
}

#[test]
fn crio_conmon_is_not_the_container() {
    let text = format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope\n"
    );
    assert_eq!(from_proc_cgroup(&text), None);
    // cgroupfs driver: conmon next to the container in the pod directory.
    assert_eq!(from_proc_cgroup(&format!("0::/kubepods/burstable/pod{UID}/crio-conmon-{ID}\n")), None);
    // ... even in a node that is itself a container: conmon is not the pod's container.
    let nested = format!(
        "0::/system.slice/docker-{NODE}.scope/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope\n"
    );
    assert_eq!(from_proc_cgroup(&nested), None);
}

#[test]
fn cri_dockerd_with_systemd_driver() {
    let text = v1_file(
        &format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{ID}.scope"),
        "/",
    );
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Docker, ID, Some(UID), Some("besteffort")));
}

#[test]
fn static_pod_uid_is_a_hash() {
    let text =
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod8daa50c3a64c9ff60bb9eab7b44b56fd.slice/\
                cri-containerd-2884d57c0e100d7a9a2f9487ce0bc2986bca3430e988af7a4865aff061f51ac5.scope\n";
    assert_eq!(
        from_proc_cgroup(text),
        container(
            Runtime::Containerd,
            "2884d57c0e100d7a9a2f9487ce0bc2986bca3430e988af7a4865aff061f51ac5",
            Some("8daa50c3a64c9ff60bb9eab7b44b56fd"),
            Some("burstable")
        )
    );
    // cgroupfs driver
    let text = format!("0::/kubepods/pod8daa50c3a64c9ff60bb9eab7b44b56fd/{ID}\n");
    assert_eq!(
        from_proc_cgroup(&text),
        container(Runtime::Unknown, ID, Some("8daa50c3a64c9ff60bb9eab7b44b56fd"), Some("guaranteed"))
    );
}

// --- Kubernetes, cgroupfs driver ---

#[test]
fn v1_cgroupfs_burstable() {
    let text = v1_file(&format!("/kubepods/burstable/pod{UID}/{ID}"), "/");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Unknown, ID, Some(UID), Some("burstable")));
}

#[test]
fn v1_cgroupfs_guaranteed() {
    let text = v1_file(&format!("/kubepods/pod{UID}/{ID}"), "/");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Unknown, ID, Some(UID), Some("guaranteed")));
}

#[test]
fn v1_cgroupfs_crio() {
    let text = v1_file(&format!("/kubepods/besteffort/pod{UID}/crio-{ID}"), "/");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::CriO, ID, Some(UID), Some("besteffort")));
}

#[test]
fn v2_cgroupfs_driver() {
    // k3s default and kubelet --cgroup-driver=cgroupfs on a unified host.
    let text = format!("0::/kubepods/besteffort/pod{UID}/{ID}\n");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Unknown, ID, Some(UID), Some("besteffort")));
}

#[test]
fn pod_uid_is_lowercased() {
    let text = format!("0::/kubepods/burstable/pod{}/{ID}\n", UID.to_uppercase());
    assert_eq!(from_proc_cgroup(&text).unwrap().pod_uid.as_deref(), Some(UID));
}

// --- containerd SystemdCgroup on a v1 host: runc's "slice:prefix:name" in name=systemd ---

#[test]
fn colon_separated_systemd_path() {
    let text = format!(
        "11:memory:/\n1:name=systemd:/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{ID}\n0::/\n"
    );
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Containerd, ID, Some(UID), Some("burstable")));
    let text = format!("1:name=systemd:/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{ID}\n");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Containerd, ID, Some(UID), Some("besteffort")));
    let text = format!("1:name=systemd:/kubepods-pod{UID_}.slice:crio:{ID}\n");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::CriO, ID, Some(UID), Some("guaranteed")));
    let text = format!("1:name=systemd:/kubepods-pod{UID_}.slice:crio-conmon:{ID}\n");
    assert_eq!(from_proc_cgroup(&text), None);
}

// --- nested nodes: kind, k3d, docker-in-docker ---

#[test]
fn kind_node_systemd_v2() {
    let text = format!(
        "0::/system.slice/docker-{NODE}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/\
         kubelet-kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
    );
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Containerd, ID, Some(UID), Some("burstable")));
    // Seen from inside the node's cgroup namespace.
    let text = format!(
        "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
    );
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Containerd, ID, Some(UID), Some("guaranteed")));
}

#[test]
fn kind_node_cgroupfs_v1() {
    let text = v1_file(&format!("/docker/{NODE}/kubelet/kubepods/besteffort/pod{UID}/{ID}"), "/");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Unknown, ID, Some(UID), Some("besteffort")));
    let text = v1_file(&format!("/kubelet/kubepods/pod{UID}/{ID}"), "/");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Unknown, ID, Some(UID), Some("guaranteed")));
}

#[test]
fn k3d_node() {
    let text = v1_file(&format!("/docker/{NODE}/kubepods/burstable/pod{UID}/{ID}"), "/");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Unknown, ID, Some(UID), Some("burstable")));
}

#[test]
fn node_process_outside_pods_is_the_node_container() {
    // The kubelet inside a kind node: the node's own container.
    let text = format!("0::/system.slice/docker-{NODE}.scope/system.slice/kubelet.service\n");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Docker, NODE, None, None));
}

#[test]
fn docker_in_docker_is_the_inner_container() {
    let text = v1_file(&format!("/docker/{NODE}/docker/{ID}"), "/");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Docker, ID, None, None));
}

#[test]
fn systemd_inside_a_container() {
    let text = format!("0::/system.slice/docker-{ID}.scope/init.scope\n");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Docker, ID, None, None));
}

#[test]
fn other_cgroup_namespace() {
    let text = format!("0::/../../kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope\n");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Containerd, ID, Some(UID), Some("guaranteed")));
}

// --- Docker, containerd, Podman without Kubernetes ---

#[test]
fn docker_cgroupfs_v1() {
    let text = v1_file(&format!("/docker/{ID2}"), "/");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Docker, ID2, None, None));
}

#[test]
fn docker_systemd() {
    let text = format!("0::/system.slice/docker-{ID2}.scope\n");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Docker, ID2, None, None));
    let text = v1_file(&format!("/system.slice/docker-{ID2}.scope"), "/system.slice/docker.service");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Docker, ID2, None, None));
}

#[test]
fn containerd_without_kubernetes() {
    // ctr run, nerdctl with the cgroupfs manager: under the containerd namespace.
    assert_eq!(from_proc_cgroup(&format!("0::/default/{ID}\n")), container(Runtime::Containerd, ID, None, None));
    assert_eq!(
        from_proc_cgroup(&v1_file(&format!("/k8s.io/{ID}"), "/")),
        container(Runtime::Containerd, ID, None, None)
    );
    // nerdctl with the systemd manager.
    assert_eq!(
        from_proc_cgroup(&format!("0::/system.slice/nerdctl-{ID}.scope\n")),
        container(Runtime::Containerd, ID, None, None)
    );
}

#[test]
fn podman() {
    assert_eq!(
        from_proc_cgroup(&format!("0::/machine.slice/libpod-{ID}.scope\n")),
        container(Runtime::Unknown, ID, None, None)
    );
    assert_eq!(
        from_proc_cgroup(&format!("0::/machine.slice/libpod-{ID}.scope/container\n")),
        container(Runtime::Unknown, ID, None, None)
    );
    assert_eq!(from_proc_cgroup(&format!("0::/machine.slice/libpod-conmon-{ID}.scope\n")), None);
    // A podman pod is not a Kubernetes pod.
    assert_eq!(
        from_proc_cgroup(&format!("0::/machine.slice/machine-libpod_pod_{NODE}.slice/libpod-{ID}.scope\n")),
        container(Runtime::Unknown, ID, None, None)
    );
    // Rootless: a container, though under user.slice.
    assert_eq!(
        from_proc_cgroup(&format!("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope\n")),
        container(Runtime::Unknown, ID, None, None)
    );
}

#[test]
fn ecs_task() {
    let text = v1_file(&format!("/ecs/5a0d5ceddf6c44c1928d367a815d890f/{ID}"), "/");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Unknown, ID, None, None));
}

// --- which line of a v1 / hybrid file ---

#[test]
fn v1_prefers_memory_then_pids_then_systemd() {
    let text = format!(
        "5:cpu,cpuacct:/docker/{NODE}\n4:name=systemd:/system.slice/docker-{NODE}.scope\n\
         3:pids:/docker/{ID2}\n2:memory:/kubepods/pod{UID}/{ID}\n0::/\n"
    );
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Unknown, ID, Some(UID), Some("guaranteed")));
    let text = format!("4:name=systemd:/system.slice/docker-{NODE}.scope\n3:pids:/docker/{ID2}\n2:memory:/\n");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Docker, ID2, None, None));
    let text = format!("5:cpu:/docker/{ID}\n4:name=systemd:/system.slice/docker-{NODE}.scope\n3:pids:/\n2:memory:/\n");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Docker, NODE, None, None));
}

#[test]
fn hybrid_host_falls_back_to_the_unified_line() {
    // v1 memory cgroup made by a job supervisor (32-hex, not a container), the container only
    // in the v2 hierarchy.
    let text = format!(
        "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/8b89207242c65bbf440abde4409ea6ad\n1:cpu:/\n\
         0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n"
    );
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Containerd, ID, Some(UID), Some("burstable")));
    // The same supervisor's cgroup as a prefix of a v1 pod path.
    let text =
        format!("4:memory:/process_api/8b89207242c65bbf440abde4409ea6ad/kubepods/burstable/pod{UID}/{ID}\n0::/\n");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Unknown, ID, Some(UID), Some("burstable")));
}

#[test]
fn unknown_v1_hierarchy_is_the_last_resort() {
    let text = format!("7:freezer:/docker/{ID}\n4:memory:/\n0::/\n");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Docker, ID, None, None));
}

// --- not containers ---

#[test]
fn host_processes_are_not_containers() {
    for text in [
        "0::/\n".to_string(),
        "0::/init.scope\n".to_string(),
        "0::/user.slice/user-1000.slice/session-2.scope\n".to_string(),
        "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-1234.scope\n".to_string(),
        "0::/system.slice/containerd.service\n".to_string(),
        "0::/system.slice/kubelet.service\n".to_string(),
        "0::/system.slice/run-r5c0e4b1f2a3d4c5b6a7980716253a4b5.scope\n".to_string(),
        v1_file("/", "/"),
        v1_file("/user.slice/user-0.slice/session-c1.scope", "/user.slice/user-0.slice/session-c1.scope"),
        "9:name=systemd:/\n4:memory:/process_api/8b89207242c65bbf440abde4409ea6ad\n0::/\n".to_string(),
        String::new(),
        "garbage\n\n::\n".to_string(),
    ] {
        assert_eq!(from_proc_cgroup(&text), None, "{text:?}");
    }
}

#[test]
fn pod_cgroup_itself_is_not_a_container() {
    assert_eq!(
        from_proc_cgroup(&format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice\n")),
        None
    );
    assert_eq!(from_proc_cgroup(&format!("0::/kubepods/burstable/pod{UID}\n")), None);
    // ... nor in a node that is a container.
    assert_eq!(from_proc_cgroup(&format!("0::/docker/{NODE}/kubepods/burstable/pod{UID}\n")), None);
    assert_eq!(from_proc_cgroup("0::/kubepods.slice/kubepods-burstable.slice\n"), None);
}

#[test]
fn ids_must_be_64_lowercase_hex() {
    assert_eq!(from_proc_cgroup("0::/docker/abc123\n"), None);
    assert_eq!(from_proc_cgroup(&format!("0::/docker/{}\n", &ID[..63])), None);
    assert_eq!(from_proc_cgroup(&format!("0::/docker/{ID}0\n")), None);
    assert_eq!(from_proc_cgroup(&format!("0::/docker/{}\n", ID.to_uppercase())), None);
    assert_eq!(from_proc_cgroup(&format!("0::/system.slice/docker-{}x.scope\n", &ID[..63])), None);
}

#[test]
fn malformed_pod_uids_are_ignored() {
    let text = format!("0::/kubepods/burstable/pod1234/{ID}\n");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Unknown, ID, None, None));
    let text = format!("0::/kubepods.slice/kubepods-podnot_a_uid.slice/cri-containerd-{ID}.scope\n");
    assert_eq!(from_proc_cgroup(&text), container(Runtime::Containerd, ID, None, None));
}

#[test]
fn short_id_and_runtime_names() {
    let c = from_proc_cgroup(&format!("0::/system.slice/docker-{ID2}.scope\n")).unwrap();
    assert_eq!(c.short_id(), "9ec39b91f3d7");
    assert_eq!(c.runtime.to_string(), "docker");
    assert_eq!(Runtime::CriO.as_str(), "cri-o");
}

#[test]
fn from_cgroup_path_alone() {
    assert_eq!(
        from_cgroup_path(&format!("/kubepods/burstable/pod{UID}/{ID}")),
        container(Runtime::Unknown, ID, Some(UID), Some("burstable"))
    );
    assert_eq!(from_cgroup_path("/"), None);
    assert_eq!(from_cgroup_path(""), None);
}

#[test]
fn read_missing_pid_is_none() {
    assert_eq!(read(u32::MAX), None);
    let _ = read(std::process::id()); // whatever we run in, it does not fail
}
