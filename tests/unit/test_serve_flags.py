"""Every setting of `modelservice serve` walked through the one table (serve_flags.py): as a
flag and as an environment variable into the runtime's Settings, and from the operator's
rendering of a spec into the same Settings; the spec's env rule and descriptions from it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from modelservice_cli import serve_flags
from modelservice_cli.serve_flags import SETTINGS, Setting
from modelservice_operator import render
from modelservice_operator.spec import OPERATOR_ENV_NAMES, BatchingSpec, RuntimeSpec, parse_spec
from modelservice_runtime.settings import Settings, SettingsError, add_arguments, from_args

MODEL = Path("/models/m.onnx")


def _other_value(s: Setting) -> Any:
    """A value of the setting other than its default, within its bounds."""
    if s.choices:
        return next(c for c in s.choices if c != s.default)
    if s.type is bool:
        return not s.default
    if s.type is serve_flags.Floats:
        return (0.5, 0.25, 0.125)
    if s.type is serve_flags.IntPair:
        return (4, 2)
    if s.type is Path:
        return Path("/models/other.onnx")
    if s.type is int:
        return min(int(s.minimum or 0) + 7, int(s.maximum or 10**9))
    if s.type is float:
        return (s.default or 0.0) + 1.5
    return "some-text"


def _parse(argv: list[str], env: dict[str, str]) -> Settings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_args(parser.parse_args(argv), env)


def _values(s: Setting) -> dict[str, Any]:
    value = _other_value(s)
    values = {"model_path": MODEL, s.field: value}
    if s.field == "normalize_mean":
        values["normalize_std"] = (1.0, 2.0, 4.0)
    if s.field == "normalize_std":
        values["normalize_mean"] = (0.0, 0.0, 0.0)
    if s.field == "api_keys":  # checked as a keys document
        values["api_keys"] = KEYS
    return values


KEYS = '{"keys": [{"id": "a", "key": "key-aaaa", "requestsPerMinute": 5}]}'


def test_every_setting_is_a_settings_field_with_its_default() -> None:
    fields = set(Settings.model_fields) - {"model_version"}
    assert fields == {s.field for s in SETTINGS}
    for s in SETTINGS:
        if s.field != "model_path":
            assert Settings.model_fields[s.field].default == s.default, s.field
    names = [s.variable for s in SETTINGS] + [s.option for s in SETTINGS if s.option]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.field)
def test_every_setting_by_flag_and_by_env(setting: Setting, tmp_path: Path) -> None:
    values = _values(setting)
    if setting.field == "auth_token_file":
        token = tmp_path / "token"
        token.write_text("from-the-file\n")
        values["auth_token_file"] = token
    if setting.field == "api_keys_file":
        keys = tmp_path / "keys.json"
        keys.write_text(KEYS)
        values["api_keys_file"] = keys
    env = {serve_flags.BY_FIELD[f].variable: serve_flags.BY_FIELD[f].format(v)
           for f, v in values.items()}  # fmt: skip
    by_env = _parse([], env)
    if setting.option is not None or setting is serve_flags.MODEL:  # the model: positional
        by_flag = _parse(serve_flags.command_line(values), {})
        assert getattr(by_flag, setting.field) == values[setting.field]
        assert by_flag == by_env
    else:
        with pytest.raises(ValueError, match="has no flag"):
            serve_flags.command_line(values)
    assert getattr(by_env, setting.field) == values[setting.field]
    if setting.field == "auth_token_file":
        assert by_env.auth_token == "from-the-file"
    if setting.field == "api_keys_file":
        assert by_env.api_keys == KEYS
    # and an unparsable or out-of-bounds value is refused naming the flag or variable
    if setting.type in (int, float) or setting.choices:
        if setting.choices:
            bad, message = "nonsense", f"{setting.option} must be one of"
        else:
            bad, message = "x", f"{setting.variable}: "
        with pytest.raises(SettingsError, match=message):
            _parse([], {**env, setting.variable: bad})


def _maximal_spec() -> Any:
    return parse_spec(
        {
            "model": {"uri": "https://h/m.onnx", "name": "resnet", "format": "onnx"},
            "runtime": {
                "batching": {"maxBatchSize": 8, "maxDelayMicroseconds": 900},
                "threads": {"intraOp": 2, "interOp": 3},
                "workers": 2,
                "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
                "auth": {"secretRef": {"name": "token"}},
            },
            "gpu": {"count": 1},
            "explainer": {"enabled": True, "method": "lime", "samples": 99, "patch": [4, 2]},
            "auth": {"secretRef": {"name": "keys"}},
        },
        "demo",
    )


def test_the_operator_sets_exactly_the_settings_marked_for_it() -> None:
    spec = _maximal_spec()
    rendered = render.runtime_settings("demo", spec)
    by_env = {"auth_token", "api_keys"}  # from Secrets, as env vars of the container
    assert set(rendered) | by_env == {s.field for s in SETTINGS if s.operator}
    assert {s.variable for s in SETTINGS if s.operator} == OPERATOR_ENV_NAMES
    container = render.render_pod_spec("demo", spec, "img")["containers"][0]
    assert [e["name"] for e in container["env"]] == [
        serve_flags.BY_FIELD["auth_token"].variable,
        serve_flags.BY_FIELD["api_keys"].variable,
    ]
    assert container["env"][1]["valueFrom"] == {
        "secretKeyRef": {"name": "keys", "key": "keys.json"}
    }
    # what the runtime makes of the rendered command line is what the spec said
    command = container["command"]
    assert command[:2] == ["modelservice", "serve"]
    got = _parse(command[2:], {"MODELSERVICE_AUTH_TOKEN": "t"})
    assert got.model_path == Path("/models/model.onnx") and got.name == "resnet"
    assert (got.host, got.port, got.workers) == ("0.0.0.0", render.HTTP_PORT, 2)
    assert (got.max_batch_size, got.max_batch_delay_us) == (8, 900)
    assert (got.intra_op_threads, got.inter_op_threads) == (2, 3)
    assert got.execution_provider == "cuda"
    assert got.normalize_mean == (0.5, 0.5, 0.5) and got.normalize_std == (0.25, 0.25, 0.25)
    assert (got.explain, got.explain_method, got.explain_samples, got.explain_patch) == (
        True, "lime", 99, (4, 2),
    )  # fmt: skip


def test_spec_fields_passed_on_are_described_and_bounded_by_the_table() -> None:
    for model, field, setting in (
        (BatchingSpec, "max_batch_size", "max_batch_size"),
        (BatchingSpec, "max_delay_microseconds", "max_batch_delay_us"),
        (RuntimeSpec, "workers", "workers"),
    ):
        info = model.model_fields[field]
        s = serve_flags.BY_FIELD[setting]
        assert info.description.startswith(s.help[0].upper() + s.help[1:]), field
        assert any(getattr(m, "ge", None) == s.minimum for m in info.metadata), field


@pytest.mark.parametrize(
    ("cpus", "gpu", "workers"), [(1, False, 1), (4, False, 4), (0, False, 1), (8, True, 1)]
)
def test_workers_zero_means_one_per_cpu_but_one_on_a_gpu(cpus: int, gpu: bool, workers: int):
    assert serve_flags.auto_workers(cpus, gpu) == workers
