"""This worker's profile on its own Kubernetes pod, as labels and annotations.

``kubectl get pods -L scribe.dev/gpu,scribe.dev/vram-gb,scribe.dev/compute-type,scribe.dev/pool``
shows what each transcriber runs on; ``scribe.dev/profile`` holds the whole profile as JSON
(decisions included). The pod name and namespace come from the downward API
(``SCRIBE_TRANSCRIBER_POD_NAME``, ``SCRIBE_TRANSCRIBER_POD_NAMESPACE``); the call goes through the
official ``kubernetes`` client with the in-cluster service account, or to a configured API host
(tests). The pod's service account needs ``patch`` on ``pods`` in its namespace (the chart's Role).

Labelling is best effort: a failure is a warning, never a crash or a readiness change.
"""

from __future__ import annotations

import logging
from typing import Any

from scribe.v1 import transcriber_pb2
from scribe_libs.devices import kubernetes_labels

log = logging.getLogger(__name__)

#: Strategic merge patch: adds/replaces our keys, leaves every other label alone.
PATCH_CONTENT_TYPE = "application/strategic-merge-patch+json"
#: Seconds to wait for the API server (connect and read).
REQUEST_TIMEOUT_SECONDS = 5.0


class PodLabeler:
    """Patches one pod's labels/annotations from a ``WorkerProfile``.

    Args:
        pod_name: The pod (downward API ``metadata.name``).
        namespace: Its namespace (downward API ``metadata.namespace``).
        api_host: Kubernetes API URL (e.g. ``http://127.0.0.1:8080``); empty = in-cluster config
            (service-account token and CA from ``/var/run/secrets/kubernetes.io/serviceaccount``).
    """

    def __init__(self, pod_name: str, namespace: str, api_host: str = ""):
        self.pod_name = pod_name
        self.namespace = namespace
        self.api_host = api_host
        self._api: Any | None = None
        self._applied: dict[str, str] | None = None

    def _core_api(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            if self.api_host:
                configuration = client.Configuration()
                configuration.host = self.api_host
            else:
                config.load_incluster_config()
                configuration = client.Configuration.get_default_copy()
            self._api = client.CoreV1Api(client.ApiClient(configuration))
        return self._api

    def apply(self, profile: transcriber_pb2.WorkerProfile, *, only_if_changed: bool = False) -> bool:
        """Patch the pod (blocking; run it in a thread). Returns whether the patch succeeded.

        Args:
            profile: The worker's profile.
            only_if_changed: Skip the call when the labels equal the last ones applied (the
                annotation then keeps its older profile; load and RTF change every beat).
        """
        labels, annotations = kubernetes_labels(profile)
        if only_if_changed and labels == self._applied:
            return True
        body = {"metadata": {"labels": labels, "annotations": annotations}}
        try:
            self._core_api().patch_namespaced_pod(
                self.pod_name,
                self.namespace,
                body,
                _content_type=PATCH_CONTENT_TYPE,
                _request_timeout=REQUEST_TIMEOUT_SECONDS,
            )
        except Exception as exc:  # noqa: BLE001 - labels are for operators; the worker goes on
            log.warning(
                "could not label pod %s/%s: %s", self.namespace, self.pod_name, _short(exc),
                extra={"labels": labels},
            )
            return False
        self._applied = labels
        log.info("pod labelled", extra={"pod": self.pod_name, "namespace": self.namespace, "labels": labels})
        return True


def labeler_from(pod_name: str, namespace: str, api_host: str = "") -> PodLabeler | None:
    """A labeler when running in Kubernetes (pod name and namespace set), else ``None``."""
    if not (pod_name and namespace):
        return None
    return PodLabeler(pod_name, namespace, api_host)


def _short(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status is not None:
        return f"HTTP {status} {reason or ''}".strip()
    return f"{type(exc).__name__}: {exc}"[:300]
