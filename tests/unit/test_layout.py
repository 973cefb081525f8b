"""The tree keeps its shape: modules of a screenful or a few, readers apart from writers, light modules light."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 450


def loaded_after(imports: str) -> set[str]:
    """The modules a fresh interpreter holds after `imports`."""
    code = f"import sys; {imports}; print('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


@pytest.mark.parametrize("package", ["trainer", "data_shards", "slurm"])
def test_no_module_is_over_the_limit(package):
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / package).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these (over {MAX_LINES} lines): {long}"


def test_shard_readers_do_not_import_the_writer():
    loaded = loaded_after("import data_shards.stream, data_shards.inspect")
    assert "data_shards.index" in loaded and "data_shards.write" not in loaded


def test_the_run_folder_layout_and_the_slurm_request_need_no_torch():
    """The SLURM submitter runs on login nodes: what it reads of a run folder must not pull in torch."""
    loaded = loaded_after("import trainer.run_folder, slurm.request, trainer.config.schema")
    assert "torch" not in loaded
