"""Checks of the Helm chart helm/c2p-enroll; run by scripts/check-chart inside its venv.

For every value set in helm/values/: the values schema, `helm lint --strict` and a render for
the oldest Kubernetes version the chart claims (Chart.yaml kubeVersion) and the newest one the
installed kubernetes-validate bundles, with every rendered manifest validated by
`kubernetes-validate --strict` for that version (except the ServiceMonitor and the cert-manager
Certificate, whose CRDs have no bundled schema; they are checked by hand), then assertions on
what was rendered: among them that config.toml parses as TOML, holds only settings the service
knows, points every *_file setting at a file a read-only volume provides, and holds the settings
each value set implies (EXPECTED_SETTINGS lists them outright for the sets that introduce them).
Then the negative cases: values the schema must reject and values whose rendering must fail with
a given message (NEGATIVE_SCHEMA, NEGATIVE_RENDER, each a change to helm/values/defaults.yaml).
Prints one line per check and ends with `chart checks: N passed, M failed`; exits 1 when a check
failed.

Helm is helm-python-sdk (import helm_python), which embeds Helm v4 as a C library:
- helm_python.lint(path, values, strict=, namespace=, kube_version=) -> {"messages", "errors"}
- helm_python.Chart.load(path), Chart.validate_schema(values), Chart.metadata
- rendering: Chart.render(values, name=, namespace=) sends its options as JSON to the C ABI's
  helm_render and exposes no Kubernetes version (it renders with Helm's default capabilities).
  The ABI's options also take "kube_version" (what `helm template --kube-version` sets; unknown
  option keys are rejected), so render() below makes the same call with it added. Whether it
  took effect is checked: the preStop hook is an exec of /bin/sleep in the oldest render and the
  native sleep action (Kubernetes >= 1.30) in the newest.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.resources
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Callable

import yaml

import helm_python as helm
from helm_python import _native

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "c2p-enroll"
VALUES_DIR = ROOT / "helm" / "values"
RELEASE = "c2p-enroll"
NAMESPACE = "c2p"
CONFIG_DIR = "/etc/c2p-enroll"
KEYS_DIR = "/etc/c2p-enroll/keys"
TLS_DIR = "/etc/c2p-enroll/tls"
MISSING_SECRET_MESSAGE = "keys.existingSecret is required in mastercard mode"
MISSING_FINGERPRINT_MESSAGE = "enroll.fingerprintKey.existingSecret is required in mastercard mode"
KUBE_VALIDATE = Path(sys.executable).with_name("kubernetes-validate")
# Kinds of CRDs kubernetes-validate bundles no schema for: checked by hand instead.
UNVALIDATED_KINDS = {"ServiceMonitor": "monitoring.coreos.com", "Certificate": "cert-manager.io"}
RPCS = {"EnrollCard", "GetEnrollmentStatus", "WatchEnrollment", "NotificationIngest"}
LIMITS_INT = ("max_message_bytes", "max_concurrent_streams", "max_watch_streams", "max_ingest_streams")
LIMITS_DURATION = ("handshake_timeout", "keepalive_interval", "keepalive_timeout", "default_deadline")
# cert-manager.io/v1 CertificateSpec's fields.
CERTIFICATE_SPEC = {
    "secretName", "issuerRef", "duration", "renewBefore", "renewBeforePercentage", "dnsNames",
    "uris", "ipAddresses", "emailAddresses", "otherNames", "commonName", "subject",
    "literalSubject", "privateKey", "usages", "isCA", "secretTemplate", "keystores",
    "revisionHistoryLimit", "additionalOutputFormats", "nameConstraints", "encodeUsagesInRequest",
}

# The TOML settings the chart may write (dotted names, as the service reads them), besides
# auth.callers.<name>.{identity,rpcs,programs} (CALLER_SETTING).
TOML_ALLOWED = {
    "mode", "grpc.listen", "grpc.reflection", "metrics.listen", "health.listen",
    "grpc.tls.cert_file", "grpc.tls.key_file", "grpc.tls.client_ca_file", "grpc.tls.reload_interval",
    "auth.identity", "auth.mesh_header",
    "redis.url", "redis.cluster", "redis.key_prefix", "redis.username", "redis.password_file",
    "redis.ca_file", "log.format", "log.filter", "shutdown.grace_period", "enroll.lease",
    "enroll.fingerprint_key_file",
    "programs.default.src_client_id", "programs.default.service_id",
    "programs.default.enroll_encryption_certificate_file",
    "programs.default.privacy_uri", "programs.default.terms_uri",
} | {f"grpc.limits.{k}" for k in LIMITS_INT + LIMITS_DURATION}
CALLER_SETTING = re.compile(r"^auth\.callers\.[A-Za-z0-9_-]+\.(identity|rpcs|programs)$")
for _api in ("processing", "enroll"):
    TOML_ALLOWED |= {
        f"mastercard.{_api}.{k}"
        for k in (
            "base_url", "consumer_key", "signing_key_file", "signing_key_password_file",
            "signature_method", "payload_encryption.enabled",
            "payload_encryption.encryption_certificate_file",
            "payload_encryption.decryption_key_file",
            "payload_encryption.decryption_key_password_file",
        )
    }
# What every mastercard-mode config.toml rendered from the value sets must hold.
TOML_REQUIRED_MASTERCARD = {
    "mode", "grpc.listen", "metrics.listen", "health.listen", "redis.cluster", "redis.key_prefix",
    "log.format", "log.filter", "shutdown.grace_period", "enroll.lease", "enroll.fingerprint_key_file",
    "programs.default.src_client_id", "programs.default.service_id",
    "programs.default.enroll_encryption_certificate_file",
} | {
    f"mastercard.{api}.{k}"
    for api in ("processing", "enroll")
    for k in ("base_url", "consumer_key", "signing_key_file", "signing_key_password_file",
              "signature_method", "payload_encryption.enabled")
}

_APP_BACKEND = {
    "auth.callers.app_backend.identity": "spiffe://bank.example/ns/payments/sa/app-backend",
    "auth.callers.app_backend.rpcs": ["EnrollCard", "GetEnrollmentStatus", "WatchEnrollment"],
    "auth.callers.app_backend.programs": ["default"],
}
_MTLS_FROM_TLS_SECRET = {
    "grpc.tls.cert_file": f"{TLS_DIR}/tls.crt",
    "grpc.tls.key_file": f"{TLS_DIR}/tls.key",
    "grpc.tls.client_ca_file": f"{TLS_DIR}/ca.crt",
}
_FINGERPRINT = {"enroll.fingerprint_key_file": "/etc/c2p-enroll/fingerprint/fingerprint.key"}
# What config.toml must hold (None: must not hold) for the value sets that introduce settings,
# written out rather than derived from the values, so that the derived checks cannot pass by
# agreeing with a wrong template.
EXPECTED_SETTINGS: dict[str, dict[str, Any]] = {
    "defaults.yaml": {
        **_MTLS_FROM_TLS_SECRET, **_FINGERPRINT, **_APP_BACKEND,
        "grpc.tls.reload_interval": None, "health.listen": "0.0.0.0:8086", "auth.identity": None,
        "auth.mesh_header": None, "grpc.reflection": None, "grpc.limits.max_message_bytes": None,
        "redis.username": None, "redis.password_file": None, "redis.ca_file": None,
    },
    "tls-mtls-callers.yaml": {
        **_FINGERPRINT, **_APP_BACKEND,
        "grpc.tls.cert_file": f"{TLS_DIR}/tls.crt",
        "grpc.tls.key_file": f"{TLS_DIR}/tls.key",
        "grpc.tls.client_ca_file": "/etc/c2p-enroll/client-ca/ca.crt",
        "grpc.tls.reload_interval": "30s",
        "grpc.reflection": False,
        "grpc.limits.max_message_bytes": 4194304,
        "grpc.limits.max_concurrent_streams": 200,
        "grpc.limits.max_watch_streams": 5000,
        "grpc.limits.max_ingest_streams": 16,
        "grpc.limits.handshake_timeout": "5s",
        "grpc.limits.keepalive_interval": "20s",
        "grpc.limits.keepalive_timeout": "5s",
        "grpc.limits.default_deadline": "15s",
        "auth.identity": "certificate",
        "auth.callers.card_ops.identity": "card-ops.internal.bank.example",
        "auth.callers.card_ops.rpcs": ["GetEnrollmentStatus"],
        "auth.callers.card_ops.programs": None,
        "auth.callers.notifications.rpcs": ["NotificationIngest"],
        "auth.callers.batch-enroller.programs": ["*"],
    },
    "tls-cert-manager.yaml": {
        **_FINGERPRINT, **_APP_BACKEND,
        "grpc.tls.cert_file": f"{TLS_DIR}/tls.crt",
        "grpc.tls.key_file": f"{TLS_DIR}/tls.key",
        "grpc.tls.client_ca_file": "/etc/c2p-enroll/client-ca/ca.crt",
        "auth.identity": None,
    },
    "mesh-header.yaml": {
        **_FINGERPRINT,
        "grpc.tls.cert_file": None, "grpc.tls.key_file": None, "grpc.tls.client_ca_file": None,
        "auth.identity": "mesh_header",
        "auth.mesh_header": "x-forwarded-client-identity",
        "auth.callers.app_backend.identity": "spiffe://cluster.local/ns/payments/sa/app-backend",
        "auth.callers.notifications.rpcs": ["NotificationIngest"],
    },
    "redis-tls-acl.yaml": {
        **_MTLS_FROM_TLS_SECRET, **_FINGERPRINT,
        "redis.url": "rediss://redis.bank.example:6380",
        "redis.username": "c2p-enroll",
        "redis.password_file": "/etc/c2p-enroll/redis/password",
        "redis.ca_file": "/etc/c2p-enroll/redis-ca/ca.crt",
    },
}


def _without(path: str) -> Callable[[dict[str, Any]], None]:
    """A change to a value set: deletes the dotted path."""
    def change(values: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node.pop(last, None)
    return change


def _with(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change to a value set: sets the dotted path (a callers name may hold a dash, no dot)."""
    def change(values: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = copy.deepcopy(value)
    return change


# Changes to helm/values/defaults.yaml whose rendering must fail, with (part of) the message.
NEGATIVE_RENDER: list[tuple[str, list[Callable[[dict[str, Any]], None]], str]] = [
    ("mastercard mode without keys.existingSecret", [_without("keys")], MISSING_SECRET_MESSAGE),
    ("mastercard mode without a fingerprint key", [_without("enroll")], MISSING_FINGERPRINT_MESSAGE),
    ("mastercard mode without a caller identity (no TLS client CA, no mesh header)",
     [_without("tls"), _without("auth")], "mastercard mode refuses auth.identity none"),
    ("identity certificate on a plaintext port",
     [_without("tls"), _with("auth.identity", "certificate")], "auth.identity certificate needs client certificates"),
    ("identity certificate with no callers", [_without("auth")], "auth.callers is empty with auth.identity certificate"),
    ("identity mesh_header with no callers", [_without("tls"), _without("auth"), _with("auth.identity", "mesh_header")],
     "auth.callers is empty with auth.identity mesh_header"),
    ("callers with identity none (sandbox)",
     [_with("config.mode", "sandbox"), _without("tls")], "auth.callers is set but auth.identity is none"),
    ("tls.enabled without a certificate source", [_without("tls.existingSecret")], "tls.enabled needs a certificate"),
    ("tls.existingSecret and tls.certManager both",
     [_with("tls.certManager", {"enabled": True, "issuerRef": {"name": "ca"}})], "not both"),
    ("cert-manager without an issuer", [_without("tls.existingSecret"), _with("tls.certManager.enabled", True)],
     "tls.certManager.issuerRef.name is required"),
    ("tls.clientCA secret without a name", [_with("tls.clientCA.source", "secret")], "tls.clientCA.name is required"),
    ("a caller with EnrollCard and no programs", [_without("auth.callers.app_backend.programs")],
     "programs is required when rpcs has EnrollCard"),
    ("two callers with one identity",
     [_with("auth.callers.other", {"identity": "spiffe://bank.example/ns/payments/sa/app-backend",
                                   "rpcs": ["GetEnrollmentStatus"]})], "have the same identity"),
    ("a Redis URL with a password (would land in the ConfigMap)",
     [_with("config.redis.url", "redis://c2p:s3cret@redis.c2p.svc:6379")], "config.redis.url holds a password"),
    ("a Redis seed node URL with a password",
     [_with("config.redis.cluster", True), _with("config.redis.url", ["redis://:s3cret@redis-0:6379"])],
     "config.redis.url holds a password"),
    ("redis.ca with a plaintext redis:// URL",
     [_with("config.redis.url", "redis://redis.c2p.svc:6379"), _with("redis.ca", {"source": "secret", "name": "ca"})],
     "is not rediss://"),
    ("containerPorts.health equal to the gRPC port", [_with("containerPorts.health", 50051)],
     "containerPorts.health (50051) must differ"),
    ("config.health.listen off containerPorts.health", [_with("config.health.listen", "0.0.0.0:9000")],
     "config.health.listen (0.0.0.0:9000) must listen on containerPorts.health"),
    ("terminationGracePeriodSeconds <= preStop sleep + shutdown.grace_period",
     [_with("terminationGracePeriodSeconds", 15)], "terminationGracePeriodSeconds"),
]
# Changes to helm/values/defaults.yaml that values.schema.json must reject.
NEGATIVE_SCHEMA: list[tuple[str, list[Callable[[dict[str, Any]], None]]]] = [
    ("an unknown RPC in a caller's rpcs", [_with("auth.callers.app_backend.rpcs", ["DeleteCard"])]),
    ("a caller without identity", [_without("auth.callers.app_backend.identity")]),
    ("an unknown auth.identity", [_with("auth.identity", "mtls")]),
    ("an unknown key under tls", [_with("tls.cert", "tls.crt")]),
    ("a -bin auth.meshHeader", [_with("auth.meshHeader", "x-caller-bin")]),
    ("a non-integer grpc.limits.max_message_bytes", [_with("config.grpc.limits.max_message_bytes", "16k")]),
    ("an unknown redis.ca.source", [_with("redis.ca", {"source": "vault", "name": "redis-ca"})]),
    ("a caller name that is no TOML bare key", [_with("auth.callers", {"app backend": {
        "identity": "spiffe://bank.example/x", "rpcs": ["GetEnrollmentStatus"]}})]),
]


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def record(self, ok: bool, name: str, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"ok    {name}")
        else:
            self.failed += 1
            print(f"FAIL  {name}" + (f": {detail}" if detail else ""))
        return ok

    def run(self, name: str, fn: Callable[[], str | None]) -> bool:
        """Runs fn; it passes when it returns None (or ""), fails with the text it returns or
        the exception it raises."""
        try:
            problem = fn()
        except Exception as e:  # noqa: BLE001 - every failure becomes a check result
            return self.record(False, name, f"{type(e).__name__}: {e}")
        return self.record(not problem, name, problem or "")


def oldest_kube_version() -> str:
    """The lower bound of Chart.yaml's kubeVersion (">=1.25.0-0" -> "1.25.0")."""
    constraint = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    m = re.search(r">=\s*v?(\d+\.\d+\.\d+)", constraint)
    if not m:
        raise SystemExit(f"cannot read the lower bound of kubeVersion {constraint!r}")
    return m.group(1)


def newest_kube_version() -> str:
    """The newest version among kubernetes_validate/kubernetes-json-schema/v<version>-local*."""
    schemas = importlib.resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")
    versions = {
        tuple(int(p) for p in m.group(1).split("."))
        for entry in schemas.iterdir()
        if (m := re.match(r"^v(\d+\.\d+\.\d+)-local-strict$", entry.name))
    }
    return ".".join(str(p) for p in max(versions))


def render(chart: helm.Chart, values: dict[str, Any], kube_version: str) -> dict[str, str]:
    """Chart.render() with the Kubernetes version set (see the module docstring)."""
    opts = {"name": RELEASE, "namespace": NAMESPACE, "kube_version": f"v{kube_version}"}
    rendered = _native.call_string(
        "helm_render", chart._raw(), json.dumps(values), json.dumps(opts)
    )
    manifests: dict[str, str] = json.loads(rendered)
    return manifests


@contextlib.contextmanager
def quiet_stderr():
    """Silences file descriptor 2: Helm's engine logs every fail() call there itself."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def documents(manifests: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """(template path, object) for every non-empty YAML document; NOTES.txt left out."""
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, doc))
    return docs


def by_kind(docs: list[tuple[str, dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [d for _, d in docs if d.get("kind") == kind]


def one(docs: list[tuple[str, dict[str, Any]]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    if len(found) != 1:
        raise AssertionError(f"expected one {kind}, rendered {len(found)}")
    return found[0]


def kube_validate(files: list[Path], version: str) -> str | None:
    """kubernetes-validate --strict on the files; every one must pass (a missing schema fails)."""
    proc = subprocess.run(
        [str(KUBE_VALIDATE), "--strict", "--kubernetes-version", version, *map(str, files)],
        capture_output=True, text=True, check=False,
    )
    out = proc.stdout + proc.stderr
    problems = [line for line in out.splitlines() if not line.startswith("INFO")]
    passed = {line.split()[1] for line in out.splitlines() if line.startswith("INFO") and " passed " in line}
    missing = [f.name for f in files if str(f) not in passed]
    if proc.returncode != 0 or problems or missing:
        return "; ".join(problems + [f"no pass for {m}" for m in missing]) or f"exit {proc.returncode}"
    return None


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def pod_of(docs: list[tuple[str, dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Deployment's pod spec and its one container."""
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    return pod, c


def mounted_file(docs: list[tuple[str, dict[str, Any]]], path: str) -> tuple[str, str, str]:
    """Which object provides the file at path in the container: (kind, name, key), kind being
    "secret" or "configMap". Fails unless a read-only volume mounted as a directory (no subPath:
    those are never updated) provides it, and, when the volume lists items, one of them does."""
    pod, c = pod_of(docs)
    for m in c["volumeMounts"]:
        prefix = m["mountPath"].rstrip("/") + "/"
        if "subPath" in m or not path.startswith(prefix):
            continue
        rel = path[len(prefix):]
        if m.get("readOnly") is not True:
            raise AssertionError(f"{path}: volume {m['name']} is not mounted read-only")
        (vol,) = [v for v in pod["volumes"] if v["name"] == m["name"]]
        kind = "secret" if "secret" in vol else "configMap" if "configMap" in vol else None
        if kind is None:
            raise AssertionError(f"{path}: volume {m['name']} is neither a Secret nor a ConfigMap")
        source = vol[kind]
        name = source["secretName"] if kind == "secret" else source["name"]
        items = source.get("items")
        if items is None:
            return kind, name, rel
        keys = [i["key"] for i in items if i["path"] == rel]
        if not keys:
            raise AssertionError(f"{path}: volume {m['name']} has no item with path {rel!r}")
        return kind, name, keys[0]
    raise AssertionError(f"{path}: no volume mounted as a directory provides it")


def tls_secret_name(merged: dict[str, Any]) -> str:
    cm = merged["tls"]["certManager"]
    return (cm.get("secretName") or f"{RELEASE}-tls") if cm.get("enabled") else merged["tls"]["existingSecret"]


def expected_identity(merged: dict[str, Any]) -> str:
    tls = merged["tls"]
    return merged["auth"].get("identity") or (
        "certificate" if tls["enabled"] and tls["clientCA"]["source"] else "none")


def check_deployment(docs: list[tuple[str, dict[str, Any]]], values: dict[str, Any], merged: dict[str, Any]) -> str | None:
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sc, psc = c["securityContext"], pod["securityContext"]
    health = merged["containerPorts"]["health"]
    problems = []
    expect = {
        "container readOnlyRootFilesystem true": sc.get("readOnlyRootFilesystem") is True,
        "container runAsNonRoot true": sc.get("runAsNonRoot") is True,
        "pod runAsNonRoot true": psc.get("runAsNonRoot") is True,
        "runAsUser/runAsGroup 65532": sc.get("runAsUser") == 65532 and sc.get("runAsGroup") == 65532
        and psc.get("runAsUser") == 65532 and psc.get("runAsGroup") == 65532,
        "allowPrivilegeEscalation false": sc.get("allowPrivilegeEscalation") is False,
        "capabilities drop ALL": sc.get("capabilities", {}).get("drop") == ["ALL"],
        "seccomp RuntimeDefault (pod and container)": psc.get("seccompProfile") == {"type": "RuntimeDefault"}
        and sc.get("seccompProfile") == {"type": "RuntimeDefault"},
        f"liveness grpc on the health port {health}, service liveness (not store-bound)":
        c.get("livenessProbe", {}).get("grpc") == {"port": health, "service": "liveness"},
        f"readiness grpc on the health port {health}, service EnrollmentService": c.get("readinessProbe", {}).get("grpc")
        == {"port": health, "service": "c2p.enrollment.v1.EnrollmentService"},
        f"startup grpc probe on the health port {health}": c.get("startupProbe", {}).get("grpc", {}).get("port") == health,
        "command c2p-enroll serve --config /etc/c2p-enroll/config.toml": c.get("command", []) + c.get("args", [])
        == ["/usr/local/bin/c2p-enroll", "serve", "--config", "/etc/c2p-enroll/config.toml"],
        f"ports grpc 50051, metrics 9464, health {health}": {p["name"]: p["containerPort"] for p in c["ports"]}
        == {"grpc": 50051, "metrics": 9464, "health": health},
        "no subPath mount but config.toml (a subPath mount never follows its Secret)": [
            m["mountPath"] for m in c["volumeMounts"] if "subPath" in m] == ["/etc/c2p-enroll/config.toml"],
        "emptyDir at /tmp": any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])
        and any(v["name"] == "tmp" and "emptyDir" in v for v in pod["volumes"]),
        "checksum/config annotation": bool(re.fullmatch(r"[0-9a-f]{64}", dep["spec"]["template"]["metadata"]
                                                        .get("annotations", {}).get("checksum/config", ""))),
        "terminationGracePeriodSeconds 30": pod.get("terminationGracePeriodSeconds") == 30,
        "resources 250m/128Mi requests, 1/256Mi limits": c.get("resources") == {
            "requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
        "topology spread over hostname and zone, ScheduleAnyway": sorted(
            (t["topologyKey"], t["whenUnsatisfiable"]) for t in pod.get("topologySpreadConstraints", []))
        == [("kubernetes.io/hostname", "ScheduleAnyway"), ("topology.kubernetes.io/zone", "ScheduleAnyway")]
        and all(t["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
                for t in pod["topologySpreadConstraints"]),
        "keys Secret mounted read-only at /etc/c2p-enroll/keys": any(
            m["mountPath"] == KEYS_DIR and m.get("readOnly") is True for m in c["volumeMounts"])
        and any(v.get("secret", {}).get("secretName") == merged["keys"]["existingSecret"] for v in pod["volumes"]),
    }
    autoscaling = merged["autoscaling"]["enabled"]
    expect["replicas only without autoscaling"] = (
        ("replicas" not in dep["spec"]) if autoscaling else dep["spec"].get("replicas") == merged["replicaCount"]
    )
    expect["HPA exactly when autoscaling"] = len(by_kind(docs, "HorizontalPodAutoscaler")) == (1 if autoscaling else 0)
    problems = [name for name, ok in expect.items() if not ok]
    return ", ".join(f"not: {p}" for p in problems) or None


def check_config(docs: list[tuple[str, dict[str, Any]]], merged: dict[str, Any]) -> str | None:
    cm = one(docs, "ConfigMap")
    settings = flatten(tomllib.loads(cm["data"]["config.toml"]))
    problems = []
    unknown = sorted(k for k in set(settings) - TOML_ALLOWED if not CALLER_SETTING.match(k))
    if unknown:
        problems.append(f"unexpected settings {unknown}")
    if merged["config"]["mode"] == "mastercard":
        missing = sorted(TOML_REQUIRED_MASTERCARD - set(settings))
        if missing:
            problems.append(f"missing settings {missing}")
    empty = sorted(k for k, v in settings.items() if v == "")
    if empty:
        problems.append(f"empty settings written {empty}")
    for key, value in settings.items():
        if not key.endswith("_file"):
            continue
        if (key.startswith(("mastercard.", "programs.")) and not str(value).startswith(KEYS_DIR + "/")) \
                or not str(value).startswith(CONFIG_DIR + "/"):
            problems.append(f"{key} = {value!r} is not under {KEYS_DIR if key.startswith(('mastercard.', 'programs.')) else CONFIG_DIR}")
        try:
            mounted_file(docs, str(value))
        except AssertionError as e:
            problems.append(f"{key}: {e}")
    files = merged["keys"]["files"]
    for key, name in [
        ("mastercard.processing.signing_key_file", files["processingSigningKey"]),
        ("mastercard.processing.signing_key_password_file", files["processingSigningKeyPassword"]),
        ("mastercard.enroll.signing_key_file", files["enrollSigningKey"]),
        ("mastercard.enroll.signing_key_password_file", files["enrollSigningKeyPassword"]),
        ("programs.default.enroll_encryption_certificate_file", files["enrollEncryptionCertificate"]),
    ]:
        if key in settings and settings[key] != f"{KEYS_DIR}/{name}":
            problems.append(f"{key} = {settings[key]!r}")
        elif key in settings and mounted_file(docs, settings[key]) != ("secret", merged["keys"]["existingSecret"], name):
            problems.append(f"{key} is not {name} of Secret {merged['keys']['existingSecret']}")
    url = merged["config"]["redis"]["url"]
    want_url = ",".join(url) if isinstance(url, list) else url
    if settings.get("redis.url", "") != want_url:
        problems.append(f"redis.url = {settings.get('redis.url')!r}, want {want_url!r}")
    return "; ".join(problems) or None


def settings_of(docs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    return flatten(tomllib.loads(one(docs, "ConfigMap")["data"]["config.toml"]))


def expect_setting(problems: list[str], settings: dict[str, Any], key: str, want: Any) -> None:
    """want None: the setting must be absent (the service's default applies)."""
    got = settings.get(key)
    if want is None and key in settings:
        problems.append(f"{key} = {got!r} written, want it left out")
    elif want is not None and (got != want or type(got) is not type(want)):
        problems.append(f"{key} = {got!r}, want {want!r}")


def check_tls(docs: list[tuple[str, dict[str, Any]]], merged: dict[str, Any]) -> str | None:
    """grpc.tls.* against tls.*, the files they name against the mounted Secret/ConfigMap, and
    the cert-manager Certificate."""
    settings, problems = settings_of(docs), []
    tls = merged["tls"]
    ca = tls["clientCA"]
    certs = by_kind(docs, "Certificate")
    if not tls["enabled"]:
        for key in ("cert_file", "key_file", "client_ca_file", "reload_interval"):
            expect_setting(problems, settings, f"grpc.tls.{key}", None)
        if certs:
            problems.append("a Certificate rendered without TLS")
        return "; ".join(problems) or None
    secret = tls_secret_name(merged)
    expect_setting(problems, settings, "grpc.tls.cert_file", f"{TLS_DIR}/tls.crt")
    expect_setting(problems, settings, "grpc.tls.key_file", f"{TLS_DIR}/tls.key")
    expect_setting(problems, settings, "grpc.tls.reload_interval", tls.get("reloadInterval") or None)
    for key, file in (("cert_file", "tls.crt"), ("key_file", "tls.key")):
        if f"grpc.tls.{key}" in settings:
            got = mounted_file(docs, settings[f"grpc.tls.{key}"])
            if got != ("secret", secret, file):
                problems.append(f"grpc.tls.{key} comes from {got}, want {file} of Secret {secret}")
    want_ca = {
        "": None,
        "tlsSecret": ("secret", secret, "ca.crt"),
        "secret": ("secret", ca.get("name"), ca.get("key")),
        "configMap": ("configMap", ca.get("name"), ca.get("key")),
    }[ca["source"]]
    if want_ca is None:
        expect_setting(problems, settings, "grpc.tls.client_ca_file", None)
    elif "grpc.tls.client_ca_file" not in settings:
        problems.append("no grpc.tls.client_ca_file")
    elif (got := mounted_file(docs, settings["grpc.tls.client_ca_file"])) != want_ca:
        problems.append(f"grpc.tls.client_ca_file comes from {got}, want {want_ca}")
    cm = tls["certManager"]
    if not cm.get("enabled"):
        if certs:
            problems.append(f"{len(certs)} Certificate(s) rendered without tls.certManager.enabled")
        return "; ".join(problems) or None
    if len(certs) != 1:
        return f"{len(certs)} Certificate(s) rendered"
    cert = certs[0]
    spec = cert["spec"]
    fullname = one(docs, "Service")["metadata"]["name"]
    want_dns = cm.get("dnsNames") or [fullname, f"{fullname}.{NAMESPACE}", f"{fullname}.{NAMESPACE}.svc",
                                      f"{fullname}.{NAMESPACE}.svc.{cm.get('clusterDomain') or 'cluster.local'}"]
    expect = {
        "apiVersion cert-manager.io/v1": cert["apiVersion"] == "cert-manager.io/v1",
        "namespace is the release's": cert["metadata"].get("namespace") == NAMESPACE,
        "only CertificateSpec fields": set(spec) <= CERTIFICATE_SPEC,
        f"secretName {secret} (the mounted Secret)": spec.get("secretName") == secret,
        "issuerRef from tls.certManager.issuerRef": spec.get("issuerRef") == {
            "name": cm["issuerRef"]["name"], "kind": cm["issuerRef"].get("kind") or "Issuer",
            "group": cm["issuerRef"].get("group") or "cert-manager.io"},
        "duration and renewBefore": (spec.get("duration"), spec.get("renewBefore"))
        == (cm.get("duration") or None, cm.get("renewBefore") or None),
        f"dnsNames {want_dns}": spec.get("dnsNames") == want_dns,
        "uris from tls.certManager.uris": spec.get("uris") == (cm.get("uris") or None),
        "privateKey and usages": spec.get("privateKey") == (cm.get("privateKey") or None)
        and spec.get("usages") == (cm.get("usages") or None),
        "the Service's names among dnsNames": cm.get("dnsNames") or f"{fullname}.{NAMESPACE}.svc" in spec["dnsNames"],
    }
    problems += [f"Certificate not: {name}" for name, ok in expect.items() if not ok]
    return "; ".join(problems) or None


def check_auth(docs: list[tuple[str, dict[str, Any]]], merged: dict[str, Any]) -> str | None:
    """auth.* against the values, and the service's own refusals (mastercard mode: no anonymous
    callers, no plaintext port but behind a mesh) against what was rendered."""
    settings, problems = settings_of(docs), []
    auth = merged["auth"]
    expect_setting(problems, settings, "auth.identity", auth.get("identity") or None)
    expect_setting(problems, settings, "auth.mesh_header", auth.get("meshHeader") or None)
    callers = tomllib.loads(one(docs, "ConfigMap")["data"]["config.toml"]).get("auth", {}).get("callers", {})
    want = {name: {k: v for k, v in c.items() if v} for name, c in (auth.get("callers") or {}).items()}
    if callers != want:
        problems.append(f"auth.callers = {callers}, want {want}")
    for name, c in callers.items():
        if not set(c.get("rpcs", [])) <= RPCS or not c.get("rpcs"):
            problems.append(f"auth.callers.{name}.rpcs = {c.get('rpcs')}")
        if "EnrollCard" in c.get("rpcs", []) and not c.get("programs"):
            problems.append(f"auth.callers.{name} may call EnrollCard with no programs")
    identity = settings.get("auth.identity") or ("certificate" if "grpc.tls.client_ca_file" in settings else "none")
    if identity != expected_identity(merged):
        problems.append(f"the service would identify callers by {identity}, want {expected_identity(merged)}")
    loopback = re.match(r"^(127\.[0-9.]+|\[::1\]):[0-9]+$", settings["grpc.listen"])
    if identity != "none" and not callers:
        problems.append(f"identity {identity} with no auth.callers (the service refuses it)")
    if settings["mode"] == "mastercard" and not loopback:
        if identity == "none":
            problems.append("mastercard mode with auth.identity none (the service refuses it)")
        if "grpc.tls.cert_file" not in settings and identity != "mesh_header":
            problems.append("mastercard mode on a plaintext port without mesh_header (the service refuses it)")
    if identity == "certificate" and "grpc.tls.client_ca_file" not in settings:
        problems.append("identity certificate without grpc.tls.client_ca_file")
    return "; ".join(problems) or None


def check_secret_files(docs: list[tuple[str, dict[str, Any]]], merged: dict[str, Any]) -> str | None:
    """enroll.fingerprint_key_file and redis.{username,password_file,ca_file} against the values
    and the volumes; no password in redis.url."""
    settings, problems = settings_of(docs), []
    fp = merged["enroll"]["fingerprintKey"]
    redis = merged["redis"]
    if settings["mode"] == "mastercard" and "enroll.fingerprint_key_file" not in settings:
        problems.append("mastercard mode without enroll.fingerprint_key_file")
    wants = [
        ("enroll.fingerprint_key_file", "/etc/c2p-enroll/fingerprint/fingerprint.key",
         ("secret", fp["existingSecret"], fp["key"]) if fp["existingSecret"] else None),
        ("redis.password_file", "/etc/c2p-enroll/redis/password",
         ("secret", redis["passwordSecret"]["name"], redis["passwordSecret"]["key"]) if redis["passwordSecret"]["name"] else None),
        ("redis.ca_file", "/etc/c2p-enroll/redis-ca/ca.crt",
         (redis["ca"]["source"], redis["ca"]["name"], redis["ca"]["key"]) if redis["ca"]["source"] else None),
    ]
    for key, path, source in wants:
        expect_setting(problems, settings, key, path if source else None)
        if source and key in settings and (got := mounted_file(docs, settings[key])) != source:
            problems.append(f"{key} comes from {got}, want {source}")
    expect_setting(problems, settings, "redis.username", redis.get("username") or None)
    urls = settings.get("redis.url", "")
    if re.search(r"://[^/@,]*:[^/@,]*@", urls):
        problems.append("redis.url holds a password")
    if "redis.ca_file" in settings and urls and not all(u.startswith("rediss://") for u in urls.split(",")):
        problems.append("redis.ca_file with a redis:// URL")
    return "; ".join(problems) or None


def check_grpc_settings(docs: list[tuple[str, dict[str, Any]]], merged: dict[str, Any]) -> str | None:
    """health.listen on containerPorts.health; grpc.reflection and grpc.limits.* passed through
    when set (integers as TOML integers), left out otherwise."""
    settings, problems = settings_of(docs), []
    port = merged["containerPorts"]["health"]
    listen = (merged["config"].get("health") or {}).get("listen") or f"0.0.0.0:{port}"
    expect_setting(problems, settings, "health.listen", listen)
    if not str(settings.get("health.listen", "")).endswith(f":{port}"):
        problems.append(f"health.listen is not on containerPorts.health {port}")
    grpc = merged["config"]["grpc"]
    expect_setting(problems, settings, "grpc.reflection", grpc.get("reflection"))
    limits = grpc.get("limits") or {}
    for key in LIMITS_INT:
        v = limits.get(key)
        expect_setting(problems, settings, f"grpc.limits.{key}", None if v is None else int(v))
    for key in LIMITS_DURATION:
        expect_setting(problems, settings, f"grpc.limits.{key}", limits.get(key) or None)
    return "; ".join(problems) or None


def check_expected_settings(docs: list[tuple[str, dict[str, Any]]], label: str) -> str | None:
    settings, problems = settings_of(docs), []
    for key, want in EXPECTED_SETTINGS[label].items():
        expect_setting(problems, settings, key, want)
    return "; ".join(problems) or None


SECRET_PATTERNS = [
    (re.compile(r"-----BEGIN"), "a PEM block"),
    (re.compile(r"(?im)^\s*\"?[\w.-]*password\"?\s*[:=]\s*\S"), "a password value"),
    (re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s@\"']*:[^/\s@\"']+@"), "credentials in a URL"),
    (re.compile(r"MII[A-Za-z0-9+/]{60,}"), "base64 DER (a key or certificate)"),
]


def check_no_key_material(manifests: dict[str, str], docs: list[tuple[str, dict[str, Any]]]) -> str | None:
    problems = [f"{len(by_kind(docs, 'Secret'))} Secret(s) rendered"] if by_kind(docs, "Secret") else []
    for _, doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec") or (doc.get("spec") if doc.get("kind") == "Pod" else None)
        for c in (pod or {}).get("containers", []):
            for env in c.get("env", []):
                if re.search(r"PASSWORD|SECRET|TOKEN|PRIVATE|CREDENTIAL", env["name"], re.I) and "value" in env:
                    problems.append(f"{doc['kind']} env {env['name']} has a literal value (use valueFrom)")
    for path, text in manifests.items():
        for pattern, what in SECRET_PATTERNS:
            m = pattern.search(text)
            if m:
                problems.append(f"{path} holds {what}: {m.group(0)[:40]!r}")
    return "; ".join(problems) or None


def check_network_policy(docs: list[tuple[str, dict[str, Any]]], merged: dict[str, Any]) -> str | None:
    np = one(docs, "NetworkPolicy")["spec"]
    problems = []
    ingress = {tuple(p["port"] for p in rule["ports"]): rule for rule in np["ingress"]}
    grpc_from = ingress.get(("grpc",), {}).get("from", [])
    if grpc_from != [{"podSelector": {"matchLabels": {"c2p-enroll-client": "true"}}}]:
        problems.append(f"gRPC ingress from {grpc_from}")
    metrics_from = ingress.get(("metrics",), {}).get("from", [])
    if not metrics_from or "namespaceSelector" not in metrics_from[0]:
        problems.append(f"metrics ingress from {metrics_from}")
    # The plaintext health port: the helm test pod (by its labels) and nodeCidrs only; the
    # kubelet on the pod's node needs no rule.
    test_labels = {"app.kubernetes.io/name": f"{RELEASE}-test", "app.kubernetes.io/instance": RELEASE,
                   "app.kubernetes.io/component": "test"}
    want_health: list[dict[str, Any]] = []
    if merged["tests"]["enabled"] and merged["service"]["healthPort"]:
        want_health.append({"podSelector": {"matchLabels": test_labels}})
    want_health += [{"ipBlock": {"cidr": c}} for c in merged["networkPolicy"]["ingress"]["health"]["nodeCidrs"]]
    health_rules = [r for r in np["ingress"] if any(p["port"] in ("health", merged["containerPorts"]["health"]) for p in r.get("ports", []))]
    health_from = [peer for r in health_rules for peer in r.get("from", [{}])]
    if health_from != want_health or any(len(r["ports"]) != 1 for r in health_rules):
        problems.append(f"health ingress from {health_from}, want {want_health}")
    if any("ports" not in r or "from" not in r for r in np["ingress"]):
        problems.append("an ingress rule open to every port or every source")
    egress_ports = [sorted((p["port"], p["protocol"]) for p in rule.get("ports", [])) for rule in np["egress"]]
    redis_np = merged["networkPolicy"]["egress"]["redis"]
    want_redis = [(redis_np["port"], "TCP")] + ([(redis_np["clusterBusPort"], "TCP")] if merged["config"]["redis"]["cluster"] else [])
    if sorted(want_redis) not in egress_ports:
        problems.append(f"no Redis egress on {want_redis}")
    if sorted([(53, "TCP"), (53, "UDP")]) not in egress_ports:
        problems.append("no DNS egress on UDP+TCP 53")
    mastercard = [r for r in np["egress"] if r.get("ports") == [{"port": 443, "protocol": "TCP"}]]
    if not mastercard or [p["ipBlock"]["cidr"] for p in mastercard[0]["to"]] != merged["networkPolicy"]["egress"]["mastercard"]["cidrs"]:
        problems.append("no Mastercard egress on 443 to networkPolicy.egress.mastercard.cidrs")
    return "; ".join(problems) or None


def check_other_objects(docs: list[tuple[str, dict[str, Any]]], merged: dict[str, Any]) -> str | None:
    problems = []
    svc = one(docs, "Service")["spec"]
    ports = {p["name"]: (p["port"], p.get("appProtocol")) for p in svc["ports"]}
    health_port = merged["service"]["healthPort"]
    if svc["type"] != "ClusterIP" or ports.get("grpc") != (50051, "grpc") or ports.get("metrics", (None,))[0] != 9464 \
            or ports.get("health") != ((health_port, "grpc") if health_port else None):
        problems.append(f"Service {svc['type']} {ports}")
    pdb = one(docs, "PodDisruptionBudget")
    if pdb["apiVersion"] != "policy/v1" or pdb["spec"].get("minAvailable") != 1:
        problems.append("PodDisruptionBudget is not policy/v1 minAvailable 1")
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        metric = hpa["spec"]["metrics"][0]["resource"]
        if (hpa["apiVersion"], hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"],
                metric["name"], metric["target"]["averageUtilization"]) != ("autoscaling/v2", 2, 6, "cpu", 70):
            problems.append("HPA is not autoscaling/v2, 2..6, CPU 70%")
    test = one(docs, "Pod")
    (tc,) = test["spec"]["containers"]
    if test["metadata"]["annotations"].get("helm.sh/hook") != "test":
        problems.append("test pod has no helm.sh/hook: test")
    if tc["image"] != "ghcr.io/grpc-ecosystem/grpc-health-probe:v0.4.28" or f"-addr={RELEASE}:{health_port}" not in tc["args"]:
        problems.append(f"test pod runs {tc['image']} {tc['args']}, want the health port {health_port}")
    grpc_clients = merged["networkPolicy"]["ingress"]["grpc"]["podSelector"].get("matchLabels", {})
    if grpc_clients and all(test["metadata"]["labels"].get(k) == v for k, v in grpc_clients.items()):
        problems.append("test pod carries the gRPC client labels (it needs only the health port)")
    tsc = tc["securityContext"]
    if not (tsc.get("readOnlyRootFilesystem") and tsc.get("runAsNonRoot") and tsc.get("capabilities", {}).get("drop") == ["ALL"]
            and tsc.get("allowPrivilegeEscalation") is False and tsc.get("seccompProfile") == {"type": "RuntimeDefault"}):
        problems.append("test pod is not restricted")
    selector = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    if all(test["metadata"]["labels"].get(k) == v for k, v in selector.items()):
        problems.append("test pod carries the selector labels")
    sa = by_kind(docs, "ServiceAccount")
    if merged["serviceAccount"]["create"] and len(sa) != 1:
        problems.append("no ServiceAccount")
    return "; ".join(problems) or None


def check_service_monitor(docs: list[tuple[str, dict[str, Any]]], merged: dict[str, Any]) -> str | None:
    found = by_kind(docs, "ServiceMonitor")
    if not merged["serviceMonitor"]["enabled"]:
        return f"{len(found)} ServiceMonitor(s) rendered while disabled" if found else None
    if len(found) != 1:
        return f"{len(found)} ServiceMonitor(s) rendered"
    sm = found[0]
    if sm["apiVersion"] != "monitoring.coreos.com/v1":
        return f"apiVersion {sm['apiVersion']}"
    endpoints = sm["spec"]["endpoints"]
    if [(e["port"], e["path"]) for e in endpoints] != [("metrics", "/metrics")]:
        return f"endpoints {endpoints}"
    if sm["spec"]["selector"]["matchLabels"] != one(docs, "Deployment")["spec"]["selector"]["matchLabels"]:
        return "selector is not the selector labels"
    return None


def main() -> int:
    checks = Checks()
    oldest, newest = oldest_kube_version(), newest_kube_version()
    print(f"helm-python-sdk {helm.__version__} (Helm {helm.helm_sdk_version()}), "
          f"Kubernetes versions checked: {oldest} (oldest in Chart.yaml kubeVersion) and "
          f"{newest} (newest bundled by kubernetes-validate)")
    chart = helm.Chart.load(CHART)
    value_files = sorted(VALUES_DIR.glob("*.yaml"))
    if not value_files:
        checks.record(False, f"value sets in {VALUES_DIR.relative_to(ROOT)}", "none found")

    with tempfile.TemporaryDirectory(prefix="check-chart-") as tmp:
        for value_file in value_files:
            label = value_file.name
            values = yaml.safe_load(value_file.read_text()) or {}
            merged = chart.merge_values(values)
            checks.run(f"{label}: values match values.schema.json", lambda: chart.validate_schema(values))
            for version in (oldest, newest):
                def lint() -> str | None:
                    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{version}")
                    bad = report["errors"] + [m["error"] for m in report["messages"] if m["severity"] >= 2]
                    return "; ".join(bad) or None
                checks.run(f"{label}: helm lint --strict (Kubernetes {version})", lint)

                rendered: dict[str, Any] = {}

                def do_render() -> str | None:
                    rendered["manifests"] = render(chart, values, version)
                    rendered["docs"] = documents(rendered["manifests"])
                    return None if rendered["docs"] else "nothing rendered"
                if not checks.run(f"{label}: renders (Kubernetes {version})", do_render):
                    continue
                manifests, docs = rendered["manifests"], rendered["docs"]

                out = Path(tmp) / label.removesuffix(".yaml") / version
                out.mkdir(parents=True)
                files = []
                skipped = []
                for n, (path, doc) in enumerate(docs):
                    if doc.get("kind") in UNVALIDATED_KINDS:
                        skipped.append(doc)
                        continue
                    f = out / f"{n:02d}-{doc['kind'].lower()}.yaml"
                    f.write_text(yaml.safe_dump(doc, sort_keys=False))
                    files.append(f)
                kinds = ", ".join(sorted({d["kind"] for _, d in docs if d["kind"] not in UNVALIDATED_KINDS}))
                checks.run(f"{label}: kubernetes-validate --strict {version}: {len(files)} manifests ({kinds})",
                           lambda: kube_validate(files, version))
                for doc in skipped:
                    print(f"skip  {label}: {doc['kind']} {doc['metadata']['name']} not schema-validated for {version} "
                          f"(kubernetes-validate bundles no schema for the {UNVALIDATED_KINDS[doc['kind']]} CRD; "
                          "checked by hand)")

                pre_stop = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0].get("lifecycle", {}).get("preStop", {})
                native = tuple(map(int, version.split(".")[:2])) >= (1, 30)
                want = "sleep" if native else "exec"
                checks.record(want in pre_stop,
                              f"{label}: preStop {'sleep action' if native else 'exec /bin/sleep'} for Kubernetes {version}",
                              f"preStop is {pre_stop}")
                if version != newest:
                    continue
                checks.run(f"{label}: Deployment restricted (readOnlyRootFilesystem, runAsNonRoot, drop ALL, "
                           "seccomp RuntimeDefault) with gRPC probes", lambda: check_deployment(docs, values, merged))
                checks.run(f"{label}: config.toml parses as TOML, has only the service's settings, every *_file "
                           "on a read-only directory mount", lambda: check_config(docs, merged))
                checks.run(f"{label}: gRPC TLS ({'on' if merged['tls']['enabled'] else 'off'}): grpc.tls.* from "
                           "the mounted TLS Secret and client CA, cert-manager Certificate",
                           lambda: check_tls(docs, merged))
                checks.run(f"{label}: auth identity {expected_identity(merged)} and auth.callers from the values; "
                           "mastercard refusals honoured", lambda: check_auth(docs, merged))
                checks.run(f"{label}: fingerprint key and Redis username, password and CA as mounted files",
                           lambda: check_secret_files(docs, merged))
                checks.run(f"{label}: health.listen on containerPorts.health; grpc.reflection and grpc.limits "
                           "passed through", lambda: check_grpc_settings(docs, merged))
                if label in EXPECTED_SETTINGS:
                    checks.run(f"{label}: config.toml holds the {len(EXPECTED_SETTINGS[label])} settings listed "
                               "in EXPECTED_SETTINGS", lambda: check_expected_settings(docs, label))
                checks.run(f"{label}: no key material (PEM, password value, URL credentials, Secret)",
                           lambda: check_no_key_material(manifests, docs))
                checks.run(f"{label}: NetworkPolicy (gRPC from clients, metrics from monitoring, health from "
                           "the test pod only, Redis, DNS, Mastercard)",
                           lambda: check_network_policy(docs, merged))
                checks.run(f"{label}: Service, PDB, HPA, ServiceAccount, helm test pod",
                           lambda: check_other_objects(docs, merged))
                checks.run(f"{label}: ServiceMonitor monitoring.coreos.com/v1 on metrics /metrics "
                           f"({'enabled' if merged['serviceMonitor']['enabled'] else 'disabled'})",
                           lambda: check_service_monitor(docs, merged))

        base = yaml.safe_load((VALUES_DIR / "defaults.yaml").read_text())

        def changed(changes: list[Callable[[dict[str, Any]], None]]) -> dict[str, Any]:
            values = copy.deepcopy(base)
            for change in changes:
                change(values)
            return values

        def render_fails(values: dict[str, Any], message: str) -> str | None:
            try:
                with quiet_stderr():
                    render(chart, values, newest)
            except helm.HelmError as e:
                return None if message in str(e) else f"failed otherwise: {e}"
            return "rendered"

        def schema_rejects(values: dict[str, Any]) -> str | None:
            try:
                chart.validate_schema(values)
            except Exception:  # noqa: BLE001 - any rejection will do
                return None
            return "accepted"

        for name, changes, message in NEGATIVE_RENDER:
            checks.run(f"expected failure: {name}: {message!r}",
                       lambda changes=changes, message=message: render_fails(changed(changes), message))
        for name, changes in NEGATIVE_SCHEMA:
            checks.run(f"expected schema rejection: {name}",
                       lambda changes=changes: schema_rejects(changed(changes)))

        def sandbox_without_secret() -> str | None:
            docs = documents(render(chart, {"config": {"mode": "sandbox"}}, newest))
            pod = one(docs, "Deployment")["spec"]["template"]["spec"]
            settings = flatten(tomllib.loads(one(docs, "ConfigMap")["data"]["config.toml"]))
            if any("secret" in v for v in pod["volumes"]):
                return "a Secret volume is mounted"
            files = [k for k in settings if k.endswith("_file")]
            return f"key file settings {files}" if files else None
        checks.run("sandbox mode renders with no keys Secret and no key file settings", sandbox_without_secret)

        def sandbox_tls_only() -> str | None:
            values = {"config": {"mode": "sandbox"}, "tls": {"enabled": True, "certManager": {
                "enabled": True, "issuerRef": {"name": "selfsigned", "kind": "ClusterIssuer"}}}}
            docs = documents(render(chart, values, newest))
            merged = chart.merge_values(values)
            settings = settings_of(docs)
            problems = [p for p in (check_tls(docs, merged), check_auth(docs, merged)) if p]
            if "grpc.tls.client_ca_file" in settings or "auth.identity" in settings:
                problems.append("client CA or identity written")
            return "; ".join(problems) or None
        checks.run("sandbox mode with cert-manager TLS and no client CA renders (TLS only, identity none)",
                   sandbox_tls_only)

        def mastercard_loopback() -> str | None:
            values = changed([_without("tls"), _without("auth"), _with("config.grpc.listen", "127.0.0.1:50051")])
            docs = documents(render(chart, values, newest))
            return check_auth(docs, chart.merge_values(values))
        checks.run("mastercard mode on a loopback gRPC listener renders without a caller identity (as the service "
                   "allows)", mastercard_loopback)

    print(f"chart checks: {checks.passed} passed, {checks.failed} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
