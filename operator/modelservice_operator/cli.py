"""`modelservice operator [kopf run args]`: run kopf with this package's handlers.

Arguments are kopf's own (`kopf run --help`); what is not given comes from the settings:
namespaces (MODELSERVICE_NAMESPACES, else --all-namespaces), the liveness endpoint
(http://0.0.0.0:<MODELSERVICE_OPERATOR_PROBE_PORT>/healthz) and --standalone (no peering
CRD needed; run one replica).
"""

from __future__ import annotations

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


def run_kopf(argv: Sequence[str]) -> int:
    import kopf.cli

    args = kopf_args(argv, OperatorSettings.from_env())
    try:
        kopf.cli.main.main(args=args, prog_name="modelservice operator", standalone_mode=False)
    except SystemExit as e:  # click may still exit on --help
        return int(e.code or 0)
    return 0
