"""A small fake of the Compute Engine REST API: enough for google-cloud-compute's
InstancesClient (transport="rest") to insert, get, list, aggregated-list and delete.

An insert's operation is returned already DONE. A delete's is RUNNING until the instance is
gone, as on GCE (compute_v1's discovery document: Operation.status PENDING, RUNNING, DONE; the
instance is STOPPING meanwhile, and a second delete finds the deletion under way, where callers
of the real API report deleting STOPPING instances again without an error and creating a
namesake failing until the deletion is done): the `on_delete` hook shuts its VM down first, so
a delete the client saw DONE leaves no VM that could still write to the bucket. `requestId` is
an idempotency key, as on GCE. Every request is logged. Faults:
`fail_zones[zone] = "ZONE_RESOURCE_POOL_EXHAUSTED" | "QUOTA_EXCEEDED"` makes inserts in
that zone fail (with `partial_zones` the half-made instance is left behind, as GCE can); an
error entry from pool_exhausted() or quota_exceeded() fails them as GCE does for GPUs, with its
details. `accelerator_zones` (accelerator type -> zones) is what the aggregated list of
accelerator types answers.
Hooks `on_insert(instance)` / `on_delete(instance)` let a test boot and kill fake VMs
(`on_delete` returns once the VM is down).
Like GCE, an instance whose `scheduling.maxRunDuration` has passed is deleted when its
instanceTerminationAction is DELETE (`enforce_deadlines = False` plays a cloud that does not).
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

_ids = itertools.count(1000)


class FakeGCE:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.instances: dict[tuple[str, str, str], dict] = {}  # (project, zone, name) -> instance
        self.request_ids: dict[str, dict] = {}
        self.operations: dict[str, dict] = {}  # name -> a delete's operation (the others are DONE at once)
        self.deleting: dict[tuple[str, str, str], str] = {}  # instance -> its deletion's operation
        self.log: list[dict] = []
        self.fail_zones: dict[str, str | dict] = {}
        self.accelerator_zones: dict[str, list[str]] = dict(ACCELERATOR_ZONES)
        self.partial_zones: set[str] = set()
        self.on_insert = None
        self.on_delete = None
        self.enforce_deadlines = True
        # Faults of the listing and of the answers: `unlisted` leaves this tool's instances out of
        # every list (a list lagging behind an insert); with `hold_inserts`, an accepted insert
        # (its VM on its way) is answered only once that event is set, and `inserted` says it came.
        self.unlisted = False
        self.hold_inserts: threading.Event | None = None
        self.inserted = threading.Event()
        self.timers: list[threading.Timer] = []
        self.lock = threading.RLock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                entry = {"method": method, "path": url.path, "query": query, "body": body,
                         "auth": self.headers.get("Authorization", "")}
                with fake.lock:
                    fake.log.append(entry)
                code, reply = fake.route(method, url.path, query, body)
                self._send(code, reply)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_DELETE(self):
                self._handle("DELETE")

        # http.server's bind calls getfqdn(), which can hang where there is no DNS
        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def server_bind(self):
                import socketserver

                socketserver.TCPServer.server_bind(self)
                self.server_name, self.server_port = self.server_address[:2]

            def handle_error(self, request, client_address):
                """A client that hung up (a VM deleted while it waited for its own delete's
                answer, a CLI a cell interrupted) is no error of the fake's."""
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)

        self.server = Server((host, port), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.server.shutdown()
        self.server.server_close()

    # --- routing ---------------------------------------------------------------------
    def route(self, method: str, path: str, query: dict, body: dict) -> tuple[int, dict]:
        m = re.fullmatch(r"/compute/v1/projects/([^/]+)/zones/([^/]+)/instances(?:/([^/]+))?", path)
        if m:
            project, zone, name = m.groups()
            if method == "POST" and not name:
                return self.insert(project, zone, body, query.get("requestId"))
            if method == "GET" and name:
                inst = self.instances.get((project, zone, name))
                return (200, inst) if inst else _error(404, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found", "notFound")
            if method == "GET":
                items = [i for (p, z, _), i in self.instances.items()
                         if p == project and z == zone and _match(i, query.get("filter", "")) and not self.unlisted]
                return 200, {"items": items}
            if method == "DELETE" and name:
                return self.delete(project, zone, name)
        m = re.fullmatch(r"/compute/v1/projects/([^/]+)/aggregated/instances", path)
        if m and method == "GET":
            project = m.group(1)
            items: dict[str, dict] = {}
            with self.lock:
                for (p, z, _), inst in self.instances.items():
                    if p == project and _match(inst, query.get("filter", "")) and not self.unlisted:
                        items.setdefault(f"zones/{z}", {"instances": []})["instances"].append(inst)
            return 200, {"items": items}
        m = re.fullmatch(r"/compute/v1/projects/([^/]+)/aggregated/acceleratorTypes", path)
        if m and method == "GET":
            wanted = re.findall(r"name\s*=\s*([\w.-]+)", query.get("filter", ""))
            scopes: dict[str, dict] = {}
            for acc, zones in self.accelerator_zones.items():
                for z in zones:
                    if not wanted or acc in wanted:
                        scopes.setdefault(f"zones/{z}", {"acceleratorTypes": []})["acceleratorTypes"].append(
                            {"kind": "compute#acceleratorType", "name": acc, "zone": f"projects/{m.group(1)}/zones/{z}"})
            return 200, {"kind": "compute#acceleratorTypeAggregatedList", "items": scopes}
        m = re.fullmatch(r"/compute/v1/projects/([^/]+)/zones/([^/]+)/operations/([^/]+)", path)
        if m:
            with self.lock:
                op = self.operations.get(m.group(3))
                return 200, dict(op) if op else _op(m.group(1), m.group(2), "get", m.group(3))
        return _error(404, f"no route for {method} {path}", "notFound")

    def insert(self, project: str, zone: str, body: dict, request_id: str | None) -> tuple[int, dict]:
        with self.lock:
            if request_id and request_id in self.request_ids:
                return 200, self.request_ids[request_id]  # idempotent: the same operation, no second VM
            name = body["name"]
            key = (project, zone, name)
            if key in self.instances:
                return _error(409, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists", "alreadyExists")
            failure = self.fail_zones.get(zone)
            inst = {**body, "id": str(next(_ids)), "status": "RUNNING", "zone": f"https://compute/projects/{project}/zones/{zone}",
                    "selfLink": f"projects/{project}/zones/{zone}/instances/{name}", "kind": "compute#instance"}
            if failure and zone not in self.partial_zones:
                op = _op(project, zone, "insert", name, failure)
            else:
                self.instances[key] = inst
                op = _op(project, zone, "insert", name, failure)
            if request_id:
                self.request_ids[request_id] = op
        if not failure and self.on_insert:
            self.on_insert(project, zone, inst)
        self.inserted.set()
        if self.hold_inserts is not None:
            self.hold_inserts.wait(120)
        scheduling = body.get("scheduling", {})
        limit = scheduling.get("maxRunDuration", {}).get("seconds")
        if not failure and limit and scheduling.get("instanceTerminationAction") == "DELETE" and self.enforce_deadlines:
            timer = threading.Timer(int(limit), self.delete, args=(project, zone, name))
            timer.daemon = True
            timer.start()
            self.timers.append(timer)
        return 200, op

    def delete(self, project: str, zone: str, name: str) -> tuple[int, dict]:
        key = (project, zone, name)
        with self.lock:
            inst = self.instances.get(key)
            if inst is None:
                return _error(404, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found", "notFound")
            if key in self.deleting:  # deleted twice: the deletion under way
                return 200, dict(self.operations[self.deleting[key]])
            op = {**_op(project, zone, "delete", name), "status": "RUNNING"}
            self.operations[op["name"]], self.deleting[key] = op, op["name"]
            inst["status"] = "STOPPING"
        threading.Thread(target=self._deleted, args=(key, inst, op), daemon=True).start()
        return 200, dict(op)

    def _deleted(self, key: tuple[str, str, str], inst: dict, op: dict) -> None:
        if self.on_delete:
            self.on_delete(*key[:2], inst)
        with self.lock:
            self.instances.pop(key, None)
            self.deleting.pop(key, None)
            op["status"] = "DONE"

    # --- what tests look at ------------------------------------------------------------
    def inserts(self) -> list[dict]:
        return [e for e in self.log if e["method"] == "POST" and e["path"].endswith("/instances")]

    def names(self) -> list[str]:
        with self.lock:
            return sorted(name for (_, _, name) in self.instances)


def _match(inst: dict, filt: str) -> bool:
    """The filters our provider sends: `labels.K = V`, optionally AND `name = N`."""
    for key, value in re.findall(r"([\w.-]+)\s*=\s*([\w.-]+)", filt):
        if key.startswith("labels."):
            if inst.get("labels", {}).get(key[7:]) != value:
                return False
        elif key == "name" and inst.get("name") != value:
            return False
    return True


def _op(project: str, zone: str, kind: str, target: str, failure: str | dict | None = None) -> dict:
    op = {"kind": "compute#operation", "id": str(next(_ids)), "name": f"operation-{next(_ids)}", "status": "DONE",
          "operationType": kind, "zone": f"projects/{project}/zones/{zone}",
          "targetLink": f"projects/{project}/zones/{zone}/instances/{target}",
          "selfLink": f"projects/{project}/zones/{zone}/operations/op"}
    if failure:
        entry = failure if isinstance(failure, dict) else {"code": failure, "message": f"{failure} in {zone}"}
        status, message = (403, "FORBIDDEN") if entry["code"] == "QUOTA_EXCEEDED" else (503, "SERVICE UNAVAILABLE")
        op.update(httpErrorStatusCode=status, httpErrorMessage=message, error={"errors": [entry]})
    return op


# GCE's refusals of a GPU VM, as its operations carry them (Operation.error.errors[] in the
# Compute v1 discovery document: code, message, errorDetails with errorInfo / quotaInfo / help).
# The texts and details are those of real refusals as users have published them: a
# ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS whose errorInfo names vmType, zone and
# zonesAvailable (gcloud's YAML of it, in cockroachdb's roachprod tests), and "Quota
# 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 globally." with metric compute.googleapis.com/
# gpus_all_regions, limit GPUS-ALL-REGIONS-per-project, dimensions {global: global} (Terraform's
# rendering of it); a regional quota names its region ("Limit: 0.0 in region us-central1.").
def pool_exhausted(project: str, zone: str, vm_type: str, zones_available: list[str]) -> dict:
    return {"code": "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
            "message": f"The zone 'projects/{project}/zones/{zone}' does not have enough resources available to "
                       "fulfill the request.  '(resource type:compute)'.",
            "errorDetails": [
                {"localizedMessage": {"locale": "en-US", "message": (
                    f"A {vm_type} VM instance is currently unavailable in the {zone} zone. Consider trying your request "
                    f"in the {', '.join(zones_available)} zone(s), which currently has capacity to accommodate your "
                    "request.")}},
                {"errorInfo": {"reason": "resource_availability", "domain": "compute.googleapis.com",
                               "metadatas": {"vmType": vm_type, "zone": zone, "zonesAvailable": ",".join(zones_available)}}},
                {"help": {"links": [{"description": "Troubleshooting documentation",
                                     "url": "https://cloud.google.com/compute/docs/resource-error"}]}}]}


def quota_exceeded(metric: str, limit: float, region: str = "") -> dict:
    where = f"in region {region}" if region else "globally"
    return {"code": "QUOTA_EXCEEDED", "message": f"Quota '{metric}' exceeded.  Limit: {limit:.1f} {where}.",
            "errorDetails": [
                {"quotaInfo": {"metricName": f"compute.googleapis.com/{metric.lower()}",
                               "limitName": f"{metric.replace('_', '-')}-per-project" + ("-region" if region else ""),
                               "dimensions": {"region": region} if region else {"global": "global"}, "limit": limit}},
                {"help": {"links": [{"description": "Request a quota increase",
                                     "url": "https://cloud.google.com/docs/quotas/help/request_increase"}]}}]}


# Which zones offer which accelerator types (a subset of GCE's, enough for the tests).
ACCELERATOR_ZONES = {
    "nvidia-l4": ["us-central1-a", "us-central1-b", "us-central1-c", "us-east4-a", "europe-west4-a"],
    "nvidia-tesla-t4": ["us-central1-a", "us-central1-b", "us-central1-f", "europe-west4-a"],
    "nvidia-tesla-v100": ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"],
    "nvidia-tesla-p100": ["us-central1-c", "us-central1-f"],
    "nvidia-tesla-a100": ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"],
    "nvidia-a100-80gb": ["us-central1-a", "us-central1-c", "us-east4-c"],
    "nvidia-h100-80gb": ["us-central1-a", "us-central1-b", "us-central1-c", "us-east4-a"],
}


def _error(code: int, message: str, reason: str) -> tuple[int, dict]:
    return code, {"error": {"code": code, "message": message, "errors": [{"reason": reason, "message": message}]}}
