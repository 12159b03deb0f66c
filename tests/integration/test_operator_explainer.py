"""spec.explainer through the real API server and the operator: the CRD keeps the block (a
field missing from the schema would be pruned silently), refuses bad values by the schema,
and the operator renders it into the runtime's command line."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import Kubectl, msvc, wait_phase

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_the_explainer_block_reaches_the_runtime_command(
    kctl: Kubectl, msvc_namespace: str
) -> None:
    ns = msvc_namespace
    block = {"enabled": False, "method": "lime", "samples": 300, "patch": [16, 8]}
    kctl.apply(msvc("explained", explainer=block), ns)
    obj = wait_phase(kctl, ns, "explained", "Ready")
    assert obj["spec"]["explainer"] == block  # stored as given, nothing pruned
    command = kctl.get("deployment", "explained", ns)["spec"]["template"]["spec"]["containers"][0][
        "command"
    ]
    assert "--no-explain" in command
    for flag, value in (
        ("--explain-method", "lime"),
        ("--explain-samples", "300"),
        ("--explain-patch", "16,8"),
    ):
        assert command[command.index(flag) + 1] == value, command


def test_no_block_gets_the_schema_defaults_only_when_given(
    kctl: Kubectl, msvc_namespace: str
) -> None:
    ns = msvc_namespace
    kctl.apply(msvc("plain"), ns)
    kctl.apply(msvc("empty", explainer={}), ns)
    plain = wait_phase(kctl, ns, "plain", "Ready")
    empty = wait_phase(kctl, ns, "empty", "Ready")
    assert "explainer" not in plain["spec"]
    assert empty["spec"]["explainer"] == {"enabled": True, "method": "shap", "samples": 2048}
    for name, explain_flags in (("plain", []), ("empty", ["--explain"])):
        command = kctl.get("deployment", name, ns)["spec"]["template"]["spec"]["containers"][0][
            "command"
        ]
        assert [a for a in command if a in ("--explain", "--no-explain")] == explain_flags


@pytest.mark.parametrize(
    ("explainer", "says"),
    [
        ({"method": "anchors"}, "spec.explainer.method"),
        ({"samples": 0}, "spec.explainer.samples"),
        ({"patch": [4]}, "spec.explainer.patch"),
    ],
)
def test_bad_explainer_values_are_refused_by_the_api(
    kctl: Kubectl, modelservice_crd: str, explainer: dict, says: str
) -> None:
    proc = kctl.run(
        "apply", "--dry-run=server", "-n", "default", "-f", "-",
        stdin=json.dumps(msvc("bad-explainer", explainer=explainer)),
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0, f"accepted: {explainer}"
    assert says in proc.stderr, proc.stderr
