{{/*
Names, labels and the operator's RBAC rules, shared by the templates.
*/}}

{{- define "continual-training.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: the release name, plus the chart name unless the release name contains it.
Truncated to 63 characters (DNS labels).
*/}}
{{- define "continual-training.fullname" -}}
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

{{- define "continual-training.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: never change them in an upgrade (a Deployment's selector is immutable).
*/}}
{{- define "continual-training.selectorLabels" -}}
app.kubernetes.io/name: {{ include "continual-training.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "continual-training.labels" -}}
helm.sh/chart: {{ include "continual-training.chart" . }}
{{ include "continual-training.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: continual-training
{{- end }}

{{- define "continual-training.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "continual-training.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "continual-training.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The operator's permissions in a namespace it serves: in a ClusterRole (all namespaces) or in a Role in
each watched namespace. Exactly what the handlers and kopf use; docs/deploy.md says why for each.
*/}}
{{- define "continual-training.namespacedRules" -}}
# The API: watch runs and batches (kopf writes nothing to them: every handler is an event handler or
# an index, so no finalizer and no annotation of kopf's), and write their status (below).
- apiGroups: ["continual.dev"]
  resources: ["continualtrainingruns"]
  verbs: ["get", "list", "watch"]
# create: a run's S3 inbox (spec.inbox) creates one TrainingBatch per new object, and patch: it notes a
# later change of the object on the batch's annotations (docs/inbox.md).
- apiGroups: ["continual.dev"]
  resources: ["trainingbatches"]
  verbs: ["get", "list", "watch", "create", "patch"]
# The S3 inbox lists its bucket with the credentials of spec.objectStore.credentialsSecretRef (and
# trusts the CA of caBundleSecretRef): get only, so the operator reads a Secret it is named, never
# lists them. The values stay in memory for one poll; they are never logged or stored (docs/inbox.md).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# get and patch on runs' status are also what lets the operator create each run's trainer Role, which
# grants them: the API server only lets a subject grant permissions it holds itself.
- apiGroups: ["continual.dev"]
  resources: ["continualtrainingruns/status", "trainingbatches/status"]
  verbs: ["get", "patch", "update"]
# Owner references with blockOwnerDeletion point at the run: clusters with the
# OwnerReferencesPermissionEnforcement admission plugin require update on the owner's finalizers.
- apiGroups: ["continual.dev"]
  resources: ["continualtrainingruns/finalizers"]
  verbs: ["update"]
# One Job per batch attempt (its config in its pod template; a large one, and artifact Jobs', in a ConfigMap deleted with it).
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
# Gangs (spec.resources.nodes > 1, docs/scaling.md): one JobSet per attempt where JobSet is installed,
# else an Indexed Job (the jobs rule above) and the headless Service that gives its pods DNS names.
- apiGroups: ["jobset.x-k8s.io"]
  resources: ["jobsets"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "delete"]
# The trainer pod's status and termination message (the batch result); never its logs.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# The trainer config of each attempt.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
# The run's volume claim, from its claimTemplate; never deleted by the operator.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create"]
# Each run's trainer identity and its Role that can patch only that run's status.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "list", "watch", "create"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create"]
# Events on every transition (kopf posts core events; both APIs are allowed).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.statusPage.enabled }}
# The status page shows recent Events of runs and batches.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["list"]
{{- end }}
{{- if and .Values.peering.enabled .Values.watchNamespaces }}
# kopf peering, namespaced mode: a KopfPeering in each watched namespace.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}

{{/*
What kopf reads cluster-wide whatever the mode, plus cluster-wide peering.
*/}}
{{- define "continual-training.clusterRules" -}}
# kopf: discovers and watches the CRDs of the resources it serves.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
# kopf: watches namespaces to follow namespace patterns.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- if and .Values.peering.enabled (not .Values.watchNamespaces) }}
# kopf peering, cluster-wide mode: the ClusterKopfPeering.
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}
