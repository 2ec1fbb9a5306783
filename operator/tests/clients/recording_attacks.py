"""Exec sessions with the Python kubernetes client's stream(), sending what the recording
attacks need: standard input as WebSocket text frames (what write_stdin(str) sends), one
character per frame, resize messages as text frames, and frames on channels a client does not
write to.

Usage: recording_attacks.py MODE VALUE
  MODE text-stdin  send VALUE and a line end to `cat` as one text frame
       per-char    send VALUE and a line end one character per text frame
       resize      send a resize as a text frame, then VALUE as a text frame
       bad-channel send data on the stdout channel, then VALUE
       hold        send VALUE, print "sent", then keep the session open until killed
Environment: KUBECONFIG_FILE (direct to an API server) or KUBERNETES_SERVICE_HOST/PORT with
SA_DIR (through the sidecar, as an injected pod); NAMESPACE, POD.
Prints one JSON object: the standard output received and whether the session stayed open.
"""

import json
import os
import sys
import time

from kubernetes import client, config
from kubernetes.config.incluster_config import InClusterConfigLoader
from kubernetes.stream import stream

MODE, VALUE = sys.argv[1], sys.argv[2]

if os.environ.get("KUBECONFIG_FILE"):
    config.load_kube_config(config_file=os.environ["KUBECONFIG_FILE"])
else:
    sa = os.environ["SA_DIR"]
    InClusterConfigLoader(
        token_filename=os.path.join(sa, "token"),
        cert_filename=os.path.join(sa, "ca.crt"),
    ).load_and_set()
core = client.CoreV1Api()

resp = stream(
    core.connect_get_namespaced_pod_exec,
    os.environ["POD"],
    os.environ["NAMESPACE"],
    command=["cat"],
    stderr=True,
    stdin=True,
    stdout=True,
    tty=False,
    _preload_content=False,
)

if MODE == "text-stdin":
    resp.write_stdin(VALUE + "\n")
elif MODE == "per-char":
    for c in VALUE + "\n":
        resp.write_stdin(c)
elif MODE == "resize":
    resp.write_channel(4, '{"Width":123,"Height":45}')
    resp.write_stdin(VALUE + "\n")
elif MODE == "bad-channel":
    resp.write_channel(1, "not from a client\n")
    time.sleep(0.5)
    try:
        resp.write_stdin(VALUE + "\n")
    except Exception:  # the connection was closed
        pass
elif MODE == "hold":
    resp.write_stdin(VALUE + "\n")
else:
    sys.exit(f"unknown mode {MODE}")

out = ""
deadline = time.time() + 5
try:
    while resp.is_open() and time.time() < deadline:
        resp.update(timeout=0.2)
        out += resp.read_stdout() or ""
        if "\n" in out:
            break
except Exception:  # the connection was closed
    pass

if MODE == "hold":
    print(json.dumps({"stdout": out, "open": resp.is_open()}), flush=True)
    print("sent", flush=True)
    time.sleep(600)

open_now = resp.is_open()
try:
    resp.close()
except Exception:
    pass
print(json.dumps({"stdout": out, "open": open_now}))
