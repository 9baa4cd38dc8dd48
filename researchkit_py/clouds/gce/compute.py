"""Compute Engine writes over REST — insert and delete an instance, and wait on the operation —
through the google-auth session the reads use.

google-cloud-compute takes over 2 s of CPU to import (it builds the types of every Compute
service); every launch paid it, and twenty launches from one command waited on it. These are
the requests its InstancesClient (transport="rest") sends: the same paths, the same requestId,
the instance resource as the REST API documents it (tests/py/test_many_launches.py holds our
body against the SDK's Instance type). Failures become google.api_core's exceptions, as the
SDK raises them (from the HTTP answer, or from the operation's error), so zones.translate and
zones.refusal read them the same way.
"""

from __future__ import annotations

import time

from ...errors import ProviderError


def session(credentials, pool: int = 32):
    """One AuthorizedSession for every call of a command, with room for parallel requests."""
    from google.auth.transport.requests import AuthorizedSession
    from requests.adapters import HTTPAdapter

    s = AuthorizedSession(credentials)
    for scheme in ("https://", "http://"):
        s.mount(scheme, HTTPAdapter(pool_connections=pool, pool_maxsize=pool))
    return s


def call(s, method: str, url: str, what: str, **kw) -> dict:
    """One request; an HTTP error as google.api_core's exception for it, the network's as ours."""
    import requests
    from google.api_core import exceptions

    try:
        r = s.request(method, url, timeout=60, **kw)
    except requests.RequestException as e:
        raise ProviderError(f"cannot {what}: {e.__class__.__name__} reaching {url.split('/compute/')[0]}; "
                            "check your network") from e
    if r.status_code >= 400:
        raise exceptions.from_http_response(r)
    return r.json()


def wait(s, api: str, project: str, zone: str, op: dict, what: str, timeout: float = 300) -> dict:
    """Poll a zonal operation until DONE; its error (a refusal for capacity or quota comes this
    way) as the exception the SDK's ExtendedOperation.result() raises."""
    from google.api_core import exceptions

    end, delay = time.monotonic() + timeout, 0.25
    while op.get("status") != "DONE":
        if time.monotonic() > end:
            raise exceptions.DeadlineExceeded(f"{what}: operation {op.get('name')} not done after {timeout:g} s")
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
        op = call(s, "GET", f"{api}/projects/{project}/zones/{zone}/operations/{op['name']}", what)
    if op.get("error"):
        raise exceptions.from_http_status(int(op.get("httpErrorStatusCode") or 500), op.get("httpErrorMessage", ""),
                                          errors=op["error"].get("errors", []))
    return op


def insert(s, api: str, project: str, zone: str, body: dict, request_id: str) -> dict:
    url = f"{api}/projects/{project}/zones/{zone}/instances"
    op = call(s, "POST", url, f"create {body['name']}", params={"requestId": request_id}, json=body)
    return wait(s, api, project, zone, op, f"create {body['name']}")


def delete(s, api: str, project: str, zone: str, name: str) -> dict:
    op = call(s, "DELETE", f"{api}/projects/{project}/zones/{zone}/instances/{name}", f"delete {name}")
    return wait(s, api, project, zone, op, f"delete {name}")
