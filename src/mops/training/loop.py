"""The optimisation loop shared by every stage: deterministic batches, exact multi-process, checkpoints.

On an accelerator the loop reads nothing back from the device between steps: the losses and a finiteness flag
stay on the device and are read every `sync_interval` steps (and before every evaluation and checkpoint),
which is also when steps are logged; on the CPU, where reading costs nothing, every step.

Multi-process (``accelerate launch``): every process derives the same global batch from (seed, step) and
takes its share; the loss is the summed NLL over the *global* number of target tokens, and gradients are
summed across processes, so N processes compute exactly the 1-process step. Why not DDP: DDP fixes its set
of trainable tensors when it wraps the model, while our stages switch them (P^1, then experts + gate);
the gradients are a few kilobytes, so one all-reduce per tensor costs nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from accelerate import Accelerator

from mops.data.tokenization import IGNORE_INDEX, Encoded
from mops.errors import MopsError
from mops.evaluation.perplexity import device_batch, token_nll
from mops.models.loading import cublas_workspace_for_determinism
from mops.models.logits import LogitsFn
from mops.progress import console, progress_bar
from mops.training.checkpoint import latest_checkpoint, resume_checkpoint, save_checkpoint
from mops.training.config import TrainConfig
from mops.training.logger import RunLogger
from mops.training.sampler import shard, step_indices
from mops.training.state import load_trainable_state, trainable_state
from mops.tuners.mops.gate import balance_loss
from mops.tuners.mops.model import MoPModel
from mops.tuners.mops.prefix_cache import mop_logits_fn


class TrainingError(MopsError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


@dataclass
class Runtime:
    """Where and how a run executes: accelerate state, logger, progress bars."""

    accelerator: Accelerator
    logger: RunLogger
    progress: bool = True

    @classmethod
    def create(cls, run_dir: Path, device: str = "auto", progress: bool = True, tensorboard: bool = True) -> "Runtime":
        acc = Accelerator(cpu=device == "cpu")
        return cls(acc, RunLogger(run_dir, enabled=acc.is_main_process, tensorboard=tensorboard), progress)

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


def target_tokens(enc: Encoded) -> int:
    """Positions that carry a loss (labels shifted by one)."""
    return sum(label != IGNORE_INDEX for label in enc.labels[1:])


def sync_interval(device: torch.device) -> int:
    """Steps between reads from the device: 1 on the CPU (a read is free there), 16 on an accelerator, where
    each read stalls the host until the queued kernels finish."""
    return 1 if device.type == "cpu" else 16


@dataclass
class _Pending:
    """A step whose loss (device scalar) and parameter-finiteness flag (device bool) are not read yet."""

    step: int
    loss: torch.Tensor
    finite: torch.Tensor
    tokens: int


def _diverged(stage: str, what: str, checkpoint_dir: Path | None) -> None:
    last = latest_checkpoint(checkpoint_dir) if checkpoint_dir else None
    raise TrainingError(
        f"{stage}: {what}. Last good checkpoint: {last or 'none'}. Try a lower learning rate or --max-grad-norm."
    )


def train_steps(
    model: MoPModel,
    stage: str,
    param_groups: list[dict],
    data: Sequence[Encoded],
    steps: int,
    cfg: TrainConfig,
    rt: Runtime,
    pad_id: int,
    checkpoint_dir: Path | None = None,
    on_eval: Callable[[int], dict] | None = None,
    logits_fn: LogitsFn | None = None,
    evals: list[dict] | None = None,
    regulariser: Callable[[], torch.Tensor] | None = None,
) -> list[float]:
    """Run `steps` optimiser steps (resuming from the latest checkpoint in `checkpoint_dir`); returns losses.

    After the steps `cfg.evaluates_after`, `on_eval(step)` returns an evaluation record, appended to `evals`; the records
    are saved in each checkpoint and restored with it, so a resumed run keeps the evaluations made before.

    `logits_fn` computes the batch's logits (default: the full forward of `model`; see `mop_logits_fn` for
    the prefix cache); the LM head runs only where the loss is. `regulariser()` (a scalar) is added to every
    step's loss (federated clients: FedProx's proximal term); the logged loss is the NLL alone.
    """
    logits_fn = logits_fn or mop_logits_fn(model)
    if cfg.deterministic and rt.accelerator.device.type == "cuda":
        cublas_workspace_for_determinism()  # a model placed on the GPU without `resolve_device`
    torch.use_deterministic_algorithms(cfg.deterministic)
    params = [p for group in param_groups for p in group["params"]]
    balance = cfg.gate_balance if model.stage == "mop" and model.config.use_gate else 0.0
    optimizer = torch.optim.AdamW(param_groups, weight_decay=0.0)
    start, losses = 0, []
    resume = resume_checkpoint(checkpoint_dir, optimizer, lambda text: console.print(f"[yellow]{text}")) \
        if checkpoint_dir else None
    if resume is not None:
        adapter, state = resume
        load_trainable_state(model, adapter)
        start, losses = state["step"], state["losses"]
        if evals is not None:
            evals[:] = state.get("evals", [])
    rt.logger.forget_after(stage, start)  # steps after the checkpoint run (and are logged) again
    device = rt.accelerator.device
    every = sync_interval(device)
    lengths = [len(e.input_ids) for e in data] if cfg.group_by_length else None
    targets = [target_tokens(e) for e in data]
    gate_mode = model.gate.training
    pending: list[_Pending] = []
    with progress_bar(steps, stage, enabled=rt.progress and rt.is_main) as advance:
        advance(start)
        model.gate.train(model.stage == "mop")  # gate noise (if any) only while training
        since = time.perf_counter()

        def read_back() -> None:
            """Read the pending steps' losses and flags (one device sync), stop at the first bad one, log them."""
            nonlocal since
            if not pending:
                return
            values = torch.stack([p.loss for p in pending]).tolist()
            finite = torch.stack([p.finite for p in pending]).tolist()
            seconds = (time.perf_counter() - since) / len(pending)
            for item, value, ok in zip(pending, values, finite):
                if not math.isfinite(value):
                    _diverged(stage, f"loss is {value} at step {item.step}", checkpoint_dir)
                if not ok:
                    _diverged(stage, f"parameters became non-finite in the update of step {item.step}", checkpoint_dir)
                losses.append(value)
                rt.logger.log({"stage": stage, "step": item.step, "loss": value, "seconds": seconds,
                               "tokens_per_s": item.tokens / seconds})
                advance(loss=value, tok_s=round(item.tokens / seconds))
            pending.clear()
            since = time.perf_counter()

        for step in range(start, steps):
            indices = step_indices(len(data), cfg.batch_size, step, cfg.seed, lengths)
            total = max(1, sum(targets[i] for i in indices))
            local = torch.zeros((), dtype=torch.float64, device=device)
            for micro in shard(indices, rt.rank, rt.world, cfg.grad_accum):
                batch = device_batch([data[i] for i in micro], micro, pad_id, device)
                nll, _ = token_nll(logits_fn(batch, batch["positions"]), batch["labels"], batch["positions"])
                loss = nll.sum() / total
                local += loss.detach()
                if balance:
                    loss = loss + balance * balance_loss(model.last_gate_weights) * len(micro) / len(indices)
                if regulariser is not None:
                    loss = loss + regulariser() * len(micro) / len(indices)
                loss.backward()
            if rt.world > 1:
                local = rt.accelerator.reduce(local, "sum")
                for p in params:
                    if p.grad is not None:
                        p.grad = rt.accelerator.reduce(p.grad, "sum")
            if every == 1 and not math.isfinite(value := float(local)):
                _diverged(stage, f"loss is {value} at step {step + 1}; stopped before updating", checkpoint_dir)
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            finite = torch.stack([torch.isfinite(p).all() for p in params]).all()
            pending.append(_Pending(step + 1, local, finite, sum(len(data[i].input_ids) for i in indices)))
            evaluates = bool(on_eval) and cfg.evaluates_after(step + 1) and step + 1 < steps
            saves = bool(checkpoint_dir) and bool(cfg.checkpoint_every) and (step + 1) % cfg.checkpoint_every == 0
            if (step + 1) % every == 0 or evaluates or saves or step + 1 == steps:
                read_back()  # before an evaluation or a checkpoint: neither may see a diverged state
            if evaluates:
                model.gate.eval()
                record = on_eval(step + 1)
                if evals is not None:
                    evals.append(record)
                model.gate.train()
            if saves and rt.is_main:
                save_checkpoint(checkpoint_dir, step + 1, trainable_state(model), optimizer,
                                {"stage": stage, "losses": losses, "evals": evals or []})
            if evaluates or saves:
                since = time.perf_counter()  # evaluations and checkpoints are not training steps' time
    model.gate.train(gate_mode)
    return losses
