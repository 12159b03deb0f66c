"""Work the operator does once, not per event: a ModelService's spec is parsed when the
ModelService changes (its index entry), never by the events of its children; a child event
renders only the child of its kind; the spec hash is computed once per parsed spec."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
from modelservice_operator import drift, handlers, indexes, render, reporting
from modelservice_operator.pods import diagnose_pods
from modelservice_operator.reconcile import desired_children
from modelservice_operator.spec import ModelServiceSpec, parse_spec

SPEC = {"model": {"uri": "https://h/m.onnx"}, "replicas": 2}
IMAGE = "img:1"


def _msvc() -> dict[str, Any]:
    return {
        "apiVersion": "serving.modelservice.io/v1alpha1",
        "kind": "ModelService",
        "metadata": {"name": "demo", "namespace": "ns", "uid": "u1", "generation": 3},
        "spec": copy.deepcopy(SPEC),
        "status": {"observedGeneration": 3, "phase": "Progressing"},
    }


def _no_parse(*_: Any, **__: Any) -> Any:
    raise AssertionError("a child event parsed the spec")


def test_a_deployment_event_parses_no_spec_and_renders_only_the_deployment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = _msvc()
    entry = handlers.msvc_by_name(body=body, name="demo", namespace="ns")
    index = {key: [owner] for key, owner in entry.items()}
    owner = index[("ns", "demo")][0]
    (live,) = [c for c in desired_children(owner, parse_spec(SPEC, "demo"), IMAGE)
               if c["kind"] == "Deployment"]  # fmt: skip
    monkeypatch.setattr(indexes, "parse_spec", _no_parse)
    rendered: list[str] = []
    for kind, render_one in list(render.CHILD_KINDS.items()):

        def counted(*args: Any, kind: str = kind, render_one: Any = render_one) -> Any:
            rendered.append(kind)
            return render_one(*args)

        monkeypatch.setitem(render.CHILD_KINDS, kind, counted)
    log = logging.getLogger(__name__)
    assert drift.repair_drift(live, "MODIFIED", index, IMAGE, log) is owner  # type: ignore[arg-type]
    assert rendered == ["Deployment"]
    assert reporting.children_status(owner, live, None, []) is not None


def test_a_modelservice_event_reuses_the_index_parse_while_the_generation_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = _msvc()
    index = handlers.msvc_by_name(body=body, name="demo", namespace="ns")
    index = {key: [owner] for key, owner in index.items()}
    monkeypatch.setattr(indexes, "parse_spec", _no_parse)
    owner = indexes.owner_of_body(body, index)  # type: ignore[arg-type]
    assert isinstance(indexes.owner_spec(owner), ModelServiceSpec)
    changed = {**body, "metadata": {**body["metadata"], "generation": 4}}
    with pytest.raises(AssertionError, match="parsed the spec"):
        indexes.owner_spec(indexes.owner_of_body(changed, index))  # type: ignore[arg-type]


def test_the_spec_hash_is_computed_once_per_parsed_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = parse_spec(SPEC, "demo")
    dumps: list[Any] = []
    real_dump = ModelServiceSpec.model_dump

    def counted(self: ModelServiceSpec, *args: Any, **kwargs: Any) -> Any:
        if self is spec and kwargs.get("exclude") == {
            "replicas",
            "autoscaling",
            "canary",
            "gateway",
        }:
            dumps.append(kwargs)
        return real_dump(self, *args, **kwargs)

    monkeypatch.setattr(ModelServiceSpec, "model_dump", counted)
    deployment = render.render_deployment("demo", "ns", spec, IMAGE)
    diagnose_pods([], spec)
    assert render.spec_hash(spec) == spec.pod_template_hash
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations[render.SPEC_HASH_ANNOTATION] == spec.pod_template_hash
    assert len(dumps) == 1
