"""Opening remote shards and files: `pipe:` commands (object-store CLIs) and `http(s)://` URLs."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

HTTP = ("http://", "https://")
COPY_CHUNK = 1 << 20
HTTP_TIMEOUT_S = 120


def is_remote(url: str) -> bool:
    return url.startswith("pipe:") or url.startswith(HTTP)


class TransferError(OSError):
    """A remote read that did not complete (command failed, connection dropped)."""


@contextmanager
def open_remote(url: str) -> Iterator[BinaryIO]:
    """The bytes of a `pipe:` command's output or an http(s) URL, as a stream; a failed command raises on close."""
    if url.startswith(HTTP):
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            yield response
        return
    with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: a chatty CLI cannot fill it and stall
        process = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE, stderr=stderr)
        try:
            yield process.stdout
        finally:
            process.stdout.close()
            status = process.wait()
            stderr.seek(0)
            error = stderr.read().decode(errors="replace").strip()
    if status != 0:
        raise TransferError(f"{url}: command exited with {status}" + (f": {error[-500:]}" if error else ""))


def read_remote(url: str) -> bytes:
    with open_remote(url) as stream:
        return stream.read()


def download(url: str, target: Path) -> int:
    """Copy a remote object to `target`; returns the bytes written."""
    with open_remote(url) as stream, open(target, "wb") as handle:
        shutil.copyfileobj(stream, handle, COPY_CHUNK)
        return handle.tell()


def sibling(url: str, name: str) -> str:
    """The URL (or command) of `name` beside the object `url` names: `.../index.json` → `.../offsets.npy`."""
    head, sep, tail = url.rpartition("/")
    if not sep:
        raise ValueError(f"{url}: cannot tell where files beside it are (no '/')")
    return f"{head}/{tail.replace(tail.split()[0], name, 1)}" if url.startswith("pipe:") else f"{head}/{name}"
