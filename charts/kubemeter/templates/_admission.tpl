{{- /* The admission webhook's names: its Service, its ValidatingWebhookConfiguration (the
operator's --admission-webhook-name) and the Secret of its self-managed certificate. */ -}}
{{- define "kubemeter.admissionName" -}}
{{- printf "%s-admission" (include "kubemeter.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubemeter.admissionCertSecret" -}}
{{- printf "%s-cert" (include "kubemeter.admissionName" .) -}}
{{- end -}}

{{- define "kubemeter.admissionEnabled" -}}
{{- if and .Values.operator.enabled .Values.admission.enabled }}true{{ end -}}
{{- end -}}
