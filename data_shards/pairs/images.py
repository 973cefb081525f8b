"""Every image a pairs job names must exist under the image root before anything is written; its bytes' hash
is what leakage is checked on (the same file, or byte-identical copies under other names)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from data_shards.pairs.errors import raise_if_any
from data_shards.validate import root_relative


def image_hashes(origins: dict[str, str], image_root: Path) -> dict[str, str]:
    """sha256 of each named image's file; `origins` maps a name to where it is first named (file:line)."""
    problems, hashes = [], {}
    for name, origin in origins.items():
        relative = root_relative(name, image_root)
        if relative is None:
            problems.append(f"{origin}: {name!r} points outside the image root")
        elif not (image_root / relative).is_file():
            problems.append(f"{origin}: {name!r} not found")
        else:
            hashes[name] = hashlib.sha256((image_root / relative).read_bytes()).hexdigest()
    raise_if_any(f"images missing under {image_root}", problems)
    return hashes
