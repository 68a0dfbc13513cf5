{{/*
NetworkPolicy pieces. A selector given in the values replaces the chart's default for it whole
(the values hold null; the defaults are here), so that an override never merges with it.
*/}}

{{/*
A selector: the value when it is a map ({} included), else the default. Argument: (list value
default); output: YAML.
*/}}
{{- define "c2p-enroll.selectorOr" -}}
{{- $value := index . 0 }}
{{- if kindIs "map" $value }}{{ toYaml $value }}{{ else }}{{ toYaml (index . 1) }}{{ end }}
{{- end }}

{{/*
The pods allowed to call the gRPC port (YAML LabelSelector).
*/}}
{{- define "c2p-enroll.grpcClientSelector" -}}
{{- include "c2p-enroll.selectorOr" (list .Values.networkPolicy.ingress.grpc.podSelector (dict "matchLabels" (dict "c2p-enroll-client" "true"))) }}
{{- end }}

{{/*
The namespaces allowed to scrape the metrics port (YAML LabelSelector).
*/}}
{{- define "c2p-enroll.metricsNamespaceSelector" -}}
{{- include "c2p-enroll.selectorOr" (list .Values.networkPolicy.ingress.metrics.namespaceSelector (dict "matchLabels" (dict "kubernetes.io/metadata.name" "monitoring"))) }}
{{- end }}

{{/*
The DNS egress rule (JSON NetworkPolicyEgressRule): the DNS pods and dns.cidrs on dns.ports,
UDP and TCP. Shared by the service's and the test pod's NetworkPolicies.
*/}}
{{- define "c2p-enroll.dnsEgressRule" -}}
{{- $dns := .Values.networkPolicy.egress.dns }}
{{- $peer := dict "namespaceSelector" (include "c2p-enroll.selectorOr" (list $dns.namespaceSelector (dict "matchLabels" (dict "kubernetes.io/metadata.name" "kube-system"))) | fromYaml) "podSelector" (include "c2p-enroll.selectorOr" (list $dns.podSelector (dict "matchLabels" (dict "k8s-app" "kube-dns"))) | fromYaml) }}
{{- $to := list $peer }}
{{- range $dns.cidrs }}
{{- $to = append $to (dict "ipBlock" (dict "cidr" .)) }}
{{- end }}
{{- $ports := list }}
{{- range $dns.ports | default (list 53) }}
{{- $ports = concat $ports (list (dict "port" (int .) "protocol" "UDP") (dict "port" (int .) "protocol" "TCP")) }}
{{- end }}
{{- toJson (dict "to" $to "ports" $ports) }}
{{- end }}

{{/*
The Redis egress rule (JSON), or nothing without a Redis. Peers: the pod selector (its default
unless cidrs alone are given) with the namespace selector, and the CIDRs; the Redis port only
(a Cluster's clients never use its bus port).
*/}}
{{- define "c2p-enroll.redisEgressRule" -}}
{{- if include "c2p-enroll.redisConfigured" . }}
{{- $redis := .Values.networkPolicy.egress.redis }}
{{- $to := list }}
{{- $peer := dict }}
{{- if kindIs "map" $redis.podSelector }}
{{- $_ := set $peer "podSelector" $redis.podSelector }}
{{- else if or (kindIs "map" $redis.namespaceSelector) (not $redis.cidrs) }}
{{- $_ := set $peer "podSelector" (dict "matchLabels" (dict "app.kubernetes.io/name" "redis")) }}
{{- end }}
{{- if kindIs "map" $redis.namespaceSelector }}
{{- $_ := set $peer "namespaceSelector" $redis.namespaceSelector }}
{{- end }}
{{- if $peer }}
{{- $to = append $to $peer }}
{{- end }}
{{- range $redis.cidrs }}
{{- $to = append $to (dict "ipBlock" (dict "cidr" .)) }}
{{- end }}
{{- toJson (dict "to" $to "ports" (list (dict "port" (int $redis.port) "protocol" "TCP"))) }}
{{- end }}
{{- end }}

{{/*
An IPv4 address as an integer. Argument: "a.b.c.d".
*/}}
{{- define "c2p-enroll.ipv4Int" -}}
{{- $o := splitList "." . }}
{{- add (mul (add (mul (add (mul (atoi (index $o 0)) 256) (atoi (index $o 1))) 256) (atoi (index $o 2))) 256) (atoi (index $o 3)) }}
{{- end }}

{{/*
Whether CIDR inner is a strict subset of CIDR outer, as Kubernetes requires of an ipBlock's
except: IPv4 exactly; IPv6 only under ::/0 (any IPv6 range with a prefix is inside it).
Argument: (list outer inner).
*/}}
{{- define "c2p-enroll.cidrInside" -}}
{{- $outer := splitList "/" (index . 0) }}
{{- $inner := splitList "/" (index . 1) }}
{{- $outerLen := atoi (index $outer 1) }}
{{- $innerLen := atoi (index $inner 1) }}
{{- $outerV6 := contains ":" (index $outer 0) }}
{{- $innerV6 := contains ":" (index $inner 0) }}
{{- if and (eq $outerV6 $innerV6) (gt $innerLen $outerLen) }}
{{- if $outerV6 }}
{{- if eq $outerLen 0 }}true{{ end }}
{{- else }}
{{- $block := 1 }}
{{- range until (sub 32 $outerLen | int) }}{{ $block = mul $block 2 }}{{ end }}
{{- if eq (div (include "c2p-enroll.ipv4Int" (index $outer 0) | atoi) $block) (div (include "c2p-enroll.ipv4Int" (index $inner 0) | atoi) $block) }}true{{ end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The Mastercard egress rule (JSON) without a proxy, in mastercard mode: the CIDRs on the HTTPS
port, each with the except ranges it contains. Nothing in sandbox mode, with a proxy, or
without CIDRs (c2p-enroll.validate refuses the last in mastercard mode).
*/}}
{{- define "c2p-enroll.mastercardEgressRule" -}}
{{- $mc := .Values.networkPolicy.egress.mastercard }}
{{- if and (eq .Values.config.mode "mastercard") (not .Values.proxy.httpsProxy) $mc.cidrs }}
{{- $to := list }}
{{- range $cidr := $mc.cidrs }}
{{- $except := list }}
{{- range $mc.except }}
{{- if include "c2p-enroll.cidrInside" (list $cidr .) }}
{{- $except = append $except . }}
{{- end }}
{{- end }}
{{- if $except }}
{{- $to = append $to (dict "ipBlock" (dict "cidr" $cidr "except" $except)) }}
{{- else }}
{{- $to = append $to (dict "ipBlock" (dict "cidr" $cidr)) }}
{{- end }}
{{- end }}
{{- toJson (dict "to" $to "ports" (list (dict "port" (int $mc.port) "protocol" "TCP"))) }}
{{- end }}
{{- end }}

{{/*
The proxy's port: networkPolicy.egress.proxy.port, else the one of proxy.httpsProxy, else 80
for http:// and 443 for https://.
*/}}
{{- define "c2p-enroll.proxyPort" -}}
{{- $url := .Values.proxy.httpsProxy }}
{{- $port := regexFind ":[0-9]+/?$" $url | trimSuffix "/" | trimPrefix ":" }}
{{- if not (kindIs "invalid" .Values.networkPolicy.egress.proxy.port) }}
{{- int .Values.networkPolicy.egress.proxy.port }}
{{- else if $port }}
{{- $port }}
{{- else if hasPrefix "https://" $url }}443
{{- else }}80
{{- end }}
{{- end }}

{{/*
The proxy egress rule (JSON), or nothing without proxy.httpsProxy.
*/}}
{{- define "c2p-enroll.proxyEgressRule" -}}
{{- if .Values.proxy.httpsProxy }}
{{- $np := .Values.networkPolicy.egress.proxy }}
{{- $to := list }}
{{- $peer := dict }}
{{- if kindIs "map" $np.podSelector }}
{{- $_ := set $peer "podSelector" $np.podSelector }}
{{- end }}
{{- if kindIs "map" $np.namespaceSelector }}
{{- $_ := set $peer "namespaceSelector" $np.namespaceSelector }}
{{- end }}
{{- if $peer }}
{{- $to = append $to $peer }}
{{- end }}
{{- range $np.cidrs }}
{{- $to = append $to (dict "ipBlock" (dict "cidr" .)) }}
{{- end }}
{{- toJson (dict "to" $to "ports" (list (dict "port" (include "c2p-enroll.proxyPort" . | int) "protocol" "TCP"))) }}
{{- end }}
{{- end }}
