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
An image reference: [registry/]repository@digest, else [registry/]repository:tag; the registry
is global.imageRegistry, else the image's own. Argument: (list $ image defaultTag).
*/}}
{{- define "c2p-enroll.imageRef" -}}
{{- $root := index . 0 }}
{{- $image := index . 1 }}
{{- $registry := ($root.Values.global | default dict).imageRegistry | default $image.registry }}
{{- $name := $image.repository }}
{{- if $registry }}
{{- $name = printf "%s/%s" (trimSuffix "/" $registry) $image.repository }}
{{- end }}
{{- if $image.digest }}
{{- printf "%s@%s" $name $image.digest }}
{{- else }}
{{- printf "%s:%s" $name ($image.tag | default (index . 2)) }}
{{- end }}
{{- end }}

{{/*
The service's container image.
*/}}
{{- define "c2p-enroll.image" -}}
{{- include "c2p-enroll.imageRef" (list . .Values.image .Chart.AppVersion) }}
{{- end }}

{{/*
The helm test pod's image.
*/}}
{{- define "c2p-enroll.testImage" -}}
{{- include "c2p-enroll.imageRef" (list . .Values.tests.image "") }}
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
{{- define "c2p-enroll.mastercardCADir" -}}/etc/c2p-enroll/mastercard-ca{{- end }}

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
Whether the keys are mounted (from keys.existingSecret or keys.csi).
*/}}
{{- define "c2p-enroll.mountKeys" -}}
{{- if or .Values.keys.existingSecret .Values.keys.csi }}true{{- end }}
{{- end }}

{{/*
Whether the metrics listener is on (config.metrics.listen set): its port, Service port,
NetworkPolicy rule and ServiceMonitor exist only then.
*/}}
{{- define "c2p-enroll.metricsOn" -}}
{{- if (.Values.config.metrics | default dict).listen }}true{{- end }}
{{- end }}

{{/*
Whether a Redis is configured: config.redis.url, redis.urlSecret, or C2P_REDIS__URL in env.
*/}}
{{- define "c2p-enroll.redisConfigured" -}}
{{- $fromEnv := false }}
{{- range .Values.env }}{{ if eq .name "C2P_REDIS__URL" }}{{ $fromEnv = true }}{{ end }}{{ end }}
{{- if or .Values.config.redis.url .Values.redis.urlSecret.name $fromEnv }}true{{- end }}
{{- end }}

{{/*
The fewest and the most pods the Deployment runs (the HPA's bounds while autoscaling).
*/}}
{{- define "c2p-enroll.minReplicas" -}}
{{- if .Values.autoscaling.enabled }}{{ int .Values.autoscaling.minReplicas }}{{ else }}{{ int .Values.replicaCount }}{{ end }}
{{- end }}
{{- define "c2p-enroll.maxReplicas" -}}
{{- if .Values.autoscaling.enabled }}{{ int .Values.autoscaling.maxReplicas }}{{ else }}{{ int .Values.replicaCount }}{{ end }}
{{- end }}

{{/*
Whether the PodDisruptionBudget is rendered: only when at least two pods run at the least
(with one, any budget blocks node drains).
*/}}
{{- define "c2p-enroll.pdbOn" -}}
{{- if and .Values.podDisruptionBudget.enabled (gt (int (include "c2p-enroll.minReplicas" .)) 1) }}true{{- end }}
{{- end }}

{{/*
A duration as the service reads it (humantime: "10s", "1m", "60000ms", "1h 30m", "1.5s") in
milliseconds (a float), or nothing when the text is not one. Argument: the text.
*/}}
{{- define "c2p-enroll.durationMs" -}}
{{- $text := toString . | trim }}
{{- $units := dict "nanos" 0.000001 "nsec" 0.000001 "ns" 0.000001 "usec" 0.001 "us" 0.001 "µs" 0.001 "millis" 1.0 "msec" 1.0 "ms" 1.0 "seconds" 1000.0 "second" 1000.0 "secs" 1000.0 "sec" 1000.0 "s" 1000.0 "minutes" 60000.0 "minute" 60000.0 "mins" 60000.0 "min" 60000.0 "m" 60000.0 "hours" 3600000.0 "hour" 3600000.0 "hrs" 3600000.0 "hr" 3600000.0 "h" 3600000.0 "days" 86400000.0 "day" 86400000.0 "d" 86400000.0 "weeks" 604800000.0 "week" 604800000.0 "wks" 604800000.0 "wk" 604800000.0 "w" 604800000.0 "months" 2630016000.0 "month" 2630016000.0 "M" 2630016000.0 "years" 31557600000.0 "year" 31557600000.0 "yrs" 31557600000.0 "yr" 31557600000.0 "y" 31557600000.0 }}
{{- if regexMatch "^([0-9]+(\\.[0-9]+)?\\s*[a-zA-Zµ]+\\s*)+$" $text }}
{{- $total := 0.0 }}
{{- $ok := true }}
{{- range regexFindAll "[0-9]+(\\.[0-9]+)?\\s*[a-zA-Zµ]+" $text -1 }}
{{- $unit := regexReplaceAll "^[0-9]+(\\.[0-9]+)?\\s*" . "" }}
{{- if hasKey $units $unit }}
{{- $total = addf $total (mulf (float64 (regexFind "^[0-9]+(\\.[0-9]+)?" .)) (get $units $unit)) }}
{{- else }}
{{- $ok = false }}
{{- end }}
{{- end }}
{{- if $ok }}{{ $total }}{{ end }}
{{- end }}
{{- end }}

{{/*
Whether an address ("host:port") is a loopback one, which nothing outside the pod reaches.
*/}}
{{- define "c2p-enroll.isLoopback" -}}
{{- if regexMatch "^(127\\.[0-9.]+|\\[::1\\]|localhost|\\[::ffff:127\\.[0-9.]+\\]):[0-9]+$" (toString .) }}true{{- end }}
{{- end }}

{{/*
The pod annotation that rolls the pods when keys.version changes (the keys, the fingerprint key
and the Redis password are read once, at start).
*/}}
{{- define "c2p-enroll.keysChecksum" -}}
{{- toString .Values.keys.version | sha256sum }}
{{- end }}


{{/*
The files of the keys volume that the settings name (a JSON list, sorted): the only ones
mounted (items), so that the pod sees no other key of the Secret.
*/}}
{{- define "c2p-enroll.keyFiles" -}}
{{- $prefix := printf "%s/" (include "c2p-enroll.keysDir" .) }}
{{- $files := list }}
{{- range regexFindAll (printf "\"%s[^\"]+\"" (regexQuoteMeta $prefix)) (include "c2p-enroll.settings" .) -1 }}
{{- $files = append $files (trimPrefix $prefix (trimAll "\"" .)) }}
{{- end }}
{{- toJson (dict "files" ($files | uniq | sortAlpha)) }}
{{- end }}
