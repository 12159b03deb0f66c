"""operator/Dockerfile agrees with what the chart asks of the image (it cannot be built here:
no Docker): the numeric non-root user the chart runs as, the command, the ports, and only the
`operator` extra installed."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "operator" / "Dockerfile"
VALUES = yaml.safe_load((ROOT / "charts" / "modelservice-operator" / "values.yaml").read_text())


def _final_stage() -> str:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    last_from = max(i for i, ln in enumerate(lines) if ln.startswith("FROM "))
    return "\n".join(lines[last_from:])


def test_image_runs_as_the_numeric_non_root_user_of_the_chart() -> None:
    user = re.search(r"^USER (\d+):(\d+)$", _final_stage(), re.M)
    assert user, "the final stage needs a numeric USER uid:gid (runAsNonRoot verifies it)"
    pod = VALUES["podSecurityContext"]
    assert (int(user[1]), int(user[2])) == (pod["runAsUser"], pod["runAsGroup"])
    assert int(user[1]) != 0


def test_image_entrypoint_is_the_chart_command_and_ports_are_exposed() -> None:
    stage = _final_stage()
    assert 'ENTRYPOINT ["modelservice", "operator"]' in stage
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", stage, re.M) for p in line.split()}
    assert exposed == {VALUES["ports"]["health"], VALUES["ports"]["metrics"]}


def test_image_installs_only_the_operator_extra() -> None:
    text = DOCKERFILE.read_text()
    assert 'pip install -c constraints.txt ".[operator]"' in text
    for extra in ("[runtime]", "[export]", "[gpu]", "[dev]"):
        assert extra not in text
    ignore = (ROOT / "operator" / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in ignore if ln.strip() and not ln.startswith("#")]
    assert patterns[0] == "*", "the build context is an allow-list"
    assert "!operator/modelservice_operator" in patterns
    assert "!cli/modelservice_cli" in patterns  # the console script, without runtime code
    assert not [p for p in patterns if "modelservice_runtime" in p]


def test_the_operator_and_the_console_script_need_no_runtime_code() -> None:
    """What the image carries is enough: modelservice_runtime cannot even be imported."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['modelservice_runtime'] = None\n"
        "import modelservice_operator.handlers, modelservice_operator.cli\n"
        "from modelservice_cli.main import main\n"
        "assert main(['operator', '--help']) == 0\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
