{{/*
The worker's pod template, shared by the Deployment and the StatefulSet.
*/}}
{{- define "trendstream.podTemplate" -}}
{{- $secrets := include "trendstream.secretsDir" . -}}
{{- $tls := .Values.kafka.security.tls -}}
metadata:
  labels:
    {{- include "trendstream.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "trendstream.serviceAccountName" . }}
  # The worker never calls the Kubernetes API.
  automountServiceAccountToken: false
  # faust reads unprefixed variables such as WEB_PORT; service links would inject
  # <SERVICE>_PORT=tcp://... for every Service in the namespace.
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  {{- if eq .Values.model.source "initContainer" }}
  initContainers:
    - name: model
      {{- $mi := .Values.model.initContainer.image }}
      image: {{ printf "%s:%s" $mi.repository (default "latest" $mi.tag) | quote }}
      imagePullPolicy: {{ $mi.pullPolicy }}
      command:
        {{- toYaml .Values.model.initContainer.command | nindent 8 }}
      env:
        - name: TRENDSTREAM_MODEL_DIR
          value: {{ .Values.model.dir | quote }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      resources:
        {{- toYaml .Values.model.initContainer.resources | nindent 8 }}
      volumeMounts:
        - name: model
          mountPath: {{ .Values.model.dir }}
        - name: tmp
          mountPath: /tmp
  {{- end }}
  containers:
    - name: worker
      image: {{ include "trendstream.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command:
        {{- toYaml .Values.command | nindent 8 }}
      ports:
        - name: http
          containerPort: {{ .Values.web.port }}
          protocol: TCP
      env:
        {{- include "trendstream.env" . | nindent 8 }}
      startupProbe:
        httpGet: {path: /healthz, port: http}
        {{- toYaml .Values.probes.startup | nindent 8 }}
      livenessProbe:
        httpGet: {path: /healthz, port: http}
        {{- toYaml .Values.probes.liveness | nindent 8 }}
      readinessProbe:
        httpGet: {path: /readyz, port: http}
        {{- toYaml .Values.probes.readiness | nindent 8 }}
      resources:
        {{- include "trendstream.resources" . | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if ne .Values.model.source "image" }}
        - name: model
          mountPath: {{ .Values.model.dir }}
          readOnly: true
          {{- if and (eq .Values.model.source "pvc") .Values.model.pvc.subPath }}
          subPath: {{ .Values.model.pvc.subPath }}
          {{- end }}
        {{- end }}
        {{- if include "trendstream.saslEnabled" . }}
        - name: sasl-password
          mountPath: {{ $secrets }}/sasl
          readOnly: true
        {{- end }}
        {{- if $tls.caSecret.name }}
        - name: kafka-ca
          mountPath: {{ $secrets }}/ca
          readOnly: true
        {{- end }}
        {{- if $tls.clientSecret.name }}
        - name: kafka-client-cert
          mountPath: {{ $secrets }}/client
          readOnly: true
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: {{ .Values.tmp.sizeLimit }}
    {{- if eq .Values.model.source "pvc" }}
    - name: model
      persistentVolumeClaim:
        claimName: {{ .Values.model.pvc.claimName }}
        readOnly: true
    {{- else if eq .Values.model.source "initContainer" }}
    - name: model
      emptyDir:
        sizeLimit: {{ .Values.model.initContainer.sizeLimit }}
    {{- end }}
    {{- if include "trendstream.saslEnabled" . }}
    - name: sasl-password
      secret:
        secretName: {{ .Values.kafka.security.sasl.passwordSecret.name }}
        defaultMode: 0440
        items:
          - key: {{ .Values.kafka.security.sasl.passwordSecret.key }}
            path: password
    {{- end }}
    {{- if $tls.caSecret.name }}
    - name: kafka-ca
      secret:
        secretName: {{ $tls.caSecret.name }}
        defaultMode: 0440
        items:
          - key: {{ $tls.caSecret.key }}
            path: ca.crt
    {{- end }}
    {{- if $tls.clientSecret.name }}
    - name: kafka-client-cert
      secret:
        secretName: {{ $tls.clientSecret.name }}
        defaultMode: 0440
        items:
          - key: {{ $tls.clientSecret.certKey }}
            path: tls.crt
          - key: {{ $tls.clientSecret.keyKey }}
            path: tls.key
    {{- end }}
  {{- $nodeSelector := deepCopy .Values.nodeSelector }}
  {{- $tolerations := .Values.tolerations }}
  {{- if .Values.gpu.enabled }}
  {{- $nodeSelector = merge (deepCopy .Values.gpu.nodeSelector) $nodeSelector }}
  {{- $tolerations = concat .Values.tolerations .Values.gpu.tolerations }}
  {{- end }}
  {{- with $nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  topologySpreadConstraints:
    {{- if .Values.topologySpreadConstraints }}
    {{- toYaml .Values.topologySpreadConstraints | nindent 4 }}
    {{- else }}
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "trendstream.selectorLabels" . | nindent 10 }}
    {{- end }}
{{- end }}

{{/* Requests and limits; the GPU variant adds its nvidia.com/gpu limit. */}}
{{- define "trendstream.resources" -}}
{{- $res := deepCopy .Values.resources }}
{{- if .Values.gpu.enabled }}
{{- if .Values.gpu.resources }}{{ $res = deepCopy .Values.gpu.resources }}{{ end }}
{{- $limits := deepCopy (default (dict) $res.limits) }}
{{- $_ := set $limits "nvidia.com/gpu" .Values.gpu.count }}
{{- $_ = set $res "limits" $limits }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/*
The worker's environment: the downward API first (later entries refer to it), then the
settings the chart owns, then the values' env map (sorted by name) and extraEnv.
*/}}
{{- define "trendstream.env" -}}
{{- $secrets := include "trendstream.secretsDir" . -}}
{{- $sec := .Values.kafka.security -}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: POD_IP
  valueFrom: {fieldRef: {fieldPath: status.podIP}}
- name: TRENDSTREAM_KAFKA_BOOTSTRAP
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: TRENDSTREAM_APP_ID
  value: {{ .Values.kafka.appId | quote }}
- name: TRENDSTREAM_TOPIC_PREFIX
  value: {{ .Values.kafka.topicPrefix | quote }}
- name: TRENDSTREAM_TOPIC_REVIEWS
  value: {{ .Values.kafka.inputTopic | quote }}
- name: TRENDSTREAM_PARTITIONS
  value: {{ .Values.kafka.partitions | quote }}
- name: TRENDSTREAM_SECURITY_PROTOCOL
  value: {{ $sec.protocol | quote }}
{{- if include "trendstream.saslEnabled" . }}
- name: TRENDSTREAM_SASL_MECHANISM
  value: {{ $sec.sasl.mechanism | quote }}
- name: TRENDSTREAM_SASL_USERNAME
  value: {{ $sec.sasl.username | quote }}
- name: TRENDSTREAM_SASL_PASSWORD_FILE
  value: {{ printf "%s/sasl/password" $secrets | quote }}
{{- end }}
{{- if $sec.tls.caSecret.name }}
- name: TRENDSTREAM_SSL_CAFILE
  value: {{ printf "%s/ca/ca.crt" $secrets | quote }}
{{- end }}
{{- if $sec.tls.clientSecret.name }}
- name: TRENDSTREAM_SSL_CERTFILE
  value: {{ printf "%s/client/tls.crt" $secrets | quote }}
- name: TRENDSTREAM_SSL_KEYFILE
  value: {{ printf "%s/client/tls.key" $secrets | quote }}
{{- end }}
- name: TRENDSTREAM_MODEL_DIR
  value: {{ .Values.model.dir | quote }}
- name: TRENDSTREAM_EXECUTION_PROVIDER
  value: {{ ternary "cuda" "cpu" .Values.gpu.enabled | quote }}
{{- if .Values.gpu.enabled }}
# CUDA's kernel cache would go to $HOME; the root filesystem is read-only.
- name: CUDA_CACHE_PATH
  value: /tmp/cuda-cache
{{- end }}
# The pages listen on every address of the pod ...
- name: TRENDSTREAM_WEB_HOST
  value: "0.0.0.0"
- name: TRENDSTREAM_WEB_PORT
  value: {{ .Values.web.port | quote }}
# ... and advertise a reachable, per-pod URL to the other workers (/products/{id} is
# answered by the product's owner; a returning static member must come back with the
# same URL).
- name: TRENDSTREAM_WEB_CANONICAL_URL
  {{- if eq .Values.workload "StatefulSet" }}
  value: {{ printf "http://$(POD_NAME).%s.$(POD_NAMESPACE).svc.%s:%v" (include "trendstream.headlessName" .) .Values.clusterDomain .Values.web.port | quote }}
  {{- else }}
  value: {{ printf "http://$(POD_IP):%v" .Values.web.port | quote }}
  {{- end }}
{{- if .Values.staticMembership.enabled }}
- name: TRENDSTREAM_GROUP_INSTANCE_ID
  value: "$(POD_NAME)"
{{- end }}
{{- range $name, $value := .Values.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
