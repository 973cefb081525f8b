"""The training loop on DeepSpeed's engine: shards in, checkpoints and metrics out.

Every rank runs the same number of micro-batches per epoch (the stream guarantees equal counts),
learns after each optimizer step whether it was skipped for a non-finite loss or a stop signal
arrived (`trainer.train.agreement`), and writes checkpoints together, so no rank is ever left waiting
in a collective. The process group and signal handlers are the caller's (`trainer.train.cli`).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from trainer.batches.collate import Batch
from trainer.config import deepspeed_json
from trainer.config.fields import to_dict
from trainer.config.schema import TrainConfig
from trainer.distributed.signals import Preempted, StopRequest
from trainer.distributed.world import WorldInfo
from trainer.evaluate.choices import evaluate_choices
from trainer.evaluate.generation import dtype_of, evaluate, move
from trainer.models.loading import prepare_model
from trainer.models.processor import load_processor
from trainer.run_folder import RunFolder
from trainer.train.agreement import StepAgreement, count_step
from trainer.train.callbacks import Callback
from trainer.train.checkpoints import CheckpointManager, save_adapter
from trainer.train.history import plot_history
from trainer.train.loaders import make_collator, make_loader, make_objective, planned_steps
from trainer.train.metrics import commit, learning_rates, new_pending, new_window, step_metrics
from trainer.train.objectives import ChoiceLoss
from trainer.train.optim import build_scheduler, make_optimizer, parameter_groups
from trainer.train.state import TrainerState, config_hash
from trainer.train.tracking import make_tracker

log = logging.getLogger("shardtune")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_logging(is_main: bool) -> None:
    level = logging.INFO if is_main else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", force=True)
    logging.getLogger("shardtune").setLevel(level)


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        world: WorldInfo,
        device: torch.device,
        stop: StopRequest,
        callbacks: list[Callback] = (),
    ):
        self.config = config
        self.config_dict = to_dict(config, redact=True)
        self.world = world
        self.device = device
        self.stop = stop
        self.callbacks = list(callbacks)
        self.run_folder = RunFolder(Path(config.train.output_dir))
        configure_logging(world.is_main)
        seed_everything(config.train.seed)
        self.model, self.parts = prepare_model(config, device)
        self.processor = load_processor(config.model.path)
        self.collator = make_collator(self.processor, self.model, config, world.world_size)
        self.objective, train_collate, val_collate = make_objective(config, self.collator)
        self.train_loader = make_loader(config, world, config.data.train, train_collate, shuffle=True)
        self.val_loader = (
            make_loader(config, world, config.data.val, val_collate, shuffle=False) if config.data.val else None
        )
        self.total_steps = planned_steps(config, self.train_loader.stream)
        self.engine = self.make_engine()
        self.state = TrainerState(config_hash=config_hash(to_dict(config)))
        self.checkpoints = CheckpointManager(
            self.run_folder.root,
            world.rank,
            config.checkpoint.keep_last,
            config.checkpoint.best_metric,
            config.checkpoint.best_mode,
            frozen_from_base=config.lora.enabled,
        )
        self.tracker = None
        self.window = new_window()
        self.pending = new_pending()
        self.step_lrs: list[float] = []
        self.last_saved = -1
        self.stop_signal = 0

    def make_engine(self):
        import deepspeed

        config = self.config
        hidden = getattr(getattr(self.model.config, "text_config", self.model.config), "hidden_size", 1024)
        resolved = deepspeed_json.resolve(config, self.world.world_size, hidden)
        groups = parameter_groups(self.model, self.parts, config)
        self.group_names = [group["name"] for group in groups]
        optimizer = make_optimizer(groups, config, resolved)
        opt = config.optimizer
        scheduler = build_scheduler(optimizer, self.total_steps, opt.warmup_steps, opt.schedule, opt.min_lr_ratio)
        engine, _, _, _ = deepspeed.initialize(
            model=self.model, optimizer=optimizer, lr_scheduler=scheduler, config=resolved
        )
        self.zero_stage = resolved["zero_optimization"]["stage"]
        return engine

    def resume(self) -> None:
        directory = self.checkpoints.resolve(self.config.checkpoint.resume)
        if directory is None:
            return
        saved_hash = self.state.config_hash
        self.state = self.checkpoints.load(self.engine, directory)
        if self.state.config_hash != saved_hash:
            log.warning(
                "resuming %s with a changed configuration (hash %s, now %s)",
                directory,
                self.state.config_hash,
                saved_hash,
            )
            self.state.config_hash = saved_hash
        self.train_loader.load_state_dict(self.state.stream)
        log.info(
            "resumed from %s at step %d (epoch %d, %d samples of it read)",
            directory,
            self.state.step,
            self.state.epoch,
            self.state.stream.get("read", self.state.stream.get("position", 0)),
        )

    def fit(self) -> dict[str, Any]:
        self.run_folder.root.mkdir(parents=True, exist_ok=True)
        self.resume()
        if self.world.is_main:
            self.run_folder.run_config.write_text(json.dumps(self.config_dict, indent=1))
        self.tracker = make_tracker(
            self.world.is_main,
            self.run_folder,
            self.config.tracking,
            self.config_dict,
            self.total_steps,
            fresh=self.state.step == 0,
        )
        try:
            return self.run()
        finally:
            self.tracker.close()

    def run(self) -> dict[str, Any]:
        before = self.run_eval() if self.config.eval.at_start and self.state.step == 0 else {}
        last_batch: Batch | None = None
        self.window = new_window()
        batches = self.micro_batches()
        try:
            while self.state.step < self.total_steps:
                step_batches = [next(batches) for _ in range(self.config.train.grad_accum)]
                loss_scale = self.loss_scale(step_batches)
                for batch in step_batches:
                    last_batch = self.micro_step(batch, last_batch, loss_scale)
        finally:
            batches.close()  # the loader's workers stop now, not whenever the suspended generator is collected
        after = self.run_eval()
        checkpoint = self.save(after)
        return self.summary(before, after, checkpoint)

    def micro_batches(self) -> Iterator[Batch]:
        """The training batches, epoch after epoch (an optimizer step may span two epochs)."""
        while True:
            self.train_loader.set_epoch(self.state.epoch)
            yield from self.train_loader
            self.state.epoch += 1

    def loss_scale(self, step_batches: list[Batch]) -> float:
        """world size × accumulation / the optimizer step's units (supervised tokens or rows) on every rank: each
        micro-step's summed loss times this, once DeepSpeed divides by the accumulation and averages the ranks'
        gradients, gives the step's mean over all its units. One small all-reduce per optimizer step."""
        units = sum(self.objective.units(batch.inputs, batch.targets) for batch in step_batches if len(batch))
        total = torch.tensor(units, dtype=torch.int64, device=self.engine.device)
        if dist.is_initialized():
            dist.all_reduce(total)
        return self.world.world_size * len(step_batches) / max(int(total), 1)

    def micro_step(self, batch: Batch, last_batch: Batch | None, loss_scale: float) -> Batch:
        self.state.dropped_samples += len(batch.dropped)
        usable = batch if len(batch) else last_batch
        if usable is None:
            raise RuntimeError(
                f"rank {self.world.rank}: first batch is empty (dropped as longer than "
                f"model.max_length={self.config.model.max_length}: {batch.dropped})"
            )
        inputs = move(usable.inputs, self.engine.device, dtype_of(self.engine.module))
        loss_sum, parts = self.objective(self.engine, inputs, usable.targets)
        loss = loss_sum * (loss_scale if len(batch) else 0.0)
        if not len(batch):
            parts = {}
        for callback in self.callbacks:
            loss = callback.on_micro_loss(self, loss)
        self.accumulate(loss, parts, batch)
        agreement = self.start_agreement() if self.engine.is_gradient_accumulation_boundary() else None
        self.engine.backward(loss)
        if agreement is not None:
            for callback in self.callbacks:
                callback.on_gradients(self)
        self.engine.step()
        if agreement is not None:
            self.end_optimizer_step(agreement)
        return usable

    def accumulate(self, loss: torch.Tensor, parts: dict[str, torch.Tensor], batch: Batch) -> None:
        """Sums for the optimizer step under way; they join the metrics window only if it is applied. The loss
        kept is this micro-step's share of the step's mean loss (summed over micro-steps and ranks)."""
        self.pending["losses"].append(loss.detach() / (self.world.world_size * self.config.train.grad_accum))
        for name, value in parts.items():
            self.pending["parts"].setdefault(name, []).append(value)
        self.pending["tokens"] += batch.num_tokens
        self.pending["slots"] += batch.num_slots
        self.pending["samples"] += len(batch)

    def start_agreement(self) -> StepAgreement:
        for callback in self.callbacks:
            callback.on_step_boundary(self)
        self.step_lrs = self.engine.get_lr()  # what this step uses: engine.step() moves the schedule on
        return StepAgreement(self.pending["losses"], self.stop.signum)

    def end_optimizer_step(self, agreement: StepAgreement) -> None:
        nonfinite, self.stop_signal = agreement.result()
        pending, self.pending = self.pending, new_pending()
        if count_step(
            self.state,
            self.engine.was_step_applied(),
            nonfinite,
            self.config.train.max_bad_steps,
            self.checkpoints.latest_tag,
        ):
            commit(self.window, pending)
            self.after_optimizer_step()
        else:
            self.handle_stop()

    def after_optimizer_step(self) -> None:
        self.state.step += 1
        self.window["steps"] += 1
        if self.state.step % self.config.train.log_every == 0 or self.state.step == self.total_steps:
            ended = time.perf_counter()
            metrics = step_metrics(
                self.window, ended, self.engine, self.state, self.world.world_size, self.objective.parts
            )
            metrics.update(learning_rates(self.group_names, self.step_lrs))
            self.window = new_window(started=ended)
            self.tracker.log(metrics, self.state.step)
        with self.paused():
            self.periodic_eval_and_save()
        self.handle_stop()
        for callback in self.callbacks:
            callback.on_step_end(self)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent here (evaluation, checkpoints) is left out of the training window's step time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.window["paused"] += time.perf_counter() - start

    def periodic_eval_and_save(self) -> None:
        step, last = self.state.step, self.total_steps
        every_eval, every_save = self.config.eval.every_steps, self.config.checkpoint.every_steps
        metrics = self.run_eval() if every_eval and step % every_eval == 0 and step < last else {}
        if every_save and step % every_save == 0 and step < last:
            self.save(metrics)

    def handle_stop(self) -> None:
        if self.stop_signal:
            if self.last_saved != self.state.step:
                self.save({})
            raise Preempted(self.stop_signal, self.state.step)

    def run_eval(self) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        self.val_loader.set_epoch(0)
        self.val_loader.rewind()
        metrics = self.evaluate()
        self.tracker.log(metrics, self.state.step)
        self.state.metrics = metrics
        return metrics

    def evaluate(self) -> dict[str, float]:
        config, quantized = self.config.eval, self.config.quant.load_in_4bit
        if isinstance(self.objective, ChoiceLoss):
            return evaluate_choices(self.engine, self.val_loader, self.objective, config.max_batches, quantized)
        synced = self.zero_stage == 3 and self.world.world_size > 1
        tokenizer = self.processor.tokenizer
        return evaluate(
            self.engine,
            self.val_loader,
            tokenizer,
            config.max_batches,
            config.max_new_tokens,
            synced,
            keep_train_mode=quantized,
        )

    def save(self, metrics: dict[str, float]) -> Path:
        self.state.metrics = metrics or self.state.metrics
        self.state.stream = self.train_loader.state_dict()
        saver = self.save_adapter if self.config.lora.enabled else None
        self.last_saved = self.state.step
        return self.checkpoints.save(self.engine, self.state, saver)

    def save_adapter(self, directory: Path) -> None:
        save_adapter(self.engine.module, directory, self.world.rank, self.config_dict)

    def summary(self, before: dict[str, float], after: dict[str, float], checkpoint: Path) -> dict[str, Any]:
        summary = {
            "steps": self.state.step,
            "world_size": self.world.world_size,
            "zero_stage": self.zero_stage,
            "checkpoint": str(checkpoint),
            "base_model": self.config.model.path,
            "skipped_steps": self.state.skipped_steps,
            "dropped_samples": self.state.dropped_samples,
            "accuracy_before": before.get("eval/accuracy"),
            "accuracy_after": after.get("eval/accuracy"),
            "eval_loss_before": before.get("eval/loss"),
            "eval_loss_after": after.get("eval/loss"),
        }
        if self.world.is_main:
            self.run_folder.summary.write_text(json.dumps(summary, indent=1))
            self.tracker.summary(summary)
            plot_history(self.run_folder)
        return summary
