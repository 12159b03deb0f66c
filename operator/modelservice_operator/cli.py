"""`modelservice operator [kopf run args]`: run kopf with this package's handlers.

Arguments are kopf's own (`kopf run --help`); what is not given comes from the settings:
namespaces (MODELSERVICE_NAMESPACES, else --all-namespaces), the liveness endpoint
(http://0.0.0.0:<MODELSERVICE_OPERATOR_PROBE_PORT>/healthz) and --standalone (no peering
CRD needed; run one replica).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Sequence

from modelservice_operator.settings import OperatorSettings

HANDLERS_MODULE = "modelservice_operator.handlers"
_NAMESPACE_FLAGS = ("-n", "--namespace", "-A", "--all-namespaces")


def _has_flag(argv: Sequence[str], flags: Sequence[str]) -> bool:
    return any(a in flags or any(a.startswith(f + "=") for f in flags) for a in argv)


def kopf_args(argv: Sequence[str], settings: OperatorSettings) -> list[str]:
    """The full `kopf run ...` argument list for `modelservice operator ARGV`."""
    args = list(argv)
    if args[:1] == ["run"]:
        args = args[1:]
    out = ["run", "-m", HANDLERS_MODULE]
    if not _has_flag(args, _NAMESPACE_FLAGS):
        if settings.namespaces:
            for ns in settings.namespaces:
                out += ["--namespace", ns]
        else:
            out.append("--all-namespaces")
    if not _has_flag(args, ("--liveness",)) and settings.probe_port:
        out.append(f"--liveness=http://0.0.0.0:{settings.probe_port}/healthz")
    if not _has_flag(args, ("--standalone", "--peering", "--priority")):
        out.append("--standalone")
    return out + args


def ensure_login_name() -> None:
    """Let kopf name itself when the process's uid has no passwd entry.

    kopf builds its identity (`user@host/...`, also with --standalone) from
    getpass.getuser(), which raises KeyError (OSError from Python 3.13) for a uid absent
    from /etc/passwd: an image run as a bare numeric USER (65532) with no such entry, or
    under OpenShift's arbitrary uids. getpass reads $LOGNAME/$USER first, so setting USER
    to the uid's number avoids the lookup; POD_ID (kopf's own override) or a real login
    name are left alone.
    """
    if os.environ.get("POD_ID"):
        return
    try:
        getpass.getuser()
    except (KeyError, OSError):
        os.environ["USER"] = f"uid{os.getuid()}"


def run_kopf(argv: Sequence[str]) -> int:
    import kopf.cli

    ensure_login_name()
    args = kopf_args(argv, OperatorSettings.from_env())
    try:
        kopf.cli.main.main(args=args, prog_name="modelservice operator", standalone_mode=False)
    except SystemExit as e:  # click may still exit on --help
        return int(e.code or 0)
    return 0
