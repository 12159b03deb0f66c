"""What docs/runtime.md (Memory) says each worker costs, checked on the real server tree.

A model with external data is served with `--workers 2` (prepacking auto, so off): both
workers map the weights file, the pages of that mapping are shared between them rather than
private to either, and no worker holds a private copy of the weights. These are facts of the
mappings in /proc/PID/smaps after one inference, not timings. The one measured figure, the
PSS of the whole tree, gets a bound of about twice the overhead measured (docs/runtime.md)
that a private copy of the weights in each worker still breaks: `--prepack-weights on`, the
contrast, is shown to break it.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from tests import extdata
from tests.integration.runtime_server import serve

MIB = 1 << 20
DIM, LAYERS = 2048, 20  # 20 weights of 16 MiB: 320 MiB of external data
WORKERS = 2


def pss_bound(weights: int) -> int:
    """docs/runtime.md: the tree's PSS is about weights + 30 MiB + N x 70 MiB when the workers
    share the weights; this allows about twice that overhead, and is still below what N
    private copies of the weights take (N x (weights + 70 MiB) + 30 MiB)."""
    return weights + 50 * MIB + WORKERS * 150 * MIB


pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def smaps(pid: int) -> list[tuple[str, dict[str, int]]]:
    """(mapped path, {field: bytes}) per mapping of the process."""
    mappings: list[tuple[str, dict[str, int]]] = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            mappings.append((head[5] if len(head) > 5 else "", {}))
        elif head[0].endswith(":") and len(head) >= 2 and head[1].isdigit():
            mappings[-1][1][head[0][:-1]] = int(head[1]) * 1024
    return mappings


def status_bytes(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def tree_pss(pid: int) -> int:
    total = 0
    for p in children(pid):
        for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
    return total


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extdata.matmul_chain(tmp_path_factory.mktemp("mem") / "m", DIM, LAYERS)


def infer(url: str) -> None:
    x = np.ones((1, DIM), dtype=np.float32).tolist()
    body = {"inputs": [{"name": "x", "shape": [1, DIM], "datatype": "FP32", "data": x}]}
    r = httpx.post(f"{url}/v2/models/model/infer", json=body, timeout=120)
    assert r.status_code == 200, r.text
    y = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32)
    assert y.shape == (DIM,) and np.isfinite(y).all()


def weights_mappings(pid: int, weights: Path) -> list[dict[str, int]]:
    return [m for path, m in smaps(pid) if path == str(weights.resolve())]


def test_workers_share_one_copy_of_external_weights(large: Path) -> None:
    weights = large.parent / "weights.bin"
    size = weights.stat().st_size
    assert size == LAYERS * DIM * DIM * 4
    with serve(large, "--workers", str(WORKERS), ready_within=300) as s:
        for _ in range(4):  # connections spread over both workers; warm-up touched all anyway
            infer(s.url)
        workers = [p for p in children(s.proc.pid) if weights_mappings(p, weights)]
        assert len(workers) == WORKERS, f"expected {WORKERS} workers mapping {weights}: {workers}"
        for pid in workers:
            maps = weights_mappings(pid, weights)
            mapped = sum(m["Rss"] for m in maps)
            private = sum(m["Private_Clean"] + m["Private_Dirty"] for m in maps)
            # (dirty while the file just written is not yet on disk: still the page cache)
            shared = sum(m["Shared_Clean"] + m["Shared_Dirty"] for m in maps)
            # Page-cache pages both workers touched are shared; none are copied.
            assert shared >= 0.9 * mapped and private <= 0.1 * size, (pid, maps)
            anon = status_bytes(pid, "RssAnon")
            assert anon < size, f"worker {pid}: {anon} private bytes for {size} of weights"
        pss = tree_pss(s.proc.pid)
        assert pss < pss_bound(size), f"tree PSS {pss} for {size} of weights"


def test_prepacking_on_gives_each_worker_a_private_copy(large: Path) -> None:
    weights = large.parent / "weights.bin"
    size = weights.stat().st_size
    flags = ("--workers", str(WORKERS), "--prepack-weights", "on")
    with serve(large, *flags, ready_within=300) as s:
        for _ in range(4):
            infer(s.url)
        procs = children(s.proc.pid)
        assert all(weights_mappings(p, weights) == [] for p in procs)  # read, packed, unmapped
        copies = [p for p in procs if status_bytes(p, "RssAnon") > size]
        assert len(copies) == WORKERS, [(p, status_bytes(p, "RssAnon")) for p in procs]
        assert tree_pss(s.proc.pid) > pss_bound(size)
