"""Runtime settings: one validated object from `modelservice serve` flags and MODELSERVICE_* env.

The settings themselves (fields, flags, environment variables, types, defaults, bounds,
help) are the rows of modelservice_cli/serve_flags.py; `Settings` is the pydantic model
made from them, so pydantic parses and checks every value (`SettingsError` names the flag
or variable at fault). `from_args` only gathers the text: a flag's over its variable's, the
default where neither is given. What pydantic cannot do stays here: knowing which of the
two a bad value came from, and reading the token file. Parsing happens here, once, never
at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from modelservice_cli import serve_flags
from modelservice_cli.serve_flags import SETTINGS, Setting, add_arguments
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model
from pydantic import model_validator as _model_validator

__all__ = ["Settings", "SettingsError", "add_arguments", "from_args"]


class SettingsError(ValueError):
    """A flag or env var has a value the runtime cannot use; the message names it."""


class _SettingsBase(BaseModel):
    """What the table cannot say: derived values and the rules across settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_version: str = "1"  # not a setting: one version is served

    @_model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("name") and data.get("model_path"):
            data = {**data, "name": Path(data["model_path"]).stem}
        return data

    @_model_validator(mode="after")
    def _normalize_pair(self) -> _SettingsBase:
        mean, std = self.normalize_mean, self.normalize_std  # type: ignore[attr-defined]
        if (mean is None) != (std is None):
            raise ValueError("--normalize-mean and --normalize-std must be given together")
        if mean is not None and len(mean) != len(std):
            raise ValueError(
                "--normalize-mean and --normalize-std must have the same number of values"
            )
        if std is not None and any(s == 0 for s in std):
            raise ValueError("--normalize-std values must be non-zero")
        return self

    @_model_validator(mode="after")
    def _explain_samples_capped(self) -> _SettingsBase:
        """A default of samples given over the cap is an error; the built-in default is
        held to a lower cap instead (serving/explaining.py)."""
        samples, cap = self.explain_samples, self.explain_max_samples  # type: ignore[attr-defined]
        if "explain_samples" in self.model_fields_set and samples > cap:
            raise ValueError(
                f"--explain-samples ({samples}) must be <= --explain-max-samples ({cap})"
            )
        return self

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1  # type: ignore[attr-defined]

    @property
    def cpu_arena(self) -> bool:
        return not self.no_cpu_arena  # type: ignore[attr-defined]


def _field(s: Setting) -> tuple[Any, Any]:
    """The pydantic field of one setting: text is parsed by the setting's own parser (so
    the message says what was expected; a choice in any case), values of the right type
    pass as they are."""
    kind: Any = Literal[s.choices] if s.choices else s.type
    if s.default is None:
        kind = kind | None

    def parse(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return value.lower() if s.choices else s.parse(value)

    bounds = {"ge": s.minimum, "gt": s.above, "le": s.maximum}
    field = Field(
        default=... if s.field == "model_path" else s.default,
        description=s.help,
        repr=not s.secret,  # the token is never logged
        **{k: v for k, v in bounds.items() if v is not None},
    )
    return Annotated[kind, BeforeValidator(parse)], field


Settings = create_model(  # every row of serve_flags.SETTINGS, as a field of that name
    "Settings",
    __base__=_SettingsBase,
    __module__=__name__,
    **{s.field: _field(s) for s in SETTINGS},
)
Settings.__doc__ = "The runtime's settings: the fields of modelservice_cli/serve_flags.py."


def _message(error: Any, sources: Mapping[str, str]) -> str:
    """One pydantic error as `modelservice serve` says it: parse errors after the flag or
    variable the text came from, bounds by the flag and what it accepts."""
    cause = (error.get("ctx") or {}).get("error")
    if not error["loc"]:  # a rule across settings (_normalize_pair)
        return str(cause) if cause is not None else error["msg"]
    s = serve_flags.BY_FIELD[str(error["loc"][0])]
    if isinstance(cause, Exception):
        return f"{sources.get(s.field, s.name)}: {cause}"
    if error["type"] == "missing":
        return f"no model: pass MODEL.onnx or set {s.variable}"
    return f"{s.name} must be {s.accepts()}, got {error['input']!r}"


def from_args(args: Any, environ: Mapping[str, str] | None = None) -> Settings:
    """Merge flags over MODELSERVICE_* env over defaults; SettingsError names the culprit."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}  # field -> the flag or variable its text came from
    for s in SETTINGS:
        given = getattr(args, s.field, None)
        if given is not None:
            values[s.field], sources[s.field] = given, s.name
        elif env.get(s.variable) is not None:
            values[s.field], sources[s.field] = env[s.variable], s.variable
    if not values.get("model_path"):
        values.pop("model_path", None)  # an empty MODELSERVICE_MODEL is no model either
    try:
        settings = Settings(**values)
    except ValidationError as e:
        raise SettingsError(_message(e.errors()[0], sources)) from None
    token_file = settings.auth_token_file
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            raise SettingsError(
                f"--auth-token-file: cannot read {token_file} ({e.strerror})"
            ) from None
        if not token:
            raise SettingsError("the auth token is empty; expected a non-empty bearer token")
        settings = settings.model_copy(update={"auth_token": token})
    elif settings.auth_token is not None:
        token = settings.auth_token.strip()
        settings = settings.model_copy(update={"auth_token": token or None})
    keys_file = settings.api_keys_file
    if keys_file is not None:
        try:
            text = Path(keys_file).read_text()
        except OSError as e:
            raise SettingsError(
                f"--api-keys-file: cannot read {keys_file} ({e.strerror})"
            ) from None
        settings = settings.model_copy(update={"api_keys": text})
    if settings.api_keys is not None:
        from modelservice_runtime.serving.auth import parse_keys

        where = (
            "--api-keys-file"
            if keys_file is not None
            else serve_flags.BY_FIELD["api_keys"].variable
        )
        try:
            parse_keys(settings.api_keys)
        except ValueError as e:
            raise SettingsError(f"{where}: {e}") from None
    return settings
