"""Facts of the local control plane that hack/cluster-env.sh holds (the one place they are
written), read by sourcing it."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from tests.integration.conftest import REPO_ROOT


@dataclass(frozen=True)
class Gateway:
    """The facts hack/cluster-env.sh holds about the default Gateway."""

    ip: str
    namespace: str
    name: str
    gateway_class: str


def gateway_facts() -> Gateway:
    """hack/cluster-env.sh's values, read by sourcing it (the one place they are written)."""
    names = ("GATEWAY_IP", "GATEWAY_NAMESPACE", "GATEWAY_NAME", "GATEWAY_CLASS")
    script = 'HACK_DIR="$1/hack"; source "$1/hack/cluster-env.sh"; printf "%s\\n" ' + " ".join(
        f'"${{{n}}}"' for n in names
    )
    proc = subprocess.run(
        ["bash", "-c", script, "bash", str(REPO_ROOT)],
        capture_output=True,
        text=True,
        check=True,
    )
    ip, namespace, name, gateway_class = proc.stdout.splitlines()
    return Gateway(ip, namespace, name, gateway_class)
