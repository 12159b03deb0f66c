"""`modelservice serve` flags and MODELSERVICE_* env: precedence, parsing, errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from modelservice_runtime import settings as s


def parse(argv: list[str], env: dict[str, str] | None = None) -> s.Settings:
    parser = argparse.ArgumentParser()
    s.add_arguments(parser)
    return s.from_args(parser.parse_args(argv), env or {})


def test_defaults_follow_the_contract() -> None:
    got = parse(["/models/model.onnx"])
    assert got.name == "model" and got.host == "0.0.0.0" and got.port == 8080
    assert (got.max_batch_size, got.max_batch_delay_us, got.max_queue_size) == (32, 500, 1024)
    assert got.max_request_bytes == 64 * 1024 * 1024 and got.request_timeout_s == 60.0
    assert got.graph_optimization_level == "all" and got.execution_provider == "auto"
    assert got.cpu_arena and got.warmup and got.auth_token is None and got.batching


def test_env_fills_and_flags_override(tmp_path: Path) -> None:
    env = {
        "MODELSERVICE_MODEL": "/models/model.onnx",
        "MODELSERVICE_NAME": "resnet",
        "MODELSERVICE_PORT": "9000",
        "MODELSERVICE_MAX_BATCH_SIZE": "1",
        "MODELSERVICE_NORMALIZE_MEAN": "0.485,0.456,0.406",
        "MODELSERVICE_NORMALIZE_STD": "0.229, 0.224, 0.225",
        "MODELSERVICE_NO_CPU_ARENA": "true",
        "MODELSERVICE_WARMUP": "false",
        "MODELSERVICE_AUTH_TOKEN": "from-env",
        "MODELSERVICE_EXECUTION_PROVIDER": "cuda",
        "MODELSERVICE_GPU_MEM_LIMIT": "1073741824",
        "MODELSERVICE_REQUEST_TIMEOUT_S": "2.5",
    }
    got = parse([], env)
    assert (got.name, got.port, got.batching) == ("resnet", 9000, False)
    assert got.normalize_std == (0.229, 0.224, 0.225)
    assert not got.cpu_arena and not got.warmup and got.auth_token == "from-env"
    assert got.execution_provider == "cuda" and got.gpu_mem_limit == 1 << 30
    assert got.request_timeout_s == 2.5
    token = tmp_path / "token"
    token.write_text("from-file\n")
    got = parse(["m.onnx", "--port", "9001", "--warmup", "--auth-token-file", str(token)], env)
    assert got.model_path == Path("m.onnx") and got.port == 9001 and got.warmup
    assert got.auth_token == "from-file"
    assert "from-file" not in repr(got)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "no model: pass MODEL.onnx or set MODELSERVICE_MODEL"),
        (["m.onnx", "--port", "http"], {}, "--port: invalid literal"),
        (["m.onnx"], {"MODELSERVICE_MAX_QUEUE_SIZE": "many"}, "MODELSERVICE_MAX_QUEUE_SIZE"),
        (["m.onnx", "--execution-provider", "tpu"], {}, "--execution-provider must be one of"),
        (["m.onnx", "--normalize-mean", "0.5"], {}, "must be given together"),
        (["m.onnx", "--normalize-mean", "a,b", "--normalize-std", "1,1"], {}, "comma-separated"),
        (["m.onnx", "--auth-token-file", "/nonexistent/token"], {}, "cannot read"),
        (["m.onnx"], {"MODELSERVICE_WARMUP": "maybe"}, "expected true or false"),
        (["m.onnx", "--log-level", "loud"], {}, "--log-level must be one of"),
        (["m.onnx", "--request-timeout-s", "0"], {}, "--request-timeout-s must be > 0"),
    ],
)
def test_bad_settings_name_the_flag(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(s.SettingsError, match=message):
        parse(argv, env)
