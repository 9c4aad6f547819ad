{{/* Names and labels. */}}
{{- define "trendstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "trendstream.fullname" -}}
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

{{/* The headless Service a StatefulSet's pods are named under (<= 63 characters). */}}
{{- define "trendstream.headlessName" -}}
{{- printf "%s-headless" (include "trendstream.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "trendstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "trendstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trendstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "trendstream.labels" -}}
helm.sh/chart: {{ include "trendstream.chart" . }}
{{ include "trendstream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "trendstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "trendstream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The worker image: the GPU image for the GPU variant; a digest wins over a tag. */}}
{{- define "trendstream.image" -}}
{{- $img := .Values.image }}
{{- if .Values.gpu.enabled }}{{ $img = .Values.gpu.image }}{{ end }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/* Kafka names the worker and KEDA must agree on. */}}
{{- define "trendstream.inputTopic" -}}
{{- printf "%s%s" .Values.kafka.topicPrefix .Values.kafka.inputTopic }}
{{- end }}

{{- define "trendstream.saslEnabled" -}}
{{- if hasPrefix "SASL_" .Values.kafka.security.protocol }}true{{ end }}
{{- end }}

{{- define "trendstream.tlsEnabled" -}}
{{- if has .Values.kafka.security.protocol (list "SSL" "SASL_SSL") }}true{{ end }}
{{- end }}

{{/* Where secrets are mounted in the worker container. */}}
{{- define "trendstream.secretsDir" -}}/var/run/secrets/trendstream{{- end }}

{{/* PromQL label matchers for this release's series. */}}
{{- define "trendstream.promSelector" -}}
{{- if .Values.prometheusRule.selector }}
{{- .Values.prometheusRule.selector }}
{{- else }}
{{- printf "namespace=%q, job=%q" .Release.Namespace (include "trendstream.fullname" .) }}
{{- end }}
{{- end }}

{{- define "trendstream.runbook" -}}
{{- printf "%s#runbook-%s" (trimSuffix "/" .root.Values.prometheusRule.runbookBaseUrl) .anchor }}
{{- end }}

{{/*
Checks JSON Schema cannot express (it cannot compare two values): fail early with a
message that names the value to change.
*/}}
{{- define "trendstream.validate" -}}
{{- $partitions := int .Values.kafka.partitions }}
{{- if and .Values.keda.enabled (gt (int .Values.keda.maxReplicaCount) $partitions) }}
{{- fail (printf "keda.maxReplicaCount (%d) must be <= kafka.partitions (%d): consumers beyond the input topic's partitions sit idle and every one of them costs a rebalance" (int .Values.keda.maxReplicaCount) $partitions) }}
{{- end }}
{{- if and .Values.keda.enabled (gt (int .Values.keda.minReplicaCount) (int .Values.keda.maxReplicaCount)) }}
{{- fail (printf "keda.minReplicaCount (%d) must be <= keda.maxReplicaCount (%d)" (int .Values.keda.minReplicaCount) (int .Values.keda.maxReplicaCount)) }}
{{- end }}
{{- if and (not .Values.keda.enabled) (gt (int .Values.replicaCount) $partitions) }}
{{- fail (printf "replicaCount (%d) must be <= kafka.partitions (%d): consumers beyond the input topic's partitions sit idle" (int .Values.replicaCount) $partitions) }}
{{- end }}
{{- if and .Values.prometheusRule.enabled (not .Values.prometheusRule.runbookBaseUrl) }}
{{- fail "prometheusRule.runbookBaseUrl is required when prometheusRule.enabled: the URL where this README is served (alerts link to its #runbook-... anchors)" }}
{{- end }}
{{- if and (include "trendstream.saslEnabled" .) (not .Values.kafka.security.sasl.passwordSecret.name) }}
{{- fail (printf "kafka.security.protocol %s needs kafka.security.sasl.passwordSecret.name (an existing Secret with the SASL password)" .Values.kafka.security.protocol) }}
{{- end }}
{{- end }}

{{/* KEDA needs a TriggerAuthentication when the worker logs in or trusts a private CA. */}}
{{- define "trendstream.kedaAuth" -}}
{{- $tls := .Values.kafka.security.tls }}
{{- if or (include "trendstream.saslEnabled" .) (and (include "trendstream.tlsEnabled" .) (or $tls.caSecret.name $tls.clientSecret.name)) }}true{{ end }}
{{- end }}
