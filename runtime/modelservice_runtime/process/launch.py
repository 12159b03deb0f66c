"""`modelservice serve MODEL.onnx`: read the settings, then run one server process
(server.py) or, with several workers, the supervisor that runs them (workers.py).

This is the one place that decides between the two; neither imports it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modelservice_runtime import settings as settings_mod
from modelservice_runtime.process import preflight, server, workers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings_mod.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_mod.from_args(args)
    except settings_mod.SettingsError as e:
        print(f"modelservice serve: {e}", file=sys.stderr)
        return 2
    try:  # before anything starts or logs: one line naming the next step
        preflight.check_model(Path(settings.model_path), settings.format)
        preflight.check_port(settings.host, settings.port)
    except preflight.PreflightError as e:
        print(f"modelservice serve: {e}", file=sys.stderr)
        return 1  # as a model that fails to load
    server.configure_logging(settings)
    count = workers.worker_count(settings)
    if count > 1:
        return workers.supervise(settings, count)
    return server.serve(settings)
