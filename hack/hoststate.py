#!/usr/bin/env python3
"""Record what the real node is about to change on the host, and undo exactly that.

The real node (hack/node-up.sh) changes the host: kubelet and kube-proxy write iptables
chains and rules, kubelet sets sysctls, containerd and kubelet mount filesystems, the CNI
bridge adds network links. `snapshot` records the state before any of it; `restore` removes
what is there now and was not then, and puts the recorded sysctls back. A diff against a
snapshot (rather than a list of names) also catches what a component adds in a later version,
and never touches what the host had before.

    hack/hoststate.py snapshot DIR
    hack/hoststate.py restore DIR --mounts-under PATH [PATH ...]

Standard library only: it runs with the host's python3, before any venv exists.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

# Sysctls kubelet (pkg/kubelet/cm/container_manager_linux.go), kube-proxy and the CNI bridge
# change, plus the bridge-netfilter switch hack/node-up.sh turns on for Service traffic
# between pods on the same bridge.
SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.forwarding",
    "net.ipv4.conf.all.route_localnet",
    "net.ipv6.conf.all.forwarding",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
)
IPTABLES = ("iptables", "ip6tables")


def log(msg: str) -> None:
    print(f"[hoststate] {msg}", file=sys.stderr)


def run(*cmd: str, check: bool = True) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc.stdout


# --- sysctls ---------------------------------------------------------------------------------


def sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def read_sysctls() -> dict[str, str]:
    values = {}
    for key in SYSCTLS:
        path = sysctl_path(key)
        if path.exists():
            values[key] = path.read_text().strip()
    return values


def restore_sysctls(saved: dict[str, str]) -> None:
    now = read_sysctls()
    for key, value in saved.items():
        if now.get(key) == value:
            continue
        try:
            sysctl_path(key).write_text(value + "\n")
            log(f"sysctl {key}: {now.get(key)} -> {value} (as before)")
        except OSError as e:
            log(f"warning: could not restore sysctl {key}={value}: {e}")


# --- iptables --------------------------------------------------------------------------------


def parse_save(text: str) -> dict[str, dict[str, list[str]]]:
    """iptables-save output -> {table: {"chains": [...], "rules": ["-A CHAIN ...", ...]}}."""
    tables: dict[str, dict[str, list[str]]] = {}
    table: dict[str, list[str]] | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            table = tables.setdefault(line[1:], {"chains": [], "rules": []})
        elif table is None:
            continue
        elif line.startswith(":"):
            table["chains"].append(line[1:].split()[0])
        elif line.startswith("-A "):
            table["rules"].append(line)
    return tables


def iptables_save(binary: str) -> str:
    save = f"{binary}-save"
    if shutil.which(save) is None:
        return ""
    return run(save, check=False)


def iptables_undo(before_text: str, now_text: str) -> list[list[str]]:
    """The iptables arguments (after `-t TABLE`) that take `now` back to `before`: delete each
    rule that is new in a chain that was there before, then flush and delete each new chain.
    Rules first: a chain can only be deleted once nothing jumps to it."""
    before, now = parse_save(before_text), parse_save(now_text)
    steps: list[list[str]] = []
    for table, state in now.items():
        old = before.get(table, {"chains": [], "rules": []})
        old_rules = set(old["rules"])
        new_chains = [c for c in state["chains"] if c not in old["chains"]]
        for rule in state["rules"]:
            if rule in old_rules or rule.split()[1] in new_chains:
                continue
            args = shlex.split(rule)
            args[0] = "-D"
            steps.append(["-t", table, *args])
        steps += [["-t", table, "-F", chain] for chain in new_chains]
        steps += [["-t", table, "-X", chain] for chain in new_chains]
    return steps


def restore_iptables(binary: str, before_text: str) -> None:
    for step in iptables_undo(before_text, iptables_save(binary)):
        proc = subprocess.run([binary, "-w", *step], capture_output=True, text=True)
        if step[2] == "-F":
            continue
        if proc.returncode == 0:
            log(f"{binary} {' '.join(step)}")
        else:
            log(f"warning: {binary} {' '.join(step)} failed: {proc.stderr.strip()}")


# --- mounts and links ------------------------------------------------------------------------


def mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Field 5 is the mount point, with spaces and the like octal-escaped.
        points.append(line.split()[4].encode().decode("unicode_escape"))
    return points


def unmount_new(before: list[str], prefixes: list[str]) -> None:
    old = set(before)
    roots = [p.rstrip("/") + "/" for p in prefixes]
    # Deepest first, each once, lazily: a busy mount is detached now and freed when unused.
    for point in sorted(set(mount_points()) - old, key=len, reverse=True):
        if any((point + "/").startswith(r) for r in roots):
            if subprocess.run(["umount", "-l", point], capture_output=True).returncode == 0:
                log(f"unmounted {point}")
            else:
                log(f"warning: could not unmount {point}")


def links() -> list[str]:
    out = run("ip", "-o", "link", "show", check=False)
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def delete_new_links(before: list[str]) -> None:
    for name in sorted(set(links()) - set(before)):
        if subprocess.run(["ip", "link", "delete", name], capture_output=True).returncode == 0:
            log(f"removed network link {name}")


# --- commands --------------------------------------------------------------------------------


def snapshot(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for binary in IPTABLES:
        (directory / f"{binary}.save").write_text(iptables_save(binary))
    (directory / "sysctl.json").write_text(json.dumps(read_sysctls(), indent=1))
    (directory / "mounts.json").write_text(json.dumps(mount_points()))
    (directory / "links.json").write_text(json.dumps(links()))
    log(f"recorded iptables, sysctls, mounts and links in {directory}")


def restore(directory: Path, mounts_under: list[str]) -> None:
    if not (directory / "sysctl.json").exists():
        log(f"nothing recorded in {directory}; nothing to undo")
        return
    unmount_new(json.loads((directory / "mounts.json").read_text()), mounts_under)
    delete_new_links(json.loads((directory / "links.json").read_text()))
    for binary in IPTABLES:
        saved = directory / f"{binary}.save"
        if saved.exists() and shutil.which(binary):
            restore_iptables(binary, saved.read_text())
    restore_sysctls(json.loads((directory / "sysctl.json").read_text()))
    shutil.rmtree(directory)
    log("host state restored")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_snap = sub.add_parser("snapshot", help="record the host state into DIR")
    p_snap.add_argument("dir", type=Path)
    p_restore = sub.add_parser("restore", help="undo what changed since the snapshot in DIR")
    p_restore.add_argument("dir", type=Path)
    p_restore.add_argument("--mounts-under", nargs="*", default=[], metavar="PATH")
    args = parser.parse_args(argv)
    if args.command == "snapshot":
        snapshot(args.dir)
    else:
        restore(args.dir, args.mounts_under)


if __name__ == "__main__":
    main()
