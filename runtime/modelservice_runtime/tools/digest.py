"""`modelservice digest PATH`: the digest `modelservice fetch --sha256` checks.

A file's digest is its sha256 (what pins an archive); a directory's is the set digest of
`fetch.trees.set_digest`: sha256 over the sorted lines `<sha256 of file>  <relative posix
path>\\n`, one per regular file under it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modelservice_runtime.fetch.base import SetError, file_sha256
from modelservice_runtime.fetch.trees import set_digest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="a model file, archive or directory")


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    try:
        if path.is_dir():
            digest = set_digest(path)
        elif path.is_file():
            digest = file_sha256(path)
        else:
            print(f"modelservice digest: error: PATH: {path} does not exist", file=sys.stderr)
            return 1
    except (SetError, OSError) as e:
        print(f"modelservice digest: error: {path}: {e}", file=sys.stderr)
        return 1
    print(digest)
    return 0
