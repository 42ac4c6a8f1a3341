"""Helper for test_training: a few MoPs steps under `accelerate launch`; writes losses and the adapter."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mops.data import Example, Tokenizer  # noqa: E402
from mops.models.loading import BaseModel  # noqa: E402
from mops.training import Runtime, TrainConfig, train_steps  # noqa: E402
from mops.tuners.mops.config import MoPConfig  # noqa: E402
from mops.tuners.mops.model import MoPModel  # noqa: E402
from tests.conftest import make_tiny_tokenizer, tiny_model  # noqa: E402


def main(out: Path, grad_accum: int) -> None:
    tok = make_tiny_tokenizer()
    base = BaseModel(tiny_model("llama"), tok, "tiny", "memory")
    model = MoPModel(base, MoPConfig(num_experts=2, prompts_per_expert=2, injection_layer=2, prompt_init="random"))
    examples = [Example("a" if i % 2 else "b", f"Question number {i} about rivers" + " and mills" * (i % 5), "",
                        f"Answer {i}" + " yes" * (i % 3)) for i in range(16)]
    data = Tokenizer(tok, ["a", "b"], 64).encode_all(examples)
    cfg = TrainConfig(steps=4, batch_size=4, grad_accum=grad_accum, checkpoint_every=0)
    rt = Runtime.create(out.parent / "run", device="cpu", progress=False, tensorboard=False)
    groups = [{"params": [model.expert_prompts], "lr": 1e-2}, {"params": list(model.gate.parameters()), "lr": 1e-2}]
    losses = train_steps(model, "mops", groups, data, cfg.steps, cfg, rt, pad_id=0)
    if rt.is_main:
        state = {k: v.tolist() for k, v in model.adapter_state().items() if k in ("expert_prompts", "gate.fc2.bias")}
        out.write_text(json.dumps({"losses": losses, "world": rt.world, **state}))
    rt.accelerator.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
