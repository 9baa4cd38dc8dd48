"""A VM's metadata server, run inside its network namespace on 169.254.169.254:80.

  python metadata_server.py CONFIG.json   (name, zone, project, attributes, bind, port, log)
"""

import json
import sys

from fake_vm import MetadataServer

if __name__ == "__main__":
    cfg = json.load(open(sys.argv[1]))
    server = MetadataServer(cfg["name"], cfg["zone"], cfg["project"], cfg["attributes"], host=cfg["bind"],
                            port=cfg["port"], log_path=cfg["log"])
    server.server.serve_forever()
