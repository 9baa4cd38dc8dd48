"""The GCE VM's own pieces, standard library only: it deletes itself through the Compute
API with the metadata server's token (no gcloud on the image needed)."""

from __future__ import annotations

import json
import sys
import time
import urllib.request

METADATA = "http://metadata.google.internal/computeMetadata/v1"
COMPUTE_API = "https://compute.googleapis.com/compute/v1"


def metadata(path: str, env: dict[str, str]) -> str:
    base = env.get("RK_METADATA_URL") or METADATA
    req = urllib.request.Request(f"{base}/{path}", headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def self_delete(env: dict[str, str]) -> None:
    name = metadata("instance/name", env)
    zone = metadata("instance/zone", env).rsplit("/", 1)[-1]
    project = metadata("project/project-id", env)
    token = json.loads(metadata("instance/service-accounts/default/token", env))["access_token"]
    url = f"{env.get('RK_COMPUTE_API') or COMPUTE_API}/projects/{project}/zones/{zone}/instances/{name}"
    req = urllib.request.Request(url, method="DELETE", headers={"Authorization": f"Bearer {token}"})
    for attempt in range(5):
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                print(f"researchkit: deleting instance {name} ({r.status})", flush=True)
                return
        except Exception as e:  # noqa: BLE001 - keep trying: a running VM costs money
            print(f"researchkit: self-delete attempt {attempt + 1} failed: {e}", file=sys.stderr, flush=True)
            time.sleep(2 ** attempt)
    raise SystemExit("researchkit: self-delete failed; the deadline (maxRunDuration) will delete the VM")
