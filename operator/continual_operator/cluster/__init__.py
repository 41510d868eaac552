"""The cluster executor: kopf handlers (:mod:`.handlers`, :mod:`.operator_main`) over the reconciler
(:mod:`.reconciler`), over the executor (:mod:`.executor`) and the only module that talks to the Kubernetes
API (:mod:`.k8s`); the S3 inbox's cluster side (:mod:`.inbox_sync`) and the status page's source
(:mod:`.page`)."""
