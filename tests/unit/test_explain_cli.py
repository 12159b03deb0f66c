"""`modelservice explain` on models built with onnx.helper: the table for a tabular input,
the heat map PNG (read back with Pillow, an independent decoder) for an image, flag errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from modelservice_cli.main import main

from tests import explain_models


@pytest.fixture
def linear(tmp_path: Path) -> tuple[Path, np.ndarray]:
    w = np.array([[1.0, -2.0, 0.5, 4.0], [0.0, 1.0, 0.0, 0.0]])
    return explain_models.linear(tmp_path / "lin.onnx", w, np.zeros(2)), w


def test_table_of_a_tabular_input(linear: tuple[Path, np.ndarray], tmp_path: Path, capsys) -> None:
    model, _w = linear
    x = np.array([1.0, 1.0, 2.0, 0.5], np.float32)
    np.save(tmp_path / "x.npy", x)
    code = main(["explain", str(model), "--input", str(tmp_path / "x.npy"), "--target", "0",
                 "--method", "occlusion"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("instance 0: occlusion (4 perturbed inputs, exact), target 0")
    assert out[1].split() == ["feature", "value", "baseline", "attribution"]
    rows = [line.split() for line in out[2:6]]
    # largest |attribution| first: W[0] * x = [1, -2, 1, 2]
    assert [r[0] for r in rows] == ["1", "3", "0", "2"]
    assert [float(r[3]) for r in rows] == [-2.0, 2.0, 1.0, 1.0]


def test_bad_flags_are_named(linear: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    model, _ = linear
    np.save(tmp_path / "x.npy", np.zeros(4, np.float32))
    args = ["explain", str(model), "--input", str(tmp_path / "x.npy")]
    with pytest.raises(SystemExit, match=r"--samples: 99999 is over the limit of 16384"):
        main([*args, "--samples", "99999"])
    with pytest.raises(SystemExit, match=r"--patch: applies to inputs whose instances have 2"):
        main([*args, "--patch", "2,2"])
    np.save(tmp_path / "bad.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(SystemExit, match=r"--input: an array of shape \[2, 3\] is neither"):
        main(["explain", str(model), "--input", str(tmp_path / "bad.npy")])


def test_heat_map_png_of_an_image(tmp_path: Path, capsys) -> None:
    from PIL import Image

    image = (3, 8, 8)
    # class 0 rises with the top-left quarter of the image and falls with the bottom-right
    w = np.zeros((2, math.prod(image)))
    weights = np.zeros(image)
    weights[:, :4, :4] = 1.0
    weights[:, 4:, 4:] = -1.0
    w[0] = weights.ravel()
    model = explain_models.image_linear(tmp_path / "img.onnx", w, image)
    np.save(tmp_path / "img.npy", np.ones(image, np.float32))
    png = tmp_path / "heat.png"
    code = main(["explain", str(model), "--input", str(tmp_path / "img.npy"), "--target", "0",
                 "--patch", "4,4", "--png", str(png)])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "shap (14 perturbed inputs, exact), target 0" in out and f"heat map: {png}" in out
    with Image.open(png) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (256, 256)
        top_left, bottom_right = im.getpixel((10, 10)), im.getpixel((250, 250))
        top_right = im.getpixel((250, 10))
    assert top_left[0] > 200 and top_left[2] < 100  # red: pushes class 0 up
    assert bottom_right[2] > 200 and bottom_right[0] < 100  # blue: pulls it down
    # no attribution (but float noise of the regression): the grey image
    assert max(top_right) - min(top_right) <= 2
