//! Reaching the API server: where it is and how to authenticate (in-cluster configuration), the
//! HTTP agent that trusts the cluster CA, and one pod list request.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{anyhow, Context as _, Result};

const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// One list, connection to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest pod list read. A node's pods (110 by default, at most a few hundred) list in a few
/// MB; the limit keeps a misbehaving server from blowing the agent's memory limit.
const MAX_LIST_BYTES: u64 = 32 << 20;

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

pub(super) fn http_agent(api: &ApiConfig) -> Result<ureq::Agent> {
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

pub(super) fn list(agent: &ureq::Agent, url: &str, token: Option<&str>) -> Result<serde_json::Value> {
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
pub(super) fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
