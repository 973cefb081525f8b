"""The training loop on DeepSpeed's engine: shards in, checkpoints and metrics out.

Every rank runs the same number of micro-batches per epoch (the stream guarantees equal counts),
learns after each optimizer step whether it was skipped for a non-finite loss or a stop signal
arrived (`trainer.health`), and writes checkpoints together, so no rank is ever left waiting in a
collective.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist

from data_shards.order import samples_per_rank
from data_shards.stream import ShardLoader, ShardStream, StreamConfig
from trainer import ds_config
from trainer.checkpoint import RUN_CONFIG, CheckpointManager, TrainerState, config_hash, save_adapter
from trainer.chat.answers import TemplateError
from trainer.chat.template import use_chat_template
from trainer.families.rules import packing_problem
from trainer.collate import Batch, Collator, build_collator
from trainer.config import TrainConfig
from trainer.conftools import ConfigError, to_dict
from trainer.distributed import WorldInfo, export_env, release_shm_allreduce_buffer
from trainer.evaluation import EvalCollator, dtype_of, evaluate, move
from trainer.health import FiniteAdamW, StepAgreement, count_step
from trainer.jit_ops import check_build_lock
from trainer.model import parameter_groups, prepare_model
from trainer.preemption import Preempted, StopRequest
from trainer.processor import load_processor
from trainer.schedule import build_scheduler
from trainer.tracking import make_tracker

log = logging.getLogger("shardtune")
FAULT_EXIT_CODE = 75


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def init_distributed(world: WorldInfo, timeout_minutes: int = 30) -> torch.device:
    import deepspeed

    export_env(world)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(minutes=timeout_minutes))
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    dist.barrier()  # every rank has mapped its peers' CPU shared-memory buffers: each may unlink its own
    release_shm_allreduce_buffer(world)
    return torch.device("cpu")


def configure_logging(is_main: bool) -> None:
    level = logging.INFO if is_main else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", force=True)
    logging.getLogger("shardtune").setLevel(level)


class Trainer:
    def __init__(self, config: TrainConfig, world: WorldInfo):
        self.config = config
        self.config_dict = to_dict(config, redact=True)
        self.world = world
        self.run_dir = Path(config.train.output_dir)
        self.device = init_distributed(world)
        configure_logging(world.is_main)
        seed_everything(config.train.seed)
        self.model, self.parts = prepare_model(config, self.device)
        self.processor = load_processor(config.model.path)
        self.collator = make_collator(self.processor, self.model, config, world.world_size)
        self.train_loader = self.make_loader(config.data.train, self.collator, shuffle=True)
        self.val_loader = self.make_loader(config.data.val, EvalCollator(self.collator), shuffle=False) if config.data.val else None
        self.total_steps = self.planned_steps()
        self.engine = self.make_engine()
        self.state = TrainerState(config_hash=config_hash(to_dict(config)))
        self.checkpoints = CheckpointManager(self.run_dir, world.rank, config.checkpoint.keep_last,
                                             config.checkpoint.best_metric, config.checkpoint.best_mode)
        self.tracker = None
        self.micro_steps = 0
        self.window = new_window()
        self.pending = new_pending()
        self.last_saved = -1
        self.stop = StopRequest().install()
        self.stop_signal = 0

    def make_loader(self, source: str, collate, shuffle: bool) -> ShardLoader:
        data = self.config.data
        stream_config = StreamConfig(batch_size=self.config.train.micro_batch_size, seed=self.config.train.seed,
                                     shuffle=shuffle, block_shards=data.block_shards, on_corrupt=data.on_corrupt)
        stream = ShardStream(source, index=data.index or None, config=stream_config, rank=self.world.rank,
                             world_size=self.world.world_size)
        return ShardLoader(stream, num_workers=data.num_workers, collate_fn=collate)

    def planned_steps(self) -> int:
        """`train.max_steps`, or the optimizer steps of `train.epochs` whole epochs (equal on every rank)."""
        if self.config.train.max_steps:
            return self.config.train.max_steps
        stream = self.train_loader.stream
        per_rank = samples_per_rank(stream.num_samples, 0, stream.world_size, stream.config.remainder)
        micro_batches = math.ceil(per_rank / stream.config.batch_size)
        return max(1, self.config.train.epochs * micro_batches // self.config.train.grad_accum)

    def make_engine(self):
        import deepspeed

        config = self.config
        hidden = getattr(getattr(self.model.config, "text_config", self.model.config), "hidden_size", 1024)
        resolved = ds_config.resolve(config, self.world.world_size, hidden)
        groups = parameter_groups(self.model, self.parts, config)
        optimizer = make_optimizer(groups, config, resolved)
        opt = config.optimizer
        scheduler = build_scheduler(optimizer, self.total_steps, opt.warmup_steps, opt.schedule, opt.min_lr_ratio)
        engine, _, _, _ = deepspeed.initialize(model=self.model, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=resolved)
        self.zero_stage = resolved["zero_optimization"]["stage"]
        return engine

    def resume(self) -> None:
        directory = self.checkpoints.resolve(self.config.checkpoint.resume)
        if directory is None:
            return
        saved_hash = self.state.config_hash
        self.state = self.checkpoints.load(self.engine, directory)
        if self.state.config_hash != saved_hash:
            log.warning("resuming %s with a changed configuration (hash %s, now %s)", directory,
                        self.state.config_hash, saved_hash)
            self.state.config_hash = saved_hash
        self.train_loader.load_state_dict(self.state.stream)
        log.info("resumed from %s at step %d (epoch %d, position %d)", directory, self.state.step,
                 self.state.epoch, self.state.stream.get("position", 0))

    def fit(self) -> dict[str, Any]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        if self.world.is_main:
            (self.run_dir / RUN_CONFIG).write_text(json.dumps(self.config_dict, indent=1))
        self.tracker = make_tracker(self.world.is_main, self.run_dir, self.config.tracking, self.config_dict,
                                    self.total_steps, fresh=self.state.step == 0)
        try:
            return self.run()
        finally:
            self.tracker.close()

    def run(self) -> dict[str, Any]:
        before = self.run_eval() if self.config.eval.at_start and self.state.step == 0 else {}
        last_batch: Batch | None = None
        self.window = new_window()
        while self.state.step < self.total_steps:
            self.train_loader.set_epoch(self.state.epoch)
            for batch in self.train_loader:
                last_batch = self.micro_step(batch, last_batch)
                if self.state.step >= self.total_steps:
                    break
            else:
                self.state.epoch += 1
        after = self.run_eval()
        checkpoint = self.save(after)
        return self.summary(before, after, checkpoint)

    def micro_step(self, batch: Batch, last_batch: Batch | None) -> Batch:
        self.state.dropped_samples += len(batch.dropped)
        usable = batch if len(batch) else last_batch
        if usable is None:
            raise RuntimeError(f"rank {self.world.rank}: first batch is empty (dropped as longer than "
                               f"model.max_length={self.config.model.max_length}: {batch.dropped})")
        loss = self.engine(**move(usable.inputs, self.engine.device, dtype_of(self.engine.module)), use_cache=False).loss
        if not len(batch):
            loss = loss * 0.0
        loss = self.inject_fault(loss)
        self.accumulate(loss, batch)
        agreement = self.start_agreement() if self.engine.is_gradient_accumulation_boundary() else None
        self.engine.backward(loss)
        self.engine.step()
        if agreement is not None:
            self.end_optimizer_step(agreement)
        return usable

    def inject_fault(self, loss: torch.Tensor) -> torch.Tensor:
        """Testing aid: `train.fault_nan_micro_steps` turns rank 0's losses at those micro-steps into NaN."""
        self.micro_steps += 1
        if self.world.is_main and self.micro_steps in self.config.train.fault_nan_micro_steps:
            return loss * float("nan")
        return loss

    def accumulate(self, loss: torch.Tensor, batch: Batch) -> None:
        """Sums for the optimizer step under way; they join the metrics window only if it is applied."""
        self.pending["losses"].append(loss.detach())
        self.pending["tokens"] += batch.num_tokens
        self.pending["slots"] += batch.num_slots
        self.pending["samples"] += len(batch)

    def start_agreement(self) -> StepAgreement:
        if self.world.is_main and self.state.step + 1 == self.config.train.fault_signal_step:
            os.kill(os.getpid(), signal.SIGUSR2)
        return StepAgreement(self.pending["losses"], self.stop.signum)

    def end_optimizer_step(self, agreement: StepAgreement) -> None:
        nonfinite, self.stop_signal = agreement.result()
        pending, self.pending = self.pending, new_pending()
        if count_step(self.state, self.engine.was_step_applied(), nonfinite, self.config.train.max_bad_steps,
                      self.checkpoints.latest_tag):
            self.commit(pending)
            self.after_optimizer_step()
        else:
            self.handle_stop()

    def commit(self, pending: dict[str, Any]) -> None:
        self.window["loss"] += float(torch.stack(pending["losses"]).sum())
        self.window["micro"] += len(pending["losses"])
        for key in ("tokens", "slots", "samples"):
            self.window[key] += pending[key]

    def after_optimizer_step(self) -> None:
        self.state.step += 1
        self.window["steps"] += 1
        if self.state.step % self.config.train.log_every == 0 or self.state.step == self.total_steps:
            ended = time.perf_counter()
            metrics = self.step_metrics(self.window, ended)
            self.window = new_window(started=ended)
            self.tracker.log(metrics, self.state.step)
        with self.paused():
            self.periodic_eval_and_save()
        self.handle_stop_and_faults()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent here (evaluation, checkpoints) is left out of the training window's step time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.window["paused"] += time.perf_counter() - start

    def periodic_eval_and_save(self) -> None:
        every_eval = self.config.eval.every_steps
        metrics = self.run_eval() if every_eval and self.state.step % every_eval == 0 and self.state.step < self.total_steps else {}
        every_save = self.config.checkpoint.every_steps
        if every_save and self.state.step % every_save == 0 and self.state.step < self.total_steps:
            self.save(metrics)

    def handle_stop_and_faults(self) -> None:
        self.handle_stop()
        if self.state.step == self.config.train.fault_exit_step:
            log.warning("train.fault_exit_step=%d: dying now, as a killed job would", self.state.step)
            logging.shutdown()
            os._exit(FAULT_EXIT_CODE)

    def handle_stop(self) -> None:
        if self.stop_signal:
            if self.last_saved != self.state.step:
                self.save({})
            raise Preempted(self.stop_signal, self.state.step)

    def step_metrics(self, window: dict[str, Any], ended: float) -> dict[str, float]:
        """Means over the optimizer steps since the last metrics line; one all-reduce per line."""
        totals = torch.tensor([window["loss"] / max(1, window["micro"]), window["tokens"], window["samples"],
                               window["slots"]], dtype=torch.float64, device=self.engine.device)
        if dist.is_initialized():
            dist.all_reduce(totals)
        elapsed = ended - window["started"] - window["paused"]
        metrics = {
            "train/loss": float(totals[0]) / self.world.world_size,
            "train/lr": self.engine.get_lr()[0],
            "train/grad_norm": float(self.engine.get_global_grad_norm() or 0.0),
            "train/epoch": self.state.epoch,
            "train/skipped_steps": self.state.skipped_steps,
            "train/dropped_samples": self.state.dropped_samples,
            "perf/step_time_s": elapsed / window["steps"],
            "perf/tokens_per_s": float(totals[1]) / elapsed,
            "perf/samples_per_s": float(totals[2]) / elapsed,
            "perf/nonpad_fraction": float(totals[1] / totals[3]) if totals[3] > 0 else 0.0,
        }
        metrics.update(memory_metrics())
        return metrics

    def run_eval(self) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        self.val_loader.set_epoch(0)
        self.val_loader.stream.position = 0
        synced = self.zero_stage == 3 and self.world.world_size > 1
        metrics = evaluate(self.engine, self.val_loader, self.processor.tokenizer, self.config.eval.max_batches,
                           self.config.eval.max_new_tokens, synced, keep_train_mode=self.config.quant.load_in_4bit)
        self.tracker.log(metrics, self.state.step)
        self.state.metrics = metrics
        return metrics

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
            "eval_loss_after": after.get("eval/loss"),
        }
        if self.world.is_main:
            (self.run_dir / "train_summary.json").write_text(json.dumps(summary, indent=1))
            self.tracker.summary(summary)
        return summary


def make_collator(processor, model, config: TrainConfig, world_size: int = 1) -> Collator:
    """The run's collator. Micro-batches without images carry a blank one (`trainer.blank_image`) with several ranks,
    and under ZeRO-3 on one rank too: there a micro-step that leaves the projector without a gradient corrupts the
    accumulated update (measured: losses off from the fifth step with gradient accumulation 2)."""
    problem = packing_problem(model.config.model_type) if config.data.packing else None
    if problem:
        raise ConfigError([f"data.packing: {problem}"])
    blank = world_size > 1 or ds_config.zero_stage(config) == 3
    source = use_chat_template(processor, config.model.path, config.model.chat_template)
    try:
        return build_collator(processor, model, config.model.max_length, source,
                              packing=config.data.packing, supervise=config.data.supervise, blank_image=blank)
    except TemplateError as error:
        raise ConfigError([f"model.chat_template: {error}"]) from None


def new_window(started: float | None = None) -> dict[str, Any]:
    """Sums over the micro-steps since the last metrics line, for the next one."""
    return {"loss": 0.0, "micro": 0, "steps": 0, "tokens": 0, "slots": 0, "samples": 0, "paused": 0.0,
            "started": time.perf_counter() if started is None else started}


def new_pending() -> dict[str, Any]:
    """The micro-steps of the optimizer step under way."""
    return {"losses": [], "tokens": 0, "slots": 0, "samples": 0}


def make_optimizer(groups: list[dict], config: TrainConfig, resolved: dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW for the `resolved` DeepSpeed config; DeepSpeed's CPU Adam when optimizer state lives on the CPU
    (ZeRO-Offload requires it); `FiniteAdamW` where DeepSpeed passes the gradients on unchecked for NaN/Inf
    (`trainer.health`)."""
    opt = config.optimizer
    kwargs = dict(lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, weight_decay=opt.weight_decay)
    if ds_config.offloads_optimizer(resolved):
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        from deepspeed.ops.op_builder import CPUAdamBuilder

        check_build_lock(CPUAdamBuilder.NAME)
        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
    return (FiniteAdamW if ds_config.passes_gradients_unchecked(resolved) else torch.optim.AdamW)(groups, **kwargs)


def memory_metrics() -> dict[str, float]:
    if torch.cuda.is_available():
        return {"memory/max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30}
    import resource

    return {"memory/max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


