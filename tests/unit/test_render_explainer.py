"""spec.explainer rendered into the runtime's command line, and back into its Settings."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from modelservice_operator.render import render_deployment, runtime_settings
from modelservice_operator.spec import InvalidSpec, parse_spec
from modelservice_runtime.settings import Settings, add_arguments, from_args

URI = "https://models.example.com/m.onnx"


def _spec(**extra: Any):
    return parse_spec({"model": {"uri": URI}, **extra}, "demo")


def _command(spec) -> list[str]:
    pod = render_deployment("demo", "ns1", spec, "img")["spec"]["template"]["spec"]
    (runtime,) = pod["containers"]
    return runtime["command"]


def _settings(command: list[str]) -> Settings:
    assert command[:2] == ["modelservice", "serve"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_args(parser.parse_args(command[2:]), {})


def test_no_block_renders_nothing_and_the_runtime_defaults_apply() -> None:
    command = _command(_spec())
    assert not [a for a in command if "explain" in a]
    got = _settings(command)
    assert got.explain and got.explain_method == "shap" and got.explain_samples == 2048
    assert got.explain_patch is None


def test_the_block_sets_method_samples_and_patch() -> None:
    spec = _spec(explainer={"method": "lime", "samples": 500, "patch": [16, 8]})
    command = _command(spec)
    i = command.index("--explain-method")
    assert command[i : i + 2] == ["--explain-method", "lime"]
    assert command[command.index("--explain-samples") + 1] == "500"
    assert command[command.index("--explain-patch") + 1] == "16,8"
    assert "--explain" in command
    got = _settings(command)
    assert (got.explain, got.explain_method, got.explain_samples, got.explain_patch) == (
        True, "lime", 500, (16, 8),
    )  # fmt: skip


def test_enabled_false_turns_the_routes_off() -> None:
    spec = _spec(explainer={"enabled": False})
    assert runtime_settings("demo", spec)["explain"] is False
    command = _command(spec)
    assert "--no-explain" in command and "--explain" not in command
    assert _settings(command).explain is False


@pytest.mark.parametrize(
    ("explainer", "says"),
    [
        ({"method": "gradients"}, "spec.explainer.method"),
        ({"samples": 0}, "spec.explainer.samples"),
        ({"samples": 16385}, "spec.explainer.samples"),
        ({"patch": [4]}, "spec.explainer.patch"),
        ({"patch": [4, 0]}, "spec.explainer.patch[1]"),
        ({"enable": True}, "spec.explainer.enable: unknown field"),
    ],
)
def test_bad_explainer_blocks_name_the_field(explainer: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        _spec(explainer=explainer)
    assert caught.value.errors[0].startswith(says), caught.value.errors


def test_the_explainer_changes_the_pods_spec_hash() -> None:
    def hash_of(spec) -> str:
        meta = render_deployment("demo", "ns1", spec, "img")["spec"]["template"]["metadata"]
        return meta["annotations"]["serving.modelservice.io/spec-hash"]

    assert hash_of(_spec()) != hash_of(_spec(explainer={"enabled": False}))
