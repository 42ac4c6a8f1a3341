"""Stage 2: pretrain the gate alone on instructions only, expert i <- task i (paper, "Pretraining the gating function").

The layers below the injection layer and P^1 are frozen, so each instruction's mean hidden state at L_int is
computed once; the gate MLP then trains on those features for many cheap steps.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from mops.data.tokenization import Encoded
from mops.evaluation.gating import gate_features
from mops.training.config import TrainConfig
from mops.training.loop import Runtime
from mops.tuners.mops.model import MoPModel


def pretrain_gate(
    model: MoPModel, prompts: Sequence[Encoded], cfg: TrainConfig, rt: Runtime, pad_id: int
) -> dict[str, float]:
    """Cross-entropy (label-smoothed by `cfg.gate_pretrain_smoothing`) between the gate's scores and
    expert = task id mod E; returns the final (unsmoothed) CE and accuracy."""
    feats, task_ids = gate_features(model, prompts, cfg.eval_batch_size, pad_id, rt.progress and rt.is_main)
    targets = task_ids % model.config.num_experts
    model.gate.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.gate.parameters(), lr=cfg.gate_pretrain_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    ce = acc = float("nan")
    for step in range(cfg.gate_pretrain_steps):
        idx = torch.randint(0, len(feats), (cfg.gate_pretrain_batch_size,), generator=gen).to(feats.device)
        logits = model.gate.logits(feats[idx])
        loss = F.cross_entropy(logits, targets[idx], label_smoothing=cfg.gate_pretrain_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 50 == 0 or step + 1 == cfg.gate_pretrain_steps:
            with torch.no_grad():
                all_logits = model.gate.logits(feats)
                ce = float(F.cross_entropy(all_logits, targets))
                acc = float((all_logits.argmax(-1) == targets).float().mean())
            rt.logger.log({"stage": "gate_pretrain", "step": step + 1, "ce": ce, "accuracy": acc})
    return {"gate_pretrain_ce": ce, "gate_pretrain_accuracy": acc, "examples": len(feats)}
