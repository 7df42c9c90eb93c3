"""Pod labels through the kubernetes client, against a loopback HTTP server that records the PATCH."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scribe_libs.devices import decide, load_recorded, profile_from
from scribe_transcriber.podlabels import PodLabeler, labeler_from


class Recorder(BaseHTTPRequestHandler):
    status = 200

    def do_PATCH(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append(
            {"method": "PATCH", "path": self.path, "content_type": self.headers.get("Content-Type"),
             "body": json.loads(body)}
        )
        reply = json.dumps({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p"}}).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.requests = []
    server.status = 200
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def t4_profile():
    facts = load_recorded("t4")
    return profile_from(decide(facts, ["large-v3", "turbo"]), facts, worker_id="w1", pool="gpu-t4", pod="scribe-t-0")


def test_the_pod_is_patched_with_labels_and_the_profile_annotation(api):
    labeler = PodLabeler("scribe-transcriber-0", "speech", f"http://127.0.0.1:{api.server_port}")
    assert labeler.apply(t4_profile())
    [request] = api.requests
    assert request["method"] == "PATCH"
    assert request["path"] == "/api/v1/namespaces/speech/pods/scribe-transcriber-0"
    assert request["content_type"] == "application/strategic-merge-patch+json"
    labels = request["body"]["metadata"]["labels"]
    assert labels == {
        "scribe.dev/gpu": "Tesla-T4",
        "scribe.dev/vram-gb": "15",
        "scribe.dev/compute-type": "float16",
        "scribe.dev/pool": "gpu-t4",
        "scribe.dev/device": "cuda",
    }
    profile = json.loads(request["body"]["metadata"]["annotations"]["scribe.dev/profile"])
    assert profile["workerId"] == "w1" and profile["modelsLoaded"] == ["large-v3", "large-v3-turbo"]


def test_unchanged_labels_are_not_patched_again(api):
    labeler = PodLabeler("p", "ns", f"http://127.0.0.1:{api.server_port}")
    profile = t4_profile()
    assert labeler.apply(profile, only_if_changed=True)
    assert labeler.apply(profile, only_if_changed=True)
    assert len(api.requests) == 1
    profile.compute_type_effective = "int8_float16"  # e.g. after an out-of-memory downgrade
    assert labeler.apply(profile, only_if_changed=True)
    assert len(api.requests) == 2
    assert api.requests[1]["body"]["metadata"]["labels"]["scribe.dev/compute-type"] == "int8_float16"


def test_a_refused_patch_is_a_warning_not_a_crash(api, caplog):
    api.status = 403
    labeler = PodLabeler("p", "ns", f"http://127.0.0.1:{api.server_port}")
    caplog.set_level(logging.WARNING)
    assert labeler.apply(t4_profile()) is False
    assert any("could not label pod ns/p: HTTP 403" in r.getMessage() for r in caplog.records)


def test_an_unreachable_api_is_a_warning_not_a_crash(caplog):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    port = server.server_port
    server.server_close()  # nothing listens there now
    caplog.set_level(logging.WARNING)
    assert PodLabeler("p", "ns", f"http://127.0.0.1:{port}").apply(t4_profile()) is False
    assert any("could not label pod" in r.getMessage() for r in caplog.records)


def test_outside_kubernetes_there_is_no_labeler():
    assert labeler_from("", "") is None
    assert labeler_from("pod", "") is None
    assert labeler_from("pod", "ns") is not None


def test_in_cluster_without_a_service_account_is_a_warning(caplog, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    caplog.set_level(logging.WARNING)
    assert PodLabeler("p", "ns").apply(t4_profile()) is False
    assert any("could not label pod" in r.getMessage() for r in caplog.records)
