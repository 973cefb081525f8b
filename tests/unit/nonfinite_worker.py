"""Run by test_health.py under torchrun (2 CPU ranks): does every engine configuration shardtune can build
skip an optimizer step whose loss was NaN on one rank only, on every rank, leaving the weights untouched?

For each ZeRO stage and precision, and ZeRO-2/3 with the optimizer offloaded to the CPU (DeepSpeedCPUAdam):
the DeepSpeed JSON resolved from the demo recipe, our optimizer choice,
gradient accumulation 2, rank 1's loss NaN in the first micro-step of optimizer step 2. Writes one JSON line
per configuration to `<folder>/rank<R>.jsonl` (the folder is its argument): for each optimizer step,
whether DeepSpeed applied it, whether the weights changed and whether they are all finite.
"""

import json
import os
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from trainer.config import deepspeed_json  # noqa: E402
from trainer.config.schema import load  # noqa: E402
from trainer.train.optim import make_optimizer  # noqa: E402

STEPS, ACCUM, NAN_STEP = 3, 2, 1


def weights(engine) -> torch.Tensor:
    """Rank-local weights (a ZeRO-3 rank holds its partition); compared before and after each step."""
    params = [getattr(p, "ds_tensor", p) for p in engine.module.parameters()]
    return torch.cat([p.detach().float().flatten() for p in params])


def run(stage: int, precision: str, offload: bool = False) -> dict:
    config = load(
        ROOT / "configs/demo.yaml",
        [
            f"deepspeed.zero_stage={stage}",
            f"train.precision={precision}",
            f"deepspeed.offload={str(offload).lower()}",
            "train.micro_batch_size=2",
            f"train.grad_accum={ACCUM}",
        ],
    )
    resolved = deepspeed_json.resolve(config, dist.get_world_size(), hidden_size=16)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = make_optimizer([{"params": list(model.parameters())}], config, resolved)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=resolved)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    steps = []
    for step in range(STEPS):
        before = weights(engine)
        for micro in range(ACCUM):
            loss = engine(torch.randn(2, 8, dtype=dtype)).float().pow(2).mean()
            if (step, micro, dist.get_rank()) == (NAN_STEP, 0, 1):
                loss = loss * float("nan")
            engine.backward(loss)
            engine.step()
        after = weights(engine)
        steps.append(
            {
                "applied": engine.was_step_applied(),
                "changed": not torch.equal(before, after),
                "finite": bool(torch.isfinite(after).all()),
            }
        )
    return {
        "rank": dist.get_rank(),
        "stage": stage,
        "precision": precision,
        "offload": offload,
        "optimizer": type(optimizer).__name__,
        "steps": steps,
    }


def main(folder: Path) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    runs = [run(stage, precision) for stage in (0, 1, 2, 3) for precision in ("fp32", "bf16")]
    runs += [run(stage, "fp32", offload=True) for stage in (2, 3)]
    lines = [json.dumps(result) for result in runs]
    (folder / f"rank{dist.get_rank()}.jsonl").write_text("\n".join(lines) + "\n")
    dist.destroy_process_group()
    os._exit(0)  # ten engines' teardown at interpreter exit sometimes aborts ("terminate called"): results are written


if __name__ == "__main__":
    main(Path(sys.argv[1]))
