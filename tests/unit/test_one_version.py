"""One version and one default runtime image, written once (modelservice_cli.__version__,
modelservice_operator.settings) and repeated only where a file format cannot read them: the
Helm chart's version, appVersion and runtimeImage, the Makefile's and hack/images.sh's
local build name. These tests hold the repeats to the source."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from modelservice_cli import __version__
from modelservice_operator.settings import DEFAULT_RUNTIME_IMAGE, RUNTIME_REPOSITORY

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modelservice-operator"


def test_the_distribution_reads_its_version_from_the_cli_package() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = {attr = "modelservice_cli.__version__"}' in pyproject
    assert not re.search(r'^version = "', pyproject, re.M), "a second, literal version"


def test_the_runtime_reports_the_one_version() -> None:
    import modelservice_runtime

    assert modelservice_runtime.__version__ == __version__


def test_the_chart_is_this_version_and_defaults_to_this_runtime_image() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["version"], chart["appVersion"]) == (__version__, __version__)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["runtimeImage"] == DEFAULT_RUNTIME_IMAGE == f"modelservice-runtime:{__version__}"


def test_the_local_build_names_the_same_runtime_repository() -> None:
    makefile = (ROOT / "Makefile").read_text()
    (image,) = re.findall(r"^RUNTIME_IMAGE \?= (\S+)$", makefile, re.M)
    assert image.split(":")[0] == RUNTIME_REPOSITORY
    images_sh = (ROOT / "hack" / "images.sh").read_text()
    assert f'RUNTIME_IMAGE="${{RUNTIME_IMAGE:-{RUNTIME_REPOSITORY}:dev}}"' in images_sh
