"""Every command block of README.md and docs/*.md runs as written, so a snippet cannot rot.

Each page is one session in a fresh directory that stands for the repository root (its
`examples/` and `tests/` linked in, so `python examples/make_models.py` and
`tests.modelzoo:mlp` resolve as they do in a clone; what the blocks write stays in the
temporary directory). Its `bash` blocks run in bash with `-euo pipefail`, its `python`
blocks with this interpreter, in page order, text unchanged but for one substitution: port
8080 becomes a free port (the machine is shared). A few commands are given meaning by
functions defined before each block, and only these:

- `python -m venv` and `. .venv/bin/activate` do nothing: this interpreter is the venv;
- `pip install` installs nothing: it checks that each extra it names is one of
  pyproject.toml's and that each package it names is importable here;
- `modelservice serve` starts the server in the background (as a second terminal would),
  waits until it answers /v2/health/ready and leaves it running until the page ends;
- `curl` fails on an HTTP error (`--fail-with-body`), so a 400 fails the block.

A marker on the line before a block, `<!-- docs-test: KIND (why) -->`, holds it back:
`slow` blocks (torch, a model builder run) run with CI=true or MODELSERVICE_DOCS_SLOW=1;
`cluster` blocks (a control plane, helm, kind) only with MODELSERVICE_DOCS_CLUSTER=1, as
they change the cluster they run against. A block held back is reported in the test's
output. Untagged blocks are output or formulas; one that starts with a command is a
failure (tag it `bash`).
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.docs_shell import _alive
from tests.integration.runtime_server import free_port
from tests.loopback_http import loopback_server
from tests.needs import needed

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = ("bash", "sh", "shell", "python")
MARK = re.compile(r"<!--\s*docs-test:\s*(\w+)(.*?)-->", re.S)
KINDS = {
    "slow": lambda: (
        os.environ.get("CI") == "true" or bool(os.environ.get("MODELSERVICE_DOCS_SLOW"))
    ),
    "cluster": lambda: bool(os.environ.get("MODELSERVICE_DOCS_CLUSTER")),
}
COMMANDS = ("modelservice ", "curl ", "kubectl ", "helm ", "make ", "pip ", "python ")
BLOCK_TIMEOUT_S = 300
SERVER_READY_S = 120

# The functions of the module doc, defined before each bash block. DOCS_* come from env.
PRELUDE = r"""
python() {
  if [ "${1:-}" = "-m" ] && [ "${2:-}" = "venv" ]; then return 0; fi
  command "$DOCS_PYTHON" "$@"
}
pip() { command "$DOCS_PYTHON" -m tests.integration.docs_shell pip "$DOCS_PYPROJECT" "$@"; }
curl() { command curl --fail-with-body --max-time 120 "$@"; }
modelservice() {
  if [ "${1:-}" != "serve" ]; then command modelservice "$@"; return; fi
  local log; log="$(mktemp "$DOCS_DIR/serve.XXXXXX")"
  setsid "$DOCS_BIN/modelservice" "$@" >"$log" 2>&1 &
  echo $! >>"$DOCS_PIDS"
  "$DOCS_PYTHON" -m tests.integration.docs_shell wait $! "$log" "$@"
}
"""


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    mark: str | None  # slow, cluster, or None: always run
    why: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, each with the marker on the line before it, if any."""
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(```+)(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith(fence.group(1)))
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = MARK.search(before) if before.strip().endswith("-->") else None
        kind = mark.group(1) if mark else None
        if kind is not None and kind not in KINDS:
            raise AssertionError(f"{page.name}:{i + 1}: unknown docs-test marker {kind!r}")
        why = mark.group(2).strip(" ()") if mark else ""
        found.append(Block(page, i + 1, fence.group(2), "\n".join(lines[i + 1 : end]), kind, why))
        i = end + 1
    return found


def test_every_block_is_parsed_and_untagged_ones_hold_no_commands() -> None:
    for page in PAGES:
        for b in blocks(page):
            if b.lang == "":
                first = b.text.lstrip().splitlines()[0] if b.text.strip() else ""
                assert not first.startswith(COMMANDS), (
                    f"{b.where}: an untagged block starting with a command ({first!r}); tag it "
                    "bash (and mark it if it needs a cluster)"
                )


@pytest.fixture
def session(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The page's directory, its tools and the servers it started (stopped at the end)."""
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("examples", "tests"):
        (work / name).symlink_to(ROOT / name)
    (work / ".venv" / "bin").mkdir(parents=True)
    (work / ".venv" / "bin" / "activate").write_text("# the test's interpreter is the venv\n")
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "modelservice").write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m modelservice_cli "$@"\n'
    )
    (tools / "modelservice").chmod(0o755)
    pids = tmp_path / "pids"
    pids.touch()
    path = [str(ROOT / "cli"), str(ROOT / "runtime"), str(ROOT / "operator"), str(work)]
    # the blocks' shells find tests.integration.docs_shell through `work` (tests linked in)
    env = {
        **os.environ,
        "PATH": f"{tools}:{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([*path, os.environ.get("PYTHONPATH", "")]),
        "MPLBACKEND": "Agg",
        "MODELSERVICE_SHUTDOWN_DELAY_S": "0",  # stopped by the test: no unready delay
        "DOCS_PYTHON": sys.executable,
        "DOCS_BIN": str(tools),
        "DOCS_DIR": str(tmp_path),
        "DOCS_PIDS": str(pids),
        "DOCS_READY_S": str(SERVER_READY_S),
        "DOCS_PYPROJECT": str(ROOT / "pyproject.toml"),
        "WORK": str(work),
        **{f"PORT_{p}": str(free_port()) for p in MORE_PORTS},
    }
    try:
        yield env
    finally:
        for pid in {int(p) for p in pids.read_text().split()}:
            try:
                os.killpg(pid, signal.SIGTERM)  # setsid: the server's own group
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 30  # its drain: --shutdown-delay-s and in-flight
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)


# A page's further servers (beside the first, on 8080) use these: each gets a free port.
MORE_PORTS = ("8090", "8091")


def run_block(b: Block, env: dict[str, str], port: int) -> str:
    text = b.text.replace("8080", str(port))
    for written in MORE_PORTS:
        text = text.replace(written, env[f"PORT_{written}"])
    work = env["WORK"]
    if b.lang == "python":
        script = Path(env["DOCS_DIR"]) / f"block-{b.line}.py"
        script.write_text(text + "\n")
        cmd = [sys.executable, str(script)]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", PRELUDE + "\n" + text]
    done = subprocess.run(
        cmd, cwd=work, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise AssertionError(
            f"{b.where}: the {b.lang} block failed (exit {done.returncode}), run as written "
            f"(port 8080 -> {port}):\n{text}\n--- output ---\n{output[-4000:]}"
        )
    return output


def _runnable(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.lang in RUN]


# Pages with a block that can run here; pages whose blocks all need a cluster are only
# parsed (test_bash_blocks_parse) unless MODELSERVICE_DOCS_CLUSTER=1.
RUNNABLE_PAGES = [
    p for p in PAGES if any(b.mark != "cluster" or KINDS["cluster"]() for b in _runnable(p))
]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_runs_as_written(page: Path, session: dict[str, str], capsys) -> None:
    if shutil.which("curl") is None:
        needed("curl: the docs' snippets use it")
    port = free_port()
    ran, held = 0, []
    for b in _runnable(page):
        if b.mark is not None and not KINDS[b.mark]():
            held.append(f"{b.where} ({b.mark}{': ' + b.why if b.why else ''})")
            continue
        run_block(b, session, port)
        ran += 1
    if held:
        with capsys.disabled():
            print(f"\n{page.name}: held back " + "; ".join(held))
    if not ran:
        needed(f"every block of {page.name} is marked: " + "; ".join(held))


def test_bash_blocks_parse() -> None:
    """The pages' bash blocks parse as shell (a broken quote fails here, without a run)."""
    for page in PAGES:
        for b in blocks(page):
            if b.lang == "bash":
                done = subprocess.run(["bash", "-n", "-c", b.text], capture_output=True, text=True)
                assert done.returncode == 0, f"{b.where}: {done.stderr}"


class _Refuses(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # a pasted body that is not JSON: what the old README got
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "request body is not valid JSON"}')

    def log_message(self, *args: object) -> None:
        pass


def test_a_block_whose_curl_gets_a_400_fails(session: dict[str, str]) -> None:
    """The checks bite: a 4xx fails the block, and so does a pip extra that does not exist."""
    with loopback_server(_Refuses) as url:
        port = int(url.rsplit(":", 1)[1])
        bad = Block(
            ROOT / "README.md", 1, "bash", "curl -s localhost:8080/x -d '[0.5, ...]'", None, ""
        )
        with pytest.raises(AssertionError, match=r"failed \(exit 22\)[\s\S]*not valid JSON"):
            run_block(bad, session, port)
    typo = Block(ROOT / "README.md", 1, "bash", "pip install -e '.[runtime,exprot]'", None, "")
    with pytest.raises(AssertionError, match=r"no extra \['exprot'\]"):
        run_block(typo, session, 0)
