{{/*
Checks of the values that the schema cannot express; fails rendering with a clear message.
Included by the ConfigMap and the Deployment.
*/}}
{{- define "c2p-enroll.validate" -}}
{{- $mode := .Values.config.mode | default "mastercard" }}
{{- $mastercard := eq $mode "mastercard" }}

{{- /* Keys and fingerprint key. */}}
{{- if and .Values.keys.existingSecret .Values.keys.csi }}
{{- fail "keys: set either keys.existingSecret or keys.csi, not both" }}
{{- end }}
{{- if and $mastercard (not (include "c2p-enroll.mountKeys" .)) }}
{{- fail "keys.existingSecret is required in mastercard mode: create a Secret holding the Mastercard key files (see keys.files in values.yaml) and set keys.existingSecret to its name (or give keys.csi)" }}
{{- end }}
{{- if and $mastercard (not .Values.enroll.fingerprintKey.existingSecret) }}
{{- fail "enroll.fingerprintKey.existingSecret is required in mastercard mode: create a Secret holding at least 32 random bytes (e.g. kubectl create secret generic c2p-enroll-fingerprint --from-file=fingerprint.key), shared by every replica, and set enroll.fingerprintKey.existingSecret to its name" }}
{{- end }}

{{- /* TLS and callers. */}}
{{- $tls := .Values.tls }}
{{- if $tls.enabled }}
{{- if and $tls.existingSecret $tls.certManager.enabled }}
{{- fail "tls: set either tls.existingSecret or tls.certManager.enabled, not both" }}
{{- end }}
{{- if not (or $tls.existingSecret $tls.certManager.enabled) }}
{{- fail "tls.enabled needs a certificate: set tls.existingSecret (a kubernetes.io/tls Secret) or tls.certManager.enabled" }}
{{- end }}
{{- if and $tls.certManager.enabled (not $tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.issuerRef.name is required with tls.certManager.enabled" }}
{{- end }}
{{- else if or $tls.existingSecret $tls.certManager.enabled $tls.clientCA.source }}
{{- fail "tls.existingSecret, tls.certManager.enabled and tls.clientCA.source need tls.enabled: true (the gRPC port is plaintext without it)" }}
{{- end }}
{{- if and (has $tls.clientCA.source (list "secret" "configMap")) (not $tls.clientCA.name) }}
{{- fail (printf "tls.clientCA.name is required with tls.clientCA.source %s" $tls.clientCA.source) }}
{{- end }}
{{- $identity := include "c2p-enroll.identity" . }}
{{- if and (eq $identity "certificate") (not (include "c2p-enroll.clientCAFile" .)) }}
{{- fail "auth.identity certificate needs client certificates: set tls.enabled and tls.clientCA" }}
{{- end }}

{{- /* Listeners: never on loopback (the Service and the kubelet reach the pod's address). */}}
{{- $grpcListen := .Values.config.grpc.listen | default "" | toString }}
{{- if include "c2p-enroll.isLoopback" $grpcListen }}
{{- fail (printf "config.grpc.listen (%s) is a loopback address, which the Service cannot reach (no call would ever arrive): listen on 0.0.0.0:%v" $grpcListen .Values.containerPorts.grpc) }}
{{- end }}
{{- if and $mastercard (eq $identity "none") }}
{{- fail "mastercard mode refuses auth.identity none (every caller anonymous): set tls.enabled with tls.clientCA (identity certificate), or auth.identity mesh_header behind a service mesh that terminates mutual TLS" }}
{{- end }}
{{- if and (eq $identity "none") .Values.auth.callers }}
{{- fail "auth.callers is set but auth.identity is none: no caller would ever be identified; set tls.clientCA or auth.identity" }}
{{- end }}
{{- if and (ne $identity "none") (not .Values.auth.callers) }}
{{- fail (printf "auth.callers is empty with auth.identity %s: no caller could call anything; add at least one caller (identity and rpcs)" $identity) }}
{{- end }}
{{- /* The same policy checks as the binary's (src/config/validate_security.rs). */}}
{{- if and (eq $identity "mesh_header") $tls.enabled (not (include "c2p-enroll.clientCAFile" .)) }}
{{- fail "auth.identity mesh_header with server-only TLS lets any client that reaches the port set the header: add tls.clientCA and auth.meshPeers so only the mesh's certificates are believed, or serve plaintext to the mesh sidecar" }}
{{- end }}
{{- if and (eq $identity "mesh_header") $tls.enabled (include "c2p-enroll.clientCAFile" .) (not .Values.auth.meshPeers) }}
{{- fail "auth.identity mesh_header with tls.clientCA needs auth.meshPeers: the identities of the mesh proxies' certificates, the only connections whose header is believed (every other client the CA signed could name itself any caller)" }}
{{- end }}
{{- if and .Values.auth.meshPeers (or (ne $identity "mesh_header") (not $tls.enabled) (not (include "c2p-enroll.clientCAFile" .))) }}
{{- fail "auth.meshPeers is only read with auth.identity mesh_header over mutual TLS (tls.enabled and tls.clientCA)" }}
{{- end }}
{{- $programs := list "default" "directory" }}
{{- if $mastercard }}{{ $programs = keys .Values.config.programs }}{{ end }}
{{- $identities := dict }}
{{- range $name, $caller := .Values.auth.callers }}
{{- $usesPrograms := gt (len (without ($caller.rpcs | default list) "NotificationIngest")) 0 }}
{{- if and $usesPrograms (not $caller.programs) }}
{{- fail (printf "auth.callers.%s: programs is required with every RPC but NotificationIngest: the programs whose cards it may enroll, see and change ([\"*\"] allows any program)" $name) }}
{{- end }}
{{- range $caller.programs }}
{{- if and (ne . "*") (not (has . $programs)) }}
{{- fail (printf "auth.callers.%s.programs: %s is not a configured program (%s)" $name . (join ", " $programs)) }}
{{- end }}
{{- end }}
{{- if and (eq $identity "certificate") (not (regexMatch "^(spiffe://.+|[A-Za-z0-9.*-]+)$" (toString $caller.identity))) }}
{{- fail (printf "auth.callers.%s.identity: a certificate names a caller by a SPIFFE id (spiffe://...) or a DNS name; %s can never match" $name (toString $caller.identity)) }}
{{- end }}
{{- if hasKey $identities $caller.identity }}
{{- fail (printf "auth.callers.%s and auth.callers.%s have the same identity %s" (get $identities $caller.identity) $name $caller.identity) }}
{{- end }}
{{- $_ := set $identities $caller.identity $name }}
{{- end }}

{{- /* Redis: no credentials in values, one URL source, shared by every replica. */}}
{{- $urls := .Values.config.redis.url | default list }}
{{- if kindIs "string" $urls }}{{ $urls = list $urls }}{{ end }}
{{- range $urls }}
{{- if regexMatch "^[a-zA-Z][a-zA-Z0-9+.-]*://[^/@]*@" . }}
{{- fail "config.redis.url holds a password or user, which would land in the ConfigMap: take them out of the URL; put the password in a Secret named by redis.passwordSecret and the ACL user in redis.username, or give the whole URL from a Secret with redis.urlSecret" }}
{{- end }}
{{- end }}
{{- if and .Values.redis.urlSecret.name .Values.config.redis.url }}
{{- fail "redis.urlSecret and config.redis.url are both set: give the Redis URL one way (C2P_REDIS__URL from the Secret would override the file)" }}
{{- end }}
{{- range .Values.env }}
{{- if and (eq .name "C2P_REDIS__URL") (hasKey . "value") }}
{{- fail "env C2P_REDIS__URL with a literal value would put the Redis URL (and any credentials in it) into the Deployment: use redis.urlSecret (a secretKeyRef)" }}
{{- end }}
{{- if and (eq .name "C2P_REDIS__URL") (or $.Values.redis.urlSecret.name $.Values.config.redis.url) }}
{{- fail "env sets C2P_REDIS__URL while config.redis.url or redis.urlSecret gives the Redis URL too: keep one" }}
{{- end }}
{{- end }}
{{- $maxReplicas := int (include "c2p-enroll.maxReplicas" .) }}
{{- if and $mastercard (gt $maxReplicas 1) (not (include "c2p-enroll.redisConfigured" .)) }}
{{- fail (printf "mastercard mode with up to %d replicas needs a shared Redis: set config.redis.url, or redis.urlSecret (a Secret holding the URL); without one every pod keeps its own in-memory store, so idempotency, enrollment leases, notification dedup and WatchEnrollment would not be shared (or run a single replica: replicaCount 1, autoscaling.enabled false)" $maxReplicas) }}
{{- end }}
{{- $redisCA := .Values.redis.ca }}
{{- if and (has $redisCA.source (list "secret" "configMap")) (not $redisCA.name) }}
{{- fail (printf "redis.ca.name is required with redis.ca.source %s" $redisCA.source) }}
{{- end }}
{{- if $redisCA.source }}
{{- range $urls }}
{{- if not (hasPrefix "rediss://" .) }}
{{- fail (printf "redis.ca is set but config.redis.url %s is not rediss:// (TLS)" .) }}
{{- end }}
{{- end }}
{{- end }}

{{- /* Environment: no C2P_ names that are no setting (typos), none the chart sets itself. */}}
{{- $chartEnv := list }}
{{- if .Values.redis.urlSecret.name }}{{ $chartEnv = append $chartEnv "C2P_REDIS__URL" }}{{ end }}
{{- if .Values.proxy.httpsProxy }}{{ $chartEnv = concat $chartEnv (list "HTTPS_PROXY" "https_proxy" "NO_PROXY" "no_proxy") }}{{ end }}
{{- range .Values.env }}
{{- if and (hasPrefix "C2P_" .name) (ne .name "C2P_MODE") (not (contains "__" .name)) }}
{{- fail (printf "env %s is not a setting name: settings are C2P_MODE and C2P_<SECTION>__<NAME>, a __ for each dot of the setting (e.g. C2P_REDIS__URL); the service would refuse it as unknown" .name) }}
{{- end }}
{{- if has .name $chartEnv }}
{{- fail (printf "env %s is set by the chart itself (redis.urlSecret, proxy.*): remove it from env" .name) }}
{{- end }}
{{- end }}

{{- /* Egress: Mastercard through a proxy, or to given CIDRs. */}}
{{- $proxy := .Values.proxy.httpsProxy }}
{{- $np := .Values.networkPolicy }}
{{- if $proxy }}
{{- if contains "@" $proxy }}
{{- fail "proxy.httpsProxy holds credentials, which would land in the Deployment: admit the pods at the proxy by their address instead (the NetworkPolicy limits who reaches it)" }}
{{- end }}
{{- if not (regexMatch "^https?://([A-Za-z0-9.-]+|\\[[0-9A-Fa-f:.]+\\])(:[0-9]+)?/?$" $proxy) }}
{{- fail (printf "proxy.httpsProxy (%s) must be http://host[:port] or https://host[:port]" $proxy) }}
{{- end }}
{{- end }}
{{- if $np.enabled }}
{{- if and $proxy $np.egress.mastercard.cidrs }}
{{- fail "networkPolicy.egress.mastercard.cidrs and proxy.httpsProxy are both set: with a proxy the pods reach Mastercard only through it (networkPolicy.egress.proxy); empty the CIDRs" }}
{{- end }}
{{- if and $proxy (not (or (kindIs "map" $np.egress.proxy.podSelector) (kindIs "map" $np.egress.proxy.namespaceSelector) $np.egress.proxy.cidrs)) }}
{{- fail "proxy.httpsProxy needs networkPolicy.egress.proxy.podSelector, namespaceSelector or cidrs: where the proxy is (else its port would be open towards anywhere)" }}
{{- end }}
{{- /* A proxy outside the cluster (cidrs, and a URL host that is no cluster Service name: an
address or an outside domain name) is reached on its URL's port: no Service translates it, and a
NetworkPolicy on another port blocks every Mastercard call. A Service without a selector
(endpoints at those addresses) may translate: its names are left alone. */}}
{{- $proxyHost := regexReplaceAll "^[a-z]+://([^:/]+).*$" ($proxy | default "") "${1}" }}
{{- $serviceName := or (not (contains "." $proxyHost)) (hasSuffix ".svc" $proxyHost) (contains ".svc." $proxyHost) }}
{{- if and $proxy $np.egress.proxy.cidrs (not $serviceName) (not (kindIs "invalid" $np.egress.proxy.port)) (not (or (kindIs "map" $np.egress.proxy.podSelector) (kindIs "map" $np.egress.proxy.namespaceSelector))) }}
{{- $urlPort := regexFind ":[0-9]+/?$" $proxy | trimSuffix "/" | trimPrefix ":" | default (ternary "443" "80" (hasPrefix "https://" $proxy)) }}
{{- if ne (int $urlPort) (int $np.egress.proxy.port) }}
{{- fail (printf "networkPolicy.egress.proxy.port (%v) differs from the port of proxy.httpsProxy (%s): a proxy reached by address (cidrs) is reached on the URL's port, which the NetworkPolicy would block; the override is for a proxy pod behind a Service (podSelector)" $np.egress.proxy.port $urlPort) }}
{{- end }}
{{- end }}
{{- if and $mastercard (not $proxy) (not $np.egress.mastercard.cidrs) }}
{{- fail "mastercard mode needs a way out to Mastercard: set proxy.httpsProxy (an egress proxy that allows only Mastercard's hosts; the NetworkPolicy then opens only the proxy), or networkPolicy.egress.mastercard.cidrs (Mastercard's published address ranges)" }}
{{- end }}
{{- end }}

{{- /* Ports and listeners. */}}
{{- $healthPort := .Values.containerPorts.health }}
{{- if has (int $healthPort) (list (int .Values.containerPorts.grpc) (int .Values.containerPorts.metrics)) }}
{{- fail (printf "containerPorts.health (%v) must differ from containerPorts.grpc and containerPorts.metrics" $healthPort) }}
{{- end }}
{{- $healthListen := include "c2p-enroll.healthListen" . }}
{{- if not (hasSuffix (printf ":%v" $healthPort) $healthListen) }}
{{- fail (printf "config.health.listen (%s) must listen on containerPorts.health (%v)" $healthListen $healthPort) }}
{{- end }}
{{- if include "c2p-enroll.isLoopback" $healthListen }}
{{- fail (printf "config.health.listen (%s) is a loopback address: the kubelet's probes could never reach it" $healthListen) }}
{{- end }}
{{- if and $grpcListen (not (hasSuffix (printf ":%v" .Values.containerPorts.grpc) $grpcListen)) }}
{{- fail (printf "config.grpc.listen (%s) must listen on containerPorts.grpc (%v)" $grpcListen .Values.containerPorts.grpc) }}
{{- end }}
{{- $metricsListen := (.Values.config.metrics | default dict).listen | default "" | toString }}
{{- if and $metricsListen (not (hasSuffix (printf ":%v" .Values.containerPorts.metrics) $metricsListen)) }}
{{- fail (printf "config.metrics.listen (%s) must listen on containerPorts.metrics (%v)" $metricsListen .Values.containerPorts.metrics) }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not $metricsListen) }}
{{- fail "serviceMonitor.enabled needs the metrics listener: set config.metrics.listen (e.g. 0.0.0.0:9464)" }}
{{- end }}
{{- if and .Values.prometheusRule.enabled (not $metricsListen) }}
{{- fail "prometheusRule.enabled needs the metrics listener: set config.metrics.listen (e.g. 0.0.0.0:9464)" }}
{{- end }}
{{- if and .Values.grafanaDashboard.enabled (not $metricsListen) }}
{{- fail "grafanaDashboard.enabled needs the metrics listener: set config.metrics.listen (e.g. 0.0.0.0:9464)" }}
{{- end }}

{{- /* Programs (mastercard mode: each complete). */}}
{{- if $mastercard }}
{{- range $api := list "processing" "enroll" }}
{{- range $field := list "base_url" "consumer_key" }}
{{- if not (index (index $.Values.config.mastercard $api) $field) }}
{{- fail (printf "config.mastercard.%s.%s is required in mastercard mode" $api $field) }}
{{- end }}
{{- end }}
{{- end }}
{{- if not (hasKey .Values.config.programs "default") }}
{{- fail "config.programs.default is required in mastercard mode (the program of requests that name none)" }}
{{- end }}
{{- range $name, $program := .Values.config.programs }}
{{- range $field := list "src_client_id" "service_id" }}
{{- if not (index ($program | default dict) $field) }}
{{- fail (printf "config.programs.%s.%s is required in mastercard mode" $name $field) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- /* The service's own bounds on durations (src/config/validate*.rs), so that a value set that
renders does not crash-loop (exit 2 at start): each given is a duration above zero, and within
its bounds (ms; 0: none). */}}
{{- $bounds := list
  (list "store.enrollment_ttl" 1000.0 0.0 "at least 1s")
  (list "store.not_enrolled_ttl" 1000.0 0.0 "at least 1s")
  (list "store.cache_max_age" 0.0 3600000.0 "at most 1h")
  (list "store.notification_dedup_ttl" 259200000.0 0.0 "at least 72h: senders retry for days")
  (list "store.idempotency_ttl" 86400000.0 0.0 "at least 24h: callers retry the next day")
  (list "notifications.max_age" 259200000.0 0.0 "at least 72h")
  (list "notifications.max_future_skew" 0.0 0.0 "")
  (list "enroll.lease" 0.0 0.0 "")
  (list "enroll.reconcile_interval" 0.0 0.0 "")
  (list "enroll.reconcile_after" 0.0 0.0 "")
  (list "health.check_interval" 0.0 0.0 "")
  (list "health.check_timeout" 0.0 0.0 "")
  (list "shutdown.grace_period" 0.0 0.0 "")
  (list "redis.connect_timeout" 0.0 0.0 "")
  (list "redis.response_timeout" 0.0 0.0 "")
  (list "grpc.limits.handshake_timeout" 0.0 0.0 "")
  (list "grpc.limits.keepalive_interval" 0.0 0.0 "")
  (list "grpc.limits.keepalive_timeout" 0.0 0.0 "")
  (list "grpc.limits.default_deadline" 0.0 0.0 "")
  (list "grpc.limits.watch_heartbeat_interval" 1000.0 0.0 "at least 1s") }}
{{- $durations := dict }}
{{- range $bounds }}
{{- $path := index . 0 }}
{{- $value := $.Values.config }}
{{- range splitList "." $path }}{{ $value = index ($value | default dict) . }}{{ end }}
{{- if and (not (kindIs "invalid" $value)) (ne (toString $value) "") }}
{{- $ms := include "c2p-enroll.durationMs" (toString $value) }}
{{- if not $ms }}
{{- fail (printf "config.%s (%v) is not a duration (e.g. 10s, 1m, 72h)" $path $value) }}
{{- end }}
{{- $_ := set $durations $path (float64 $ms) }}
{{- if le (float64 $ms) 0.0 }}
{{- fail (printf "config.%s (%v) must be greater than zero (the service refuses it at start)" $path $value) }}
{{- end }}
{{- if and (gt (index . 1) 0.0) (lt (float64 $ms) (index . 1)) }}
{{- fail (printf "config.%s (%v) must be %s (the service refuses it at start)" $path $value (index . 3)) }}
{{- end }}
{{- if and (gt (index . 2) 0.0) (gt (float64 $ms) (index . 2)) }}
{{- fail (printf "config.%s (%v) must be %s (the service refuses it at start)" $path $value (index . 3)) }}
{{- end }}
{{- end }}
{{- end }}
{{- /* A running attempt renews its lease: the reconciler finishes it only after (defaults 15s, 2m). */}}
{{- $lease := get $durations "enroll.lease" | default 15000.0 }}
{{- $after := get $durations "enroll.reconcile_after" | default 120000.0 }}
{{- if lt $after $lease }}
{{- fail (printf "config.enroll.reconcile_after (%v ms) must be at least config.enroll.lease (%v ms) (the service refuses it at start)" $after $lease) }}
{{- end }}

{{- /* Durations in any unit the service reads; the drain must fit the termination period. */}}
{{- $grace := .Values.config.shutdown.grace_period | default "10s" | toString }}
{{- $graceMs := include "c2p-enroll.durationMs" $grace }}
{{- if not $graceMs }}
{{- fail (printf "config.shutdown.grace_period (%s) is not a duration (e.g. 10s, 1m, 60000ms)" $grace) }}
{{- end }}
{{- $neededMs := addf (float64 $graceMs) (mulf (int .Values.lifecycle.preStopSleepSeconds) 1000) }}
{{- if le (mulf (int .Values.terminationGracePeriodSeconds) 1000) $neededMs }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed lifecycle.preStopSleepSeconds + config.shutdown.grace_period (%v s + %s = %v s)" .Values.terminationGracePeriodSeconds .Values.lifecycle.preStopSleepSeconds $grace (divf $neededMs 1000)) }}
{{- end }}
{{- range $key, $value := .Values.config.grpc.limits | default dict }}
{{- if and (kindIs "string" $value) $value (not (include "c2p-enroll.durationMs" $value)) }}
{{- fail (printf "config.grpc.limits.%s (%s) is not a duration" $key $value) }}
{{- end }}
{{- end }}

{{- /* Replicas, autoscaling and the disruption budget. */}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%v) must not exceed autoscaling.maxReplicas (%v)" .Values.autoscaling.minReplicas .Values.autoscaling.maxReplicas) }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if include "c2p-enroll.pdbOn" . }}
{{- $hasMin := not (kindIs "invalid" $pdb.minAvailable) }}
{{- $hasMax := not (kindIs "invalid" $pdb.maxUnavailable) }}
{{- if and $hasMin $hasMax }}
{{- fail "podDisruptionBudget: set either minAvailable or maxUnavailable, not both (set maxUnavailable: null to use minAvailable)" }}
{{- end }}
{{- if not (or $hasMin $hasMax) }}
{{- fail "podDisruptionBudget: set maxUnavailable (e.g. 1) or minAvailable; a budget with neither is invalid" }}
{{- end }}
{{- if and $hasMin (not (kindIs "string" $pdb.minAvailable)) (ge (int $pdb.minAvailable) (int (include "c2p-enroll.minReplicas" .))) }}
{{- fail (printf "podDisruptionBudget.minAvailable (%v) must be below the fewest replicas (%s), or no pod could ever be evicted and node drains would hang" $pdb.minAvailable (include "c2p-enroll.minReplicas" .)) }}
{{- end }}
{{- end }}

{{- /* Extra volumes: not over the chart's own mounts. */}}
{{- $chartPaths := list (include "c2p-enroll.configDir" .) (printf "%s/config.toml" (include "c2p-enroll.configDir" .)) (include "c2p-enroll.keysDir" .) (include "c2p-enroll.tlsDir" .) (include "c2p-enroll.clientCADir" .) (include "c2p-enroll.fingerprintDir" .) (include "c2p-enroll.redisDir" .) (include "c2p-enroll.redisCADir" .) (include "c2p-enroll.mastercardCADir" .) "/tmp" }}
{{- $extraMounts := list }}
{{- range .Values.extraVolumeMounts }}
{{- if has (trimSuffix "/" .mountPath) $chartPaths }}
{{- fail (printf "extraVolumeMounts: %s is one of the chart's own mounts; mount elsewhere (e.g. /etc/c2p-enroll/extra/...)" .mountPath) }}
{{- end }}
{{- if .readOnly }}{{ $extraMounts = append $extraMounts (printf "%s/" (trimSuffix "/" .mountPath)) }}{{ end }}
{{- end }}
{{- if and (has .Values.mastercardCA.source (list "secret" "configMap")) (not .Values.mastercardCA.name) }}
{{- fail (printf "mastercardCA.name is required with mastercardCA.source %s" .Values.mastercardCA.source) }}
{{- end }}

{{- /* config.extra: nothing the chart writes itself; files only on read-only extra mounts. */}}
{{- if and .Values.config.extra (hasKey .Values.config.extra "redis") (hasKey .Values.config.extra.redis "url") }}
{{- fail "config.extra.redis.url would put the Redis URL (and any credentials in it) into the ConfigMap and around the chart's Redis checks: use config.redis.url (no credentials) or redis.urlSecret" }}
{{- end }}
{{- if .Values.config.extra }}
{{- $chartKeys := include "c2p-enroll.leafKeys" (list "" (include "c2p-enroll.settings" . | fromJson)) | trim | splitList "\n" }}
{{- range $key := include "c2p-enroll.leafKeys" (list "" .Values.config.extra) | trim | splitList "\n" }}
{{- range $chartKeys }}
{{- if or (eq . $key) (hasPrefix (printf "%s." $key) .) (hasPrefix (printf "%s." .) $key) }}
{{- fail (printf "config.extra sets %s, which the chart writes itself (%s): set it through its own value" $key .) }}
{{- end }}
{{- end }}
{{- if hasSuffix "_file" $key }}
{{- $node := $.Values.config.extra }}
{{- range splitList "." $key }}{{ $node = index $node . }}{{ end }}
{{- $onMount := false }}
{{- range $extraMounts }}{{ if hasPrefix . (toString $node) }}{{ $onMount = true }}{{ end }}{{ end }}
{{- if not $onMount }}
{{- fail (printf "config.extra.%s (%v) is not under a read-only extraVolumeMounts path" $key $node) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
