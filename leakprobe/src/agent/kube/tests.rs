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
fn answer(mut stream: impl std::io::Read + Write, (status, body): &(u16, String), record: &Mutex<Vec<Vec<String>>>) {
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
    assert_eq!(head[0], "GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&resourceVersion=0 HTTP/1.1", "{head:?}");
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
