"""Measure bare-image fake VMs: how long they take to boot, and what each way of setting up the
VM side costs before the user's command runs (BARE_IMAGES.md holds the results).

    python tests/py/measure_bare.py [--repeat N] [--json FILE]     (root; builds what is missing)

Each way runs in a fresh bare VM, against fake-gcs-server (gs) and moto (s3) on the bridge,
installing from the local apt repository and wheelhouse:
- `apt+venv+pip`: today's script: apt-get install python3-venv, `python3 -m venv` (ensurepip),
  pip install the SDK; a second venv with --system-site-packages for requirements.txt;
- `pip-wheel`: no apt: `python3 -m venv --without-pip`, pip run from its own wheel (fetched
  with the standard library);
- `uv`: no apt: uv's static binary out of its wheel (fetched with the standard library),
  `uv venv`, `uv pip install` (which leaves compiling to the first import), and the same
  with `--compile-bytecode`;
- `stdlib`: nothing installed: status and log written with urllib, a GCE metadata token or
  SigV4 signed with the instance role's credentials (a prototype, here only to be timed).
Every way ends with two status writes (a new process each, as the script's `rk` calls are):
the first pays for compiling what the installer did not; `total` sums every step.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

import bare_image  # noqa: E402
from emulators import FakeGCS, Moto  # noqa: E402
from fake_vm import FakeVMs, VMNetwork  # noqa: E402

STEP = r"""set -euo pipefail
step() {  # step LABEL COMMAND...: time it; its output is shown only if it fails
  local label=$1 t0=$EPOCHREALTIME; shift
  if ! "$@" >/tmp/step.out 2>&1; then echo "FAILED $label"; tail -n 20 /tmp/step.out; exit 1; fi
  echo "STEP $label $t0 $EPOCHREALTIME"
}
fetch() {  # fetch PROJECT FILE: the newest wheel of PROJECT on the index, with the standard library
  python3 - "$@" <<'EOF'
import os, re, sys, urllib.request
index = os.environ["PIP_INDEX_URL"] + sys.argv[1] + "/"
links = re.findall(r'href="([^"#]+)', urllib.request.urlopen(index).read().decode())
open(sys.argv[2], "wb").write(urllib.request.urlopen(urllib.request.urljoin(index, links[-1])).read())
EOF
}
M=/var/lib/rk-measure  # on the VM's root disk, as /var/lib/researchkit is (uv hardlinks from its cache there)
mkdir -p "$M/agent" "$M/work"
echo tabulate > "$M/work/requirements.txt"
base64 -d <<'EOF' | tar -xz -C "$M/agent"
{payload}
EOF
agent() { (cd "$M/agent" && "$1" -m researchkit_py.vm_agent status "$2"); }
"""

WAYS = {
    "apt+venv+pip": r"""
step "apt-get update" apt-get update -qq
step "apt-get install python3-venv" apt-get install -y -qq python3-venv
step "agent venv" python3 -m venv "$M/agent-venv"
step "install SDK" "$M/agent-venv/bin/pip" install --quiet {sdk}
step "requirements venv" python3 -m venv --system-site-packages "$M/venv"
step "install requirements" "$M/venv/bin/pip" install --quiet -r "$M/work/requirements.txt"
step "1st status write" agent "$M/agent-venv/bin/python" ONE
step "2nd status write" agent "$M/agent-venv/bin/python" TWO
""",
    "pip-wheel": r"""
step "fetch pip" fetch pip /tmp/pip-py3-none-any.whl
step "agent venv" python3 -m venv --without-pip "$M/agent-venv"
step "install SDK" "$M/agent-venv/bin/python" /tmp/pip-py3-none-any.whl/pip install --quiet {sdk}
step "requirements venv" python3 -m venv --without-pip --system-site-packages "$M/venv"
step "install requirements" "$M/venv/bin/python" /tmp/pip-py3-none-any.whl/pip install --quiet \
  -r "$M/work/requirements.txt"
step "1st status write" agent "$M/agent-venv/bin/python" ONE
step "2nd status write" agent "$M/agent-venv/bin/python" TWO
""",
    "uv": r"""
step "fetch uv" fetch uv /tmp/uv.whl
step "unpack uv" python3 -c 'import sys, zipfile; z = zipfile.ZipFile("/tmp/uv.whl")
open("/tmp/uv", "wb").write(z.read(next(n for n in z.namelist() if n.endswith("/scripts/uv"))))'
chmod +x /tmp/uv
step "agent venv" /tmp/uv venv --quiet --python /usr/bin/python3 "$M/agent-venv"
step "install SDK" /tmp/uv pip install --quiet --python "$M/agent-venv/bin/python" {sdk}
step "requirements venv" /tmp/uv venv --quiet --system-site-packages --python /usr/bin/python3 "$M/venv"
step "install requirements" /tmp/uv pip install --quiet --python "$M/venv/bin/python" -r "$M/work/requirements.txt"
step "1st status write" agent "$M/agent-venv/bin/python" ONE
step "2nd status write" agent "$M/agent-venv/bin/python" TWO
""",
    "uv --compile-bytecode": r"""
step "fetch uv" fetch uv /tmp/uv.whl
step "unpack uv" python3 -c 'import sys, zipfile; z = zipfile.ZipFile("/tmp/uv.whl")
open("/tmp/uv", "wb").write(z.read(next(n for n in z.namelist() if n.endswith("/scripts/uv"))))'
chmod +x /tmp/uv
step "agent venv" /tmp/uv venv --quiet --python /usr/bin/python3 "$M/agent-venv"
step "install SDK" /tmp/uv pip install --quiet --compile-bytecode --python "$M/agent-venv/bin/python" {sdk}
step "requirements venv" /tmp/uv venv --quiet --system-site-packages --python /usr/bin/python3 "$M/venv"
step "install requirements" /tmp/uv pip install --quiet --compile-bytecode --python "$M/venv/bin/python" \
  -r "$M/work/requirements.txt"
step "1st status write" agent "$M/agent-venv/bin/python" ONE
step "2nd status write" agent "$M/agent-venv/bin/python" TWO
""",
    "stdlib": r"""
cat > "$M/report.py" <<'EOF'
{stdlib_report}
EOF
step "1st status write" python3 "$M/report.py" status.json ONE
step "2nd status write" python3 "$M/report.py" status.json TWO
""",
}

ROWS = ("apt-get update", "apt-get install python3-venv", "fetch pip", "fetch uv", "unpack uv", "agent venv",
        "install SDK", "requirements venv", "install requirements", "1st status write", "2nd status write")

# A status write with nothing but the standard library: what `rk status` does, without the SDK.
STDLIB_REPORT = r'''import datetime, hashlib, hmac, json, os, sys, urllib.parse, urllib.request

def fetch(url, method="GET", data=None, headers={}):
    with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method), timeout=10) as r:
        return r.read()

def put_gcs(bucket, key, data):
    meta = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
    token = json.loads(fetch(meta, headers={"Metadata-Flavor": "Google"}))["access_token"]
    base = os.environ.get("STORAGE_EMULATOR_HOST", "https://storage.googleapis.com")
    name = urllib.parse.quote(key, safe="")
    fetch(f"{base}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}", "POST", data,
          {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"})

def put_s3(bucket, key, data):
    imds = "http://169.254.169.254/latest/"
    session = {"X-aws-ec2-metadata-token": fetch(imds + "api/token", "PUT",
                                                 headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}).decode()}
    role = fetch(imds + "meta-data/iam/security-credentials/", headers=session).decode().split()[0]
    creds = json.loads(fetch(imds + "meta-data/iam/security-credentials/" + role, headers=session))
    region = os.environ.get("AWS_REGION", "us-east-1")
    endpoint = os.environ.get("AWS_ENDPOINT_URL", f"https://s3.{region}.amazonaws.com")
    url = f"{endpoint}/{bucket}/{urllib.parse.quote(key)}"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    body_hash = hashlib.sha256(data).hexdigest()
    headers = {"host": urllib.parse.urlsplit(url).netloc, "x-amz-content-sha256": body_hash, "x-amz-date": stamp,
               "x-amz-security-token": creds["Token"]}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(["PUT", urllib.parse.urlsplit(url).path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)),
                           "", signed, body_hash])
    scope = f"{stamp[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key_ = ("AWS4" + creds["SecretAccessKey"]).encode()
    for part in (stamp[:8], region, "s3", "aws4_request"):
        key_ = hmac.new(key_, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key_, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds['AccessKeyId']}/{scope}, "
                                f"SignedHeaders={signed}, Signature={signature}")
    # a Content-Type of its own: urllib's default (a form) has moto's server read the body as form fields
    fetch(url, "PUT", data, {"Content-Type": "application/json", **{k: v for k, v in headers.items() if k != "host"}})

scheme, _, rest = os.environ["RK_STORE"].partition("://")
bucket, _, prefix = rest.partition("/")
key = f"{prefix}/runs/{os.environ['RK_RUN_ID']}/{sys.argv[1]}".lstrip("/")
body = json.dumps({"run_id": os.environ["RK_RUN_ID"], "phase": sys.argv[2]}).encode()
{"gs": put_gcs, "s3": put_s3}[scheme](bucket, key, body)
'''


def run_vm(vms: FakeVMs, script: str, flavor: str, env: dict[str, str], timeout: float = 300) -> tuple[float, str]:
    name = f"m-{uuid.uuid4().hex[:8]}"
    identity = {"flavor": flavor, "name": name, "zone": "us-central1-a", "project": "p", "instance_id": f"i-{name}"}
    vms.api_env = env
    t0 = time.time()
    vms.boot(script, identity)
    rc = vms.vms[name]["proc"].wait(timeout)
    out = (vms.vms[name]["root"] / "console.log").read_text()
    if rc:
        raise RuntimeError(f"{name} exited {rc}:\n{out[-3000:]}")
    return t0, out


def boot_overhead(net: VMNetwork, images: bare_image.BareImages, n: int) -> dict[str, dict[str, float]]:
    """Medians over n VMs: FakeVMs.boot() (namespace, metadata server, process start), then
    from boot() returning to the script's first line."""
    out = {}
    for mode, image in (("host root", None), ("bare image", images.image("bare"))):
        boot, first = [], []
        with tempfile.TemporaryDirectory() as d:
            vms = FakeVMs(Path(d), {}, net, image)
            try:
                for _ in range(n):
                    name = f"b-{uuid.uuid4().hex[:8]}"
                    t0 = time.time()
                    vms.boot('#!/bin/bash\necho "FIRST $EPOCHREALTIME"\n', {"flavor": "gce", "name": name,
                                                                           "zone": "z-a", "project": "p"})
                    t1 = time.time()
                    vms.vms[name]["proc"].wait(30)
                    text = (vms.vms[name]["root"] / "console.log").read_text()
                    boot.append(t1 - t0)
                    first.append(float(re.search(r"FIRST ([\d.]+)", text).group(1)) - t1)
            finally:
                vms.stop()
        out[mode] = {"boot()": statistics.median(boot), "to first line": statistics.median(first)}
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="write every run's steps here")
    args = ap.parse_args(argv)
    reason = VMNetwork.available()
    if reason:
        print(f"measure_bare: {reason}", file=sys.stderr)
        return 1
    from researchkit_py.startup import agent_payload

    net = VMNetwork(subnet=os.getpid() % 200 + 20)
    images = gcs = moto = None
    try:
        try:
            images = bare_image.BareImages(net.host_ip)
        except bare_image.Unavailable as e:
            print(f"measure_bare: {e}", file=sys.stderr)
            return 1
        gcs, moto = FakeGCS(host=net.host_ip), Moto(host=net.host_ip)
        os.environ.update(STORAGE_EMULATOR_HOST=gcs.url, AWS_ENDPOINT_URL=moto.url, AWS_ACCESS_KEY_ID="testing",
                          AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1")
        from researchkit_py.clouds.registry import open_store

        print("boot overhead (median of 10):")
        for mode, m in boot_overhead(net, images, 10).items():
            print(f"  {mode:10}  boot() {m['boot()']:.3f} s, then {m['to first line']:.3f} s to the script's "
                  "first line")
        results: list[dict] = []
        with tempfile.TemporaryDirectory() as d:
            vms = FakeVMs(Path(d), {}, net, images.image("bare"))
            try:
                for scheme, sdk, flavor in (("gs", "google-cloud-storage", "gce"), ("s3", "boto3", "aws")):
                    bucket = f"m-{uuid.uuid4().hex[:8]}"
                    store_url = f"{scheme}://{bucket}/rk"
                    if scheme == "gs":
                        from google.auth.credentials import AnonymousCredentials
                        from google.cloud import storage

                        storage.Client(project="p", credentials=AnonymousCredentials()).create_bucket(bucket)
                        env = {"STORAGE_EMULATOR_HOST": gcs.url}
                    else:
                        import boto3

                        boto3.client("s3").create_bucket(Bucket=bucket)
                        env = {"AWS_ENDPOINT_URL": moto.url, "AWS_REGION": "us-east-1"}
                    head = STEP.replace("{payload}", agent_payload("local", store_url))
                    for way, body in WAYS.items():
                        for i in range(args.repeat):
                            run_id = f"{way}-{i}"
                            script = head + body.replace("{sdk}", sdk).replace("{stdlib_report}", STDLIB_REPORT)
                            env_i = {**env, "RK_STORE": store_url, "RK_RUN_ID": run_id,
                                     "RK_ROOT": "/var/lib/rk-measure"}
                            _, out = run_vm(vms, script, flavor, env_i)
                            steps = {label: float(b) - float(a) for label, a, b in
                                     re.findall(r"^STEP (.+) ([\d.]+) ([\d.]+)$", out, re.M)}
                            status = open_store(store_url).read_json(f"runs/{run_id}/status.json")
                            assert status["phase"] == "TWO", status  # the writes really landed
                            results.append({"scheme": scheme, "way": way, "run": i, "steps": steps})
            finally:
                vms.stop()
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        _print_table(results)
    finally:
        for server in (images, gcs, moto):
            if server is not None:
                server.stop()
        net.stop()
    return 0


def _print_table(results: list[dict]) -> None:
    """Median seconds per step, a column per way; `total`, the median of each run's sum."""
    for scheme in ("gs", "s3"):
        rows = [r for r in results if r["scheme"] == scheme]
        ways = list(dict.fromkeys(r["way"] for r in rows))
        seen = {label for r in rows for label in r["steps"]}
        labels = [label for label in ROWS if label in seen] + sorted(seen - set(ROWS))
        print(f"\n{scheme} (median of {max(r['run'] for r in rows) + 1} runs, seconds)")
        print(f"| step | {' | '.join(ways)} |\n|---|{'---|' * len(ways)}")
        for label in [*labels, "total"]:
            cells = []
            for way in ways:
                runs = [r["steps"] for r in rows if r["way"] == way]
                values = [sum(s.values()) if label == "total" else s.get(label) for s in runs]
                cells.append("" if None in values else f"{statistics.median(values):.2f}")
            print(f"| {label} | {' | '.join(cells)} |")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
