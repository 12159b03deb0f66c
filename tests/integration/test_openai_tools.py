"""Function calling on chat completions (`tools`, `tool_choice`) over a real server on
loopback with the unmodified `openai` client: a forced call (required, or a named function)
is a `tool_calls` answer whose arguments validate against the function's schema, even from
the tiny random model (the grammar processor constrains it), streamed or not; the tools reach
the chat template; bad tools are 400s naming the field."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from tests.integration.runtime_server import Served, serve
from tests.needs import needed_module

openai = needed_module("openai")

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Forecast",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
]  # fmt: skip
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
# A template that shows the tools it gets: the prompt grows by their names when given
# (onnxruntime-genai hands templates each tool as {name, description, parameters}).
TEMPLATE = (
    "{% if tools %}Tools:{% for t in tools %} {{ t['name'] }}{% endfor %}\n{% endif %}"
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def server(
    tiny_llm: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("tools") / "genai"
    shutil.copytree(tiny_llm[1], folder)
    config = folder / "tokenizer_config.json"
    doc = json.loads(config.read_text()) if config.is_file() else {}
    config.write_text(json.dumps({**doc, "chat_template": TEMPLATE}))
    with serve(folder, "--name", "tiny") as served:
        yield served
        assert "Traceback" not in served.log.read_text(errors="replace"), served.log_tail()


@pytest.fixture(scope="module")
def client(server: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def check_call(call: object, names: set[str]) -> None:
    assert call.type == "function" and call.id.startswith("call_")  # type: ignore[attr-defined]
    name = call.function.name  # type: ignore[attr-defined]
    assert name in names
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[name])  # type: ignore[attr-defined]


def test_a_named_function_is_called_with_arguments_that_follow_its_schema(
    client: openai.OpenAI,
) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    for fields in ({"temperature": 0}, {"temperature": 1.0, "seed": 5}):
        r = client.chat.completions.create(
            model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice=choice, max_tokens=200,
            **fields,
        )  # fmt: skip
        (c,) = r.choices
        assert c.finish_reason == "tool_calls" and c.message.content is None
        (call,) = c.message.tool_calls
        check_call(call, {"get_weather"})


def test_required_calls_one_of_the_tools_and_streams_it_as_a_delta(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice="required", max_tokens=200,
        temperature=0,
    )  # fmt: skip
    (call,) = r.choices[0].message.tool_calls
    check_call(call, set(SCHEMAS))
    events = list(
        client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS,
                                       tool_choice="required", max_tokens=200, temperature=0,
                                       stream=True)
    )  # fmt: skip
    deltas = [e.choices[0].delta for e in events if e.choices]
    calls = [c for d in deltas for c in (d.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0
    assert calls[0].function.name == call.function.name
    assert calls[0].function.arguments == call.function.arguments  # greedy: the same call
    assert [e.choices[0].finish_reason for e in events if e.choices][-1] == "tool_calls"


def test_the_tools_reach_the_chat_template_and_none_keeps_them_out(client: openai.OpenAI) -> None:
    def prompt_tokens(**fields: object) -> int:
        r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1,
                                           temperature=0, **fields)  # fmt: skip
        return r.usage.prompt_tokens

    plain = prompt_tokens()
    assert prompt_tokens(tools=TOOLS) > plain  # auto: the template lists them
    assert prompt_tokens(tools=TOOLS, tool_choice="none") == plain


def test_auto_answers_text_or_a_valid_call_and_a_call_in_history_is_accepted(
    client: openai.OpenAI,
) -> None:
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS,
                                       max_tokens=12, temperature=0)  # fmt: skip
    c = r.choices[0]
    if c.message.tool_calls:
        check_call(c.message.tool_calls[0], set(SCHEMAS))
    else:
        assert isinstance(c.message.content, str) and c.finish_reason in ("stop", "length")
    history = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]  # fmt: skip
    r = client.chat.completions.create(model="tiny", messages=history, tools=TOOLS,
                                       max_tokens=4, temperature=0)  # fmt: skip
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"tool_choice": "required"}, "tool_choice needs tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
         "tools[0].function.name"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0] must be"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "tool_choice names function 'nope'"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice must be"),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "unique"),
        ({"tools": TOOLS, "tool_choice": "required",
          "response_format": {"type": "json_object"}}, "cannot both"),
        ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ],
)  # fmt: skip
def test_bad_tools_are_400s_naming_the_field(
    client: openai.OpenAI, fields: dict, needle: str
) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4,
                                       extra_body=fields)  # fmt: skip
    assert needle in e.value.response.json()["error"]


def test_tools_on_the_completions_route_are_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x", max_tokens=2,
                                  extra_body={"tools": TOOLS})  # fmt: skip
    assert "unknown parameter 'tools'" in e.value.response.json()["error"]
