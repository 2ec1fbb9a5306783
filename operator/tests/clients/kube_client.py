"""The Python kubernetes client through the sidecar's Kubernetes API proxy, configured the way
an injected pod is: KUBERNETES_SERVICE_HOST/PORT point at the sidecar, and the
service-account directory holds the sidecar's CA and a placeholder token.

Environment: KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT, SA_DIR (token, ca.crt),
NAMESPACE, POD. Prints one line per check ending in ": ok"; exits non-zero on the first
failure.
"""

import os
import sys

from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.config.incluster_config import InClusterConfigLoader
from kubernetes.stream import stream

SA_DIR = os.environ["SA_DIR"]
NAMESPACE = os.environ["NAMESPACE"]
POD = os.environ["POD"]


def check(name, condition, detail=""):
    if not condition:
        print(f"{name}: FAILED {detail}")
        sys.exit(1)
    print(f"{name}: ok")


InClusterConfigLoader(
    token_filename=os.path.join(SA_DIR, "token"),
    cert_filename=os.path.join(SA_DIR, "ca.crt"),
).load_and_set()
core = client.CoreV1Api()

pods = core.list_namespaced_pod(NAMESPACE)
check("list pods", POD in [p.metadata.name for p in pods.items])

try:
    core.read_namespaced_secret("db-credentials", NAMESPACE)
    check("secret read refused", False, "the read succeeded")
except ApiException as e:
    check("secret read refused", e.status == 403 and "builtin/secret-reads" in e.body, e.body)

out = stream(
    core.connect_get_namespaced_pod_exec,
    POD,
    NAMESPACE,
    command=["sh", "-c", "echo from-python; echo to-stderr >&2"],
    stderr=True,
    stdin=False,
    stdout=True,
    tty=False,
)
check("exec output", "from-python" in out and "to-stderr" in out, repr(out))

try:
    stream(
        core.connect_get_namespaced_pod_exec,
        POD,
        NAMESPACE,
        command=["bash"],
        stderr=True,
        stdin=True,
        stdout=True,
        tty=False,
    )
    check("exec refused", False, "the exec ran")
except ApiException as e:
    # The WebSocket handshake's answer: 403 with the Status naming the guardrail.
    check("exec refused", "403" in str(e) and "shells" in str(e), str(e))
