"""Generate the ModelService CustomResourceDefinition from the pydantic models.

`python -m modelservice_operator.crd --write` writes crds/modelservices.serving.modelservice.io.yaml
(and the Helm chart's copy when charts/modelservice-operator/crds/ exists); `--check` exits
non-zero when a committed file differs from what the models generate.

The walker below turns annotations into a *structural* OpenAPI v3 schema: every node has a
type (or is int-or-string / preserve-unknown-fields), every property a description, model
defaults become schema defaults (nested objects default to `{}` so their own defaults apply),
and each model's `cel_rules` become `x-kubernetes-validations`.
"""

from __future__ import annotations

import argparse
import enum
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from modelservice_operator import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from modelservice_operator.reasons import PHASES, ConditionType
from modelservice_operator.spec import ModelServiceSpec
from modelservice_operator.spec_types import QUANTITY_PATTERN, QuantityMarker
from modelservice_operator.status_schema import ModelServiceStatus

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = f"{PLURAL}.{GROUP}.yaml"
CRD_PATH = REPO_ROOT / "crds" / CRD_FILE
CHART_CRD_DIR = REPO_ROOT / "charts" / "modelservice-operator" / "crds"

_CONSTRAINTS = {
    "ge": "minimum",
    "le": "maximum",
    "min_length": None,  # depends on the type: minLength / minItems / minProperties
    "max_length": None,
    "pattern": "pattern",
}


def _apply_constraints(schema: dict[str, Any], metadata: list[Any]) -> None:
    for item in metadata:
        for attr, key in _CONSTRAINTS.items():
            value = getattr(item, attr, None)
            if value is None:
                continue
            if key is None:
                kind = {"string": "Length", "array": "Items", "object": "Properties"}.get(
                    schema.get("type", ""), "Length"
                )
                key = ("min" if attr == "min_length" else "max") + kind
            schema[key] = value
        # annotated_types.Gt/Lt on integers become inclusive bounds.
        if getattr(item, "gt", None) is not None:
            schema["minimum"] = item.gt + 1
        if getattr(item, "lt", None) is not None:
            schema["maximum"] = item.lt - 1


def _schema_for_type(tp: Any, metadata: list[Any] | None = None) -> dict[str, Any]:
    metadata = list(metadata or [])
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *extra = typing.get_args(tp)
        for m in extra:
            metadata.extend(m.metadata if isinstance(m, FieldInfo) else [m])
        return _schema_for_type(base, metadata)
    if any(isinstance(m, QuantityMarker) for m in metadata):
        return {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {tp!r}: only Optional[X] maps to a schema")
        return _schema_for_type(args[0], metadata)

    schema: dict[str, Any]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        schema = model_schema(tp)
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        schema = {"type": "string", "enum": [m.value for m in tp]}
    elif tp is bool:
        schema = {"type": "boolean"}
    elif tp is int:
        schema = {"type": "integer"}
    elif tp is float:
        schema = {"type": "number"}
    elif tp is str:
        schema = {"type": "string"}
    elif tp is Any:
        schema = {"x-kubernetes-preserve-unknown-fields": True}
    elif origin is list:
        (item,) = typing.get_args(tp)
        schema = {"type": "array", "items": _schema_for_type(item)}
    elif origin is dict:
        key, value = typing.get_args(tp)
        if key is not str:
            raise TypeError(f"unsupported mapping key type in {tp!r}")
        if value is Any:
            schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        else:
            schema = {"type": "object", "additionalProperties": _schema_for_type(value)}
    else:
        raise TypeError(f"no schema mapping for annotation {tp!r}")
    if (
        schema.get("type") == "array"
        and schema["items"].get("x-kubernetes-preserve-unknown-fields")
        and "type" not in schema["items"]
    ):
        schema["items"]["type"] = "object"
    _apply_constraints(schema, metadata)
    return schema


def _default_for(field: FieldInfo) -> Any:
    """The schema default for a field, or None when the schema should carry none."""
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return {}  # let the nested object's own defaults apply
        return value or None  # empty lists/maps stay absent
    if field.is_required() or field.default is None:
        return None
    value = field.default
    return value.value if isinstance(value, enum.Enum) else value


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """Structural OpenAPI v3 schema of a pydantic model (by alias)."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        prop = _schema_for_type(field.annotation, list(field.metadata))
        if not field.description:
            raise ValueError(f"{model.__name__}.{name} has no description (kubectl explain)")
        # The field's own description wins over the nested model's docstring.
        prop = {"description": field.description} | {
            k: v for k, v in prop.items() if k != "description"
        }
        default = _default_for(field)
        if default is not None:
            prop["default"] = default
        properties[key] = prop
        if field.is_required():
            required.append(key)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if model.__doc__:
        schema = {"description": " ".join(model.__doc__.split()), **schema}
    if required:
        schema["required"] = required
    if model.model_config.get("extra") == "allow":
        schema["x-kubernetes-preserve-unknown-fields"] = True
    rules = getattr(model, "cel_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [r.to_schema() for r in rules]
    return schema


PRINTER_COLUMNS = [
    {
        "name": ConditionType.READY.value,
        "type": "string",
        "jsonPath": f'.status.conditions[?(@.type=="{ConditionType.READY.value}")].status',
        "description": "Whether the model is being served by all desired replicas.",
    },
    {
        "name": "Phase",
        "type": "string",
        "jsonPath": ".status.phase",
        "description": f"{PHASES}.",
    },
    {
        "name": "Replicas",
        "type": "string",
        "jsonPath": ".status.replicaSummary",
        "description": "Current/desired runtime pods.",
    },
    {
        "name": "URL",
        "type": "string",
        "jsonPath": ".status.url",
        "description": "In-cluster URL of the Service.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition as a dict."""
    spec_schema = model_schema(ModelServiceSpec)
    status_schema = model_schema(ModelServiceStatus)
    root = {
        "type": "object",
        "description": "A model served by an autoscaled inference runtime (Deployment, "
        "Service, HorizontalPodAutoscaler, PodDisruptionBudget).",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version of this object."},
            "kind": {"type": "string", "description": "Kind of this object (ModelService)."},
            # The API server forbids anything but the type here (metadata is implicit).
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "modelservice"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["all", "modelservice"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


HEADER = (
    "# Generated by `python -m modelservice_operator.crd --write` (make crd) from the pydantic\n"
    "# models in operator/modelservice_operator/spec.py and status_schema.py. Do not edit by\n"
    "# hand.\n"
)


def render_yaml() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def _targets() -> list[Path]:
    targets = [CRD_PATH]
    if CHART_CRD_DIR.is_dir():
        targets.append(CHART_CRD_DIR / CRD_FILE)
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelservice_operator.crd", description=__doc__
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="write the CRD file(s)")
    group.add_argument("--check", action="store_true", help="exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    text = render_yaml()
    if not (args.write or args.check):
        sys.stdout.write(text)
        return 0
    stale = []
    for target in _targets():
        current = target.read_text() if target.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(str(target))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            print(f"wrote {target}")
    if stale:
        print(
            "CRD out of date with the pydantic models: " + ", ".join(stale) + "\nrun: make crd",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
