{{- define "mge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mge.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if hasPrefix .Release.Name $name -}}
{{- $name | trunc 63 | trimSuffix "-" -}}
{{- else if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "mge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "mge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mge-operator
{{- end -}}

{{- define "mge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* registry/repository:tag, or @digest when one is given (pinned: a moved tag cannot change what runs). */}}
{{- define "mge.image" -}}
{{- $registry := ((.Values.global).imageRegistry) | default "" -}}
{{- $repository := ternary (printf "%s/%s" $registry .Values.image.repository) .Values.image.repository (ne $registry "") -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Namespaces the operator reconciles: the given list, or the release namespace. */}}
{{- define "mge.watchNamespaces" -}}
{{- if .Values.watchNamespaces -}}
{{- join "," .Values.watchNamespaces -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* Secret holding MGE_DATABASE_URL. */}}
{{- define "mge.databaseSecret" -}}
{{- if and .Values.database.existingSecret .Values.postgres.deploy -}}
{{- fail "database.existingSecret and postgres.deploy are both set: the operator would use the Secret and the quick-start Postgres would run unused; keep one" -}}
{{- end -}}
{{- if .Values.database.existingSecret -}}
{{- .Values.database.existingSecret -}}
{{- else if .Values.postgres.deploy -}}
{{- printf "%s-database" (include "mge.fullname" .) -}}
{{- else -}}
{{- fail "set database.existingSecret (a Secret with key MGE_DATABASE_URL) or postgres.deploy=true for a quick start" -}}
{{- end -}}
{{- end -}}

{{/* Secrets mounted into executor pods as environment: database URL, LLM endpoint, Redis URL. */}}
{{- define "mge.executorSecrets" -}}
{{- $secrets := list (include "mge.databaseSecret" .) -}}
{{- if .Values.llm.existingSecret -}}
{{- $secrets = append $secrets .Values.llm.existingSecret -}}
{{- end -}}
{{- if .Values.cache.existingSecret -}}
{{- $secrets = append $secrets .Values.cache.existingSecret -}}
{{- end -}}
{{- join "," $secrets -}}
{{- end -}}

{{/* Redis URL of the quick-start Redis; with cache.existingSecret the Secret's MGE_REDIS_URL is used instead. */}}
{{- define "mge.redisUrl" -}}
{{- if and .Values.redis.deploy .Values.cache.enabled (not .Values.cache.existingSecret) -}}
{{- printf "redis://%s-redis.%s.svc:6379/0" (include "mge.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- /* A digest of the ConfigMaps pods read at start (prices, cache and batching settings): a change of them
       changes the pod templates, so `helm upgrade` rolls the operator, the API and (through the operator)
       the executors instead of leaving them on the old values until someone restarts them. */ -}}
{{- define "mge.configChecksum" -}}
{{- print (include (print $.Template.BasePath "/prices.yaml") .) (include (print $.Template.BasePath "/cache.yaml") .) | sha256sum -}}
{{- end -}}

{{/* Scheduling fields shared by the operator and API pods (the operator passes the same to the pods it creates). */}}
{{- define "mge.podScheduling" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
