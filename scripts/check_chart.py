"""Checks of the Helm chart helm/c2p-enroll; run by scripts/check-chart inside its venv.

For every value set in helm/values/: the values schema, `helm lint --strict` and a render for
the oldest Kubernetes version the chart claims (Chart.yaml kubeVersion) and the newest one the
installed kubernetes-validate bundles, with every rendered manifest validated by
`kubernetes-validate --strict` for that version (except the ServiceMonitor, the PrometheusRule and
the cert-manager Certificate, whose CRDs have no bundled schema; they are checked by hand, the
PrometheusRule's rules also by `promtool check rules`), then assertions on
what was rendered: among them that config.toml parses as TOML, holds only settings the service
knows, points every *_file setting at a file a read-only volume provides, and holds the settings
each value set implies (EXPECTED_SETTINGS lists them outright for the sets that introduce them).
Then the negative cases: values the schema must reject and values whose rendering must fail with
a given message (NEGATIVE_SCHEMA, NEGATIVE_RENDER, each a change to helm/values/defaults.yaml),
and further single-purpose renders (POSITIVE_RENDER and the functions after them: selectors that
replace the defaults, durations with units, the PDB's bounds, the ServiceMonitor's and the
PrometheusRule's capability checks, the except ranges). Prints one line per check and ends with
`chart checks: N passed, M failed`; exits 1 when a check failed.

Helm is helm-python-sdk (import helm_python), which embeds Helm v4 as a C library:
- helm_python.lint(path, values, strict=, namespace=, kube_version=) -> {"messages", "errors"}
- helm_python.Chart.load(path), Chart.validate_schema(values), Chart.metadata
- rendering: Chart.render(values, name=, namespace=) sends its options as JSON to the C ABI's
  helm_render and exposes no Kubernetes version (it renders with Helm's default capabilities).
  The ABI's options also take "kube_version" (what `helm template --kube-version` sets; unknown
  option keys are rejected), so render() below makes the same call with it added. Whether it
  took effect is checked: the preStop hook is an exec of /bin/sleep in the oldest render and the
  native sleep action (Kubernetes >= 1.30) in the newest, and the PDB has
  unhealthyPodEvictionPolicy only from 1.27 on. The options also take "api_versions" (`helm
  template --api-versions`): API_VERSIONS gives them per value set (the ServiceMonitor's CRD).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.resources
import ipaddress
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
# Run as a module of the venv's Python, not through its console script, whose shebang names the
# venv's absolute path: a moved target/ (another clone reusing it) keeps working.
KUBE_VALIDATE = [sys.executable, "-m", "kubernetes_validate"]
# Kinds of CRDs kubernetes-validate bundles no schema for: checked by hand instead.
UNVALIDATED_KINDS = {"ServiceMonitor": "monitoring.coreos.com", "PrometheusRule": "monitoring.coreos.com",
                     "Certificate": "cert-manager.io"}
# The chart's monitoring files, rendered from the files themselves (one source).
RULES_FILE = CHART / "files" / "prometheus" / "rules.yaml"
DASHBOARD_FILE = CHART / "files" / "grafana" / "c2p-enroll.json"
# monitoring.coreos.com/v1 PrometheusRule: the fields of a rule group and of a rule.
RULE_GROUP_FIELDS = {"name", "interval", "rules", "limit", "partial_response_strategy"}
RULE_FIELDS = {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
# A Prometheus duration (the CRD's `for`, `interval`): units from years to milliseconds, in order.
PROM_DURATION = re.compile(r"^(0|([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?)$")
RPCS = {"EnrollCard", "GetEnrollmentStatus", "WatchEnrollment", "NotificationIngest", "RemoveCard",
        "GetClickToPayProfile", "UpdateConsumer", "UpdateBillingAddress", "OptOut", "WithdrawOptOut"}
LIMITS_INT = ("max_message_bytes", "max_connections", "max_concurrent_streams", "max_watch_streams", "max_ingest_streams")
LIMITS_DURATION = ("handshake_timeout", "keepalive_interval", "keepalive_timeout", "default_deadline",
                   "watch_heartbeat_interval",
                   "max_connection_age", "max_connection_age_grace")
# `helm template --api-versions` per value set (the cluster's APIs at install time).
API_VERSIONS: dict[str, list[str]] = {
    "servicemonitor-on.yaml": ["monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor"],
    "monitoring.yaml": ["monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor",
                        "monitoring.coreos.com/v1/PrometheusRule"],
}
# The chart's defaults for the NetworkPolicy selectors left null in values.yaml.
DEFAULT_GRPC_CLIENTS = {"matchLabels": {"c2p-enroll-client": "true"}}
DEFAULT_METRICS_NAMESPACES = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
DEFAULT_DNS_NAMESPACES = {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}
DEFAULT_DNS_PODS = {"matchLabels": {"k8s-app": "kube-dns"}}
DEFAULT_REDIS_PODS = {"matchLabels": {"app.kubernetes.io/name": "redis"}}
# Names of the environment variables that are settings (C2P_MODE, C2P_<SECTION>__<NAME>).
SETTING_ENV = re.compile(r"^(C2P_MODE|C2P_[A-Z0-9_]*__[A-Z0-9_]+)$")
# cert-manager.io/v1 CertificateSpec's fields.
CERTIFICATE_SPEC = {
    "secretName", "issuerRef", "duration", "renewBefore", "renewBeforePercentage", "dnsNames",
    "uris", "ipAddresses", "emailAddresses", "otherNames", "commonName", "subject",
    "literalSubject", "privateKey", "usages", "isCA", "secretTemplate", "keystores",
    "revisionHistoryLimit", "additionalOutputFormats", "nameConstraints", "encodeUsagesInRequest",
}

# The TOML settings the service knows (dotted names; src/config/raw.rs and the README's tables),
# besides auth.callers.<name>.{identity,rpcs,programs} (CALLER_SETTING) and
# programs.<name>.* (PROGRAM_SETTING).
TOML_ALLOWED = {
    "mode", "grpc.listen", "grpc.reflection", "metrics.listen", "health.listen",
    "health.check_interval", "health.check_timeout",
    "grpc.tls.cert_file", "grpc.tls.key_file", "grpc.tls.client_ca_file", "grpc.tls.reload_interval",
    "auth.identity", "auth.mesh_header", "auth.mesh_peers",
    "redis.url", "redis.cluster", "redis.key_prefix", "redis.username", "redis.password_file",
    "redis.ca_file", "redis.connect_timeout", "redis.response_timeout",
    "enroll.reconcile_interval", "enroll.reconcile_after", "enroll.lifecycle_check_interval",
    "store.enrollment_ttl", "store.not_enrolled_ttl", "store.notification_dedup_ttl", "store.idempotency_ttl",
    "store.cache_size", "store.cache_max_age",
    "store.memory_max_entries",
    "notifications.max_future_skew", "notifications.max_age",
    "log.format", "log.filter", "shutdown.grace_period", "enroll.lease", "enroll.fingerprint_key_file",
} | {f"grpc.limits.{k}" for k in LIMITS_INT + LIMITS_DURATION}
CALLER_SETTING = re.compile(r"^auth\.callers\.[A-Za-z0-9_-]+\.(identity|rpcs|programs)$")
PROGRAM_SETTING = re.compile(
    r"^programs\.[A-Za-z0-9_-]+\.(src_client_id|service_id|enroll_encryption_certificate_file|privacy_uri|terms_uri|"
    r"lifecycle|directory_id)$")
for _api in ("processing", "enroll"):
    TOML_ALLOWED |= {
        f"mastercard.{_api}.{k}"
        for k in (
            "base_url", "consumer_key", "signing_key_file", "signing_key_password_file",
            "signature_method", "attempt_timeout", "connect_timeout", "budget", "max_attempts",
            "initial_backoff", "max_backoff", "extra_ca_file",
            "breaker.failure_rate_threshold", "breaker.window_size", "breaker.minimum_calls",
            "breaker.open_duration", "breaker.half_open_calls",
            "payload_encryption.enabled",
            "payload_encryption.encryption_certificate_file",
            "payload_encryption.decryption_key_file",
            "payload_encryption.decryption_key_password_file",
            "payload_encryption.previous_decryption_key_file",
            "payload_encryption.previous_decryption_key_password_file",
        )
    }
# What every mastercard-mode config.toml rendered from the value sets must hold.
TOML_REQUIRED_MASTERCARD = {
    "mode", "grpc.listen", "health.listen", "redis.cluster", "redis.key_prefix",
    "log.format", "log.filter", "shutdown.grace_period", "enroll.lease", "enroll.fingerprint_key_file",
    "programs.default.src_client_id", "programs.default.service_id",
    "programs.default.enroll_encryption_certificate_file",
} | {
    f"mastercard.{api}.{k}"
    for api in ("processing", "enroll")
    for k in ("base_url", "consumer_key", "signing_key_file", "signature_method", "payload_encryption.enabled")
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
_CONNECTION_AGE = {"grpc.limits.max_connection_age": "15m", "grpc.limits.max_connection_age_grace": "30s"}
_REDIS = {"redis.url": "redis://redis.c2p.svc.cluster.local:6379"}
# What config.toml must hold (None: must not hold) for the value sets that introduce settings,
# written out rather than derived from the values, so that the derived checks cannot pass by
# agreeing with a wrong template.
EXPECTED_SETTINGS: dict[str, dict[str, Any]] = {
    "defaults.yaml": {
        **_MTLS_FROM_TLS_SECRET, **_FINGERPRINT, **_APP_BACKEND, **_CONNECTION_AGE, **_REDIS,
        "metrics.listen": "0.0.0.0:9464", "store.idempotency_ttl": None,
        "mastercard.processing.extra_ca_file": None, "mastercard.enroll.extra_ca_file": None,
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
        **_CONNECTION_AGE,
        "auth.identity": "certificate",
        "auth.callers.card_ops.identity": "card-ops.internal.bank.example",
        "auth.callers.card_ops.rpcs": ["GetEnrollmentStatus"],
        "auth.callers.card_ops.programs": ["default"],
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
    "mesh-mtls-peers.yaml": {
        **_MTLS_FROM_TLS_SECRET, **_FINGERPRINT, **_APP_BACKEND,
        "auth.identity": "mesh_header",
        "auth.mesh_header": "x-forwarded-client-identity",
        "auth.mesh_peers": ["spiffe://bank.example/ns/istio-system/sa/istio-ingressgateway-service-account"],
    },
    "redis-tls-acl.yaml": {
        **_MTLS_FROM_TLS_SECRET, **_FINGERPRINT,
        "redis.url": "rediss://redis.bank.example:6380",
        "redis.username": "c2p-enroll",
        "redis.password_file": "/etc/c2p-enroll/redis/password",
        "redis.ca_file": "/etc/c2p-enroll/redis-ca/ca.crt",
    },
    "least-privilege.yaml": {
        **_FINGERPRINT, **_CONNECTION_AGE,
        "grpc.tls.cert_file": f"{TLS_DIR}/tls.crt",
        "grpc.tls.client_ca_file": "/etc/c2p-enroll/client-ca/ca.crt",
        "auth.callers.card_gateway.identity": "spiffe://bank.example/ns/payments/sa/card-gateway",
        "auth.callers.notifications.rpcs": ["NotificationIngest"],
        "redis.url": None,  # C2P_REDIS__URL, from the Secret
        "redis.username": "c2p-enroll",
        "redis.password_file": "/etc/c2p-enroll/redis/password",
        "redis.ca_file": "/etc/c2p-enroll/redis-ca/ca.crt",
        "mastercard.processing.extra_ca_file": None,
    },
    "networkpolicy-openshift.yaml": {
        **_MTLS_FROM_TLS_SECRET, **_FINGERPRINT, **_CONNECTION_AGE,
        "redis.url": "redis://redis.redis.svc.cluster.local:6379",
    },
    "programs-and-tuning.yaml": {
        **_MTLS_FROM_TLS_SECRET, **_FINGERPRINT, **_REDIS,
        "shutdown.grace_period": "30000ms",
        "grpc.limits.max_connection_age": "30m",
        "grpc.limits.max_connection_age_grace": "1m",
        "redis.connect_timeout": "3s",
        "redis.response_timeout": "500ms",
        "store.enrollment_ttl": "60d",
        "store.not_enrolled_ttl": "2m",
        "store.notification_dedup_ttl": "96h",
        "store.idempotency_ttl": "48h",
        "store.cache_size": 20000,
        "store.cache_max_age": "1s",
        "notifications.max_future_skew": "2m",
        "notifications.max_age": "14d",
        "grpc.limits.max_connections": 512,
        "health.check_interval": "2s",
        "health.check_timeout": "1500ms",
        "mastercard.processing.signature_method": "rsa-pss",
        "mastercard.processing.attempt_timeout": "8s",
        "mastercard.processing.connect_timeout": "2s",
        "mastercard.processing.budget": "25s",
        "mastercard.processing.max_attempts": 4,
        "mastercard.processing.initial_backoff": "100ms",
        "mastercard.processing.max_backoff": "3s",
        "mastercard.processing.breaker.failure_rate_threshold": 40,
        "mastercard.processing.breaker.window_size": 50,
        "mastercard.processing.breaker.minimum_calls": 20,
        "mastercard.processing.breaker.open_duration": "30s",
        "mastercard.processing.breaker.half_open_calls": 5,
        "mastercard.processing.payload_encryption.enabled": True,
        "mastercard.processing.payload_encryption.encryption_certificate_file":
            f"{KEYS_DIR}/processing-payload-encryption.cert.pem",
        "mastercard.processing.payload_encryption.decryption_key_file": f"{KEYS_DIR}/processing-payload-decryption.p12",
        "mastercard.processing.payload_encryption.decryption_key_password_file":
            f"{KEYS_DIR}/processing-payload-decryption.password",
        "mastercard.processing.payload_encryption.previous_decryption_key_file":
            f"{KEYS_DIR}/processing-payload-decryption-2025.p12",
        "mastercard.processing.payload_encryption.previous_decryption_key_password_file":
            f"{KEYS_DIR}/processing-payload-decryption-2025.password",
        "mastercard.enroll.payload_encryption.enabled": False,
        "mastercard.enroll.payload_encryption.previous_decryption_key_file": None,
        "mastercard.enroll.signing_key_file": f"{KEYS_DIR}/enroll-signing.pem",
        "mastercard.enroll.signing_key_password_file": None,
        "mastercard.enroll.extra_ca_file": "/etc/c2p-enroll/extra/gateway-ca/ca.crt",
        "mastercard.processing.extra_ca_file": None,
        "programs.default.enroll_encryption_certificate_file": f"{KEYS_DIR}/enroll-client-encryption.cert.pem",
        "programs.eu.src_client_id": "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
        "programs.eu.service_id": "EXAMPLE_ISSUER_SRC_SERVICE_EU",
        "programs.eu.enroll_encryption_certificate_file": f"{KEYS_DIR}/enroll-client-encryption-eu.cert.pem",
        "programs.eu.privacy_uri": "https://bank.example/eu/privacy",
        "programs.eu.terms_uri": "https://bank.example/eu/terms",
        "programs.eu.lifecycle": "credential_directory",
        "programs.eu.directory_id": "EXAMPLE_EU_DIRECTORY",
        "enroll.lifecycle_check_interval": "12h",
        "auth.callers.app_backend.programs": ["default", "eu"],
    },
    "csi-keys-inspecting-proxy.yaml": {
        **_FINGERPRINT, **_CONNECTION_AGE,
        "mastercard.processing.signing_key_file": f"{KEYS_DIR}/processing-signing.p12",
        "mastercard.processing.extra_ca_file": "/etc/c2p-enroll/mastercard-ca/ca.crt",
        "mastercard.enroll.extra_ca_file": "/etc/c2p-enroll/mastercard-ca/ca.crt",
        "redis.url": "rediss://redis.c2p.svc.cluster.local:6380",
    },
    "single-replica-supply-chain.yaml": {
        **_MTLS_FROM_TLS_SECRET, **_FINGERPRINT, **_CONNECTION_AGE,
        "redis.url": None, "metrics.listen": "", "shutdown.grace_period": "1m",
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
     "programs is required with every RPC but NotificationIngest"),
    ("two callers with one identity",
     [_with("auth.callers.other", {"identity": "spiffe://bank.example/ns/payments/sa/app-backend",
                                   "rpcs": ["GetEnrollmentStatus"], "programs": ["default"]})],
     "have the same identity"),
    ("mesh_header with server-only TLS (anyone could set the header)",
     [_with("auth.identity", "mesh_header"), _with("tls.clientCA.source", "")],
     "lets any client that reaches the port set the header"),
    ("mesh_header over mutual TLS without meshPeers (any workload the CA signed could set the header)",
     [_with("auth.identity", "mesh_header")], "with tls.clientCA needs auth.meshPeers"),
    ("meshPeers with identity certificate",
     [_with("auth.meshPeers", ["spiffe://bank.example/ns/istio-system/sa/ingress-gateway"])],
     "auth.meshPeers is only read with auth.identity mesh_header"),
    ("a certificate identity no certificate can carry",
     [_with("auth.callers.app_backend.identity", "app backend")], "can never match"),
    ("a Redis URL through config.extra (around the credential check)",
     [_with("config.extra", {"redis": {"url": "redis://:s3cret@redis:6379"}})],
     "config.extra.redis.url would put the Redis URL"),
    ("a literal C2P_REDIS__URL in env",
     [_with("env", [{"name": "C2P_REDIS__URL", "value": "redis://:s3cret@redis:6379"}])],
     "env C2P_REDIS__URL with a literal value"),
    ("a reader without programs",
     [_with("auth.callers.reader", {"identity": "reader.bank.example", "rpcs": ["GetEnrollmentStatus"]})],
     "programs is required with every RPC but NotificationIngest"),
    ("a remover without programs",
     [_with("auth.callers.remover", {"identity": "remover.bank.example", "rpcs": ["RemoveCard", "OptOut"]})],
     "programs is required with every RPC but NotificationIngest"),
    ("a caller naming a program that is not configured",
     [_with("auth.callers.reader", {"identity": "reader.bank.example", "rpcs": ["GetEnrollmentStatus"],
                                    "programs": ["defualt"]})],
     "is not a configured program"),
    ("a Redis URL with only a user (credentials in values)",
     [_with("config.redis.url", "redis://c2p@redis.c2p.svc:6379")], "config.redis.url holds a password or user"),
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
    ("shutdown.grace_period 1m against a 30 s termination period",
     [_with("config.shutdown.grace_period", "1m")],
     "terminationGracePeriodSeconds (30) must exceed lifecycle.preStopSleepSeconds + config.shutdown.grace_period (5 s + 1m = 65 s)"),
    ("shutdown.grace_period 60000ms against a 30 s termination period",
     [_with("config.shutdown.grace_period", "60000ms")], "(5 s + 60000ms = 65 s)"),
    ("shutdown.grace_period 25s: preStop + grace equal to the termination period",
     [_with("config.shutdown.grace_period", "25s")], "(5 s + 25s = 30 s)"),
    ("shutdown.grace_period 1m 25s with 90 s: equal again",
     [_with("config.shutdown.grace_period", "1m 25s"), _with("terminationGracePeriodSeconds", 90)],
     "(5 s + 1m 25s = 90 s)"),
    # Egress.
    ("mastercard mode with neither a proxy nor Mastercard CIDRs",
     [_with("networkPolicy.egress.mastercard.cidrs", [])], "mastercard mode needs a way out to Mastercard"),
    ("a proxy and Mastercard CIDRs both",
     [_with("proxy.httpsProxy", "http://egress-proxy.egress.svc:3128"),
      _with("networkPolicy.egress.proxy.cidrs", ["10.30.0.10/32"])],
     "networkPolicy.egress.mastercard.cidrs and proxy.httpsProxy are both set"),
    ("a proxy without where it is (no NetworkPolicy peer)",
     [_without("networkPolicy.egress.mastercard"), _with("proxy.httpsProxy", "http://egress-proxy.egress.svc:3128")],
     "proxy.httpsProxy needs networkPolicy.egress.proxy.podSelector, namespaceSelector or cidrs"),
    ("a proxy reached by address on another port than its URL's (the NetworkPolicy would block it)",
     [_without("networkPolicy.egress.mastercard"), _with("proxy.httpsProxy", "https://proxy.bank.example"),
      _with("networkPolicy.egress.proxy.cidrs", ["10.30.0.10/32"]), _with("networkPolicy.egress.proxy.port", 8443)],
     "networkPolicy.egress.proxy.port (8443) differs from the port of proxy.httpsProxy (443)"),
    ("a notification dedup TTL under 72h (the service refuses it at start)",
     [_with("config.store.notification_dedup_ttl", "48h")], "config.store.notification_dedup_ttl (48h) must be at least 72h"),
    ("an idempotency TTL under 24h", [_with("config.store.idempotency_ttl", "720m")],
     "config.store.idempotency_ttl (720m) must be at least 24h"),
    ("a record cache older than an hour", [_with("config.store.cache_max_age", "2h")],
     "config.store.cache_max_age (2h) must be at most 1h"),
    ("notifications older than 72h refused sooner", [_with("config.notifications.max_age", "1d")],
     "config.notifications.max_age (1d) must be at least 72h"),
    ("a zero shutdown grace period", [_with("config.shutdown.grace_period", "0s")],
     "config.shutdown.grace_period (0s) must be greater than zero"),
    ("a watch heartbeat under a second", [_with("config.grpc.limits.watch_heartbeat_interval", "500ms")],
     "config.grpc.limits.watch_heartbeat_interval (500ms) must be at least 1s"),
    ("a lease raised past the default reconcile_after", [_with("config.enroll.lease", "3m")],
     "config.enroll.reconcile_after (120000 ms) must be at least config.enroll.lease (180000 ms)"),
    ("a proxy URL with credentials",
     [_without("networkPolicy.egress.mastercard"), _with("proxy.httpsProxy", "http://c2p:s3cret@proxy.bank.example:3128"),
      _with("networkPolicy.egress.proxy.cidrs", ["10.30.0.10/32"])], "proxy.httpsProxy holds credentials"),
    ("a proxy URL with a path",
     [_without("networkPolicy.egress.mastercard"), _with("proxy.httpsProxy", "http://proxy.bank.example:3128/x"),
      _with("networkPolicy.egress.proxy.cidrs", ["10.30.0.10/32"])], "must be http://host[:port]"),
    ("env sets HTTPS_PROXY beside proxy.httpsProxy",
     [_without("networkPolicy.egress.mastercard"), _with("proxy.httpsProxy", "http://proxy.bank.example:3128"),
      _with("networkPolicy.egress.proxy.cidrs", ["10.30.0.10/32"]),
      _with("env", [{"name": "HTTPS_PROXY", "value": "http://other:3128"}])],
     "env HTTPS_PROXY is set by the chart itself"),
    # Shared state.
    ("mastercard mode, 2 fixed replicas, no Redis",
     [_without("config.redis"), _with("autoscaling.enabled", False), _with("replicaCount", 2)],
     "mastercard mode with up to 2 replicas needs a shared Redis"),
    ("mastercard mode, HPA 2..6, no Redis", [_without("config.redis")],
     "mastercard mode with up to 6 replicas needs a shared Redis"),
    ("mastercard mode, HPA 1..3, no Redis",
     [_without("config.redis"), _with("autoscaling.minReplicas", 1), _with("autoscaling.maxReplicas", 3)],
     "mastercard mode with up to 3 replicas needs a shared Redis"),
    ("redis.urlSecret and config.redis.url both", [_with("redis.urlSecret.name", "c2p-enroll-redis")],
     "redis.urlSecret and config.redis.url are both set"),
    ("env C2P_REDIS__URL beside redis.urlSecret",
     [_without("config.redis"), _with("redis.urlSecret.name", "c2p-enroll-redis"),
      _with("env", [{"name": "C2P_REDIS__URL", "valueFrom": {"secretKeyRef": {"name": "r", "key": "url"}}}])],
     "env sets C2P_REDIS__URL while"),
    ("env C2P_REDIS_URL (no __: not a setting name, a typo)",
     [_with("env", [{"name": "C2P_REDIS_URL", "value": "redis://r:6379"}])], "env C2P_REDIS_URL is not a setting"),
    # Listeners.
    ("config.grpc.listen on 127.0.0.1", [_with("config.grpc.listen", "127.0.0.1:50051")],
     "config.grpc.listen (127.0.0.1:50051) is a loopback address"),
    ("config.grpc.listen on [::1]", [_with("config.grpc.listen", "[::1]:50051")],
     "config.grpc.listen ([::1]:50051) is a loopback address"),
    ("config.grpc.listen on localhost", [_with("config.grpc.listen", "localhost:50051")],
     "config.grpc.listen (localhost:50051) is a loopback address"),
    ("config.health.listen on 127.0.0.1", [_with("config.health.listen", "127.0.0.1:8086")],
     "config.health.listen (127.0.0.1:8086) is a loopback address"),
    ("serviceMonitor.enabled with the metrics listener off",
     [_with("serviceMonitor.enabled", True), _with("config.metrics.listen", "")],
     "serviceMonitor.enabled needs the metrics listener"),
    ("prometheusRule.enabled with the metrics listener off",
     [_with("prometheusRule.enabled", True), _with("config.metrics.listen", "")],
     "prometheusRule.enabled needs the metrics listener"),
    ("grafanaDashboard.enabled with the metrics listener off",
     [_with("grafanaDashboard.enabled", True), _with("config.metrics.listen", "")],
     "grafanaDashboard.enabled needs the metrics listener"),
    # Replicas and disruption budget.
    ("autoscaling.minReplicas above maxReplicas", [_with("autoscaling.minReplicas", 7)],
     "autoscaling.minReplicas (7) must not exceed autoscaling.maxReplicas (6)"),
    ("a PDB with neither maxUnavailable nor minAvailable", [_with("podDisruptionBudget.maxUnavailable", None)],
     "a budget with neither is invalid"),
    ("a PDB with maxUnavailable and minAvailable", [_with("podDisruptionBudget.minAvailable", 1)],
     "set either minAvailable or maxUnavailable, not both"),
    ("a PDB minAvailable equal to the fewest replicas",
     [_with("podDisruptionBudget.maxUnavailable", None), _with("podDisruptionBudget.minAvailable", 2)],
     "podDisruptionBudget.minAvailable (2) must be below the fewest replicas (2)"),
    # Keys, programs, volumes, free-form settings.
    ("keys.existingSecret and keys.csi both",
     [_with("keys.csi", {"driver": "secrets-store.csi.k8s.io", "readOnly": True})],
     "set either keys.existingSecret or keys.csi, not both"),
    ("a second program without src_client_id", [_with("config.programs.eu", {"service_id": "EU"})],
     "config.programs.eu.src_client_id is required in mastercard mode"),
    ("mastercardCA from a Secret without its name", [_with("mastercardCA.source", "secret")],
     "mastercardCA.name is required with mastercardCA.source secret"),
    ("extraVolumeMounts over the keys directory",
     [_with("extraVolumes", [{"name": "x", "emptyDir": {}}]),
      _with("extraVolumeMounts", [{"name": "x", "mountPath": "/etc/c2p-enroll/keys", "readOnly": True}])],
     "extraVolumeMounts: /etc/c2p-enroll/keys is one of the chart's own mounts"),
    ("config.extra setting what the chart writes (redis.key_prefix)",
     [_with("config.redis.key_prefix", "c2p:"), _with("config.extra", {"redis": {"key_prefix": "x:"}})],
     "config.extra sets redis.key_prefix, which the chart writes itself"),
    ("config.extra replacing a table the chart writes (grpc.limits)",
     [_with("config.extra", {"grpc": {"limits": "none"}})], "config.extra sets grpc.limits, which the chart writes"),
    ("config.extra naming a file on no extra mount",
     [_with("config.extra", {"mastercard": {"enroll": {"extra_ca_file": "/etc/ssl/certs/gw.pem"}}})],
     "config.extra.mastercard.enroll.extra_ca_file (/etc/ssl/certs/gw.pem) is not under a read-only extraVolumeMounts path"),
]
# Changes to helm/values/defaults.yaml that values.schema.json must reject.
NEGATIVE_SCHEMA: list[tuple[str, list[Callable[[dict[str, Any]], None]]]] = [
    ("an unknown RPC in a caller's rpcs", [_with("auth.callers.app_backend.rpcs", ["DeleteCard"])]),
    ("an unknown lifecycle family", [_with("config.programs.default.lifecycle", "modern")]),
    ("a lifecycle check interval that is no duration",
     [_with("config.enroll.lifecycle_check_interval", "daily")]),
    ("a caller without identity", [_without("auth.callers.app_backend.identity")]),
    ("an unknown auth.identity", [_with("auth.identity", "mtls")]),
    ("an unknown key under tls", [_with("tls.cert", "tls.crt")]),
    ("a -bin auth.meshHeader", [_with("auth.meshHeader", "x-caller-bin")]),
    ("a wildcard auth.meshPeers identity (the service refuses it at start)",
     [_with("auth.identity", "mesh_header"), _with("auth.meshPeers", ["*.mesh.local"])]),
    ("an auth.meshPeers identity no certificate can carry",
     [_with("auth.identity", "mesh_header"), _with("auth.meshPeers", ["istio gateway"])]),
    ("a non-integer grpc.limits.max_message_bytes", [_with("config.grpc.limits.max_message_bytes", "16k")]),
    ("an unknown redis.ca.source", [_with("redis.ca", {"source": "vault", "name": "redis-ca"})]),
    ("a caller name that is no TOML bare key", [_with("auth.callers", {"app backend": {
        "identity": "spiffe://bank.example/x", "rpcs": ["GetEnrollmentStatus"]}})]),
    ("networkPolicy.egress.redis.clusterBusPort (no longer opened)",
     [_with("networkPolicy.egress.redis.clusterBusPort", 16379)]),
    ("a max_connection_age that is no duration", [_with("config.grpc.limits.max_connection_age", "15 minutes later")]),
    ("a shutdown.grace_period in an unknown unit", [_with("config.shutdown.grace_period", "1 fortnight")]),
    ("an unknown setting under config.store", [_with("config.store.enrollment_ttls", "30d")]),
    ("a breaker failure_rate_threshold above 100",
     [_with("config.mastercard.processing.breaker.failure_rate_threshold", 150)]),
    ("max_attempts above 10", [_with("config.mastercard.enroll.max_attempts", 11)]),
    ("a program name that is no TOML bare key",
     [_with("config.programs", {"eu west": {"src_client_id": "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "service_id": "X"}})]),
    ("a dotted config.extra key", [_with("config.extra", {"grpc.limits": {"x": 1}})]),
    ("a test image digest that is a tag", [_with("tests.image.digest", "latest")]),
    ("podDisruptionBudget.maxUnavailable 0 (would block every drain)", [_with("podDisruptionBudget.maxUnavailable", 0)]),
    ("an unknown unhealthyPodEvictionPolicy", [_with("podDisruptionBudget.unhealthyPodEvictionPolicy", "Sometimes")]),
    ("a proxy that is no http(s) URL", [_with("proxy.httpsProxy", "egress-proxy:3128")]),
    ("enableServiceLinks as text", [_with("enableServiceLinks", "no")]),
    ("keys.csi without a driver", [_with("keys.csi", {"readOnly": True})]),
    ("DNS ports as text", [_with("networkPolicy.egress.dns.ports", ["53"])]),
    ("a Mastercard CIDR that is no CIDR", [_with("networkPolicy.egress.mastercard.cidrs", ["api.mastercard.com"])]),
    ("a runbook URL that is no http(s) URL", [_with("prometheusRule.runbookUrl", "docs/runbook.md")]),
    ("a runbook URL with an anchor of its own", [_with("prometheusRule.runbookUrl", "https://git.bank.example/runbook.md#top")]),
    ("an unknown key under grafanaDashboard", [_with("grafanaDashboard.folder", "Payments")]),
    ("a dashboard label that is no string", [_with("grafanaDashboard.labels", {"grafana_dashboard": 1})]),
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


def render(chart: helm.Chart, values: dict[str, Any], kube_version: str,
           api_versions: list[str] | None = None) -> dict[str, str]:
    """Chart.render() with the Kubernetes version (and API versions) set (see the module
    docstring)."""
    opts: dict[str, Any] = {"name": RELEASE, "namespace": NAMESPACE, "kube_version": f"v{kube_version}"}
    if api_versions:
        opts["api_versions"] = api_versions
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


def config_map(docs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The ConfigMap holding config.toml (the dashboard's is another)."""
    found = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == RELEASE]
    if len(found) != 1:
        raise AssertionError(f"expected one ConfigMap {RELEASE}, rendered {len(found)}")
    return found[0]


def kube_validate(files: list[Path], version: str) -> str | None:
    """kubernetes-validate --strict on the files; every one must pass (a missing schema fails)."""
    proc = subprocess.run(
        [*KUBE_VALIDATE, "--strict", "--kubernetes-version", version, *map(str, files)],
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
    "secret", "configMap" or "csi" (name: its SecretProviderClass, else its driver). Fails unless
    a read-only volume mounted as a directory (no subPath: those are never updated) provides it,
    and, when the volume lists items, one of them does."""
    pod, c = pod_of(docs)
    for m in c["volumeMounts"]:
        prefix = m["mountPath"].rstrip("/") + "/"
        if "subPath" in m or not path.startswith(prefix):
            continue
        rel = path[len(prefix):]
        if m.get("readOnly") is not True:
            raise AssertionError(f"{path}: volume {m['name']} is not mounted read-only")
        (vol,) = [v for v in pod["volumes"] if v["name"] == m["name"]]
        kind = next((k for k in ("secret", "configMap", "csi") if k in vol), None)
        if kind is None:
            raise AssertionError(f"{path}: volume {m['name']} is neither a Secret, a ConfigMap nor a CSI volume")
        source = vol[kind]
        if kind == "csi":
            return kind, source.get("volumeAttributes", {}).get("secretProviderClass", source["driver"]), rel
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


def metrics_on(merged: dict[str, Any]) -> bool:
    return bool((merged["config"].get("metrics") or {}).get("listen"))


def redis_configured(merged: dict[str, Any]) -> bool:
    return bool(merged["config"]["redis"].get("url") or merged["redis"]["urlSecret"]["name"]
                or any(e["name"] == "C2P_REDIS__URL" for e in merged.get("env") or []))


def replica_bounds(merged: dict[str, Any]) -> tuple[int, int]:
    a = merged["autoscaling"]
    return (a["minReplicas"], a["maxReplicas"]) if a["enabled"] else (merged["replicaCount"], merged["replicaCount"])


def image_ref(merged: dict[str, Any], image: dict[str, Any], default_tag: str) -> str:
    registry = (merged.get("global") or {}).get("imageRegistry") or image.get("registry")
    name = f"{registry.rstrip('/')}/{image['repository']}" if registry else image["repository"]
    return f"{name}@{image['digest']}" if image.get("digest") else f"{name}:{image.get('tag') or default_tag}"


def key_files(docs: list[tuple[str, dict[str, Any]]]) -> set[str]:
    """The files of the keys volume that config.toml names."""
    return {str(v)[len(KEYS_DIR) + 1:] for v in settings_of(docs).values() if str(v).startswith(KEYS_DIR + "/")}


def check_deployment(docs: list[tuple[str, dict[str, Any]]], values: dict[str, Any], merged: dict[str, Any]) -> str | None:
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sc, psc = c["securityContext"], pod["securityContext"]
    health = merged["containerPorts"]["health"]
    annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
    want_ports = {"grpc": 50051, "health": health} | ({"metrics": 9464} if metrics_on(merged) else {})
    keys = merged["keys"]
    (keys_volume,) = [v for v in pod["volumes"] if v["name"] == "keys"] or [None]
    if keys.get("csi"):
        keys_ok = keys_volume == {"name": "keys", "csi": keys.get("csi")}
    elif keys["existingSecret"]:
        items = (keys_volume or {}).get("secret", {}).get("items", [])
        keys_ok = (keys_volume or {}).get("secret", {}).get("secretName") == keys["existingSecret"] \
            and all(i["key"] == i["path"] for i in items) and {i["key"] for i in items} == key_files(docs)
    else:
        keys_ok = keys_volume is None
    expect = {
        "container readOnlyRootFilesystem true": sc.get("readOnlyRootFilesystem") is True,
        "container runAsNonRoot true": sc.get("runAsNonRoot") is True,
        "pod runAsNonRoot true": psc.get("runAsNonRoot") is True,
        # The image's ids, or none at all where the platform assigns them (OpenShift's SCC).
        "runAsUser/runAsGroup 65532, or all left to the platform": (
            sc.get("runAsUser") == 65532 and sc.get("runAsGroup") == 65532
            and psc.get("runAsUser") == 65532 and psc.get("runAsGroup") == 65532)
        or (merged["podSecurityContext"].get("runAsUser") is None
            and not {"runAsUser", "runAsGroup"} & (set(sc) | set(psc)) and "fsGroup" not in psc),
        "allowPrivilegeEscalation false": sc.get("allowPrivilegeEscalation") is False,
        "capabilities drop ALL": sc.get("capabilities", {}).get("drop") == ["ALL"],
        "seccomp RuntimeDefault (pod and container)": psc.get("seccompProfile") == {"type": "RuntimeDefault"}
        and sc.get("seccompProfile") == {"type": "RuntimeDefault"},
        f"enableServiceLinks {merged['enableServiceLinks']} (enableServiceLinks)":
        pod.get("enableServiceLinks") is merged["enableServiceLinks"],
        f"liveness grpc on the health port {health}, service liveness (not store-bound)":
        c.get("livenessProbe", {}).get("grpc") == {"port": health, "service": "liveness"},
        f"readiness grpc on the health port {health}, service EnrollmentService": c.get("readinessProbe", {}).get("grpc")
        == {"port": health, "service": "c2p.enrollment.v1.EnrollmentService"},
        f"startup grpc probe on the health port {health}": c.get("startupProbe", {}).get("grpc", {}).get("port") == health,
        "command c2p-enroll serve --config /etc/c2p-enroll/config.toml": c.get("command", []) + c.get("args", [])
        == ["/usr/local/bin/c2p-enroll", "serve", "--config", "/etc/c2p-enroll/config.toml"],
        f"image {image_ref(merged, merged['image'], '0.1.0')}": c["image"] == image_ref(merged, merged["image"], "0.1.0"),
        f"ports {want_ports}": {p["name"]: p["containerPort"] for p in c["ports"]} == want_ports,
        "no subPath mount but config.toml (a subPath mount never follows its Secret)": [
            m["mountPath"] for m in c["volumeMounts"] if "subPath" in m] == ["/etc/c2p-enroll/config.toml"],
        "emptyDir at /tmp": any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])
        and any(v["name"] == "tmp" and "emptyDir" in v for v in pod["volumes"]),
        "checksum/config annotation": bool(re.fullmatch(r"[0-9a-f]{64}", annotations.get("checksum/config", ""))),
        "checksum/keys annotation: sha256 of keys.version": annotations.get("checksum/keys")
        == hashlib.sha256(str(keys["version"]).encode()).hexdigest(),
        "deploymentAnnotations on the Deployment": dep["metadata"].get("annotations", {}) == merged["deploymentAnnotations"],
        f"terminationGracePeriodSeconds {merged['terminationGracePeriodSeconds']}":
        pod.get("terminationGracePeriodSeconds") == merged["terminationGracePeriodSeconds"],
        "resources 250m/128Mi requests, 1/256Mi limits": c.get("resources") == {
            "requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
        "topology spread over hostname and zone, ScheduleAnyway": sorted(
            (t["topologyKey"], t["whenUnsatisfiable"]) for t in pod.get("topologySpreadConstraints", []))
        == [("kubernetes.io/hostname", "ScheduleAnyway"), ("topology.kubernetes.io/zone", "ScheduleAnyway")]
        and all(t["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
                for t in pod["topologySpreadConstraints"]),
        "keys mounted read-only at /etc/c2p-enroll/keys (csi, or the Secret with items: exactly the files "
        "config.toml names)": keys_ok and (keys_volume is None or any(
            m["mountPath"] == KEYS_DIR and m.get("readOnly") is True for m in c["volumeMounts"])),
        "extraVolumes and extraVolumeMounts appended": all(v in pod["volumes"] for v in merged["extraVolumes"])
        and all(m in c["volumeMounts"] for m in merged["extraVolumeMounts"]),
    }
    autoscaling = merged["autoscaling"]["enabled"]
    expect["replicas only without autoscaling"] = (
        ("replicas" not in dep["spec"]) if autoscaling else dep["spec"].get("replicas") == merged["replicaCount"]
    )
    expect["HPA exactly when autoscaling"] = len(by_kind(docs, "HorizontalPodAutoscaler")) == (1 if autoscaling else 0)
    problems = [name for name, ok in expect.items() if not ok]
    return ", ".join(f"not: {p}" for p in problems) or None


def check_env(docs: list[tuple[str, dict[str, Any]]], merged: dict[str, Any]) -> str | None:
    """The environment the chart gives: C2P_REDIS__URL from redis.urlSecret (secretKeyRef), the
    proxy variables from proxy.*, then env; every C2P_ name one the service reads as a setting."""
    _, c = pod_of(docs)
    env = c.get("env", [])
    want: list[dict[str, Any]] = []
    secret = merged["redis"]["urlSecret"]
    if secret["name"]:
        want.append({"name": "C2P_REDIS__URL", "valueFrom": {"secretKeyRef": {"name": secret["name"], "key": secret["key"]}}})
    proxy = merged["proxy"]
    if proxy["httpsProxy"]:
        want += [{"name": n, "value": proxy["httpsProxy"]} for n in ("HTTPS_PROXY", "https_proxy")]
        if proxy["noProxy"]:
            want += [{"name": n, "value": proxy["noProxy"]} for n in ("NO_PROXY", "no_proxy")]
    want += merged["env"]
    problems = [] if env == want else [f"env {env}, want {want}"]
    problems += [f"{e['name']} is no setting name" for e in env if e["name"].startswith("C2P_") and not SETTING_ENV.match(e["name"])]
    if "C2P_REDIS__URL" in {e["name"] for e in env} and "redis.url" in settings_of(docs):
        problems.append("redis.url both in config.toml and C2P_REDIS__URL")
    return "; ".join(problems) or None


def check_config(docs: list[tuple[str, dict[str, Any]]], merged: dict[str, Any]) -> str | None:
    cm = config_map(docs)
    settings = flatten(tomllib.loads(cm["data"]["config.toml"]))
    problems = []
    unknown = sorted(k for k in set(settings) - TOML_ALLOWED if not CALLER_SETTING.match(k) and not PROGRAM_SETTING.match(k))
    if unknown:
        problems.append(f"unexpected settings {unknown}")
    if merged["config"]["mode"] == "mastercard":
        missing = sorted(TOML_REQUIRED_MASTERCARD - set(settings))
        missing += [f"programs.{p}.{k}" for p in merged["config"]["programs"]
                    for k in ("src_client_id", "service_id", "enroll_encryption_certificate_file")
                    if f"programs.{p}.{k}" not in settings]
        if missing:
            problems.append(f"missing settings {missing}")
    # An empty metrics.listen is the one empty setting written: it turns the listener off.
    empty = sorted(k for k, v in settings.items() if v == "" and not (k == "metrics.listen" and not metrics_on(merged)))
    if empty:
        problems.append(f"empty settings written {empty}")
    if not metrics_on(merged) and settings.get("metrics.listen") != "":
        problems.append("metrics off but metrics.listen is not written empty (the service would listen on 127.0.0.1)")
    for key, value in settings.items():
        if not key.endswith("_file"):
            continue
        in_keys = key.startswith(("mastercard.", "programs.")) and not key.endswith(".extra_ca_file")
        if (in_keys and not str(value).startswith(KEYS_DIR + "/")) or not str(value).startswith(CONFIG_DIR + "/"):
            problems.append(f"{key} = {value!r} is not under {KEYS_DIR if in_keys else CONFIG_DIR}")
        try:
            mounted_file(docs, str(value))
        except AssertionError as e:
            problems.append(f"{key}: {e}")
    files = merged["keys"]["files"]
    csi = merged["keys"].get("csi")
    keys_source = ("csi", csi.get("volumeAttributes", {}).get("secretProviderClass", csi["driver"])) \
        if csi else ("secret", merged["keys"]["existingSecret"])
    wants = [
        ("mastercard.processing.signing_key_file", files["processingSigningKey"]),
        ("mastercard.processing.signing_key_password_file", files["processingSigningKeyPassword"]),
        ("mastercard.enroll.signing_key_file", files["enrollSigningKey"]),
        ("mastercard.enroll.signing_key_password_file", files["enrollSigningKeyPassword"]),
    ] + [
        (f"programs.{p}.enroll_encryption_certificate_file", files["enrollEncryptionCertificate"] if p == "default"
         else files["programEncryptionCertificates"].get(p, f"enroll-client-encryption.{p}.cert.pem"))
        for p in merged["config"]["programs"]
    ]
    for api in ("processing", "enroll"):
        if merged["config"]["mastercard"][api]["payload_encryption"].get("enabled"):
            pe = f"mastercard.{api}.payload_encryption."
            wants += [(pe + "encryption_certificate_file", files[f"{api}PayloadEncryptionCertificate"]),
                      (pe + "decryption_key_file", files[f"{api}PayloadDecryptionKey"]),
                      (pe + "decryption_key_password_file", files[f"{api}PayloadDecryptionKeyPassword"]),
                      (pe + "previous_decryption_key_file", files[f"{api}PayloadPreviousDecryptionKey"]),
                      (pe + "previous_decryption_key_password_file", files[f"{api}PayloadPreviousDecryptionKeyPassword"])]
    for key, name in wants:
        if not name or not keys_source[1]:
            if key in settings:
                problems.append(f"{key} = {settings[key]!r} written, want it left out")
        elif settings.get(key) != f"{KEYS_DIR}/{name}":
            problems.append(f"{key} = {settings.get(key)!r}, want {KEYS_DIR}/{name}")
        elif mounted_file(docs, settings[key]) != (*keys_source, name):
            problems.append(f"{key} is not {name} of {keys_source}")
    url = merged["config"]["redis"]["url"]
    want_url = ",".join(url) if isinstance(url, list) else url
    if settings.get("redis.url", "") != want_url:
        problems.append(f"redis.url = {settings.get('redis.url')!r}, want {want_url!r}")
    for key in settings:
        if key.startswith("mastercard.") and key.endswith(".extra_ca_file") and merged["mastercardCA"]["source"]:
            want = ("secret" if merged["mastercardCA"]["source"] == "secret" else "configMap",
                    merged["mastercardCA"]["name"], merged["mastercardCA"]["key"])
            if settings[key] != "/etc/c2p-enroll/mastercard-ca/ca.crt" or mounted_file(docs, settings[key]) != want:
                problems.append(f"{key} is not mastercardCA {want}")
    return "; ".join(problems) or None


def settings_of(docs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    return flatten(tomllib.loads(config_map(docs)["data"]["config.toml"]))


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
    fullname = RELEASE
    domain = cm.get("clusterDomain") or "cluster.local"
    names = [fullname] + ([f"{fullname}-headless"] if merged["service"]["headless"]["enabled"] else [])
    want_dns = cm.get("dnsNames") or [d for n in names for d in (n, f"{n}.{NAMESPACE}", f"{n}.{NAMESPACE}.svc",
                                                                   f"{n}.{NAMESPACE}.svc.{domain}")]
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
    expect_setting(problems, settings, "auth.mesh_peers", auth.get("meshPeers") or None)
    callers = tomllib.loads(config_map(docs)["data"]["config.toml"]).get("auth", {}).get("callers", {})
    want = {name: {k: v for k, v in c.items() if v} for name, c in (auth.get("callers") or {}).items()}
    if callers != want:
        problems.append(f"auth.callers = {callers}, want {want}")
    for name, c in callers.items():
        if not set(c.get("rpcs", [])) <= RPCS or not c.get("rpcs"):
            problems.append(f"auth.callers.{name}.rpcs = {c.get('rpcs')}")
        if set(c.get("rpcs", [])) - {"NotificationIngest"} and not c.get("programs"):
            problems.append(f"auth.callers.{name} may call {c.get('rpcs')} with no programs")
    identity = settings.get("auth.identity") or ("certificate" if "grpc.tls.client_ca_file" in settings else "none")
    if identity != expected_identity(merged):
        problems.append(f"the service would identify callers by {identity}, want {expected_identity(merged)}")
    if re.match(r"^(127\.[0-9.]+|\[::1\]|localhost):[0-9]+$", settings["grpc.listen"]):
        problems.append(f"grpc.listen {settings['grpc.listen']} is a loopback address")
    if identity != "none" and not callers:
        problems.append(f"identity {identity} with no auth.callers (the service refuses it)")
    if settings["mode"] == "mastercard":
        if identity == "none":
            problems.append("mastercard mode with auth.identity none (the service refuses it)")
        if "grpc.tls.cert_file" not in settings and identity != "mesh_header":
            problems.append("mastercard mode on a plaintext port without mesh_header (the service refuses it)")
    if identity == "certificate" and "grpc.tls.client_ca_file" not in settings:
        problems.append("identity certificate without grpc.tls.client_ca_file")
    if identity == "mesh_header" and "grpc.tls.client_ca_file" in settings and not settings.get("auth.mesh_peers"):
        problems.append("mesh_header over mutual TLS without auth.mesh_peers (the service refuses it)")
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


def except_ranges(cidr: str, excepts: list[str]) -> list[str]:
    """The except ranges the chart gives a CIDR: those strictly inside it (IPv4; IPv6 only under
    ::/0, as the template does)."""
    net = ipaddress.ip_network(cidr, strict=False)
    inside = []
    for e in excepts:
        sub = ipaddress.ip_network(e, strict=False)
        if sub.version == net.version and sub.prefixlen > net.prefixlen and sub.subnet_of(net) \
                and (net.version == 4 or net.prefixlen == 0):
            inside.append(e)
    return inside


def expected_egress(merged: dict[str, Any]) -> list[dict[str, Any]]:
    """The service's egress rules, written out from the values and the chart's documented
    defaults: DNS, Redis (when configured; its port only), the proxy or Mastercard's CIDRs with
    their except ranges, then extraRules."""
    eg = merged["networkPolicy"]["egress"]
    dns = eg["dns"]
    rules = [{
        "ports": [{"port": p, "protocol": proto} for p in dns["ports"] for proto in ("UDP", "TCP")],
        "to": [{"namespaceSelector": dns["namespaceSelector"] if dns.get("namespaceSelector") is not None
                else DEFAULT_DNS_NAMESPACES,
                "podSelector": dns["podSelector"] if dns.get("podSelector") is not None else DEFAULT_DNS_PODS}]
        + [{"ipBlock": {"cidr": c}} for c in dns["cidrs"]],
    }]
    redis = eg["redis"]
    if redis_configured(merged):
        peer: dict[str, Any] = {}
        if redis.get("podSelector") is not None:
            peer["podSelector"] = redis["podSelector"]
        elif redis.get("namespaceSelector") is not None or not redis["cidrs"]:
            peer["podSelector"] = DEFAULT_REDIS_PODS
        if redis.get("namespaceSelector") is not None:
            peer["namespaceSelector"] = redis["namespaceSelector"]
        rules.append({"ports": [{"port": redis["port"], "protocol": "TCP"}],
                      "to": ([peer] if peer else []) + [{"ipBlock": {"cidr": c}} for c in redis["cidrs"]]})
    proxy = merged["proxy"]["httpsProxy"]
    if proxy:
        np_proxy = eg["proxy"]
        peer = {k: np_proxy[k] for k in ("podSelector", "namespaceSelector") if np_proxy.get(k) is not None}
        m = re.search(r":(\d+)/?$", proxy.split("://", 1)[1])
        port = np_proxy.get("port") or (int(m.group(1)) if m else 443 if proxy.startswith("https://") else 80)
        rules.append({"ports": [{"port": port, "protocol": "TCP"}],
                      "to": ([peer] if peer else []) + [{"ipBlock": {"cidr": c}} for c in np_proxy["cidrs"]]})
    mc = eg["mastercard"]
    if merged["config"]["mode"] == "mastercard" and not proxy and mc["cidrs"]:
        rules.append({"ports": [{"port": mc["port"], "protocol": "TCP"}],
                      "to": [{"ipBlock": {"cidr": c, **({"except": x} if (x := except_ranges(c, mc["except"])) else {})}}
                             for c in mc["cidrs"]]})
    return rules + eg["extraRules"]


def check_network_policy(docs: list[tuple[str, dict[str, Any]]], merged: dict[str, Any]) -> str | None:
    """The service's NetworkPolicy against the values, each null selector replaced by the chart's
    default (never merged with it), and the helm test pod's NetworkPolicy."""
    policies = {d["metadata"]["name"]: d["spec"] for d in by_kind(docs, "NetworkPolicy")}
    np = policies.get(RELEASE)
    if np is None:
        return f"no NetworkPolicy {RELEASE}"
    npv = merged["networkPolicy"]
    problems = []
    ingress: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rule in np["ingress"]:
        # The chart's own rule for a port comes first; extraIngressRules follow it.
        ingress.setdefault(tuple(p["port"] for p in rule["ports"]), rule)
    grpc = npv["ingress"]["grpc"]
    want_grpc = {"podSelector": grpc["podSelector"] if grpc.get("podSelector") is not None else DEFAULT_GRPC_CLIENTS}
    if grpc.get("namespaceSelector") is not None:
        want_grpc["namespaceSelector"] = grpc["namespaceSelector"]
    if ingress.get(("grpc",), {}).get("from") != [want_grpc]:
        problems.append(f"gRPC ingress from {ingress.get(('grpc',), {}).get('from')}, want {[want_grpc]}")
    metrics = npv["ingress"]["metrics"]
    want_metrics = {"namespaceSelector": metrics["namespaceSelector"] if metrics.get("namespaceSelector") is not None
                    else DEFAULT_METRICS_NAMESPACES}
    if metrics.get("podSelector") is not None:
        want_metrics["podSelector"] = metrics["podSelector"]
    got_metrics = ingress.get(("metrics",), {}).get("from")
    if (got_metrics != [want_metrics]) if metrics_on(merged) else (got_metrics is not None):
        problems.append(f"metrics ingress from {got_metrics}, want {[want_metrics] if metrics_on(merged) else None}")
    # The plaintext health port: the helm test pod (by its labels) and nodeCidrs only; the
    # kubelet on the pod's node needs no rule.
    test_labels = {"app.kubernetes.io/name": f"{RELEASE}-test", "app.kubernetes.io/instance": RELEASE,
                   "app.kubernetes.io/component": "test"}
    test_pod = merged["tests"]["enabled"] and merged["service"]["healthPort"]
    want_health: list[dict[str, Any]] = []
    if test_pod:
        want_health.append({"podSelector": {"matchLabels": test_labels}})
    want_health += [{"ipBlock": {"cidr": c}} for c in npv["ingress"]["health"]["nodeCidrs"]]
    health_rules = [r for r in np["ingress"] if any(p["port"] in ("health", merged["containerPorts"]["health"]) for p in r.get("ports", []))]
    health_from = [peer for r in health_rules for peer in r.get("from", [{}])]
    if health_from != want_health or any(len(r["ports"]) != 1 for r in health_rules):
        problems.append(f"health ingress from {health_from}, want {want_health}")
    if any("ports" not in r or "from" not in r for r in np["ingress"]):
        problems.append("an ingress rule open to every port or every source")
    want_egress = expected_egress(merged)
    if np["egress"] != want_egress:
        problems.append(f"egress {np['egress']}, want {want_egress}")
    ports = {p["port"] for r in np["egress"] + np["ingress"] for p in r.get("ports", [])}
    if 16379 in ports:
        problems.append("port 16379 (Redis Cluster bus) opened")
    for rule in np["egress"]:
        for peer in rule.get("to", []):
            block = peer.get("ipBlock")
            for e in (block or {}).get("except", []):
                outer, inner = ipaddress.ip_network(block["cidr"]), ipaddress.ip_network(e)
                if not (inner.version == outer.version and inner.subnet_of(outer) and inner.prefixlen > outer.prefixlen):
                    problems.append(f"except {e} is not a strict subset of {block['cidr']} (Kubernetes refuses it)")
            if block and block["cidr"] in ("0.0.0.0/0", "::/0") and not block.get("except"):
                problems.append(f"egress to {block['cidr']} without except")
    if merged["proxy"]["httpsProxy"] and any(p["port"] == npv["egress"]["mastercard"]["port"] and "ipBlock" in peer
                                             and peer["ipBlock"]["cidr"] not in npv["egress"]["proxy"]["cidrs"]
                                             for r in np["egress"] for p in r["ports"] for peer in r.get("to", [])):
        problems.append("HTTPS egress besides the proxy")
    # The test pod's own policy: DNS and the health port of the service's pods, nothing else.
    test_np = policies.get(f"{RELEASE}-test")
    if not test_pod:
        if test_np is not None:
            problems.append("a test pod NetworkPolicy without a test pod")
    else:
        want_test = {
            "podSelector": {"matchLabels": test_labels}, "policyTypes": ["Ingress", "Egress"],
            "egress": [expected_egress(merged)[0], {
                "to": [{"podSelector": {"matchLabels": one(docs, "Deployment")["spec"]["selector"]["matchLabels"]}}],
                "ports": [{"port": merged["containerPorts"]["health"], "protocol": "TCP"}]}],
        }
        if test_np != want_test:
            problems.append(f"test NetworkPolicy {test_np}, want {want_test}")
    return "; ".join(problems) or None


def check_callers_reach_grpc(docs: list[tuple[str, dict[str, Any]]], merged: dict[str, Any]) -> str | None:
    """Every caller named by a SPIFFE id (`spiffe://<domain>/ns/<namespace>/sa/<account>`) is in a
    namespace that some gRPC ingress peer of the NetworkPolicy admits: a caller granted RPCs that
    the policy keeps out would find the port closed (a selector other than the namespace's name,
    or an address block, counts as admitting: it cannot be told here). With mesh_header over
    mutual TLS, the mesh peers (auth.meshPeers) instead: the connections are theirs."""
    policies = {d["metadata"]["name"]: d["spec"] for d in by_kind(docs, "NetworkPolicy")}
    np = policies.get(RELEASE)
    if np is None:
        return None
    grpc_ports = ("grpc", merged["containerPorts"]["grpc"])
    peers = [peer for rule in np["ingress"] if any(p["port"] in grpc_ports for p in rule.get("ports", []))
             for peer in rule.get("from", [])]

    def admits(peer: dict[str, Any], namespace: str) -> bool:
        if "ipBlock" in peer:
            return True
        selector = peer.get("namespaceSelector")
        if selector is None:
            return namespace == NAMESPACE
        labels = selector.get("matchLabels") or {}
        if "kubernetes.io/metadata.name" in labels:
            return labels["kubernetes.io/metadata.name"] == namespace
        for expression in selector.get("matchExpressions") or []:
            if expression.get("key") == "kubernetes.io/metadata.name" and expression.get("operator") == "In":
                return namespace in expression.get("values", [])
        return True

    problems = []
    auth = merged.get("auth", {})
    # With mesh_header over mutual TLS the connections come from the mesh peers (a gateway), not
    # from the callers' pods: their namespaces are the ones to admit.
    if auth.get("identity") == "mesh_header" and auth.get("meshPeers"):
        connecting = {f"auth.meshPeers[{i}]": peer for i, peer in enumerate(auth["meshPeers"])}
    else:
        connecting = {f"auth.callers.{name}": c.get("identity", "") for name, c in (auth.get("callers") or {}).items()}
    for name, identity in connecting.items():
        found = re.match(r"spiffe://[^/]+/ns/([^/]+)/sa/", str(identity))
        if found and not any(admits(peer, found.group(1)) for peer in peers):
            problems.append(f"{name} ({identity}) is in namespace {found.group(1)}, "
                            "which no gRPC ingress rule admits")
    return "; ".join(problems) or None


def check_other_objects(docs: list[tuple[str, dict[str, Any]]], merged: dict[str, Any]) -> str | None:
    problems = []
    services = {d["metadata"]["name"]: d["spec"] for d in by_kind(docs, "Service")}
    svc = services.get(RELEASE, {})
    ports = {p["name"]: (p["port"], p.get("appProtocol")) for p in svc.get("ports", [])}
    health_port = merged["service"]["healthPort"]
    want_ports = {"grpc": (50051, "grpc")} | ({"metrics": (9464, "http")} if metrics_on(merged) else {}) \
        | ({"health": (health_port, "grpc")} if health_port else {})
    if svc.get("type") != "ClusterIP" or ports != want_ports:
        problems.append(f"Service {svc.get('type')} {ports}, want {want_ports}")
    headless = services.get(f"{RELEASE}-headless")
    if merged["service"]["headless"]["enabled"]:
        if not headless or headless.get("clusterIP") != "None" or [p["name"] for p in headless["ports"]] != ["grpc"] \
                or headless["selector"] != svc.get("selector"):
            problems.append(f"headless Service {headless}")
    elif headless is not None:
        problems.append("a headless Service while service.headless.enabled is false")
    low, high = replica_bounds(merged)
    pdbs = by_kind(docs, "PodDisruptionBudget")
    pdb_values = merged["podDisruptionBudget"]
    if pdb_values["enabled"] and low > 1:
        if len(pdbs) != 1:
            problems.append(f"{len(pdbs)} PodDisruptionBudget(s) with at least {low} replicas")
        else:
            spec = pdbs[0]["spec"]
            want = {k: pdb_values[k] for k in ("maxUnavailable", "minAvailable") if pdb_values.get(k) is not None}
            got = {k: spec[k] for k in ("maxUnavailable", "minAvailable") if k in spec}
            if pdbs[0]["apiVersion"] != "policy/v1" or got != want or len(want) != 1:
                problems.append(f"PodDisruptionBudget {got}, want policy/v1 with {want}")
            if isinstance(spec.get("minAvailable"), int) and spec["minAvailable"] >= low:
                problems.append(f"PDB minAvailable {spec['minAvailable']} blocks every eviction with {low} replicas")
    elif pdbs:
        problems.append(f"a PodDisruptionBudget with at most {low} replica(s) at the least (it would block node drains)")
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        spec = hpa["spec"]
        metric = spec["metrics"][0]["resource"]
        a = merged["autoscaling"]
        if (hpa["apiVersion"], spec["minReplicas"], spec["maxReplicas"], metric["name"], metric["target"]["averageUtilization"]) \
                != ("autoscaling/v2", a["minReplicas"], a["maxReplicas"], "cpu", a["targetCPUUtilizationPercentage"]):
            problems.append("HPA is not autoscaling/v2 with the values' bounds and CPU target")
        if spec["minReplicas"] > spec["maxReplicas"]:
            problems.append("HPA minReplicas > maxReplicas")
        if spec.get("behavior") != (a["behavior"] or None):
            problems.append(f"HPA behavior {spec.get('behavior')}, want {a['behavior']}")
        down = (spec.get("behavior") or {}).get("scaleDown", {})
        if merged["autoscaling"]["behavior"] and not down.get("stabilizationWindowSeconds"):
            problems.append("HPA scaleDown without a stabilization window")
    test = one(docs, "Pod")
    (tc,) = test["spec"]["containers"]
    if test["metadata"]["annotations"].get("helm.sh/hook") != "test":
        problems.append("test pod has no helm.sh/hook: test")
    want_image = image_ref(merged, merged["tests"]["image"], "")
    if tc["image"] != want_image or f"-addr={RELEASE}:{health_port}" not in tc["args"]:
        problems.append(f"test pod runs {tc['image']} {tc['args']}, want {want_image} on the health port {health_port}")
    if test["spec"].get("enableServiceLinks") is not merged["enableServiceLinks"]:
        problems.append(f"test pod enableServiceLinks {test['spec'].get('enableServiceLinks')}")
    grpc_clients = (merged["networkPolicy"]["ingress"]["grpc"].get("podSelector") or DEFAULT_GRPC_CLIENTS).get("matchLabels", {})
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


def check_pdb_version(docs: list[tuple[str, dict[str, Any]]], merged: dict[str, Any], version: str) -> str | None:
    """unhealthyPodEvictionPolicy (AlwaysAllow by default) from Kubernetes 1.27 on, never before
    (the field does not exist there)."""
    pdbs = by_kind(docs, "PodDisruptionBudget")
    if not pdbs:
        return None
    has_field = tuple(map(int, version.split(".")[:2])) >= (1, 27)
    want = merged["podDisruptionBudget"]["unhealthyPodEvictionPolicy"] or None if has_field else None
    got = pdbs[0]["spec"].get("unhealthyPodEvictionPolicy")
    return None if got == want else f"unhealthyPodEvictionPolicy {got!r}, want {want!r}"


def service_monitor_expected(merged: dict[str, Any], api_versions: list[str]) -> bool:
    sm = merged["serviceMonitor"]
    return bool(sm["enabled"] and metrics_on(merged) and (sm["force"] or "monitoring.coreos.com/v1" in api_versions))


def check_service_monitor(docs: list[tuple[str, dict[str, Any]]], merged: dict[str, Any],
                          api_versions: list[str]) -> str | None:
    found = by_kind(docs, "ServiceMonitor")
    if not service_monitor_expected(merged, api_versions):
        return f"{len(found)} ServiceMonitor(s) rendered (disabled, metrics off or no monitoring.coreos.com/v1)" \
            if found else None
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


def prometheus_rule_expected(merged: dict[str, Any], api_versions: list[str]) -> bool:
    pr = merged["prometheusRule"]
    return bool(pr["enabled"] and metrics_on(merged) and (pr["force"] or "monitoring.coreos.com/v1" in api_versions))


def expected_rules(merged: dict[str, Any]) -> dict[str, Any]:
    """The rules file as the chart must render it: runbook_url moved to prometheusRule.runbookUrl."""
    text = RULES_FILE.read_text()
    url = merged["prometheusRule"].get("runbookUrl")
    if url:
        text = text.replace("runbook_url: docs/runbook.md#", f"runbook_url: {url}#")
    return yaml.safe_load(text)


def promtool_check(groups: dict[str, Any]) -> str | None:
    """`promtool check rules` on the rendered rules (Debian's prometheus: scripts/debian-deps
    prometheus)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(groups, f)
        f.flush()
        try:
            proc = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True, check=False)
        except FileNotFoundError:
            return "promtool not found: scripts/debian-deps prometheus installs it"
    return None if proc.returncode == 0 else f"promtool check rules: {proc.stdout}{proc.stderr}"


def check_prometheus_rule(docs: list[tuple[str, dict[str, Any]]], merged: dict[str, Any],
                          api_versions: list[str]) -> str | None:
    """The PrometheusRule (no schema is bundled for its CRD): present exactly when expected, its
    spec the chart's rules file (runbook URLs moved), only the CRD's fields, labels from the
    values, and accepted by promtool."""
    found = by_kind(docs, "PrometheusRule")
    if not prometheus_rule_expected(merged, api_versions):
        return f"{len(found)} PrometheusRule(s) rendered (disabled, metrics off or no monitoring.coreos.com/v1)" \
            if found else None
    if len(found) != 1:
        return f"{len(found)} PrometheusRule(s) rendered"
    pr = found[0]
    values = merged["prometheusRule"]
    problems = []
    if pr["apiVersion"] != "monitoring.coreos.com/v1":
        problems.append(f"apiVersion {pr['apiVersion']}")
    if set(pr) != {"apiVersion", "kind", "metadata", "spec"} or set(pr["spec"]) != {"groups"}:
        problems.append(f"fields {sorted(pr)}, spec {sorted(pr['spec'])}")
    if pr["metadata"].get("namespace") != (values["namespace"] or NAMESPACE):
        problems.append(f"namespace {pr['metadata'].get('namespace')}")
    labels = pr["metadata"].get("labels", {})
    if any(labels.get(k) != v for k, v in values["labels"].items()) or "app.kubernetes.io/name" not in labels:
        problems.append(f"labels {labels}, want the chart's and {values['labels']}")
    want = expected_rules(merged)
    if pr["spec"] != want:
        problems.append("spec is not files/prometheus/rules.yaml (with prometheusRule.runbookUrl)")
    for group in pr["spec"].get("groups", []):
        if not set(group) <= RULE_GROUP_FIELDS:
            problems.append(f"group {group.get('name')}: fields {sorted(set(group) - RULE_GROUP_FIELDS)}")
        if not isinstance(group.get("name"), str) or not PROM_DURATION.match(str(group.get("interval", "0"))):
            problems.append(f"group {group.get('name')!r}: name or interval")
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            maps = [rule.get(k, {}) for k in ("labels", "annotations")]
            if not set(rule) <= RULE_FIELDS or not isinstance(rule.get("expr"), str) \
                    or ("alert" in rule) == ("record" in rule) or not isinstance(name, str):
                problems.append(f"rule {name}: fields {sorted(rule)}")
            if not PROM_DURATION.match(str(rule.get("for", "0"))):
                problems.append(f"rule {name}: for {rule.get('for')!r} is no duration")
            if not all(isinstance(m, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in m.items())
                       for m in maps):
                problems.append(f"rule {name}: labels and annotations must map strings to strings")
            url = (rule.get("annotations") or {}).get("runbook_url")
            prefix = (values.get("runbookUrl") or "docs/runbook.md") + "#"
            if "alert" in rule and not (url or "").startswith(prefix):
                problems.append(f"{rule['alert']}: runbook_url {url!r} is not under {prefix}")
    problems.append(promtool_check(pr["spec"]) or "")
    return "; ".join(p for p in problems if p) or None


def check_dashboard(docs: list[tuple[str, dict[str, Any]]], merged: dict[str, Any]) -> str | None:
    """The dashboard ConfigMap: present exactly when enabled (with metrics), labelled for the
    sidecar, holding files/grafana/c2p-enroll.json unchanged."""
    found = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == f"{RELEASE}-dashboard"]
    values = merged["grafanaDashboard"]
    if not (values["enabled"] and metrics_on(merged)):
        return f"{len(found)} dashboard ConfigMap(s) rendered while disabled" if found else None
    if len(found) != 1:
        return f"{len(found)} dashboard ConfigMap(s) rendered"
    cm = found[0]
    problems = []
    if cm["metadata"].get("namespace") != (values["namespace"] or NAMESPACE):
        problems.append(f"namespace {cm['metadata'].get('namespace')}")
    labels = cm["metadata"].get("labels", {})
    if any(labels.get(k) != v for k, v in values["labels"].items()):
        problems.append(f"labels {labels}, want {values['labels']}")
    if "grafana_dashboard" in values["labels"] and labels.get("grafana_dashboard") != "1":
        problems.append("the sidecar label grafana_dashboard is not \"1\"")
    if (cm["metadata"].get("annotations") or {}) != values["annotations"]:
        problems.append(f"annotations {cm['metadata'].get('annotations')}")
    data = cm.get("data", {})
    if list(data) != ["c2p-enroll.json"]:
        problems.append(f"data keys {list(data)}")
    elif json.loads(data["c2p-enroll.json"]) != json.loads(DASHBOARD_FILE.read_text()):
        problems.append("data is not files/grafana/c2p-enroll.json")
    return "; ".join(problems) or None


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
            api_versions = API_VERSIONS.get(label, [])
            checks.run(f"{label}: values match values.schema.json", lambda: chart.validate_schema(values))
            for version in (oldest, newest):
                def lint() -> str | None:
                    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{version}")
                    bad = report["errors"] + [m["error"] for m in report["messages"] if m["severity"] >= 2]
                    return "; ".join(bad) or None
                checks.run(f"{label}: helm lint --strict (Kubernetes {version})", lint)

                rendered: dict[str, Any] = {}

                def do_render() -> str | None:
                    rendered["manifests"] = render(chart, values, version, api_versions)
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
                checks.run(f"{label}: PodDisruptionBudget unhealthyPodEvictionPolicy only from Kubernetes 1.27 "
                           f"({version})", lambda: check_pdb_version(docs, merged, version))
                if version != newest:
                    continue
                checks.run(f"{label}: Deployment restricted (readOnlyRootFilesystem, runAsNonRoot, drop ALL, "
                           "seccomp RuntimeDefault) with gRPC probes", lambda: check_deployment(docs, values, merged))
                checks.run(f"{label}: config.toml parses as TOML, has only the service's settings, every *_file "
                           "on a read-only directory mount, the keys volume's files", lambda: check_config(docs, merged))
                checks.run(f"{label}: environment (C2P_REDIS__URL from a Secret, proxy variables, env; only "
                           "setting names under C2P_)", lambda: check_env(docs, merged))
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
                checks.run(f"{label}: NetworkPolicies (gRPC from clients, metrics from monitoring, health from "
                           "the test pod only; egress DNS, Redis, proxy or Mastercard CIDRs with except; test pod "
                           "DNS and health only)", lambda: check_network_policy(docs, merged))
                checks.run(f"{label}: every SPIFFE caller's namespace admitted to the gRPC port by the "
                           "NetworkPolicy", lambda: check_callers_reach_grpc(docs, merged))
                checks.run(f"{label}: Service (and headless), PDB, HPA, ServiceAccount, helm test pod",
                           lambda: check_other_objects(docs, merged))
                sm_state = "expected" if service_monitor_expected(merged, api_versions) else "absent"
                checks.run(f"{label}: ServiceMonitor monitoring.coreos.com/v1 on metrics /metrics ({sm_state}; API "
                           f"versions {api_versions or 'none'})",
                           lambda: check_service_monitor(docs, merged, api_versions))
                pr_state = "expected" if prometheus_rule_expected(merged, api_versions) else "absent"
                checks.run(f"{label}: PrometheusRule monitoring.coreos.com/v1 = files/prometheus/rules.yaml, promtool "
                           f"check rules ({pr_state})", lambda: check_prometheus_rule(docs, merged, api_versions))
                dash_state = "expected" if merged["grafanaDashboard"]["enabled"] and metrics_on(merged) else "absent"
                checks.run(f"{label}: Grafana dashboard ConfigMap with the sidecar label = files/grafana/c2p-enroll.json "
                           f"({dash_state})", lambda: check_dashboard(docs, merged))

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
            settings = flatten(tomllib.loads(config_map(docs)["data"]["config.toml"]))
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

        def render_docs(values: dict[str, Any], api_versions: list[str] | None = None,
                        version: str = newest) -> list[tuple[str, dict[str, Any]]]:
            return documents(render(chart, values, version, api_versions))

        def mesh_over_mutual_tls() -> str | None:
            peers = ["spiffe://bank.example/ns/istio-system/sa/ingress-gateway"]
            values = changed([_with("auth.identity", "mesh_header"), _with("auth.meshPeers", peers)])
            return check_auth(render_docs(values), chart.merge_values(values))
        checks.run("mesh_header over mutual TLS with auth.meshPeers renders them (auth.mesh_peers)",
                   mesh_over_mutual_tls)

        def validated(docs: list[tuple[str, dict[str, Any]]], name: str) -> str | None:
            out = Path(tmp) / "single" / name
            out.mkdir(parents=True)
            files = []
            for n, (_, doc) in enumerate(docs):
                if doc["kind"] not in UNVALIDATED_KINDS:
                    files.append(out / f"{n:02d}-{doc['kind'].lower()}.yaml")
                    files[-1].write_text(yaml.safe_dump(doc, sort_keys=False))
            return kube_validate(files, newest)

        def all_of(*problems: str | None) -> str | None:
            return "; ".join(p for p in problems if p) or None

        def sandbox_egress() -> str | None:
            values = {"config": {"mode": "sandbox"}}
            docs = render_docs(values)
            np = [d for d in by_kind(docs, "NetworkPolicy") if d["metadata"]["name"] == RELEASE][0]["spec"]
            ports = sorted({p["port"] for r in np["egress"] for p in r["ports"]})
            return all_of(check_network_policy(docs, chart.merge_values(values)),
                          None if ports == [53] else f"egress ports {ports}, want DNS only")
        checks.run("sandbox mode without Redis: egress to DNS only (no Mastercard, no Redis rule)", sandbox_egress)

        def selectors_replace() -> str | None:
            values = changed([_with("networkPolicy.ingress.grpc.podSelector", {"matchLabels": {"app": "card-gateway"}}),
                              _with("networkPolicy.egress.dns.podSelector", {"matchLabels": {"dns": "yes"}})])
            docs = render_docs(values)
            np = [d for d in by_kind(docs, "NetworkPolicy") if d["metadata"]["name"] == RELEASE][0]["spec"]
            problems = []
            want_from: dict[str, Any] = {"podSelector": {"matchLabels": {"app": "card-gateway"}}}
            namespaces = chart.merge_values(values)["networkPolicy"]["ingress"]["grpc"].get("namespaceSelector")
            if namespaces is not None:
                want_from["namespaceSelector"] = namespaces
            if np["ingress"][0]["from"] != [want_from]:
                problems.append(f"gRPC from {np['ingress'][0]['from']}")
            if np["egress"][0]["to"][0]["podSelector"] != {"matchLabels": {"dns": "yes"}}:
                problems.append(f"DNS to {np['egress'][0]['to']}")
            return all_of(*problems, check_network_policy(docs, chart.merge_values(values)))
        checks.run("NetworkPolicy selectors given replace the defaults whole ({app: card-gateway}, not merged with "
                   "c2p-enroll-client)", selectors_replace)

        def open_cidrs_with_except() -> str | None:
            values = changed([_with("networkPolicy.egress.mastercard.cidrs", ["0.0.0.0/0", "::/0", "10.96.0.0/12"])])
            docs = render_docs(values)
            np = [d for d in by_kind(docs, "NetworkPolicy") if d["metadata"]["name"] == RELEASE][0]["spec"]
            blocks = {p["ipBlock"]["cidr"]: p["ipBlock"].get("except") for r in np["egress"] for p in r.get("to", [])
                      if "ipBlock" in p}
            want = {"0.0.0.0/0": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
                                  "127.0.0.0/8"],
                    "::/0": ["fc00::/7", "fe80::/10"], "10.96.0.0/12": None}
            return all_of(None if blocks == want else f"ipBlocks {blocks}, want {want}",
                          check_network_policy(docs, chart.merge_values(values)), validated(docs, "except"))
        checks.run("Mastercard CIDRs 0.0.0.0/0, ::/0 and 10.96.0.0/12: except only the default ranges inside each "
                   "(validated)", open_cidrs_with_except)

        def proxy_ports() -> str | None:
            problems = []
            for url, port_value, want in (("https://proxy.bank.example", None, 443), ("http://proxy.bank.example", None, 80),
                                          ("http://10.30.0.10:3128/", None, 3128), ("http://proxy:3128", 8080, 8080),
                                          ("http://egress.proxy.svc:3128", 8080, 8080)):
                values = changed([_without("networkPolicy.egress.mastercard"), _with("proxy.httpsProxy", url),
                                  _with("networkPolicy.egress.proxy.cidrs", ["10.30.0.10/32"])]
                                 + ([_with("networkPolicy.egress.proxy.port", port_value)] if port_value else []))
                docs = render_docs(values)
                np = [d for d in by_kind(docs, "NetworkPolicy") if d["metadata"]["name"] == RELEASE][0]["spec"]
                got = [r["ports"][0]["port"] for r in np["egress"] if r.get("to") == [{"ipBlock": {"cidr": "10.30.0.10/32"}}]]
                if got != [want]:
                    problems.append(f"{url} (port {port_value}): proxy egress on {got}, want {want}")
                problems.append(check_network_policy(docs, chart.merge_values(values)) or "")
                problems.append(check_env(docs, chart.merge_values(values)) or "")
            return all_of(*problems)
        checks.run("proxy egress port from proxy.httpsProxy (443/80 by scheme, explicit port) or "
                   "networkPolicy.egress.proxy.port; HTTPS_PROXY/NO_PROXY set", proxy_ports)

        def durations_that_fit() -> str | None:
            problems = []
            for grace, period in (("1m", 66), ("60000ms", 66), ("1m 30s", 96), ("1.5s", 7), ("24s", 30)):
                try:
                    render_docs(changed([_with("config.shutdown.grace_period", grace),
                                         _with("terminationGracePeriodSeconds", period)]))
                except helm.HelmError as e:
                    problems.append(f"{grace} within {period} s refused: {e}")
            return all_of(*problems)
        checks.run("shutdown.grace_period 1m, 60000ms, 1m 30s, 1.5s, 24s within a long enough termination period "
                   "render", durations_that_fit)

        def pdb_bounds() -> str | None:
            problems = []
            for changes, want in (([_with("autoscaling.enabled", False), _with("replicaCount", 1)], 0),
                                  ([_with("autoscaling.minReplicas", 1)], 0),
                                  ([_with("autoscaling.enabled", False), _with("replicaCount", 3)], 1),
                                  ([], 1)):
                values = changed(changes)
                docs = render_docs(values)
                pdbs = by_kind(docs, "PodDisruptionBudget")
                if len(pdbs) != want:
                    problems.append(f"{len(pdbs)} PDB(s) with {replica_bounds(chart.merge_values(values))}, want {want}")
                problems.append(check_other_objects(docs, chart.merge_values(values)) or "")
            old = render_docs(changed([]), version=oldest)
            problems.append(check_pdb_version(old, chart.merge_values(base), oldest) or "")
            return all_of(*problems)
        checks.run("PodDisruptionBudget only with at least two replicas at the least (replicaCount 1 or HPA min 1: "
                   "none), maxUnavailable 1", pdb_bounds)

        def service_monitor_capability() -> str | None:
            values = changed([_with("serviceMonitor.enabled", True)])
            problems = []
            docs = render_docs(values)
            notes = render(chart, values, newest)
            notes_text = next(t for p, t in notes.items() if p.endswith("NOTES.txt"))
            if by_kind(docs, "ServiceMonitor") or "no ServiceMonitor was rendered" not in notes_text:
                problems.append("without monitoring.coreos.com/v1: a ServiceMonitor rendered, or NOTES silent")
            if len(by_kind(render_docs(values, ["monitoring.coreos.com/v1"]), "ServiceMonitor")) != 1:
                problems.append("with monitoring.coreos.com/v1: no ServiceMonitor")
            if len(by_kind(render_docs(changed([_with("serviceMonitor.enabled", True), _with("serviceMonitor.force", True)])),
                           "ServiceMonitor")) != 1:
                problems.append("with serviceMonitor.force: no ServiceMonitor")
            return all_of(*problems)
        checks.run("ServiceMonitor only when the cluster serves monitoring.coreos.com/v1 (or serviceMonitor.force)",
                   service_monitor_capability)

        def prometheus_rule_capability() -> str | None:
            values = changed([_with("prometheusRule.enabled", True)])
            problems = []
            docs = render_docs(values)
            notes_text = next(t for p, t in render(chart, values, newest).items() if p.endswith("NOTES.txt"))
            if by_kind(docs, "PrometheusRule") or "no\nPrometheusRule was rendered" not in notes_text:
                problems.append("without monitoring.coreos.com/v1: a PrometheusRule rendered, or NOTES silent")
            with_api = render_docs(values, ["monitoring.coreos.com/v1"])
            if len(by_kind(with_api, "PrometheusRule")) != 1:
                problems.append("with monitoring.coreos.com/v1: no PrometheusRule")
            problems.append(check_prometheus_rule(with_api, chart.merge_values(values), ["monitoring.coreos.com/v1"]) or "")
            forced = changed([_with("prometheusRule.enabled", True), _with("prometheusRule.force", True)])
            if len(by_kind(render_docs(forced), "PrometheusRule")) != 1:
                problems.append("with prometheusRule.force: no PrometheusRule")
            return all_of(*problems)
        checks.run("PrometheusRule only when the cluster serves monitoring.coreos.com/v1 (or prometheusRule.force); "
                   "runbook_url left as docs/runbook.md#<alert> without runbookUrl", prometheus_rule_capability)

        def monitoring_in_sandbox() -> str | None:
            values = {"config": {"mode": "sandbox"}, "prometheusRule": {"enabled": True, "force": True},
                      "grafanaDashboard": {"enabled": True, "namespace": "grafana"}}
            docs = render_docs(values)
            merged = chart.merge_values(values)
            return all_of(check_prometheus_rule(docs, merged, []), check_dashboard(docs, merged),
                          check_config(docs, merged), validated(docs, "monitoring-sandbox"))
        checks.run("sandbox mode with the PrometheusRule (forced) and the dashboard in Grafana's namespace renders "
                   "(validated; config.toml still found beside the dashboard's ConfigMap)", monitoring_in_sandbox)

        def redis_url_from_env() -> str | None:
            env = [{"name": "C2P_REDIS__URL", "valueFrom": {"secretKeyRef": {"name": "redis-url", "key": "url"}}}]
            values = changed([_without("config.redis"), _with("env", env)])
            docs = render_docs(values)
            merged = chart.merge_values(values)
            return all_of(check_network_policy(docs, merged), check_env(docs, merged), check_config(docs, merged))
        checks.run("mastercard mode with 2..6 replicas and C2P_REDIS__URL from env (secretKeyRef) renders, with "
                   "Redis egress", redis_url_from_env)

        def no_network_policy() -> str | None:
            values = changed([_with("networkPolicy.enabled", False), _with("networkPolicy.egress.mastercard.cidrs", [])])
            docs = render_docs(values)
            return f"{len(by_kind(docs, 'NetworkPolicy'))} NetworkPolicies" if by_kind(docs, "NetworkPolicy") else None
        checks.run("networkPolicy.enabled false: mastercard mode needs no egress CIDRs or proxy, no NetworkPolicy "
                   "rendered", no_network_policy)

    print(f"chart checks: {checks.passed} passed, {checks.failed} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
