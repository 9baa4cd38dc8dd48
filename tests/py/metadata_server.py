"""A VM's metadata server, run inside its network namespace on 169.254.169.254:80.

  python metadata_server.py CONFIG.json   (name, zone, project, attributes, bind, port, log)
"""

import json
import sys

from fake_vm import MetadataServer

if __name__ == "__main__":
    cfg = json.load(open(sys.argv[1]))
    server = MetadataServer(cfg["identity"], host=cfg["bind"], port=cfg["port"], log_path=cfg["log"], background=False)
    print("listening", flush=True)  # bound: a VM's first request waits in the backlog, never refused
    sys.stdout.close()
    server.server.serve_forever()
