"""Preflight: every path a run needs, checked together before the model loads or any rank joins a collective.

`preflight(config)` raises one `ConfigError` listing every problem, each as `key: path as given ...`,
so a run that would fail minutes later (after loading the model, on every rank) fails at once with
exit code 2. It reads files but writes, downloads and runs nothing.

`model.path` is a local folder or a Hugging Face hub id. A value that looks like a path (starts with
`./`, `../`, `/` or `~`, has more than one `/`, or its first part exists here) must be a folder with
`config.json`, a tokenizer and a processor config. An `org/name` hub id that is not a local folder
is accepted when it is in the local Hugging Face cache, or when downloads are allowed (neither
`HF_HUB_OFFLINE` nor `TRANSFORMERS_OFFLINE` set: `from_pretrained` fetches it then); offline, an
uncached id is refused, as loading it would fail. The hub is never contacted here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from braceexpand import braceexpand
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from data_shards.index import INDEX_NAME
from data_shards.stream import local_shard_problem, resolve_shards
from data_shards.stream.mix import parse_mix
from trainer.config.fields import ConfigError
from trainer.config.schema import DataSection, TrainConfig
from trainer.train.checkpoints import CheckpointManager

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def preflight(config: TrainConfig) -> None:
    """Raise one ConfigError naming every missing or unreadable input and every unwritable output."""
    problems = [
        *model_problems(config.model.path),
        *data_problems("data.train", config.data.train, config.data),
        *data_problems("data.val", config.data.val, config.data),
        *deepspeed_problems(config.deepspeed.config),
        *output_dir_problems(config.train.output_dir),
        *resume_problems(config.checkpoint.resume, config.train.output_dir),
        *template_problems(config.model.chat_template),
    ]
    if problems:
        raise ConfigError(problems)


# ----------------------------------------------------------------------------- model


def model_problems(path: str) -> list[str]:
    if not path:
        return []  # "required" is already reported by TrainConfig.problems()
    folder = Path(path)
    if folder.is_dir():
        return model_folder_problems(path)
    if folder.exists():
        return [f"model.path: {path} is a file, not a model folder"]
    if not is_hub_id(path):
        hint = " (~ is not expanded: give the full path)" if path.startswith("~") else ""
        return [f"model.path: {path} does not exist{hint}"]
    return hub_problems(path)


def model_folder_problems(path: str) -> list[str]:
    """What `from_pretrained` and `load_processor` need: the model config, a tokenizer and a processor config."""
    folder = Path(path)
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    for kind, names in (("tokenizer", TOKENIZER_FILES), ("processor config", PROCESSOR_FILES)):
        if not any((folder / name).is_file() for name in names):
            missing.append(f"{kind} ({' or '.join(names)})")
    return [f"model.path: {path} has no {item}" for item in missing]


def is_hub_id(path: str) -> bool:
    """`org/name` with hub-valid characters, and not the start of a local path (`runs/x` where `runs` exists)."""
    if path.count("/") != 1 or path.startswith(("~", ".")) or Path(path.split("/")[0]).exists():
        return False
    try:
        validate_repo_id(path)
    except HFValidationError:
        return False
    return True


def hub_problems(repo_id: str) -> list[str]:
    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str) or not offline():
        return []
    return [
        f"model.path: {repo_id} is neither a local folder nor in the Hugging Face cache, and downloads are off "
        f"({'/'.join(OFFLINE_VARIABLES)} is set)"
    ]


def offline() -> bool:
    """Read at call time (huggingface_hub reads HF_HUB_OFFLINE once, at import), with the hub's notion of true."""
    return any(os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE") for name in OFFLINE_VARIABLES)


# ----------------------------------------------------------------------------- data


def data_problems(key: str, source: str, data: DataSection) -> list[str]:
    """A split's source and its index, read by the stream's own loader (`resolve_shards`); each split of a mix."""
    if not source:
        return []
    try:
        parts = parse_mix(source)
    except ValueError as error:
        return [f"{key}: {error}"]
    if parts is not None:
        if data.index:
            return [f"{key}: a mix reads each split with its own index; data.index={data.index} cannot be used"]
        return [problem for part in parts for problem in data_problems(key, part.path, data)]
    index = data.index or None
    problem = source_problem(key, source, index)
    if problem:
        return [problem]
    if not Path(source).is_dir() and index and index.startswith("pipe:"):
        return []  # a command printing the index: the stream runs it; preflight runs nothing
    try:
        _, shards = resolve_shards(source, index)
    except (OSError, ValueError) as error:
        return [f"{key}: {error}"]
    except (KeyError, TypeError, AttributeError) as error:
        return [f"{key}: {source}: the shard index is malformed ({type(error).__name__}: {error}); rebuild the shards"]
    return shard_problems(key, source, shards, data.on_corrupt)


def source_problem(key: str, source: str, index: str | None) -> str | None:
    """The source exists and its index can be found: in a split folder, data.index, or next to local shards."""
    path = Path(source)
    if path.is_dir():
        found = (path / INDEX_NAME).is_file()
        return None if found else f"{key}: {source} has no {INDEX_NAME} (build the shards first)"
    urls = list(braceexpand(source))
    if source.startswith("pipe:"):
        return (
            None
            if index
            else (
                f"{key}: {source} is a pipe: source; set data.index (a path, or a pipe: command printing {INDEX_NAME})"
            )
        )
    if urls == [source] and not path.exists():
        return f"{key}: {source} does not exist"
    if index is None:
        sibling = Path(urls[0]).parent / INDEX_NAME
        return (
            None
            if sibling.is_file()
            else (f"{key}: {source} needs data.index (no {INDEX_NAME} next to its shards: {sibling} does not exist)")
        )
    if not index.startswith("pipe:") and not Path(index).is_file():
        return f"data.index: {index} does not exist (the index of {key}={source})"
    return None


def shard_problems(key: str, source: str, shards: list, policy: str) -> list[str]:
    """The stream skips unreadable local shards (or stops, with on_corrupt=fail): refuse a split it cannot read."""
    if sum(shard.samples for shard in shards) == 0:
        return [f"{key}: {source}: the index lists no samples"]
    bad = [(shard, problem) for shard in shards if not shard.is_remote and (problem := local_shard_problem(shard))]
    if not bad or (policy == "skip" and len(bad) < len(shards)):
        return []
    shard, problem = bad[0]
    what = "no readable shard" if len(bad) == len(shards) else "an unreadable shard and data.on_corrupt=fail"
    return [f"{key}: {source}: {what} ({len(bad)} of {len(shards)} bad; {shard.url}: {problem})"]


# ----------------------------------------------------------------------------- DeepSpeed, output, resume


def deepspeed_problems(path: str) -> list[str]:
    key = "deepspeed.config"
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{key}: {path} does not exist"]
    except IsADirectoryError:
        return [f"{key}: {path} is a folder, not a JSON file"]
    except OSError as error:
        return [f"{key}: {path} cannot be read ({error.strerror})"]
    except UnicodeDecodeError:
        return [f"{key}: {path} is not UTF-8 text"]
    except json.JSONDecodeError as error:
        return [f"{key}: {path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"]
    if not isinstance(document, dict):
        return [f"{key}: {path} must hold a JSON object, not a {type(document).__name__}"]
    return []


def output_dir_problems(path: str) -> list[str]:
    """The run folder is a writable folder, or can be created: its nearest existing ancestor is a writable folder."""
    key, folder = "train.output_dir", Path(path).absolute()
    if folder.exists() and not folder.is_dir():
        return [f"{key}: {path} is a file, not a folder"]
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        return [f"{key}: {path} cannot be created: {existing} is a file"]
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "is not writable" if existing == folder else f"cannot be created: {existing} is not writable"
        return [f"{key}: {path} {where}"]
    return []


def resume_problems(resume: str, output_dir: str) -> list[str]:
    """A named checkpoint (not auto/none) exists and is complete, as `CheckpointManager.resolve` will require."""
    if resume in ("auto", "none"):
        return []
    try:
        CheckpointManager(Path(output_dir), 0, 0, "", "min").resolve(resume)
    except FileNotFoundError as error:
        return [str(error)]
    return []


def template_problems(path: str) -> list[str]:
    """A chat template file given in place of the model's is a readable file."""
    if path and not Path(path).is_file():
        return [f"model.chat_template: {path} is not a file"]
    return []
