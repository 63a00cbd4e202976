{{- define "kubemeter.fullname" -}}
{{- printf "%s" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubemeter.labels" -}}
app.kubernetes.io/name: kubemeter
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kubemeter.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The exporter's own image (the Dockerfile's `exporter` target: no kopf, kubernetes or
SQLAlchemy). */}}
{{- define "kubemeter.exporterImage" -}}
{{ .Values.image.exporterRepository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
