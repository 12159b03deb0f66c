"""OpenAI's function calling on chat completions: `tools` and `tool_choice` checked, the JSON
schema a call must follow, and a call read back from the model's text. Pure functions.

- The tools are given to the model's chat template (its `tools` variable).
- `tool_choice: "required"` or a named function: the answer is constrained (the engine's
  grammar processor, llguidance) to one call `{"name": ..., "arguments": {...}}` whose
  arguments follow the function's `parameters` schema; it is answered as `tool_calls` with
  `finish_reason: "tool_calls"`.
- `"auto"` (the default with tools): unconstrained; an answer that is such a call (a JSON
  object, alone or inside `<tool_call>...</tool_call>` as Hermes-style templates ask) naming
  one of the tools is answered as a call, anything else as text.
- `"none"`: the tools are not given to the template and the answer is text.
One call per answer: `parallel_tool_calls` is accepted, and at most one call is made.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from modelservice_runtime.errors import BadRequest

NONE, AUTO, REQUIRED, NAMED = "none", "auto", "required", "named"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FUNCTION_KEYS = {"name", "description", "parameters", "strict"}
_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
_TAGGED = re.compile(r"<tool_call>\s*(\{.*\})\s*(?:</tool_call>)?\s*$", re.S)


@dataclass(frozen=True)
class Tools:
    """The request's tools and how the model may use them."""

    functions: list[dict[str, Any]]  # {name, description?, parameters}, as checked
    choice: str  # NONE, AUTO, REQUIRED or NAMED
    name: str | None = None  # the function of a NAMED choice

    @property
    def for_template(self) -> list[dict[str, Any]] | None:
        """What the chat template's `tools` gets (nothing with tool_choice none)."""
        if self.choice == NONE:
            return None
        return [{"type": "function", "function": f} for f in self.functions]

    @property
    def calls(self) -> bool:
        """An answer may be a call."""
        return self.choice != NONE

    def schema(self) -> dict[str, Any] | None:
        """The JSON schema an answer must follow: one call, for REQUIRED and NAMED."""
        if self.choice not in (REQUIRED, NAMED):
            return None
        options = [_call_schema(f) for f in self.functions if self.name in (None, f["name"])]
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        # Compact JSON (llguidance's extension): a call is a few dozen tokens, where free
        # whitespace let a sampled call run past max_tokens.
        return {**schema, "x-guidance": {"whitespace_flexible": False}}

    def read_call(self, text: str) -> dict[str, Any] | None:
        """The call in `text` ({"name", "arguments"}), or None if it is not one of ours."""
        found = _TAGGED.search(text)
        raw = found.group(1) if found else text.strip()
        try:
            call = json.loads(raw)
        except ValueError:
            return None
        names = {f["name"] for f in self.functions}
        if (
            not isinstance(call, dict)
            or call.get("name") not in names
            or not isinstance(call.get("arguments", {}), dict)
        ):
            return None
        return {"name": call["name"], "arguments": call.get("arguments", {})}


def _call_schema(function: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, "arguments": function["parameters"]},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def tool_calls(call: dict[str, Any]) -> list[dict[str, Any]]:
    """A message's `tool_calls` for one call (arguments as a JSON string, as OpenAI sends)."""
    return [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])},
        }
    ]


def parse_tools(doc: dict[str, Any]) -> Tools | None:
    """`tools`, `tool_choice` and `parallel_tool_calls` of a chat request, checked; None
    when the request has no tools."""
    raw, choice = doc.get("tools"), doc.get("tool_choice")
    parallel = doc.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise BadRequest("parallel_tool_calls must be a JSON boolean (true or false)")
    if raw is None or raw == []:
        if choice not in (None, NONE):
            raise BadRequest("tool_choice needs tools: give the functions in `tools`")
        return None
    if not isinstance(raw, list):
        raise BadRequest('tools must be a list of {"type": "function", "function": {...}}')
    functions = [_function(i, t) for i, t in enumerate(raw)]
    names = [f["name"] for f in functions]
    if len(set(names)) != len(names):
        raise BadRequest(f"tools: function names must be unique, got {names}")
    if choice is None or choice in (NONE, AUTO, REQUIRED):
        return Tools(functions, choice or AUTO)
    if (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
        and isinstance(choice["function"].get("name"), str)
    ):
        name = choice["function"]["name"]
        if name not in names:
            raise BadRequest(f"tool_choice names function {name!r}, which is not in tools {names}")
        return Tools(functions, NAMED, name)
    raise BadRequest(
        'tool_choice must be "none", "auto", "required" or '
        '{"type": "function", "function": {"name": ...}}'
    )


def _function(i: int, tool: Any) -> dict[str, Any]:
    where = f"tools[{i}]"
    if (
        not isinstance(tool, dict)
        or tool.get("type") != "function"
        or set(tool)
        - {
            "type",
            "function",
        }
    ):
        raise BadRequest(f'{where} must be {{"type": "function", "function": {{...}}}}')
    function = tool.get("function")
    if not isinstance(function, dict) or set(function) - _FUNCTION_KEYS:
        raise BadRequest(f"{where}.function must be an object with keys {sorted(_FUNCTION_KEYS)}")
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadRequest(f"{where}.function.name must be 1-64 letters, digits, _ or -")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise BadRequest(f"{where}.function.description must be a string")
    parameters = function.get("parameters", _EMPTY_PARAMETERS)
    if not isinstance(parameters, dict):
        raise BadRequest(f"{where}.function.parameters must be a JSON schema object")
    out: dict[str, Any] = {"name": name, "parameters": parameters}
    if description is not None:
        out["description"] = description
    return out
