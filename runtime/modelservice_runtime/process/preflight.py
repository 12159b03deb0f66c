"""What `modelservice serve` checks before it starts anything: the model path and the port.

A newcomer's first mistakes are a path that does not exist, a file that is not ONNX (the
PyTorch checkpoint, the README, the input array), a Hugging Face folder before
`export-llm`, and a port another server still holds. Found after the server has started,
each would come out between uvicorn's start-up lines, after a settings dump, as a
protobuf or bind traceback. Found here, each is one line that names the next step, and
nothing has started. The model itself is still loaded (and refused, naming why) by the
runtime: this only catches what can be told from the outside, by a file's first bytes.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from modelservice_runtime import model_files

GENAI_CONFIG = "genai_config.json"  # an onnxruntime-genai folder (what export-llm writes)
HF_CONFIG = "config.json"  # a Hugging Face model folder
EXPORT = "modelservice export MODULE:FACTORY --input-shape 1,64 -o model.onnx"
NUMPY = "a NumPy array"

# First bytes -> what the file is. ONNX is a protobuf whose first byte is a field tag
# (0x08 for ir_version); none of these can start one.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a zip archive, as torch.save writes a .pt checkpoint"),
    (b"\x80", "a Python pickle, as torch.save wrote a checkpoint before zip"),
    (b"\x93NUMPY", f"{NUMPY}: a request's input, not a model"),
    (b"\x1f\x8b", "a gzip archive: unpack it, or let `modelservice fetch URI DIR` unpack it"),
)


class PreflightError(ValueError):
    """`modelservice serve` cannot start; the one-line message says what to do instead."""


def check_model(path: Path, fmt: str = "auto") -> None:
    """Refuse a model path that cannot be served, naming the command that makes one."""
    if not path.exists():
        raise PreflightError(
            f"{path}: does not exist; pass an .onnx file or a folder holding one "
            f"(make one from PyTorch with: {EXPORT})"
        )
    if path.is_dir():
        _check_folder(path, fmt)
    elif fmt != "genai":
        what = sniff(path)
        if what is not None and what.startswith(NUMPY):
            raise PreflightError(
                f"{path}: not an ONNX model ({what}); serve the .onnx model and send the "
                f"array in a request, or explain it: modelservice explain MODEL.onnx --input {path}"
            )
        if what is not None:
            raise PreflightError(
                f"{path}: not an ONNX model ({what}); export the PyTorch model to ONNX "
                f"first: {EXPORT}, then serve model.onnx"
            )


def _check_folder(path: Path, fmt: str) -> None:
    if (path / GENAI_CONFIG).is_file() and fmt != "onnx":
        return  # a language model: onnxruntime-genai loads it
    hugging_face = (path / HF_CONFIG).is_file()
    if fmt == "genai" or (hugging_face and not any(path.glob("*.onnx"))):
        what = "a Hugging Face model folder (config.json)" if hugging_face else f"no {GENAI_CONFIG}"
        raise PreflightError(
            f"{path}: {what}, not an onnxruntime-genai folder; convert it first: "
            f"modelservice export-llm {path} -o {path.name or 'model'}-genai, then serve "
            "that folder"
        )
    try:
        model_files.locate(path)
    except model_files.ModelFileError as e:
        raise PreflightError(f"{e}; to make one from PyTorch: {EXPORT}") from None


def sniff(path: Path) -> str | None:
    """What a file evidently is when it is not ONNX; None when it may be ONNX."""
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError as e:
        return f"cannot read it: {e.strerror}"
    if not head:
        return "an empty file"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 30:
        return "safetensors weights, as Hugging Face saves them"
    if _is_text(head):
        return f"a text file ({path.suffix or 'no suffix'})"
    return None


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # a multi-byte character cut at the 4096th byte is still text
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(c.isprintable() or c in "\t\n\r\f" for c in text)


def listen_error(host: str, port: int, e: OSError) -> str:
    """The one line for a port this server cannot listen on, with what to do about it."""
    if e.errno == errno.EADDRINUSE:
        hint = (
            f"another process is listening there (an earlier modelservice serve?): stop it, "
            f"or pick another port with --port {port + 1 if 0 < port < 65535 else 8081}"
        )
    elif e.errno == errno.EADDRNOTAVAIL:
        hint = "that address is not this machine's: use --host 127.0.0.1 or --host 0.0.0.0"
    elif e.errno == errno.EACCES:
        hint = "ports below 1024 need root: use --port 8080"
    else:
        hint = "pick another --host or --port"
    return f"cannot listen on {host}:{port}: {e.strerror or e}; {hint}"


def check_port(host: str, port: int) -> None:
    """Refuse a host:port this process cannot bind (the same options as uvicorn's and the
    supervisor's socket), before anything starts. The socket is closed again at once."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as e:
        raise PreflightError(listen_error(host, port, e)) from None
