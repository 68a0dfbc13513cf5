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
Where the chart mounts things inside the container.
*/}}
{{- define "c2p-enroll.configDir" -}}/etc/c2p-enroll{{- end }}
{{- define "c2p-enroll.keysDir" -}}/etc/c2p-enroll/keys{{- end }}

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
{{- include "c2p-enroll.tomlTable" (list "grpc" (include "c2p-enroll.tomlKV" (list "listen" $c.grpc.listen))) }}
{{- include "c2p-enroll.tomlTable" (list "metrics" (include "c2p-enroll.tomlKV" (list "listen" $c.metrics.listen))) }}
{{- $redis := list (include "c2p-enroll.tomlKV" (list "url" $c.redis.url)) (include "c2p-enroll.tomlKV" (list "cluster" $c.redis.cluster)) (include "c2p-enroll.tomlKV" (list "key_prefix" $c.redis.key_prefix)) }}
{{- include "c2p-enroll.tomlTable" (list "redis" (join "" $redis)) }}
{{- $log := list (include "c2p-enroll.tomlKV" (list "format" $c.log.format)) (include "c2p-enroll.tomlKV" (list "filter" $c.log.filter)) }}
{{- include "c2p-enroll.tomlTable" (list "log" (join "" $log)) }}
{{- include "c2p-enroll.tomlTable" (list "shutdown" (include "c2p-enroll.tomlKV" (list "grace_period" $c.shutdown.grace_period))) }}
{{- include "c2p-enroll.tomlTable" (list "enroll" (include "c2p-enroll.tomlKV" (list "lease" $c.enroll.lease))) }}
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
