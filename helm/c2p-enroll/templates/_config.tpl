{{/*
config.toml is built as a map (the settings the values imply: c2p-enroll.settings), checked
against config.extra and merged with it (c2p-enroll.settingsMerged), then written out as TOML
(c2p-enroll.toml). Empty values (null, "", [], {}) are left out, so the service's own default
applies; false and 0 are written.
*/}}

{{/*
The file name of a program's Enroll client encryption certificate in the keys volume.
Argument: (list $ programName).
*/}}
{{- define "c2p-enroll.programCertificate" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $files := $root.Values.keys.files }}
{{- if eq $name "default" }}
{{- $files.enrollEncryptionCertificate }}
{{- else }}
{{- index ($files.programEncryptionCertificates | default dict) $name | default (printf "enroll-client-encryption.%s.cert.pem" $name) }}
{{- end }}
{{- end }}

{{/*
The settings the chart writes, as JSON (before config.extra).
*/}}
{{- define "c2p-enroll.settings" -}}
{{- $c := .Values.config }}
{{- $keysDir := include "c2p-enroll.keysDir" . }}
{{- $mountKeys := include "c2p-enroll.mountKeys" . }}
{{- $files := .Values.keys.files }}
{{- $s := dict "mode" $c.mode }}
{{- /* [grpc], [grpc.tls], [grpc.limits] */}}
{{- $grpc := dict "listen" $c.grpc.listen "reflection" $c.grpc.reflection "limits" (deepCopy ($c.grpc.limits | default dict)) }}
{{- if .Values.tls.enabled }}
{{- $tlsDir := include "c2p-enroll.tlsDir" . }}
{{- $_ := set $grpc "tls" (dict "cert_file" (printf "%s/tls.crt" $tlsDir) "key_file" (printf "%s/tls.key" $tlsDir) "client_ca_file" (include "c2p-enroll.clientCAFile" .) "reload_interval" .Values.tls.reloadInterval) }}
{{- end }}
{{- $_ := set $s "grpc" $grpc }}
{{- /* [health], [metrics] */}}
{{- $health := deepCopy ($c.health | default dict) }}
{{- $_ := set $health "listen" (include "c2p-enroll.healthListen" .) }}
{{- $_ := set $s "health" $health }}
{{- $_ := set $s "metrics" (deepCopy ($c.metrics | default dict)) }}
{{- /* [auth], [auth.callers.<name>] */}}
{{- $callers := dict }}
{{- range $name, $caller := .Values.auth.callers }}
{{- $_ := set $callers $name (dict "identity" $caller.identity "rpcs" $caller.rpcs "programs" $caller.programs) }}
{{- end }}
{{- $auth := dict "identity" .Values.auth.identity "mesh_header" .Values.auth.meshHeader "callers" $callers }}
{{- if .Values.auth.meshPeers }}{{ $_ := set $auth "mesh_peers" .Values.auth.meshPeers }}{{ end }}
{{- $_ := set $s "auth" $auth }}
{{- /* [redis]: a Cluster's seed nodes as one comma-separated url */}}
{{- $redis := deepCopy ($c.redis | default dict) }}
{{- if kindIs "slice" $redis.url }}
{{- $_ := set $redis "url" (join "," $redis.url) }}
{{- end }}
{{- $_ := set $redis "username" .Values.redis.username }}
{{- if .Values.redis.passwordSecret.name }}
{{- $_ := set $redis "password_file" (printf "%s/password" (include "c2p-enroll.redisDir" .)) }}
{{- end }}
{{- if .Values.redis.ca.source }}
{{- $_ := set $redis "ca_file" (printf "%s/ca.crt" (include "c2p-enroll.redisCADir" .)) }}
{{- end }}
{{- $_ := set $s "redis" $redis }}
{{- /* [store], [notifications], [log], [shutdown], [enroll] */}}
{{- $_ := set $s "store" (deepCopy ($c.store | default dict)) }}
{{- $_ := set $s "notifications" (deepCopy ($c.notifications | default dict)) }}
{{- $_ := set $s "log" (deepCopy ($c.log | default dict)) }}
{{- $_ := set $s "shutdown" (deepCopy ($c.shutdown | default dict)) }}
{{- $enroll := deepCopy ($c.enroll | default dict) }}
{{- if .Values.enroll.fingerprintKey.existingSecret }}
{{- $_ := set $enroll "fingerprint_key_file" (printf "%s/fingerprint.key" (include "c2p-enroll.fingerprintDir" .)) }}
{{- end }}
{{- $_ := set $s "enroll" $enroll }}
{{- /* [mastercard.<api>]: the values' settings plus the files of the keys volume */}}
{{- $mastercard := dict }}
{{- range $apiName := list "processing" "enroll" }}
{{- $api := deepCopy (index ($c.mastercard | default dict) $apiName | default dict) }}
{{- $pe := $api.payload_encryption | default dict }}
{{- if $mountKeys }}
{{- $_ := set $api "signing_key_file" (printf "%s/%s" $keysDir (index $files (printf "%sSigningKey" $apiName))) }}
{{- with index $files (printf "%sSigningKeyPassword" $apiName) }}
{{- $_ := set $api "signing_key_password_file" (printf "%s/%s" $keysDir .) }}
{{- end }}
{{- if $pe.enabled }}
{{- $_ := set $pe "encryption_certificate_file" (printf "%s/%s" $keysDir (index $files (printf "%sPayloadEncryptionCertificate" $apiName))) }}
{{- $_ := set $pe "decryption_key_file" (printf "%s/%s" $keysDir (index $files (printf "%sPayloadDecryptionKey" $apiName))) }}
{{- with index $files (printf "%sPayloadDecryptionKeyPassword" $apiName) }}
{{- $_ := set $pe "decryption_key_password_file" (printf "%s/%s" $keysDir .) }}
{{- end }}
{{- with index $files (printf "%sPayloadPreviousDecryptionKey" $apiName) }}
{{- $_ := set $pe "previous_decryption_key_file" (printf "%s/%s" $keysDir .) }}
{{- end }}
{{- with index $files (printf "%sPayloadPreviousDecryptionKeyPassword" $apiName) }}
{{- $_ := set $pe "previous_decryption_key_password_file" (printf "%s/%s" $keysDir .) }}
{{- end }}
{{- end }}
{{- end }}
{{- $_ := set $api "payload_encryption" $pe }}
{{- if $.Values.mastercardCA.source }}
{{- $_ := set $api "extra_ca_file" (printf "%s/ca.crt" (include "c2p-enroll.mastercardCADir" $)) }}
{{- end }}
{{- $_ := set $mastercard $apiName $api }}
{{- end }}
{{- $_ := set $s "mastercard" $mastercard }}
{{- /* [programs.<name>] */}}
{{- $programs := dict }}
{{- range $name, $program := $c.programs }}
{{- $p := deepCopy ($program | default dict) }}
{{- if $mountKeys }}
{{- $_ := set $p "enroll_encryption_certificate_file" (printf "%s/%s" $keysDir (include "c2p-enroll.programCertificate" (list $ $name))) }}
{{- end }}
{{- $_ := set $programs $name $p }}
{{- end }}
{{- $_ := set $s "programs" $programs }}
{{- toJson $s }}
{{- end }}

{{/*
Whether a settings value counts as unset (left out of config.toml).
*/}}
{{- define "c2p-enroll.isEmpty" -}}
{{- if kindIs "invalid" . }}true
{{- else if and (kindIs "string" .) (eq . "") }}true
{{- else if and (kindIs "slice" .) (not .) }}true
{{- else if and (kindIs "map" .) (not .) }}true
{{- end }}
{{- end }}

{{/*
The dotted names of the set leaves of a settings map, one a line. Argument: (list prefix map).
*/}}
{{- define "c2p-enroll.leafKeys" -}}
{{- $prefix := index . 0 }}
{{- range $k, $v := index . 1 }}
{{- $name := ternary $k (printf "%s.%s" $prefix $k) (eq $prefix "") }}
{{- if kindIs "map" $v }}
{{- include "c2p-enroll.leafKeys" (list $name $v) }}
{{- else if not (include "c2p-enroll.isEmpty" $v) }}
{{ $name }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The settings with config.extra merged in, as JSON (c2p-enroll.validate refuses an extra setting
that the chart writes too).
*/}}
{{- define "c2p-enroll.settingsMerged" -}}
{{- $s := include "c2p-enroll.settings" . | fromJson }}
{{- toJson (mergeOverwrite $s (deepCopy (.Values.config.extra | default dict))) }}
{{- end }}

{{/*
A TOML key: bare when it may be, else quoted.
*/}}
{{- define "c2p-enroll.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/*
A TOML value, or nothing for an unset one. Strings as TOML basic strings (JSON string escaping
is valid TOML), lists as inline arrays, numbers that values files give as floats (1e+06 for
1000000) as integers when they are whole.
*/}}
{{- define "c2p-enroll.tomlValue" -}}
{{- if kindIs "bool" . }}{{ . }}
{{- else if kindIs "float64" . }}{{ if eq . (float64 (int64 .)) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if or (kindIs "int" .) (kindIs "int64" .) }}{{ . }}
{{- else if kindIs "slice" . }}{{ if . }}{{ toJson . }}{{ end }}
{{- else if kindIs "string" . }}{{ if ne . "" }}{{ toJson . }}{{ end }}
{{- end }}
{{- end }}

{{/*
A settings map as TOML: its leaves under a [prefix] header (none at the top), then its
sub-maps as tables of their own; a table without leaves gets no header.
Argument: (list prefix map).
*/}}
{{- define "c2p-enroll.toml" -}}
{{- $prefix := index . 0 }}
{{- $table := index . 1 }}
{{- $lines := list }}
{{- range $k, $v := $table }}
{{- if not (kindIs "map" $v) }}
{{- $value := include "c2p-enroll.tomlValue" $v }}
{{- if $value }}
{{- $lines = append $lines (printf "%s = %s" (include "c2p-enroll.tomlKey" $k) $value) }}
{{- end }}
{{- end }}
{{- end }}
{{- if $lines }}
{{- if $prefix }}{{ printf "\n[%s]\n" $prefix }}{{ end }}
{{- join "\n" $lines }}{{ "\n" }}
{{- end }}
{{- range $k, $v := $table }}
{{- if kindIs "map" $v }}
{{- $key := include "c2p-enroll.tomlKey" $k }}
{{- include "c2p-enroll.toml" (list (ternary $key (printf "%s.%s" $prefix $key) (eq $prefix "")) $v) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The whole config.toml.
*/}}
{{- define "c2p-enroll.configToml" -}}
# c2p-enroll settings, rendered by the {{ include "c2p-enroll.chart" . }} Helm chart.
# C2P_MODE and C2P_<SECTION>__<NAME> environment variables override them (C2P_REDIS__URL for
# redis.url).
{{ include "c2p-enroll.toml" (list "" (include "c2p-enroll.settingsMerged" . | fromJson)) }}
{{- if not (include "c2p-enroll.metricsOn" .) }}
{{- /* An empty listen turns the metrics listener off (left out, the service's default would
listen on 127.0.0.1). */}}
{{ printf "\n[metrics]\nlisten = \"\"" }}
{{- end }}
{{- end }}
