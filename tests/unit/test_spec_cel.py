"""Each cross-field rule is stated twice, as CEL for the API server and as a pydantic
validator for the operator: both are run here on the same cases (CEL by cel-python, on the
object as the API server's defaulting leaves it) and must agree on every one."""

from __future__ import annotations

import copy
from typing import Any

import celpy
import pytest
from modelservice_operator import crd
from modelservice_operator.spec import AutoscalingSpec, GrpcSpec, ModelServiceSpec, NormalizeSpec
from modelservice_operator.spec_canary import CanaryModelSource
from modelservice_operator.spec_model import ModelCacheSpec, ModelSource
from modelservice_operator.spec_types import SpecModel
from pydantic import BaseModel, ValidationError

from tests.unit.test_crd import _apply_defaults

URI = "https://models.example.com/m.onnx"
ONE_METRIC = [{"type": "Pods", "pods": {"metric": {"name": "inflight"}}}]

# (model, object, whether every rule holds)
CASES: list[tuple[type[SpecModel], dict[str, Any], bool]] = [
    (ModelSource, {"uri": URI}, True),
    (ModelSource, {"uri": "pvc://models/resnet/model.onnx"}, True),
    (ModelSource, {"uri": "pvc://models"}, False),
    (ModelSource, {"uri": "pvc://Models_/m.onnx"}, False),
    (ModelSource, {"uri": URI, "cache": {"claimName": "c"}}, True),
    (ModelSource, {"uri": "pvc://models/m/", "cache": {"claimName": "c"}}, False),
    (CanaryModelSource, {"uri": URI}, True),
    (CanaryModelSource, {"uri": "pvc://models/v2/model.onnx"}, True),
    (CanaryModelSource, {"uri": "pvc://models"}, False),
    (ModelCacheSpec, {"claimName": "c"}, True),
    (ModelCacheSpec, {"hostPath": "/var/cache/m", "maxSize": "10Gi"}, True),
    (ModelCacheSpec, {}, False),
    (ModelCacheSpec, {"claimName": "c", "hostPath": "/var/cache/m"}, False),
    (NormalizeSpec, {"mean": [0.5, 0.5], "std": [0.2, 0.3]}, True),
    (NormalizeSpec, {"mean": [0.5, 0.5], "std": [0.2]}, False),
    (NormalizeSpec, {"mean": [0.5], "std": [0.2, 0.3]}, False),
    (NormalizeSpec, {"mean": [0.5, 0.5], "std": [0.2, 0.0]}, False),
    (GrpcSpec, {}, True),
    (GrpcSpec, {"enabled": False, "port": 9000}, True),
    (GrpcSpec, {"port": 8080}, False),
    (AutoscalingSpec, {"maxReplicas": 3}, True),
    (AutoscalingSpec, {"minReplicas": 3, "maxReplicas": 3}, True),
    (AutoscalingSpec, {"minReplicas": 5, "maxReplicas": 3}, False),
    (AutoscalingSpec, {"maxReplicas": 3, "targetCPUUtilizationPercentage": 0}, False),
    (
        AutoscalingSpec,
        {"maxReplicas": 3, "targetCPUUtilizationPercentage": 0, "metrics": ONE_METRIC},
        True,
    ),
    (ModelServiceSpec, {"model": {"uri": URI}}, True),
    (ModelServiceSpec, {"model": {"uri": URI}, "replicas": 7}, True),
    (ModelServiceSpec, {"model": {"uri": URI}, "autoscaling": {"maxReplicas": 3}}, True),
    (
        ModelServiceSpec,
        {"model": {"uri": URI}, "autoscaling": {"maxReplicas": 3}, "replicas": 2},
        True,
    ),
    (
        ModelServiceSpec,
        {"model": {"uri": URI}, "autoscaling": {"maxReplicas": 3}, "replicas": 5},
        False,
    ),
    (
        ModelServiceSpec,
        {"model": {"uri": URI}, "autoscaling": {"minReplicas": 2, "maxReplicas": 3}, "replicas": 1},
        False,
    ),
    (
        ModelServiceSpec,
        {
            "model": {"uri": URI},
            "autoscaling": {"maxReplicas": 3},
            "resources": {"requests": {"memory": "1Gi"}},
        },
        False,
    ),
    (
        ModelServiceSpec,
        {
            "model": {"uri": URI},
            "autoscaling": {
                "maxReplicas": 3,
                "targetCPUUtilizationPercentage": 0,
                "metrics": ONE_METRIC,
            },
            "resources": {"requests": {"memory": "1Gi"}},
        },
        True,
    ),
]


def _models_with_rules(model: type[BaseModel]) -> set[type[BaseModel]]:
    found = {model} if getattr(model, "cel_rules", ()) else set()
    for field in model.model_fields.values():
        for arg in [field.annotation, *getattr(field.annotation, "__args__", ())]:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                found |= _models_with_rules(arg)
    return found


def test_every_model_with_cel_rules_has_cases_both_ways() -> None:
    covered = {(model, holds) for model, _, holds in CASES}
    for model in _models_with_rules(ModelServiceSpec):
        assert {(model, True), (model, False)} <= covered, model.__name__


def _cel_holds(model: type[SpecModel], obj: dict[str, Any]) -> bool:
    env = celpy.Environment()
    defaulted = _apply_defaults(crd.model_schema(model), copy.deepcopy(obj))
    activation = {"self": celpy.json_to_cel(defaulted)}
    verdicts = []
    for rule in model.cel_rules:
        result = env.program(env.compile(rule.rule)).evaluate(activation)
        assert isinstance(result, celpy.celtypes.BoolType), f"{rule.rule}: {result!r}"
        verdicts.append(bool(result))
    return all(verdicts)


def _pydantic_holds(model: type[SpecModel], obj: dict[str, Any]) -> bool:
    try:
        model.model_validate(copy.deepcopy(obj))
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(("model", "obj", "holds"), CASES)
def test_cel_and_pydantic_agree(model: type[SpecModel], obj: dict[str, Any], holds: bool) -> None:
    assert _pydantic_holds(model, obj) is holds, "pydantic"
    assert _cel_holds(model, obj) is holds, "CEL"
