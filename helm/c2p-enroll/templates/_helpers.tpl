{{/*
The chart name, or nameOverride.
*/}}
{{- define "c2p-enroll.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the resources: fullnameOverride, or <release>-<name> (just the release name
when it already contains the chart name). Truncated to 63 characters for DNS names.
*/}}
{{- define "c2p-enroll.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "c2p-enroll.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "c2p-enroll.labels" -}}
helm.sh/chart: {{ include "c2p-enroll.chart" . }}
{{ include "c2p-enroll.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: c2p-enroll
{{- end }}

{{/*
Selector labels: the Deployment's, the Service's, the PDB's, the NetworkPolicy's and the
topology spread's. Nothing but the service's pods may carry both.
*/}}
{{- define "c2p-enroll.selectorLabels" -}}
app.kubernetes.io/name: {{ include "c2p-enroll.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The ServiceAccount's name.
*/}}
{{- define "c2p-enroll.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "c2p-enroll.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The container image: repository:tag, or repository@digest.
*/}}
{{- define "c2p-enroll.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The helm test pod's labels, by which the NetworkPolicy admits it to the health port. Not the
selector labels: the Service, PDB and NetworkPolicy must not select this pod.
*/}}
{{- define "c2p-enroll.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "c2p-enroll.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end }}

{{/*
Where the chart mounts things inside the container. Every Secret and ConfigMap is mounted as a
directory, never through subPath: subPath mounts are not updated when the object changes, and
the TLS files must follow cert-manager's in-place rotation.
*/}}
{{- define "c2p-enroll.configDir" -}}/etc/c2p-enroll{{- end }}
{{- define "c2p-enroll.keysDir" -}}/etc/c2p-enroll/keys{{- end }}
{{- define "c2p-enroll.tlsDir" -}}/etc/c2p-enroll/tls{{- end }}
{{- define "c2p-enroll.clientCADir" -}}/etc/c2p-enroll/client-ca{{- end }}
{{- define "c2p-enroll.fingerprintDir" -}}/etc/c2p-enroll/fingerprint{{- end }}
{{- define "c2p-enroll.redisDir" -}}/etc/c2p-enroll/redis{{- end }}
{{- define "c2p-enroll.redisCADir" -}}/etc/c2p-enroll/redis-ca{{- end }}

{{/*
The Secret with the gRPC server certificate: tls.existingSecret, or the cert-manager
Certificate's secretName (<fullname>-tls by default). Empty without TLS.
*/}}
{{- define "c2p-enroll.tlsSecretName" -}}
{{- if .Values.tls.enabled }}
{{- if .Values.tls.certManager.enabled }}
{{- .Values.tls.certManager.secretName | default (printf "%s-tls" (include "c2p-enroll.fullname" .)) }}
{{- else }}
{{- .Values.tls.existingSecret }}
{{- end }}
{{- end }}
{{- end }}

{{/*
grpc.tls.client_ca_file, or nothing without a client CA.
*/}}
{{- define "c2p-enroll.clientCAFile" -}}
{{- $ca := .Values.tls.clientCA }}
{{- if and .Values.tls.enabled (eq $ca.source "tlsSecret") }}
{{- printf "%s/ca.crt" (include "c2p-enroll.tlsDir" .) }}
{{- else if and .Values.tls.enabled (has $ca.source (list "secret" "configMap")) }}
{{- printf "%s/ca.crt" (include "c2p-enroll.clientCADir" .) }}
{{- end }}
{{- end }}

{{/*
The caller identity the service will use: auth.identity, else its default (certificate with a
client CA, none otherwise).
*/}}
{{- define "c2p-enroll.identity" -}}
{{- if .Values.auth.identity }}
{{- .Values.auth.identity }}
{{- else if include "c2p-enroll.clientCAFile" . }}
{{- "certificate" }}
{{- else }}
{{- "none" }}
{{- end }}
{{- end }}

{{/*
health.listen: config.health.listen, or every address on containerPorts.health.
*/}}
{{- define "c2p-enroll.healthListen" -}}
{{- (.Values.config.health | default dict).listen | default (printf "0.0.0.0:%v" .Values.containerPorts.health) }}
{{- end }}

{{/*
Whether the keys Secret is mounted.
*/}}
{{- define "c2p-enroll.mountKeys" -}}
{{- if .Values.keys.existingSecret }}true{{- end }}
{{- end }}

{{/*
Checks of the values that the schema cannot express; fails rendering with a clear message.
*/}}
{{- define "c2p-enroll.validate" -}}
{{- $mode := .Values.config.mode | default "mastercard" }}
{{- if and (eq $mode "mastercard") (not .Values.keys.existingSecret) }}
{{- fail "keys.existingSecret is required in mastercard mode: create a Secret holding the Mastercard key files (see keys.files in values.yaml) and set keys.existingSecret to its name" }}
{{- end }}
{{- if and (eq $mode "mastercard") (not .Values.enroll.fingerprintKey.existingSecret) }}
{{- fail "enroll.fingerprintKey.existingSecret is required in mastercard mode: create a Secret holding at least 32 random bytes (e.g. kubectl create secret generic c2p-enroll-fingerprint --from-file=fingerprint.key), shared by every replica, and set enroll.fingerprintKey.existingSecret to its name" }}
{{- end }}
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
{{- /* As the service: a loopback listener (behind a sidecar) is the one exception. */}}
{{- $loopback := regexMatch "^(127\\.[0-9.]+|\\[::1\\]):[0-9]+$" (.Values.config.grpc.listen | toString) }}
{{- if and (eq $mode "mastercard") (eq $identity "none") (not $loopback) }}
{{- fail "mastercard mode refuses auth.identity none (every caller anonymous): set tls.enabled with tls.clientCA (identity certificate), or auth.identity mesh_header behind a service mesh that terminates mutual TLS" }}
{{- end }}
{{- if and (eq $identity "none") .Values.auth.callers }}
{{- fail "auth.callers is set but auth.identity is none: no caller would ever be identified; set tls.clientCA or auth.identity" }}
{{- end }}
{{- if and (ne $identity "none") (not .Values.auth.callers) }}
{{- fail (printf "auth.callers is empty with auth.identity %s: no caller could call anything; add at least one caller (identity and rpcs)" $identity) }}
{{- end }}
{{- $identities := dict }}
{{- range $name, $caller := .Values.auth.callers }}
{{- if and (has "EnrollCard" $caller.rpcs) (not $caller.programs) }}
{{- fail (printf "auth.callers.%s: programs is required when rpcs has EnrollCard ([\"*\"] allows any program)" $name) }}
{{- end }}
{{- if hasKey $identities $caller.identity }}
{{- fail (printf "auth.callers.%s and auth.callers.%s have the same identity %s" (get $identities $caller.identity) $name $caller.identity) }}
{{- end }}
{{- $_ := set $identities $caller.identity $name }}
{{- end }}
{{- $urls := .Values.config.redis.url | default list }}
{{- if kindIs "string" $urls }}{{ $urls = list $urls }}{{ end }}
{{- range $urls }}
{{- if regexMatch "^[a-zA-Z][a-zA-Z0-9+.-]*://[^/@]*:[^/@]*@" . }}
{{- fail "config.redis.url holds a password, which would land in the ConfigMap: take it out of the URL and put it in a Secret named by redis.passwordSecret (and the ACL user in redis.username)" }}
{{- end }}
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
{{- $healthPort := .Values.containerPorts.health }}
{{- if has (int $healthPort) (list (int .Values.containerPorts.grpc) (int .Values.containerPorts.metrics)) }}
{{- fail (printf "containerPorts.health (%v) must differ from containerPorts.grpc and containerPorts.metrics" $healthPort) }}
{{- end }}
{{- $healthListen := include "c2p-enroll.healthListen" . }}
{{- if not (hasSuffix (printf ":%v" $healthPort) $healthListen) }}
{{- fail (printf "config.health.listen (%s) must listen on containerPorts.health (%v)" $healthListen $healthPort) }}
{{- end }}
{{- if eq $mode "mastercard" }}
{{- range $api := list "processing" "enroll" }}
{{- range $field := list "base_url" "consumer_key" }}
{{- if not (index (index $.Values.config.mastercard $api) $field) }}
{{- fail (printf "config.mastercard.%s.%s is required in mastercard mode" $api $field) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $field := list "src_client_id" "service_id" }}
{{- if not (index $.Values.config.programs.default $field) }}
{{- fail (printf "config.programs.default.%s is required in mastercard mode" $field) }}
{{- end }}
{{- end }}
{{- end }}
{{- $grpcListen := .Values.config.grpc.listen | default "" | toString }}
{{- if and $grpcListen (not (hasSuffix (printf ":%v" .Values.containerPorts.grpc) $grpcListen)) }}
{{- fail (printf "config.grpc.listen (%s) must listen on containerPorts.grpc (%v)" $grpcListen .Values.containerPorts.grpc) }}
{{- end }}
{{- $metricsListen := .Values.config.metrics.listen | default "" | toString }}
{{- if and $metricsListen (not (hasSuffix (printf ":%v" .Values.containerPorts.metrics) $metricsListen)) }}
{{- fail (printf "config.metrics.listen (%s) must listen on containerPorts.metrics (%v)" $metricsListen .Values.containerPorts.metrics) }}
{{- end }}
{{- $grace := .Values.config.shutdown.grace_period | default "10s" | toString }}
{{- if regexMatch "^[0-9]+s$" $grace }}
{{- $needed := add (int (trimSuffix "s" $grace)) (int .Values.lifecycle.preStopSleepSeconds) }}
{{- if le (int .Values.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed lifecycle.preStopSleepSeconds + config.shutdown.grace_period (%v s)" .Values.terminationGracePeriodSeconds $needed) }}
{{- end }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set either minAvailable or maxUnavailable, not both" }}
{{- end }}
{{- end }}

{{/*
One TOML "key = value" line; nothing for a null or empty value. Argument: (list key value).
Strings are written as TOML basic strings (JSON string escaping is valid TOML), a list of
strings as their comma-separated text (redis.url's seed nodes).
*/}}
{{- define "c2p-enroll.tomlKV" -}}
{{- $key := index . 0 }}
{{- $value := index . 1 }}
{{- if kindIs "bool" $value }}
{{ $key }} = {{ $value }}
{{- else if and (kindIs "float64" $value) (eq $value (float64 (int64 $value))) }}
{{- /* Values files give every number as a float64, which prints 1e+06 for 1000000. */}}
{{ $key }} = {{ int64 $value }}
{{- else if or (kindIs "float64" $value) (kindIs "int64" $value) (kindIs "int" $value) }}
{{ $key }} = {{ $value }}
{{- else if kindIs "slice" $value }}
{{- if $value }}
{{ $key }} = {{ join "," $value | toJson }}
{{- end }}
{{- else if and (not (kindIs "invalid" $value)) (ne (toString $value) "") }}
{{ $key }} = {{ toString $value | toJson }}
{{- end }}
{{- end }}

{{/*
One TOML "key = [strings]" line (an inline array; a JSON array of strings is one); nothing for
an empty list. Argument: (list key list).
*/}}
{{- define "c2p-enroll.tomlArray" -}}
{{- $value := index . 1 }}
{{- if $value }}
{{ index . 0 }} = {{ $value | toJson }}
{{- end }}
{{- end }}

{{/*
A TOML table: its header and its lines, or nothing when it has no line.
Argument: (list name lines).
*/}}
{{- define "c2p-enroll.tomlTable" -}}
{{- $lines := index . 1 | trim }}
{{- if $lines }}

[{{ index . 0 }}]
{{ $lines }}
{{- end }}
{{- end }}

{{/*
The settings of one Mastercard API (processing or enroll) as a TOML fragment.
Argument: (list $ "processing"|"enroll").
*/}}
{{- define "c2p-enroll.tomlApi" -}}
{{- $root := index . 0 }}
{{- $api := index . 1 }}
{{- $section := index $root.Values.config.mastercard $api | default dict }}
{{- $files := $root.Values.keys.files }}
{{- $dir := include "c2p-enroll.keysDir" $root }}
{{- $mount := include "c2p-enroll.mountKeys" $root }}
{{- $lines := list }}
{{- $lines = append $lines (include "c2p-enroll.tomlKV" (list "base_url" $section.base_url)) }}
{{- $lines = append $lines (include "c2p-enroll.tomlKV" (list "consumer_key" $section.consumer_key)) }}
{{- if $mount }}
{{- $lines = append $lines (include "c2p-enroll.tomlKV" (list "signing_key_file" (printf "%s/%s" $dir (index $files (printf "%sSigningKey" $api))))) }}
{{- $lines = append $lines (include "c2p-enroll.tomlKV" (list "signing_key_password_file" (printf "%s/%s" $dir (index $files (printf "%sSigningKeyPassword" $api))))) }}
{{- end }}
{{- $lines = append $lines (include "c2p-enroll.tomlKV" (list "signature_method" $section.signature_method)) }}
{{- include "c2p-enroll.tomlTable" (list (printf "mastercard.%s" $api) (join "" $lines)) }}
{{- $pe := $section.payload_encryption | default dict }}
{{- $peLines := list (include "c2p-enroll.tomlKV" (list "enabled" $pe.enabled)) }}
{{- if and $pe.enabled $mount }}
{{- $peLines = append $peLines (include "c2p-enroll.tomlKV" (list "encryption_certificate_file" (printf "%s/%s" $dir (index $files (printf "%sPayloadEncryptionCertificate" $api))))) }}
{{- $peLines = append $peLines (include "c2p-enroll.tomlKV" (list "decryption_key_file" (printf "%s/%s" $dir (index $files (printf "%sPayloadDecryptionKey" $api))))) }}
{{- $peLines = append $peLines (include "c2p-enroll.tomlKV" (list "decryption_key_password_file" (printf "%s/%s" $dir (index $files (printf "%sPayloadDecryptionKeyPassword" $api))))) }}
{{- end }}
{{- include "c2p-enroll.tomlTable" (list (printf "mastercard.%s.payload_encryption" $api) (join "" $peLines)) }}
{{- end }}

{{/*
The whole config.toml.
*/}}
{{- define "c2p-enroll.configToml" -}}
{{- $c := .Values.config }}
{{- $dir := include "c2p-enroll.keysDir" . -}}
# c2p-enroll settings, rendered by the {{ include "c2p-enroll.chart" . }} Helm chart.
# C2P_* environment variables override them (C2P_REDIS__URL for redis.url).
{{- include "c2p-enroll.tomlKV" (list "mode" $c.mode) }}
{{- $grpc := list (include "c2p-enroll.tomlKV" (list "listen" $c.grpc.listen)) (include "c2p-enroll.tomlKV" (list "reflection" $c.grpc.reflection)) }}
{{- include "c2p-enroll.tomlTable" (list "grpc" (join "" $grpc)) }}
{{- if .Values.tls.enabled }}
{{- $tlsDir := include "c2p-enroll.tlsDir" . }}
{{- $grpcTls := list (include "c2p-enroll.tomlKV" (list "cert_file" (printf "%s/tls.crt" $tlsDir))) (include "c2p-enroll.tomlKV" (list "key_file" (printf "%s/tls.key" $tlsDir))) (include "c2p-enroll.tomlKV" (list "client_ca_file" (include "c2p-enroll.clientCAFile" .))) (include "c2p-enroll.tomlKV" (list "reload_interval" .Values.tls.reloadInterval)) }}
{{- include "c2p-enroll.tomlTable" (list "grpc.tls" (join "" $grpcTls)) }}
{{- end }}
{{- $limits := list }}
{{- range $key := list "max_message_bytes" "max_concurrent_streams" "max_watch_streams" "max_ingest_streams" "handshake_timeout" "keepalive_interval" "keepalive_timeout" "default_deadline" }}
{{- $limits = append $limits (include "c2p-enroll.tomlKV" (list $key (index ($c.grpc.limits | default dict) $key))) }}
{{- end }}
{{- include "c2p-enroll.tomlTable" (list "grpc.limits" (join "" $limits)) }}
{{- include "c2p-enroll.tomlTable" (list "health" (include "c2p-enroll.tomlKV" (list "listen" (include "c2p-enroll.healthListen" .)))) }}
{{- include "c2p-enroll.tomlTable" (list "metrics" (include "c2p-enroll.tomlKV" (list "listen" $c.metrics.listen))) }}
{{- $auth := list (include "c2p-enroll.tomlKV" (list "identity" .Values.auth.identity)) (include "c2p-enroll.tomlKV" (list "mesh_header" .Values.auth.meshHeader)) }}
{{- include "c2p-enroll.tomlTable" (list "auth" (join "" $auth)) }}
{{- range $name, $caller := .Values.auth.callers }}
{{- $lines := list (include "c2p-enroll.tomlKV" (list "identity" $caller.identity)) (include "c2p-enroll.tomlArray" (list "rpcs" $caller.rpcs)) (include "c2p-enroll.tomlArray" (list "programs" $caller.programs)) }}
{{- include "c2p-enroll.tomlTable" (list (printf "auth.callers.%s" $name) (join "" $lines)) }}
{{- end }}
{{- $redis := list (include "c2p-enroll.tomlKV" (list "url" $c.redis.url)) (include "c2p-enroll.tomlKV" (list "cluster" $c.redis.cluster)) (include "c2p-enroll.tomlKV" (list "key_prefix" $c.redis.key_prefix)) (include "c2p-enroll.tomlKV" (list "username" .Values.redis.username)) }}
{{- if .Values.redis.passwordSecret.name }}
{{- $redis = append $redis (include "c2p-enroll.tomlKV" (list "password_file" (printf "%s/password" (include "c2p-enroll.redisDir" .)))) }}
{{- end }}
{{- if .Values.redis.ca.source }}
{{- $redis = append $redis (include "c2p-enroll.tomlKV" (list "ca_file" (printf "%s/ca.crt" (include "c2p-enroll.redisCADir" .)))) }}
{{- end }}
{{- include "c2p-enroll.tomlTable" (list "redis" (join "" $redis)) }}
{{- $log := list (include "c2p-enroll.tomlKV" (list "format" $c.log.format)) (include "c2p-enroll.tomlKV" (list "filter" $c.log.filter)) }}
{{- include "c2p-enroll.tomlTable" (list "log" (join "" $log)) }}
{{- include "c2p-enroll.tomlTable" (list "shutdown" (include "c2p-enroll.tomlKV" (list "grace_period" $c.shutdown.grace_period))) }}
{{- $enroll := list (include "c2p-enroll.tomlKV" (list "lease" $c.enroll.lease)) }}
{{- if .Values.enroll.fingerprintKey.existingSecret }}
{{- $enroll = append $enroll (include "c2p-enroll.tomlKV" (list "fingerprint_key_file" (printf "%s/fingerprint.key" (include "c2p-enroll.fingerprintDir" .)))) }}
{{- end }}
{{- include "c2p-enroll.tomlTable" (list "enroll" (join "" $enroll)) }}
{{- include "c2p-enroll.tomlApi" (list . "processing") }}
{{- include "c2p-enroll.tomlApi" (list . "enroll") }}
{{- $p := $c.programs.default | default dict }}
{{- $program := list (include "c2p-enroll.tomlKV" (list "src_client_id" $p.src_client_id)) (include "c2p-enroll.tomlKV" (list "service_id" $p.service_id)) }}
{{- if include "c2p-enroll.mountKeys" . }}
{{- $program = append $program (include "c2p-enroll.tomlKV" (list "enroll_encryption_certificate_file" (printf "%s/%s" $dir .Values.keys.files.enrollEncryptionCertificate))) }}
{{- end }}
{{- $program = append $program (include "c2p-enroll.tomlKV" (list "privacy_uri" $p.privacy_uri)) }}
{{- $program = append $program (include "c2p-enroll.tomlKV" (list "terms_uri" $p.terms_uri)) }}
{{- include "c2p-enroll.tomlTable" (list "programs.default" (join "" $program)) }}
{{- end }}
