//! Optional: names from the Kubernetes API. The cgroup path gives a pod UID and a container id
//! (`containers.rs`); the API turns them into namespace, pod name and container name.
//!
//! Only the pods of this node are listed (`fieldSelector=spec.nodeName=…`, served from the API
//! server's watch cache with `resourceVersion=0`), now and again every `refresh`, on a background
//! std thread; each list replaces the map, so memory stays bounded by the node's pods. A lookup
//! that misses (a pod or container newer than the last list) asks for an early list, at most one
//! per key and never more than one per [`MIN_GAP`]. Errors are said once per distinct message on
//! stderr and never stop the agent: the last good map is kept, and without one labels fall back
//! to pod UID and container id.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{
        mpsc::{self, RecvTimeoutError, SyncSender},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context as _, Result};

const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// One list, connection to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest pod list read. A node's pods (110 by default, at most a few hundred) list in a few
/// MB; the limit keeps a misbehaving server from blowing the agent's memory limit.
const MAX_LIST_BYTES: u64 = 32 << 20;
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

/// Where and how to reach the API server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `https://host:port` (or `http://…`, tests and proxies), without a trailing path.
    pub base_url: String,
    /// Bearer token.
    pub token: Option<String>,
    /// The token is read again from this file before each list, if set and readable: service
    /// account tokens are rotated by the kubelet (bound tokens expire, by default in an hour).
    pub token_file: Option<PathBuf>,
    /// PEM bundle of the CAs that sign the server's certificate; the built-in web roots otherwise.
    pub ca_pem: Option<Vec<u8>>,
}

impl ApiConfig {
    /// The in-cluster configuration of the pod's service account, as client-go's: the
    /// `KUBERNETES_SERVICE_HOST`/`_PORT` environment and the mounted token and CA.
    pub fn in_cluster() -> Result<ApiConfig> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").ok().filter(|h| !h.is_empty()).ok_or_else(|| {
            anyhow!("--kubernetes: not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST is not set)")
        })?;
        let port =
            std::env::var("KUBERNETES_SERVICE_PORT").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "443".into());
        let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host };
        let token_file = PathBuf::from(format!("{SERVICE_ACCOUNT}/token"));
        let token = std::fs::read_to_string(&token_file).with_context(|| {
            format!(
                "--kubernetes: cannot read the service account token {} (automountServiceAccountToken off?)",
                token_file.display()
            )
        })?;
        let ca = std::fs::read(format!("{SERVICE_ACCOUNT}/ca.crt"))
            .with_context(|| format!("--kubernetes: cannot read the cluster CA {SERVICE_ACCOUNT}/ca.crt"))?;
        Ok(ApiConfig {
            base_url: format!("https://{host}:{port}"),
            token: Some(token.trim().to_string()),
            token_file: Some(token_file),
            ca_pem: Some(ca),
        })
    }
}

/// One pod, as far as the agent cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PodEntry {
    namespace: String,
    name: String,
    /// Container id (64 hex, lowercase, no runtime prefix) -> container name.
    containers: HashMap<String, String>,
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

fn http_agent(api: &ApiConfig) -> Result<ureq::Agent> {
    let mut config = ureq::config::Config::builder()
        .timeout_global(Some(REQUEST_TIMEOUT))
        .http_status_as_error(false)
        .user_agent(concat!("leakprobe/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = &api.ca_pem {
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            anyhow::bail!("--kubernetes: no certificate in the cluster CA bundle");
        }
        config = config.tls_config(
            ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs))).build(),
        );
    }
    Ok(ureq::Agent::new_with_config(config.build()))
}

fn list(agent: &ureq::Agent, url: &str, token: Option<&str>) -> Result<serde_json::Value> {
    let mut request = agent.get(url).header("Accept", "application/json");
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request.call().map_err(|e| anyhow!("listing this node's pods: {e}"))?;
    let status = response.status();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_LIST_BYTES)
        .read_to_string()
        .map_err(|e| anyhow!("listing this node's pods: {e}"))?;
    if !status.is_success() {
        // The API server explains in a Status object ("pods is forbidden: User … cannot list …").
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|s| s["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| body.chars().take(200).collect::<String>().trim().to_string());
        anyhow::bail!("listing this node's pods: HTTP {}: {message}", status.as_u16());
    }
    serde_json::from_str(&body).map_err(|e| anyhow!("listing this node's pods: not a pod list: {e}"))
}

/// Percent-encoding of a query value (RFC 3986 unreserved characters kept).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A pod list (`GET /api/v1/pods`) as pod UID -> namespace, name and container ids -> names.
///
/// A mirror pod (the API's copy of a static pod) is also found under its config hash, which is
/// what the static pod's cgroup names. Container ids are taken from the statuses of containers,
/// init containers and ephemeral containers, current (`containerID`) and, for a restarted
/// container, previous (`lastState.terminated.containerID`), runtime prefix removed.
fn index(pod_list: &serde_json::Value) -> HashMap<String, PodEntry> {
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

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};

    use super::*;

    const API_UID: &str = "0b6c1a2e-1111-4a1a-9b1b-000000000001";
    const JOB_UID: &str = "5f0e7d3c-2222-4b2b-8c2c-000000000002";
    const PENDING_UID: &str = "7a1b2c3d-3333-4c3c-9d3d-000000000003";
    const STATIC_UID: &str = "9e8d7c6b-4444-4d4d-8e4e-000000000004";
    const STATIC_HASH: &str = "8daa50c3a64c9ff60bb9eab7b44b56fd";

    /// A 64-hex container id made of one repeated character.
    fn cid(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    /// A pod list as `kubectl get pods -o json` shows one (trimmed of fields the agent ignores).
    fn pod_list() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "PodList",
            "metadata": {"resourceVersion": "123456"},
            "items": [
                {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {
                        "name": "api-7d9f8b6c5-x2x4q", "namespace": "shop", "uid": API_UID,
                        "labels": {"app": "api", "pod-template-hash": "7d9f8b6c5"},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d9f8b6c5", "uid": "x"}]
                    },
                    "spec": {"nodeName": "node-a", "containers": [{"name": "api"}, {"name": "sidecar"}], "initContainers": [{"name": "migrate"}]},
                    "status": {
                        "phase": "Running",
                        "initContainerStatuses": [{
                            "name": "migrate", "ready": true, "restartCount": 0,
                            "containerID": format!("containerd://{}", cid('c')),
                            "image": "registry.example/shop/api:1.2.3",
                            "state": {"terminated": {"exitCode": 0, "reason": "Completed", "containerID": format!("containerd://{}", cid('c'))}},
                            "lastState": {}
                        }],
                        "containerStatuses": [
                            {
                                "name": "api", "ready": true, "restartCount": 2, "started": true,
                                "containerID": format!("containerd://{}", cid('a')),
                                "state": {"running": {"startedAt": "2024-05-01T10:00:00Z"}},
                                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "containerID": format!("containerd://{}", cid('9'))}}
                            },
                            {
                                "name": "sidecar", "ready": true, "restartCount": 0,
                                "containerID": format!("containerd://{}", cid('b')),
                                "state": {"running": {"startedAt": "2024-05-01T09:59:00Z"}},
                                "lastState": {}
                            }
                        ],
                        "ephemeralContainerStatuses": [{
                            "name": "debugger-abcde", "ready": false, "restartCount": 0,
                            "containerID": format!("containerd://{}", cid('e')),
                            "state": {"running": {}}, "lastState": {}
                        }]
                    }
                },
                {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "report-28571234-abcde", "namespace": "batch", "uid": JOB_UID.to_uppercase()},
                    "spec": {"nodeName": "node-a", "containers": [{"name": "report"}]},
                    "status": {
                        "phase": "Running",
                        "containerStatuses": [{
                            "name": "report", "restartCount": 0,
                            "containerID": format!("cri-o://{}", cid('D')),
                            "state": {"running": {}}
                        }]
                    }
                },
                {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "queued-0", "namespace": "shop", "uid": PENDING_UID},
                    "spec": {"nodeName": "node-a", "containers": [{"name": "worker"}]},
                    "status": {
                        "phase": "Pending",
                        "containerStatuses": [{
                            "name": "worker", "restartCount": 0, "containerID": "",
                            "state": {"waiting": {"reason": "ContainerCreating"}}
                        }]
                    }
                },
                {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {
                        "name": "etcd-node-a", "namespace": "kube-system", "uid": STATIC_UID,
                        "annotations": {
                            "kubernetes.io/config.hash": STATIC_HASH,
                            "kubernetes.io/config.mirror": STATIC_HASH,
                            "kubernetes.io/config.source": "file"
                        }
                    },
                    "spec": {"nodeName": "node-a", "containers": [{"name": "etcd"}]},
                    "status": {"containerStatuses": [{"name": "etcd", "containerID": format!("docker://{}", cid('f'))}]}
                },
                {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "just-created", "namespace": "shop", "uid": "11111111-2222-4333-8444-555555555555"}},
                {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "no-uid", "namespace": "shop"}}
            ]
        })
    }

    #[test]
    fn indexes_pods_and_their_containers_by_runtime_id() {
        let pods = index(&pod_list());
        // Five pods with a UID, the static one also under its config hash.
        assert_eq!(pods.len(), 6, "{:?}", pods.keys().collect::<Vec<_>>());

        let api = &pods[API_UID];
        assert_eq!((api.namespace.as_str(), api.name.as_str()), ("shop", "api-7d9f8b6c5-x2x4q"));
        assert_eq!(api.containers[&cid('a')], "api");
        assert_eq!(api.containers[&cid('b')], "sidecar");
        assert_eq!(api.containers[&cid('c')], "migrate", "init container");
        assert_eq!(api.containers[&cid('e')], "debugger-abcde", "ephemeral container");
        assert_eq!(api.containers[&cid('9')], "api", "the restarted container's previous instance");
        assert_eq!(api.containers.len(), 5);

        let job = &pods[JOB_UID];
        assert_eq!((job.namespace.as_str(), job.name.as_str()), ("batch", "report-28571234-abcde"));
        assert_eq!(job.containers[&cid('d')], "report", "cri-o prefix removed, id lowercased");

        assert!(pods[PENDING_UID].containers.is_empty(), "a container not yet created has no id");
        assert!(pods["11111111-2222-4333-8444-555555555555"].containers.is_empty(), "no status at all");

        assert_eq!(pods[STATIC_HASH], pods[STATIC_UID], "a static pod under its config hash");
        assert_eq!(pods[STATIC_HASH].containers[&cid('f')], "etcd", "docker prefix removed");
    }

    #[test]
    fn odd_lists_index_to_nothing() {
        assert!(index(&serde_json::json!({})).is_empty());
        assert!(index(&serde_json::json!({"kind": "Status", "message": "forbidden"})).is_empty());
        assert!(index(&serde_json::json!({"items": null})).is_empty());
        assert!(index(&serde_json::json!({"items": [1, "x", {"metadata": {"uid": ""}}]})).is_empty());
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("spec.nodeName=node-a"), "spec.nodeName%3Dnode-a");
        assert_eq!(encode("spec.nodeName=ip-10-0-1-2.ec2.internal"), "spec.nodeName%3Dip-10-0-1-2.ec2.internal");
    }

    #[test]
    fn each_error_is_said_once_until_success() {
        let mut r = Reporter::default();
        assert_eq!(r.success(3), None);
        assert_eq!(r.error("HTTP 403: forbidden".into()).as_deref(), Some("HTTP 403: forbidden"));
        assert_eq!(r.error("HTTP 403: forbidden".into()), None);
        assert_eq!(r.error("timeout".into()).as_deref(), Some("timeout"));
        assert_eq!(r.error("timeout".into()), None);
        assert_eq!(r.success(4).as_deref(), Some("listing this node's pods works again (4 pods)"));
        assert_eq!(r.success(4), None);
        assert_eq!(r.error("timeout".into()).as_deref(), Some("timeout"));
    }

    #[test]
    fn in_cluster_needs_the_service_environment() {
        // Tests run outside a cluster; if they ever run in one, there is nothing to check here.
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
            let e = ApiConfig::in_cluster().unwrap_err().to_string();
            assert!(e.contains("KUBERNETES_SERVICE_HOST"), "{e}");
        }
    }

    #[test]
    fn an_empty_ca_bundle_is_refused() {
        let api = ApiConfig {
            base_url: "https://127.0.0.1:1".into(),
            token: None,
            token_file: None,
            ca_pem: Some(b"junk".to_vec()),
        };
        assert!(PodDirectory::start(api, "node-a".into(), Duration::from_secs(3600)).is_err());
    }

    /// A server on 127.0.0.1, plain HTTP or (with `tls`) HTTPS, that answers the n-th request
    /// with `responses[n]` (the last one again past the end) and records each request's head.
    /// Serves at most 100 connections, then stops.
    struct Server {
        port: u16,
        heads: Arc<Mutex<Vec<Vec<String>>>>,
    }

    impl Server {
        fn start(responses: Vec<(u16, String)>) -> Server {
            Server::start_with(responses, None)
        }

        fn start_with(responses: Vec<(u16, String)>, tls: Option<Arc<rustls::ServerConfig>>) -> Server {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let heads = Arc::new(Mutex::new(Vec::new()));
            let record = heads.clone();
            std::thread::spawn(move || {
                for (n, stream) in listener.incoming().take(100).enumerate() {
                    let Ok(stream) = stream else { continue };
                    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let response = &responses[n.min(responses.len() - 1)];
                    match &tls {
                        None => answer(stream, response, &record),
                        Some(config) => {
                            let connection = rustls::ServerConnection::new(config.clone()).unwrap();
                            answer(rustls::StreamOwned::new(connection, stream), response, &record);
                        }
                    }
                }
            });
            Server { port, heads }
        }

        fn api(&self) -> ApiConfig {
            ApiConfig {
                base_url: format!("http://127.0.0.1:{}", self.port),
                token: Some("t".into()),
                token_file: None,
                ca_pem: None,
            }
        }

        fn requests(&self) -> usize {
            self.heads.lock().unwrap().len()
        }
    }

    /// Reads a request's head into `record` (nothing if the client gave up, as on a failed TLS
    /// handshake) and answers `response`.
    fn answer(
        mut stream: impl std::io::Read + Write,
        (status, body): &(u16, String),
        record: &Mutex<Vec<Vec<String>>>,
    ) {
        let mut head = Vec::new();
        {
            let mut reader = BufReader::new(&mut stream);
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => head.push(line.trim_end().to_string()),
                }
            }
        }
        record.lock().unwrap().push(head);
        let _ = write!(
            stream,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.flush();
    }

    /// Polls `f` until it is Some, for at most 10 s.
    fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = f() {
                return Some(v);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn lists_this_nodes_pods_with_the_token() {
        let server = Server::start(vec![(200, pod_list().to_string())]);
        let directory = PodDirectory::start(server.api(), "node-a".into(), Duration::from_secs(3600)).unwrap();
        // `start` waited for the first list.
        assert_eq!(
            directory.lookup(API_UID, &cid('b')),
            Some(PodInfo { namespace: "shop".into(), pod: "api-7d9f8b6c5-x2x4q".into(), container: "sidecar".into() })
        );
        assert_eq!(
            directory.lookup(STATIC_HASH, &cid('f')),
            Some(PodInfo { namespace: "kube-system".into(), pod: "etcd-node-a".into(), container: "etcd".into() })
        );
        let head = server.heads.lock().unwrap()[0].clone();
        assert_eq!(
            head[0], "GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&resourceVersion=0 HTTP/1.1",
            "{head:?}"
        );
        assert!(head.iter().any(|h| h.eq_ignore_ascii_case("authorization: Bearer t")), "{head:?}");
    }

    #[test]
    fn a_miss_asks_for_an_early_list() {
        let mut first = pod_list();
        first["items"].as_array_mut().unwrap().remove(0);
        let server = Server::start(vec![(200, first.to_string()), (200, pod_list().to_string())]);
        let directory = PodDirectory::start(server.api(), "node-a".into(), Duration::from_secs(3600)).unwrap();
        assert_eq!(directory.lookup(API_UID, &cid('a')), None);
        let found = eventually(|| directory.lookup(API_UID, &cid('a')));
        assert_eq!(found.map(|i| i.container).as_deref(), Some("api"));
        // One early list, not one per lookup.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(server.requests(), 2);
    }

    #[test]
    fn errors_keep_the_last_good_list_and_dropping_stops_the_thread() {
        let forbidden = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
            "message": "pods is forbidden: User \"system:serviceaccount:leakprobe:leakprobe-agent\" cannot list resource \"pods\""
        });
        let server = Server::start(vec![(200, pod_list().to_string()), (403, forbidden.to_string())]);
        let directory = PodDirectory::start(server.api(), "node-a".into(), Duration::from_millis(50)).unwrap();
        assert!(eventually(|| (server.requests() >= 3).then_some(())).is_some());
        assert_eq!(directory.lookup(JOB_UID, &cid('d')).map(|i| i.pod).as_deref(), Some("report-28571234-abcde"));
        drop(directory);
        std::thread::sleep(Duration::from_millis(200));
        let after_drop = server.requests();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(server.requests(), after_drop);
    }

    #[test]
    fn an_http_error_says_the_servers_message() {
        let server = Server::start(vec![(403, r#"{"kind":"Status","message":"pods is forbidden"}"#.into())]);
        let agent = http_agent(&server.api()).unwrap();
        let url = format!("http://127.0.0.1:{}/api/v1/pods", server.port);
        let e = list(&agent, &url, Some("t")).unwrap_err().to_string();
        assert_eq!(e, "listing this node's pods: HTTP 403: pods is forbidden");
        let server = Server::start(vec![(502, "<html>Bad Gateway</html>".into())]);
        let url = format!("http://127.0.0.1:{}/api/v1/pods", server.port);
        let e = list(&agent, &url, None).unwrap_err().to_string();
        assert_eq!(e, "listing this node's pods: HTTP 502: <html>Bad Gateway</html>");
    }

    #[test]
    fn the_token_file_is_read_again() {
        let dir = std::env::temp_dir().join(format!("leakprobe-kube-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "first\n").unwrap();
        let server = Server::start(vec![(200, pod_list().to_string())]);
        let api = ApiConfig { token_file: Some(file.clone()), ..server.api() };
        let directory = PodDirectory::start(api, "node-a".into(), Duration::from_millis(50)).unwrap();
        std::fs::write(&file, "second\n").unwrap();
        let seen = |token: &str| {
            let header = format!("authorization: Bearer {token}");
            server.heads.lock().unwrap().iter().any(|h| h.iter().any(|l| l.eq_ignore_ascii_case(&header)))
        };
        assert!(eventually(|| seen("second").then_some(())).is_some());
        assert!(seen("first"));
        drop(directory);
        let _ = std::fs::remove_dir_all(dir);
    }

    // A test CA, a server certificate it signed for IP 127.0.0.1 and kubernetes.default.svc (as an
    // API server's), the server's key, and an unrelated CA; ECDSA P-256, valid 2020 to 2120.
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBajCCARGgAwIBAgIBATAKBggqhkjOPQQDAjAcMRowGAYDVQQDDBFsZWFrcHJv\n\
YmUtdGVzdC1jYTAgFw0yMDAxMDEwMDAwMDBaGA8yMTIwMDEwMTAwMDAwMFowHDEa\n\
MBgGA1UEAwwRbGVha3Byb2JlLXRlc3QtY2EwWTATBgcqhkjOPQIBBggqhkjOPQMB\n\
BwNCAAS2AkiYQvvvSCEpB7PbsSVq0slvMr5IFJ/A1eehUcaQuXDpX1ychXbcMggk\n\
aErrhRT7wUb4yRnkNq8PyC2Uf7kNo0IwQDAPBgNVHRMBAf8EBTADAQH/MA4GA1Ud\n\
DwEB/wQEAwIBBjAdBgNVHQ4EFgQU+HHM+80kI3dv33qDarGcufKUTMMwCgYIKoZI\n\
zj0EAwIDRwAwRAIgXETL/Hqot7agGVswYiOGXQQuZ2up6i1NYozmpC77ZugCIBPo\n\
xosxZ5xDZnEZMjcJtcZrGRFSdUugdLiENswv4uE0\n\
-----END CERTIFICATE-----\n";
    const TEST_SERVER_CERT: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBwzCCAWigAwIBAgIBAjAKBggqhkjOPQQDAjAcMRowGAYDVQQDDBFsZWFrcHJv\n\
YmUtdGVzdC1jYTAgFw0yMDAxMDEwMDAwMDBaGA8yMTIwMDEwMTAwMDAwMFowFTET\n\
MBEGA1UEAwwKa3ViZXJuZXRlczBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABM9Q\n\
jbLTSNrxb7lNmG5b8qnpODIGyPtRcbqRrRG8+0bdmQDg3I/O1kKeL7RgVfL9I9UN\n\
RwaFgoLXO2wI0BRQIDqjgZ8wgZwwDAYDVR0TAQH/BAIwADAOBgNVHQ8BAf8EBAMC\n\
B4AwEwYDVR0lBAwwCgYIKwYBBQUHAwEwJwYDVR0RBCAwHocEfwAAAYIWa3ViZXJu\n\
ZXRlcy5kZWZhdWx0LnN2YzAfBgNVHSMEGDAWgBT4ccz7zSQjd2/feoNqsZy58pRM\n\
wzAdBgNVHQ4EFgQUIeRS6qYEDAc0r7BqPGCSDMSTpn0wCgYIKoZIzj0EAwIDSQAw\n\
RgIhAK9aFdmt2jAdOlWPcwla3o7EdYdfjWv5k/BlVZ8ndWDuAiEAneZYKwN4SVeV\n\
5Lxc1PkcFrv2VzusxcA/44y+TfHdqiY=\n\
-----END CERTIFICATE-----\n";
    const TEST_SERVER_KEY: &str = "-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg8xhB1x4ipnoWak6f\n\
cEZXVObgq7Z2vKw6qVZQwOZvofahRANCAATPUI2y00ja8W+5TZhuW/Kp6TgyBsj7\n\
UXG6ka0RvPtG3ZkA4NyPztZCni+0YFXy/SPVDUcGhYKC1ztsCNAUUCA6\n\
-----END PRIVATE KEY-----\n";
    const OTHER_CA: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBYzCCAQmgAwIBAgIBAzAKBggqhkjOPQQDAjAYMRYwFAYDVQQDDA1zb21lLW90\n\
aGVyLWNhMCAXDTIwMDEwMTAwMDAwMFoYDzIxMjAwMTAxMDAwMDAwWjAYMRYwFAYD\n\
VQQDDA1zb21lLW90aGVyLWNhMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEYxi0\n\
0UVGk5tLWhFxjKQMfjFru/CBIN/JhsPznO+qXmftmZKvQ+jD1vMwq+BmKF3GqLVz\n\
ldridPu+gdhbfoK6i6NCMEAwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMC\n\
AQYwHQYDVR0OBBYEFIaPT9yQQVwxdnEp2e6CysHrAaJqMAoGCCqGSM49BAMCA0gA\n\
MEUCIDWYFc0EdKsuGHwD33LwcnNjyArBwRxb3kvoLIm9seAyAiEA8IydhFD0ue6f\n\
9TXS4rD0N1+iefChZ12BVa9/SB8Re2Y=\n\
-----END CERTIFICATE-----\n";

    fn tls_server(responses: Vec<(u16, String)>) -> Server {
        use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(TEST_SERVER_CERT.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(TEST_SERVER_KEY.as_bytes()).unwrap(),
            )
            .unwrap();
        Server::start_with(responses, Some(Arc::new(config)))
    }

    #[test]
    fn https_with_the_cluster_ca() {
        let server = tls_server(vec![(200, pod_list().to_string())]);
        let api = ApiConfig {
            base_url: format!("https://127.0.0.1:{}", server.port),
            token: Some("t".into()),
            token_file: None,
            ca_pem: Some(TEST_CA.as_bytes().to_vec()),
        };
        let directory = PodDirectory::start(api, "node-a".into(), Duration::from_secs(3600)).unwrap();
        assert_eq!(directory.lookup(API_UID, &cid('c')).map(|i| i.container).as_deref(), Some("migrate"));
        let head = server.heads.lock().unwrap()[0].clone();
        assert!(head[0].starts_with("GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&"), "{head:?}");
        assert!(head.iter().any(|h| h.eq_ignore_ascii_case("authorization: Bearer t")), "{head:?}");
    }

    #[test]
    fn https_refuses_a_server_the_ca_did_not_sign() {
        let server = tls_server(vec![(200, pod_list().to_string())]);
        let api = ApiConfig {
            base_url: format!("https://127.0.0.1:{}", server.port),
            token: Some("secret".into()),
            token_file: None,
            ca_pem: Some(OTHER_CA.as_bytes().to_vec()),
        };
        let agent = http_agent(&api).unwrap();
        let e = list(&agent, &format!("{}/api/v1/pods", api.base_url), api.token.as_deref()).unwrap_err();
        assert!(format!("{e:#}").to_lowercase().contains("certificate"), "{e:#}");
        // The token never reached the server.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(server.requests(), 0);
    }
}
