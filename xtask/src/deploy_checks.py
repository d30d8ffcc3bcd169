"""The manifest half of `cargo xtask deploy-check` (deploy_checks.rs runs promtool and the rest).

Runs in the venv setup.rs makes with kubernetes-validate (which bundles the Kubernetes JSON schemas
and PyYAML): offline. Prints one line per check, `ok   ...` or `FAIL ...`, and exits 1 if any
failed.

    python deploy_checks.py ROOT --prometheusrule-spec OUT   # check; write the PrometheusRule's spec to OUT
    python deploy_checks.py ROOT --fix                        # rewrite prometheusrule.yaml's spec from the rules file
"""

import argparse
import re
import sys
from pathlib import Path

import yaml
import kubernetes_validate.utils as kv

KUBE = Path("deploy/kubernetes")
RULES = Path("deploy/prometheus/leakprobe-rules.yml")
PROMETHEUS_RULE = KUBE / "prometheusrule.yaml"
DOCS = Path("docs/deploy.md")
# The oldest Kubernetes the manifests support (securityContext.appArmorProfile is 1.30+); the
# newest is the latest the pinned kubernetes-validate bundles.
OLDEST_KUBERNETES = "1.30"
NAMESPACE = "leakprobe"
# What the DaemonSet may add, each explained in daemonset.yaml and docs/deploy.md.
CAPABILITIES = {"BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH", "SYS_RESOURCE", "SYS_ADMIN"}
# Fields of the Prometheus Operator's CRDs these manifests may use (their schemas are not in
# kubernetes-validate): anything else is most likely a typo the operator would silently drop.
PODMONITOR_SPEC = {"jobLabel", "podTargetLabels", "namespaceSelector", "selector", "podMetricsEndpoints",
                   "sampleLimit", "targetLimit", "labelLimit", "attachMetadata", "scrapeClass"}
POD_ENDPOINT = {"port", "portNumber", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout",
                "honorLabels", "honorTimestamps", "trackTimestampsStaleness", "relabelings",
                "metricRelabelings", "followRedirects", "enableHttp2", "filterRunning", "proxyUrl",
                "tlsConfig", "authorization", "basicAuth", "oauth2", "bearerTokenSecret"}
RELABEL = {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"}
RELABEL_ACTIONS = {"replace", "keep", "drop", "keepequal", "dropequal", "hashmod", "labelmap", "labeldrop",
                   "labelkeep", "lowercase", "uppercase"}
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
GENERATED_NOTE = ("# spec: generated from deploy/prometheus/leakprobe-rules.yml (`cargo xtask deploy-check --fix`);\n"
                  "# edit that file, not this one.\n")


class Failed(Exception):
    pass


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML keeps the last one silently)."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_all(path):
    try:
        return [d for d in yaml.load_all(path.read_text(), Loader=StrictLoader) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        raise Failed(" ".join(f"{path}: {e}".split()))


def require(cond, message):
    if not cond:
        raise Failed(message)


def labels_match(selector, labels, what):
    missing = {k: v for k, v in (selector or {}).items() if labels.get(k) != v}
    require(selector and not missing, f"{what} selects {selector}, which the DaemonSet's pod labels {labels} do not match")


class Manifests:
    """Every object of the kustomization, by kind."""

    def __init__(self, root):
        self.root = root
        kustomization = load_all(root / KUBE / "kustomization.yaml")[0]
        self.kustomization = kustomization
        self.files = list(kustomization.get("resources", []))
        self.objects = []  # (file, object)
        for name in self.files:
            path = root / KUBE / name
            require(path.is_file(), f"kustomization.yaml lists {name}, which does not exist")
            self.objects += [(name, o) for o in load_all(path)]

    def one(self, kind):
        found = [o for _, o in self.objects if o.get("kind") == kind]
        require(len(found) == 1, f"expected one {kind}, found {len(found)}")
        return found[0]


def check_kustomization(m):
    k = m.kustomization
    require(k.get("apiVersion") == "kustomize.config.k8s.io/v1beta1" and k.get("kind") == "Kustomization",
            "kustomization.yaml is not a kustomize.config.k8s.io/v1beta1 Kustomization")
    on_disk = sorted(p.name for p in (m.root / KUBE).glob("*.yaml") if p.name != "kustomization.yaml")
    unlisted = sorted(set(on_disk) - set(m.files))
    require(not unlisted, f"kustomization.yaml does not list {unlisted}")
    require(len(set(m.files)) == len(m.files), "kustomization.yaml lists a file twice")
    image = m.one("DaemonSet")["spec"]["template"]["spec"]["containers"][0]["image"]
    for entry in k.get("images", []):
        require(entry.get("name") == image.rsplit(":", 1)[0],
                f"kustomization images[].name {entry.get('name')!r} does not match the DaemonSet's image {image!r}")
        tag = entry.get("newTag") or entry.get("digest")
        require(tag and tag != "latest", "kustomization images[] must pin newTag (not latest) or a digest")
    return f"lists all {len(m.files)} manifests"


def check_schemas(m, version):
    checked = 0
    for name, obj in m.objects:
        if obj.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            continue  # CRDs: checked structurally below
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            raise Failed(f"{name}: {obj.get('kind')} {obj['metadata'].get('name')}: {path}: {e.message}")
        except (kv.SchemaNotFoundError, kv.VersionNotSupportedError) as e:
            raise Failed(f"{name}: {e.message}")
        checked += 1
    return f"{checked} objects valid (strict)"


def check_references(m):
    ns = m.one("Namespace")
    require(ns["metadata"]["name"] == NAMESPACE, f"the Namespace is not {NAMESPACE}")
    require(ns["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") == "privileged",
            "the Namespace must enforce the privileged Pod Security Standard (hostPID, hostPath, capabilities)")
    for name, obj in m.objects:
        if obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            require(obj["metadata"].get("namespace") == NAMESPACE, f"{name}: {obj['kind']} is not in namespace {NAMESPACE}")
    ds = m.one("DaemonSet")
    pod = ds["spec"]["template"]
    labels = pod["metadata"]["labels"]
    labels_match(ds["spec"]["selector"]["matchLabels"], labels, "the DaemonSet")
    spec = pod["spec"]
    require(spec.get("hostPID") is True, "the DaemonSet needs hostPID: true")
    require(not spec.get("hostNetwork"), "the agent does not need hostNetwork")
    require({"operator": "Exists"} in spec.get("tolerations", []), "the DaemonSet must tolerate every taint")
    sa = m.one("ServiceAccount")["metadata"]["name"]
    require(spec.get("serviceAccountName") == sa, f"the DaemonSet does not run as ServiceAccount {sa}")
    binding = m.one("ClusterRoleBinding")
    require(binding["roleRef"]["name"] == m.one("ClusterRole")["metadata"]["name"], "the binding names another ClusterRole")
    require({"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE} in binding["subjects"],
            "the ClusterRoleBinding does not bind the agent's ServiceAccount")
    for rule in m.one("ClusterRole")["rules"]:
        require(set(rule["verbs"]) <= {"get", "list", "watch"} and rule["resources"] == ["pods"],
                "the ClusterRole may only read pods")

    (container,) = spec["containers"]
    require(":" in container["image"].rsplit("/", 1)[-1] and not container["image"].endswith(":latest"),
            "the agent's image must have a pinned tag")
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    require(ports.get("metrics") == 9464, "the agent container needs a port named metrics on 9464")
    args = container.get("args", [])
    listen = next((a.split("=", 1)[1] for a in args if a.startswith("--listen=")), "")
    require(listen.rsplit(":", 1)[-1] == "9464", f"--listen={listen} is not on the metrics port 9464")
    env = {e["name"]: e for e in container.get("env", [])}
    require(env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
            "NODE_NAME must come from the fieldRef spec.nodeName")
    for arg in args:
        for var in re.findall(r"\$\((\w+)\)", arg):
            require(var in env, f"argument {arg} uses $({var}), which is not in env")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container.get(probe, {}).get("httpGet", {})
        require(get.get("path") == "/healthz" and get.get("port") in ("metrics", 9464),
                f"the {probe} must GET /healthz on the metrics port")
    res = container.get("resources", {})
    require(all(res.get(k, {}).get(r) for k in ("requests", "limits") for r in ("cpu", "memory")),
            "the agent needs cpu and memory requests and limits")
    sc = container["securityContext"]
    require(not sc.get("privileged"), "the agent must not be privileged: it has the capabilities it needs")
    require(sc["capabilities"].get("drop") == ["ALL"], "drop ALL capabilities, then add the needed ones")
    added = set(sc["capabilities"].get("add", []))
    require(added == CAPABILITIES, f"capabilities {sorted(added)} differ from the documented {sorted(CAPABILITIES)}")
    docs = (m.root / DOCS).read_text() if (m.root / DOCS).is_file() else ""
    undocumented = sorted(c for c in added if f"CAP_{c}" not in docs)
    require(not undocumented, f"{DOCS} does not explain {undocumented}")
    require(sc.get("readOnlyRootFilesystem") is True, "the agent's root filesystem should be read-only")
    volumes = {v["name"] for v in spec.get("volumes", [])}
    mounts = {v["name"]: v for v in container.get("volumeMounts", [])}
    require(set(mounts) <= volumes, f"volumeMounts {sorted(set(mounts) - volumes)} have no volume")
    paths = {v["mountPath"]: v for v in mounts.values()}
    for path in ("/sys/kernel/tracing", "/sys/fs/cgroup"):
        require(paths.get(path, {}).get("readOnly") is True, f"{path} must be mounted read-only")
    reports_dir = next((a.split("=", 1)[1] for a in args if a.startswith("--reports-dir=")), None)
    require(reports_dir in paths, f"--reports-dir {reports_dir} is not a mounted volume (the root filesystem is read-only)")

    svc = m.one("Service")
    labels_match(svc["spec"]["selector"], labels, "the Service")
    require(svc["spec"].get("clusterIP") == "None", "the Service must be headless (clusterIP: None)")
    for p in svc["spec"]["ports"]:
        require(p.get("targetPort") in ports or p.get("targetPort") in ports.values(),
                f"Service port {p.get('name')} targets {p.get('targetPort')}, not a container port")
    return "namespace, labels, selectors, ServiceAccount/RBAC, ports, probes, env, capabilities, volumes agree"


def check_podmonitor(m):
    pm = m.one("PodMonitor")
    require(pm["apiVersion"] == "monitoring.coreos.com/v1", "PodMonitor must be monitoring.coreos.com/v1")
    spec = pm["spec"]
    require(set(spec) <= PODMONITOR_SPEC, f"unknown PodMonitor spec fields {sorted(set(spec) - PODMONITOR_SPEC)}")
    pod = m.one("DaemonSet")["spec"]["template"]
    labels = pod["metadata"]["labels"]
    labels_match(spec["selector"].get("matchLabels"), labels, "the PodMonitor")
    require(NAMESPACE in spec.get("namespaceSelector", {}).get("matchNames", []),
            f"the PodMonitor's namespaceSelector must include {NAMESPACE}")
    require(labels.get(spec.get("jobLabel")) == "leakprobe",
            "the PodMonitor's jobLabel must name a pod label whose value is leakprobe (LeakprobeAgentDown's job)")
    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    endpoints = spec.get("podMetricsEndpoints") or []
    require(endpoints, "the PodMonitor has no podMetricsEndpoints")
    for ep in endpoints:
        require(set(ep) <= POD_ENDPOINT, f"unknown podMetricsEndpoints fields {sorted(set(ep) - POD_ENDPOINT)}")
        require(ep.get("port") in ports, f"podMetricsEndpoints port {ep.get('port')!r} is not a container port name")
        require(ep.get("honorLabels") is True,
                "honorLabels must be true: the agent's namespace/pod/container labels name the watched process")
        for key in ("interval", "scrapeTimeout"):
            require(key not in ep or DURATION.match(str(ep[key])), f"{key} {ep.get(key)!r} is not a duration")
        for r in ep.get("relabelings", []) + ep.get("metricRelabelings", []):
            require(set(r) <= RELABEL and r.get("action", "replace") in RELABEL_ACTIONS, f"bad relabeling {r}")
    return f"selects the agent's pods, {len(endpoints)} endpoint on port metrics, honorLabels"


def check_networkpolicy(m):
    np = m.one("NetworkPolicy")
    pod = m.one("DaemonSet")["spec"]["template"]
    labels_match(np["spec"]["podSelector"].get("matchLabels"), pod["metadata"]["labels"], "the NetworkPolicy")
    require(np["spec"].get("policyTypes") == ["Ingress"], "the NetworkPolicy must restrict ingress")
    ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    rules = np["spec"].get("ingress") or []
    require(rules, "the NetworkPolicy admits nothing: Prometheus could not scrape")
    for rule in rules:
        require(rule.get("from"), "a NetworkPolicy ingress rule without `from` admits every peer")
        allowed = [p.get("port") for p in rule.get("ports") or []]
        require(allowed and all(p in ports for p in allowed),
                f"NetworkPolicy ingress ports {allowed} must be named container ports ({sorted(ports)})")
    return f"only the listed peers reach the agent's pods, on port {', '.join(sorted(ports))}"


def check_prometheusrule(m, spec_out):
    pr = m.one("PrometheusRule")
    require(pr["apiVersion"] == "monitoring.coreos.com/v1", "PrometheusRule must be monitoring.coreos.com/v1")
    require(set(pr) == {"apiVersion", "kind", "metadata", "spec"}, "PrometheusRule has fields besides metadata and spec")
    rules = load_all(m.root / RULES)[0]
    require(pr["spec"] == rules,
            f"{PROMETHEUS_RULE}'s spec differs from {RULES}: run `cargo xtask deploy-check --fix`")
    for group in rules["groups"]:
        for rule in group["rules"]:
            require(set(rule) <= RULE_KEYS, f"rule {rule.get('alert')}: unknown fields {sorted(set(rule) - RULE_KEYS)}")
    if spec_out:
        Path(spec_out).write_text(yaml.safe_dump(pr["spec"], sort_keys=False))
    return f"spec equals {RULES}"


def check_documented_metrics(root):
    exprs = " ".join(r["expr"] for g in load_all(root / RULES)[0]["groups"] for r in g["rules"])
    used = set(re.findall(r"\bleakprobe_[a-z_]+", exprs))
    require((root / DOCS).is_file(), f"{DOCS} is missing")
    documented = set(re.findall(r"\bleakprobe_[a-z_]+", (root / DOCS).read_text()))
    require(used <= documented, f"the rules use metrics {sorted(used - documented)} that {DOCS} does not list")
    return f"the {len(used)} metrics the rules use are all in {DOCS}"


def fix(root):
    """Rewrites prometheusrule.yaml's spec from the rules file, keeping its header (metadata)."""
    path = root / PROMETHEUS_RULE
    if not path.is_file():
        raise SystemExit(f"{PROMETHEUS_RULE} is missing: --fix rewrites its spec, it needs the header")
    header = path.read_text().split("\nspec:\n", 1)[0] + "\n"
    rules = (root / RULES).read_text()
    body = rules[rules.index("\ngroups:") + 1:]
    indented = "".join(("  " + line if line.strip() else line) for line in body.splitlines(keepends=True))
    if GENERATED_NOTE not in header:
        header += GENERATED_NOTE
    path.write_text(header + "spec:\n" + indented)
    print(f"fixed {PROMETHEUS_RULE}: spec rewritten from {RULES}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--prometheusrule-spec", help="write the PrometheusRule's spec here (for promtool)")
    parser.add_argument("--fix", action="store_true")
    args = parser.parse_args()
    if args.fix:
        fix(args.root)
        return 0
    failed = 0

    def check(what, f, *a):
        nonlocal failed
        try:
            print(f"ok   {what}: {f(*a)}", flush=True)
        except Failed as e:
            failed += 1
            print(f"FAIL {what}: {e}", flush=True)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:  # a malformed manifest
            failed += 1
            print(f"FAIL {what}: malformed manifest ({type(e).__name__}: {e})", flush=True)

    try:
        m = Manifests(args.root)
    except Failed as e:
        print(f"FAIL {KUBE}: {e}")
        return 1
    check("kustomization.yaml", check_kustomization, m)
    for version in (OLDEST_KUBERNETES, kv.major_minor(kv.latest_version())):
        check(f"Kubernetes {version} schemas", check_schemas, m, version)
    check("manifests agree", check_references, m)
    check("podmonitor.yaml", check_podmonitor, m)
    check("networkpolicy.yaml", check_networkpolicy, m)
    check("prometheusrule.yaml", check_prometheusrule, m, args.prometheusrule_spec)
    check("rules' metrics", check_documented_metrics, args.root)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
