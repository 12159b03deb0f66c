"""`modelservice explain` on models built with onnx.helper: the table for a tabular input,
the figure (matplotlib) and the plain heat map without it, read back with Pillow (an
independent decoder), for an image; the bar chart; and every mistake's message naming what
to do."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from modelservice_cli.main import main
from modelservice_runtime.explain.explainer import Explanation
from modelservice_runtime.tools import explain_figure

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


def _quarters_model(tmp_path: Path) -> tuple[Path, Path]:
    image = (3, 8, 8)
    # class 0 rises with the top-left quarter of the image and falls with the bottom-right
    w = np.zeros((2, math.prod(image)))
    weights = np.zeros(image)
    weights[:, :4, :4] = 1.0
    weights[:, 4:, 4:] = -1.0
    w[0] = weights.ravel()
    model = explain_models.image_linear(tmp_path / "img.onnx", w, image)
    np.save(tmp_path / "img.npy", np.ones(image, np.float32))
    return model, tmp_path / "img.npy"


def test_heat_map_png_of_an_image_without_matplotlib(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    monkeypatch.setattr(explain_figure, "available", lambda: False)
    model, _ = _quarters_model(tmp_path)
    png = tmp_path / "heat.png"
    code = main(["explain", str(model), "--input", str(tmp_path / "img.npy"), "--target", "0",
                 "--patch", "4,4", "--png", str(png)])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "shap (14 perturbed inputs, exact), target 0" in out and f"heat map: {png}" in out
    assert "pip install 'modelservice[runtime,explain]'" in out
    with Image.open(png) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (256, 256)
        top_left, bottom_right = im.getpixel((10, 10)), im.getpixel((250, 250))
        top_right = im.getpixel((250, 10))
    assert top_left[0] > 200 and top_left[2] < 100  # red: pushes class 0 up
    assert bottom_right[2] > 200 and bottom_right[0] < 100  # blue: pulls it down
    # no attribution (but float noise of the regression): the grey image
    assert max(top_right) - min(top_right) <= 2


def test_figure_of_an_image_input_map_and_legend(tmp_path: Path, capsys) -> None:
    from PIL import Image

    model, x = _quarters_model(tmp_path)
    png = tmp_path / "fig.png"
    code = main(["explain", str(model), "--input", str(x), "--target", "0", "--patch", "4,4",
                 "--png", str(png)])  # fmt: skip
    assert code == 0
    assert f"figure: {png}" in capsys.readouterr().out
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (1200, 440)  # three panels side by side


def _explanation(attributions: np.ndarray, method: str = "shap") -> Explanation:
    return Explanation(method, 0, 0.0, float(attributions.sum()), attributions, 14, None, True)


def test_figure_panels_diverge_red_up_blue_down_and_are_smooth(tmp_path: Path) -> None:
    from PIL import Image

    a = np.zeros((3, 32, 32))
    a[:, :16, :16] = 1.0  # pushes the output up
    a[:, 16:, 16:] = -1.0  # pulls it down
    image = np.full((3, 32, 32), 0.5, np.float32)
    image[0, :16, :16] = 1.0  # a red object under the positive quarter
    layout = explain_figure.image_figure(
        tmp_path / "f.png", image, _explanation(a), (8, 8), "m.onnx"
    )
    left, top, right, bottom = layout.panels["attributions"]

    def at(fx: float, fy: float) -> tuple[int, ...]:
        return im.getpixel((round(left + fx * (right - left)), round(top + fy * (bottom - top))))

    with Image.open(tmp_path / "f.png") as im:
        im = im.convert("RGB")
        red, blue, zero = at(0.1, 0.1), at(0.9, 0.9), at(0.9, 0.1)
        # the input panel shows the image as it is: its red object stays in the input panel
        l0, t0, r0, b0 = layout.panels["input"]
        shown = im.getpixel((l0 + (r0 - l0) // 8, t0 + (b0 - t0) // 8))
        assert shown[0] == 255 and abs(shown[1] - 128) <= 1 and abs(shown[2] - 128) <= 1
        # smooth: along a row through the positive quarter the colour changes in many steps
        row = [at(fx, 0.1) for fx in np.linspace(0.3, 0.7, 40)]
    assert red[0] > 90 and red[2] < 60 and red[0] > red[2] + 60  # dark red end of RdBu_r
    assert blue[2] > 90 and blue[0] < 60  # dark blue end
    assert max(zero) - min(zero) < 16 and min(zero) > 230  # white at zero
    assert len(set(row)) > 8


def test_smooth_map_keeps_a_constant_map_and_interpolates_between_patch_centres() -> None:
    heat = np.zeros((8, 8))
    heat[:, 4:] = 1.0
    smooth = explain_figure.smooth_map(heat, (4, 4))
    assert np.allclose(smooth[:, :2], 0) and np.allclose(smooth[:, 6:], 1)  # beyond centres
    assert np.all(np.diff(smooth[0]) >= 0) and 0 < smooth[0, 3] < smooth[0, 4] < 1
    assert np.allclose(explain_figure.smooth_map(np.full((5, 7), 2.0), (2, 3)), 2.0)


def test_png_of_a_tabular_input_is_a_bar_chart(
    linear: tuple[Path, np.ndarray], tmp_path: Path, capsys
) -> None:
    from PIL import Image

    model, _ = linear
    np.save(tmp_path / "x.npy", np.array([1.0, 1.0, 2.0, 0.5], np.float32))
    png = tmp_path / "bars.png"
    code = main(["explain", str(model), "--input", str(tmp_path / "x.npy"), "--target", "0",
                 "--png", str(png)])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "feature" in out and f"bar chart: {png}" in out  # the table, and the chart
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] == 800


def test_png_of_a_tabular_input_without_matplotlib_names_the_extra(
    linear: tuple[Path, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(explain_figure, "available", lambda: False)
    np.save(tmp_path / "x.npy", np.zeros(4, np.float32))
    with pytest.raises(SystemExit, match=r"--png: the bar chart .* pip install 'modelservice\["):
        main(["explain", str(linear[0]), "--input", str(tmp_path / "x.npy"), "--png", "b.png"])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("x.csv", b"1,2,3,4\n", r"--input: .*x.csv is not a .npy file; .*np.loadtxt\("),
        ("x.txt", b"hello", r"--input: .*x.txt is not a .npy file; .*np.save\('x.npy'"),
        ("gone.npy", None, r"--input: .*gone.npy does not exist"),
    ],
)
def test_an_input_that_is_not_npy_says_how_to_make_one(
    linear: tuple[Path, np.ndarray], tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(SystemExit, match=message):
        main(["explain", str(linear[0]), "--input", str(tmp_path / name)])


def test_a_wrong_shape_is_reported_as_given(
    linear: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    np.save(tmp_path / "x.npy", np.zeros(3, np.float32))
    with pytest.raises(
        SystemExit,
        match=r"an array of shape \[3\] is neither one instance \[4\] .* one instance holds 4 "
        r"values, this array 3",
    ):
        main(["explain", str(linear[0]), "--input", str(tmp_path / "x.npy")])
    np.save(tmp_path / "x.npy", np.zeros((2, 2), np.float32))
    with pytest.raises(SystemExit, match=r"reshape it: np.save\(PATH, x.reshape\(1, 4\)\)"):
        main(["explain", str(linear[0]), "--input", str(tmp_path / "x.npy")])


def test_sample_limits_name_this_commands_flags(
    linear: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    np.save(tmp_path / "x.npy", np.zeros(4, np.float32))
    args = ["explain", str(linear[0]), "--input", str(tmp_path / "x.npy")]
    with pytest.raises(SystemExit) as e:
        main([*args, "--samples", "99999"])
    assert "(--max-samples)" in str(e.value) and "--explain-max-samples" not in str(e.value)
    # a lower cap holds the default samples to it, as the server does: no --samples blamed
    assert main([*args, "--max-samples", "100", "--method", "lime"]) == 0


def test_occlusion_summary_states_no_false_equation(
    linear: tuple[Path, np.ndarray], tmp_path: Path, capsys
) -> None:
    np.save(tmp_path / "x.npy", np.ones(4, np.float32))
    main(["explain", str(linear[0]), "--input", str(tmp_path / "x.npy"), "--method", "occlusion"])
    first = capsys.readouterr().out.splitlines()[0]
    assert "=" not in first and "only for a linear model" in first
