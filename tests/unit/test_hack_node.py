"""Pure parts of the real node's host scripts: what `hack/hoststate.py` would undo, and the
pause image archive `hack/pause/ociarchive.py` packs (checked by reading it back)."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import tarfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hoststate = _load(ROOT / "hack" / "hoststate.py")
ociarchive = _load(ROOT / "hack" / "pause" / "ociarchive.py")

BEFORE = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:HOST-OWN - [0:0]
-A INPUT -j HOST-OWN
-A HOST-OWN -p tcp --dport 22 -j ACCEPT
COMMIT
"""
AFTER = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:HOST-OWN - [0:0]
:KUBE-FIREWALL - [0:0]
:MODELSERVICE-NODE-FORWARD - [0:0]
-A INPUT -j HOST-OWN
-A INPUT -j KUBE-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j ACCEPT
-A FORWARD -j MODELSERVICE-NODE-FORWARD
-A HOST-OWN -p tcp --dport 22 -j ACCEPT
-A KUBE-FIREWALL -d 127.0.0.0/8 -j DROP
-A MODELSERVICE-NODE-FORWARD -i msvc0 ! -o msvc0 -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -j KUBE-SERVICES
COMMIT
"""


def test_undo_removes_only_what_is_new_rules_before_chains() -> None:
    steps = hoststate.iptables_undo(BEFORE, AFTER)
    assert steps == [
        ["-t", "filter", "-D", "INPUT", "-j", "KUBE-FIREWALL"],
        ["-t", "filter", "-D", "INPUT", "-m", "comment", "--comment",
         "kubernetes health check service ports", "-j", "ACCEPT"],
        ["-t", "filter", "-D", "FORWARD", "-j", "MODELSERVICE-NODE-FORWARD"],
        ["-t", "filter", "-F", "KUBE-FIREWALL"],
        ["-t", "filter", "-F", "MODELSERVICE-NODE-FORWARD"],
        ["-t", "filter", "-X", "KUBE-FIREWALL"],
        ["-t", "filter", "-X", "MODELSERVICE-NODE-FORWARD"],
        # A table the host did not have: its built-in chains go too (iptables-nft made them).
        ["-t", "nat", "-F", "PREROUTING"],
        ["-t", "nat", "-F", "KUBE-SERVICES"],
        ["-t", "nat", "-X", "PREROUTING"],
        ["-t", "nat", "-X", "KUBE-SERVICES"],
    ]  # fmt: skip


def test_undo_of_an_unchanged_host_is_nothing() -> None:
    assert hoststate.iptables_undo(BEFORE, BEFORE) == []
    assert hoststate.iptables_undo(AFTER, AFTER) == []


def test_pause_archive_is_a_consistent_oci_image(tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF not really, but bytes")
    out = tmp_path / "pause.tar"
    ociarchive.build(binary, "modelservice.local/pause:1", out)
    with tarfile.open(out) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    blobs = {n.removeprefix("blobs/sha256/"): d for n, d in files.items() if n.startswith("blobs/")}
    for digest, data in blobs.items():
        assert hashlib.sha256(data).hexdigest() == digest
    (entry,) = json.loads(files["index.json"])["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == "modelservice.local/pause:1"
    manifest = json.loads(blobs[entry["digest"].removeprefix("sha256:")])
    config = json.loads(blobs[manifest["config"]["digest"].removeprefix("sha256:")])
    assert config["config"]["Entrypoint"] == ["/pause"]
    (layer,) = manifest["layers"]
    raw = gzip.decompress(blobs[layer["digest"].removeprefix("sha256:")])
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(raw).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(raw)) as rootfs:
        (member,) = rootfs.getmembers()
        assert member.name == "pause" and member.mode == 0o755
        assert rootfs.extractfile(member).read() == binary.read_bytes()
    # Deterministic: the same binary gives the same image.
    again = tmp_path / "again.tar"
    ociarchive.build(binary, "modelservice.local/pause:1", again)
    assert again.read_bytes() == out.read_bytes()
