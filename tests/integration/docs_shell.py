"""The commands test_docs_snippets.py gives meaning to inside the docs' bash blocks.

    python -m tests.integration.docs_shell pip PYPROJECT install ...
    python -m tests.integration.docs_shell wait PID LOG serve ARGS...

`pip` installs nothing: it checks that each extra named is one of pyproject.toml's and each
package named is importable here. `wait` waits (runtime_server.wait_ready) until the
`modelservice serve` with that PID answers /v2/health/ready on its --port, or fails with its
log's tail when it exits first.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import tomllib
from pathlib import Path

from tests.integration.runtime_server import wait_ready

# pip's name -> the module that shows it is installed
MODULES = {"tritonclient": "tritonclient.http"}
OPTIONS_WITH_VALUES = ("--index-url", "--extra-index-url", "-c", "-r")


def pip(pyproject: str, args: list[str]) -> None:
    extras = set(tomllib.loads(Path(pyproject).read_text())["project"]["optional-dependencies"])
    if args[:1] != ["install"]:
        sys.exit(f"pip {' '.join(args)}: only `pip install` is expected in the docs")
    words = iter(args[1:])
    for a in words:
        if a in OPTIONS_WITH_VALUES:
            next(words, None)
            continue
        if a.startswith("-"):
            continue
        m = re.fullmatch(r"(\.|modelservice|[A-Za-z0-9_.-]+)(?:\[([a-z0-9_,-]+)\])?", a)
        if not m:
            sys.exit(f"pip install {a}: not a package or .[extras] this test knows")
        name, wanted = m.group(1), m.group(2) or ""
        if name in (".", "modelservice"):
            unknown = set(wanted.split(",")) - extras - {""}
            if unknown:
                sys.exit(f"pip install {a}: no extra {sorted(unknown)}; there are {sorted(extras)}")
            continue
        module = MODULES.get(name, name.replace("-", "_"))
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            sys.exit(f"pip install {a}: {module} is not importable in the test's venv")
    print(f"(docs test) pip {' '.join(args)}: extras and packages checked, nothing installed")


def _alive(pid: int) -> bool:
    """Whether `pid` runs (not a zombie: the servers are children of the blocks' shells)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def wait(pid: int, log: str, args: list[str]) -> None:
    port = args[args.index("--port") + 1] if "--port" in args else "8080"
    wait_ready(
        f"http://127.0.0.1:{port}",
        lambda: _alive(pid),
        float(os.environ.get("DOCS_READY_S", "120")),
        lambda: ":\n" + Path(log).read_text(errors="replace")[-3000:],
    )
    print(f"(docs test) modelservice serve ready on port {port}")


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "pip":
        pip(rest[0], rest[1:])
    else:
        wait(int(rest[0]), rest[1], rest[2:])
