"""`MoPModel`: a frozen causal LM + frozen input prompts + gated expert prompts at an intermediate layer.

Layout (method-notes, "prompt slots"): K = E * prompts_per_expert positions are reserved in front of the
tokens from the input on. They hold the input prompts P^1 (or nothing visible, without input prompts); a
forward pre-hook on decoder layer L_int

  1. averages the hidden states entering L_int over slots + real tokens (padding excluded) -> avg_emb (B, d),
  2. computes the gate weights g = softmax(W2 relu(W1 avg_emb)) (B, E) and stores the attention bias,
  3. replaces the slots' hidden states with the trainable expert prompts (K, d).

Positions, rotary embeddings and masks stay as the model computed them. Layers below L_int carry no trainable
tensors, so autograd records nothing there. The gate acts on attention in layers >= L_int (`attention.py`).
Sequences are [slots][tokens][right padding] for training/scoring and [slots][left padding][tokens] for
generation; the slots always sit at positions 0..K-1.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Literal, Sequence

import torch
from torch import nn

from mops.data.tokenization import IGNORE_INDEX
from mops.errors import ConfigError
from mops.models.loading import BaseModel
from mops.tuners.mops.adapter_io import read_adapter, save_adapter
from mops.tuners.mops.attention import SlotState, gated_name
from mops.tuners.mops.config import MoPConfig
from mops.tuners.mops.gate import Gate

Stage = Literal["recovery", "mop"]


class _StopForward(Exception):
    """Raised by the injection hook to end a forward early (gate-only passes)."""


def _passthrough(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """A decoder layer that returns its input (the layers below the injection layer, on cached inputs)."""
    return hidden_states


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of any HF causal LM (via get_decoder(), else the ModuleList of depth L)."""
    depth = model.config.num_hidden_layers
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is not None and isinstance(getattr(decoder, "layers", None), nn.ModuleList):
        return decoder.layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return module
    raise ConfigError(f"cannot find the {depth} decoder layers of {type(model).__name__}")


class MoPModel(nn.Module):
    """Base model + MoPs adapter. Trainable: `input_prompts` (recovery stage only), `expert_prompts`, `gate`."""

    def __init__(self, base: BaseModel, config: MoPConfig) -> None:
        super().__init__()
        self.base = base
        self.config = config.validate_for(base.model.config.num_hidden_layers)
        lm = base.model
        self.lm = lm
        self.layers = decoder_layers(lm)
        hidden = lm.config.hidden_size
        k = config.num_slots
        dtype = torch.float32  # master copies: a bf16 / fp16 base computes in its dtype, prompts train in fp32
        self.input_prompts = nn.Parameter(self._init_prompts("vocab", k, dtype), requires_grad=False)
        self.expert_prompts = nn.Parameter(torch.zeros(config.num_prompts, hidden, dtype=dtype, device=lm.device))
        with torch.random.fork_rng(devices=[]):  # the gate's initial weights are a function of init_seed
            torch.manual_seed(config.init_seed)
            self.gate = Gate(hidden, config.gate_hidden_size, config.num_experts, config.gate_strength,
                             config.learn_gate_strength, config.gate_noise).to(lm.device).eval()
        self.gate.trainable_(config.use_gate)
        self.state = SlotState(k, config.injection_layer, hide_slots_below=config.num_input_prompts == 0)
        self.stage: Stage = "mop"
        self._gate_mask: torch.Tensor | None = None  # (B, K + T) positions averaged for the gate
        self.last_gate_weights: torch.Tensor | None = None  # (B, E) of the last forward, with its graph
        self._skip_injection = False  # set during `forward_cached`: the experts are already in place
        self._route: torch.Tensor | None = None  # (B, E) fixed routing in place of the gate (`routed_by_task`)
        self._original_attn = lm.config._attn_implementation
        lm.set_attn_implementation(gated_name(self._original_attn))
        for layer in self.layers:
            for module in layer.modules():
                if hasattr(module, "layer_idx"):
                    module._mops_state = self.state
        self._hook = self.layers[config.injection_layer].register_forward_pre_hook(self._inject, with_kwargs=True)
        if config.prompt_init != "task_examples":  # that one needs data: the training pipeline sets it
            self.init_expert_prompts()

    def unload(self) -> nn.Module:
        """Detach from the base model (hook, attention state and implementation); returns the plain model."""
        self._hook.remove()
        for layer in self.layers:
            for module in layer.modules():
                if hasattr(module, "_mops_state"):
                    del module._mops_state
        self.lm.set_attn_implementation(self._original_attn)
        return self.lm

    # ---- initialisation -------------------------------------------------------------------------------
    def _init_prompts(self, how: str, k: int, dtype: torch.dtype) -> torch.Tensor:
        """(K, d) prompt values from vocabulary embeddings, random normal, or a text's token embeddings."""
        weight = self.lm.get_input_embeddings().weight
        gen = torch.Generator().manual_seed(self.config.init_seed)
        if how == "random":
            return (torch.randn(k, weight.shape[1], generator=gen) * weight.float().std()).to(weight.device, dtype)
        if how == "text":
            ids = self.base.tokenizer(self.config.prompt_init_text, add_special_tokens=False)["input_ids"]
            ids = (ids * (k // max(1, len(ids)) + 1))[:k]
        else:
            ids = torch.randint(0, min(5000, weight.shape[0]), (k,), generator=gen).tolist()
        return self.embed(torch.tensor(ids, device=weight.device).unsqueeze(0))[0].detach().to(dtype)

    @torch.no_grad()
    def init_expert_prompts(self, examples: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        """Set the expert prompts per `config.prompt_init` (call again after the input prompts changed).

        `examples` (prompt_init='task_examples'): one (input_ids (p, T), attention_mask (p, T)) pair per expert,
        p = prompts_per_expert examples of that expert's task; each prompt becomes the mean hidden state of
        one example's tokens entering the injection layer.
        """
        k = self.config.num_prompts
        if self.config.prompt_init == "input_prompts":
            value = self.slot_states_at_injection()
            value = value.repeat(k // value.shape[0], 1)  # merge routing: every expert starts as P^1's states
        elif self.config.prompt_init == "task_examples":
            if examples is None or len(examples) != self.config.num_experts:
                raise ConfigError(f"prompt_init='task_examples' needs {self.config.num_experts} groups of examples")
            value = torch.cat([self._mean_token_state(ids, mask) for ids, mask in examples]).to(self.expert_prompts.dtype)
            if value.shape[0] != k:
                raise ConfigError(f"prompt_init='task_examples' needs {self.config.prompts_per_expert} examples "
                                  f"per expert, got {value.shape[0]} in all for {k} prompts")
        else:
            value = self._init_prompts(self.config.prompt_init, k, self.expert_prompts.dtype)
        self.expert_prompts.copy_(value)

    def _mean_token_state(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, d) mean over real tokens of the hidden states entering the injection layer."""
        states = self.prefix_states(input_ids, attention_mask)[0].float()
        mask = attention_mask.to(states.dtype).unsqueeze(-1)
        return (states * mask).sum(1) / mask.sum(1)

    @torch.no_grad()
    def slot_states_at_injection(self) -> torch.Tensor:
        """(K, d) hidden states of the input prompts entering the injection layer.

        The slots come first and attention is causal, so these do not depend on the example: starting the
        experts here makes the untrained MoP model (neutral gate) equal the frozen-input-prompt model.
        """
        mask = torch.ones(1, self.config.num_slots, dtype=torch.long, device=self.input_prompts.device)
        return self._states_entering_injection(self.input_prompts.unsqueeze(0).to(self.lm.dtype), mask)[0]

    def _states_entering_injection(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Run only the layers below the injection layer: (B, S, d) embeddings -> hidden states entering it.

        A temporary pre-hook, placed before the injection hook, records the states and ends the forward.
        """
        captured: list[torch.Tensor] = []

        def grab(module, args, kwargs):
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _StopForward

        hook = self.layers[self.config.injection_layer].register_forward_pre_hook(grab, with_kwargs=True, prepend=True)
        try:
            self.lm(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
        except _StopForward:
            pass
        finally:
            hook.remove()
        return captured[0]

    # ---- the forward pass -----------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T, d) with the model's own embedding (incl. any scaling, as in Gemma)."""
        return self.lm.get_input_embeddings()(input_ids)

    def _inject(self, module: nn.Module, args: tuple, kwargs: dict):
        """Pre-hook on layer L_int: gate from the mean hidden state, then experts replace the slots."""
        if self.stage != "mop" or self._skip_injection:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        k = self.config.num_slots
        if hidden.shape[1] <= k:  # a decode step with a KV cache: slots and gate are already in place
            return None
        hidden = self._apply_experts(hidden[:, k:], self._gate_mean(hidden))
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def _gate_mean(self, hidden: torch.Tensor) -> torch.Tensor:
        """avg_emb (B, d): mean of (B, S, d) states entering L_int over the positions of `_gate_mask`."""
        mask = self._gate_mask.to(hidden.dtype)
        mask = nn.functional.pad(mask, (0, hidden.shape[1] - mask.shape[1]))  # tokens generated later: not averaged
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)

    def _apply_experts(self, token_states: torch.Tensor, avg_emb: torch.Tensor) -> torch.Tensor:
        """Set the gate's attention bias from avg_emb (B, d); -> experts + token states (B, K+T, d)."""
        cfg = self.config
        b = token_states.shape[0]
        weights = self._route if self._route is not None else self.gate(avg_emb) if cfg.use_gate else None
        self.last_gate_weights = weights
        if cfg.routing == "merge":  # each input's slots: sum_e w_e * expert e's prompts (the mean without a gate)
            experts = self.expert_prompts.view(cfg.num_experts, cfg.prompts_per_expert, -1).float()
            w = weights if weights is not None else experts.new_full((b, cfg.num_experts), 1 / cfg.num_experts)
            slots = torch.einsum("be,epd->bpd", w, experts).to(token_states.dtype)
        else:
            if weights is not None:
                self.state.slot_bias = self.gate.attention_bias(weights, cfg.gate_mode).repeat_interleave(
                    cfg.prompts_per_expert, dim=-1
                )
            slots = self.expert_prompts.to(token_states.dtype).unsqueeze(0).expand(b, -1, -1)
        return torch.cat([slots, token_states], dim=1)

    def _keep(self, positions: torch.Tensor | None, length: int, device) -> torch.Tensor:
        """Sequence indices (slots included) whose logits to compute: `positions` or every token position."""
        k = self.config.num_slots
        return (torch.arange(length, device=device) if positions is None else positions) + k

    def gate_token_mask(self, attention_mask: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """(B, T) tokens the gate averages: with gate_input='prompt' the prompt only (labels == -100 on real
        tokens: the response, which generation does not have yet, is left out), else every real token."""
        if self.config.gate_input == "prompt" and labels is not None:
            return attention_mask * (labels == IGNORE_INDEX).to(attention_mask.dtype)
        return attention_mask

    def prepare_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, gate_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots + token embeddings (B, K+T, d) and the full attention mask (B, K+T).

        `gate_mask` (B, T): the tokens the gate averages (default: `attention_mask`; see `gate_token_mask`).
        """
        b = input_ids.shape[0]
        k = self.config.num_slots
        slots = self.input_prompts.unsqueeze(0).expand(b, -1, -1)
        embeds = torch.cat([slots.to(self.lm.dtype), self.embed(input_ids)], dim=1)
        ones = torch.ones(b, k, dtype=attention_mask.dtype, device=attention_mask.device)
        full = torch.cat([ones, attention_mask], dim=1)
        # no input prompts: the gate reads the real tokens only
        slots_read = ones if self.config.num_input_prompts else torch.zeros_like(ones)
        self._gate_mask = torch.cat([slots_read, attention_mask if gate_mask is None else gate_mask], dim=1)
        self.state.slot_bias = None
        return embeds, full

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor | None = None,
        gate_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) ids and mask -> logits (B, T, V) at the token positions, or (B, P, V) at `positions` (P,)."""
        embeds, full = self.prepare_inputs(input_ids, attention_mask, gate_mask)
        keep = self._keep(positions, input_ids.shape[1], input_ids.device)
        return self.lm(inputs_embeds=embeds, attention_mask=full, use_cache=False, logits_to_keep=keep).logits

    def prefix_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, gate_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run only the layers below the injection layer.

        Returns the token hidden states entering it (B, T, d) and the gate input avg_emb (B, d).
        """
        embeds, full = self.prepare_inputs(input_ids, attention_mask, gate_mask)
        hidden = self._states_entering_injection(embeds, full)
        return hidden[:, self.config.num_slots :], self._gate_mean(hidden)

    def gate_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, gate_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, d) mean hidden state entering the injection layer; runs only the layers below it."""
        return self.prefix_states(input_ids, attention_mask, gate_mask)[1]

    def forward_cached(
        self, token_states: torch.Tensor, attention_mask: torch.Tensor, avg_emb: torch.Tensor,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`forward` from cached `prefix_states`: only the layers from the injection layer on run.

        token_states: (B, T, d) hidden states entering the injection layer; attention_mask: (B, T);
        avg_emb: (B, d). Returns logits like `forward`. The layers below are made identities for this call
        (the model's own loop, masks and rotary embeddings are untouched), so any architecture works whose
        decoder layers return their hidden states. The identity is one module-level function, so a compiled
        layer sees two `forward`s in all (its own, `_passthrough`) and compiles each once, not once per call.
        """
        b, t = attention_mask.shape
        ones = torch.ones(b, self.config.num_slots, dtype=attention_mask.dtype, device=attention_mask.device)
        self.state.slot_bias = None
        hidden = self._apply_experts(token_states.to(self.lm.dtype), avg_emb)
        keep = self._keep(positions, t, attention_mask.device)
        self._skip_injection = True
        for layer in self.layers[: self.config.injection_layer]:
            layer.forward = _passthrough
        try:
            return self.lm(inputs_embeds=hidden, attention_mask=torch.cat([ones, attention_mask], 1),
                           use_cache=False, logits_to_keep=keep).logits
        finally:
            self._skip_injection = False
            for layer in self.layers[: self.config.injection_layer]:
                del layer.forward

    @contextmanager
    def routed_by_task(self, task_ids: torch.Tensor) -> Iterator[None]:
        """Inside the block, input b goes to expert task_ids[b] alone (one-hot weights in place of the gate): the
        oracle-routing control. task_ids: (B,) task indices, each < num_experts."""
        if int(task_ids.max()) >= self.config.num_experts:
            raise ConfigError(f"routing by task needs an expert per task: task {int(task_ids.max())} but only "
                              f"{self.config.num_experts} experts")
        self._route = nn.functional.one_hot(task_ids, self.config.num_experts).float()
        try:
            yield
        finally:
            self._route = None

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        """Left-padded prompts (B, T) -> new tokens (B, N). The gate is computed from the prompt."""
        embeds, full = self.prepare_inputs(input_ids, attention_mask)
        kwargs.setdefault("pad_token_id", self.base.tokenizer.pad_token_id)
        return self.lm.generate(inputs_embeds=embeds, attention_mask=full, **kwargs)

    # ---- training stages ------------------------------------------------------------------------------
    def set_stage(self, stage: Stage) -> list[nn.Parameter]:
        """recovery: train P^1 as plain input prompt tuning (no injection, no gate); mop: train experts + gate.

        Returns the parameters to optimise.
        """
        self.stage = stage
        self.input_prompts.requires_grad_(stage == "recovery")
        self.expert_prompts.requires_grad_(stage == "mop")
        self.gate.trainable_(stage == "mop" and self.config.use_gate)
        self.state.injection_layer = self.config.injection_layer if stage == "mop" else self.lm.config.num_hidden_layers
        return [p for p in self.parameters() if p.requires_grad]

    def use_gate_(self, on: bool) -> None:
        """Switch between MoPs (experts weighted by the gate) and plain prompt tuning of the same slots (the
        baseline); the model's config says which, so a saved adapter records it."""
        self.config = replace(self.config, use_gate=on)
        self.gate.trainable_(self.stage == "mop" and on)

    def trainable_parameters(self) -> int:
        """Free trainable parameters. Merge routing without a gate (the baseline) uses the experts only through
        their mean, so it is prompt tuning of `num_slots` prompts and counts as such (Adam moves every expert by
        the same step, so the 7 stored sets add no freedom)."""
        count = sum(p.numel() for p in self.parameters() if p.requires_grad)
        if self.config.routing == "merge" and not self.config.use_gate and self.expert_prompts.requires_grad:
            count -= self.expert_prompts.numel() - self.config.num_slots * self.expert_prompts.shape[-1]
        return count

    def mixture_parameters(self) -> int:
        """What MoPs trains in this configuration: every expert prompt and the gate MLP (and a learned strength),
        whether or not the gate is switched on right now; the count peft baselines are matched to."""
        gate = sum(p.numel() for n, p in self.gate.named_parameters() if n != "strength" or self.config.learn_gate_strength)
        return self.expert_prompts.numel() + gate

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Everything the adapter owns: input prompts, expert prompts, gate (no base weights), as fp32 CPU
        copies: a snapshot that later training does not change (`.float().cpu()` alone would alias fp32 CPU
        parameters)."""
        state = {"input_prompts": self.input_prompts, "expert_prompts": self.expert_prompts}
        state.update({f"gate.{k}": v for k, v in self.gate.state_dict().items()})
        return {k: v.detach().to("cpu", torch.float32, copy=True).contiguous() for k, v in state.items()}

    @torch.no_grad()
    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        self.input_prompts.copy_(state["input_prompts"])
        self.expert_prompts.copy_(state["expert_prompts"])
        gate = {k.removeprefix("gate."): v for k, v in state.items() if k.startswith("gate.")}
        gate.setdefault("strength", self.gate.strength.detach())  # adapters saved before the strength existed
        self.gate.load_state_dict(gate)

    # ---- adapters on disk (the files and their checks: adapter_io.py) ---------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """adapter_config.json (settings + base identity) and adapter_model.safetensors. No pickle."""
        return save_adapter(Path(directory), self.adapter_state(), self.config, self.base)

    @classmethod
    def from_pretrained(cls, base: BaseModel, directory: str | Path) -> "MoPModel":
        """Load an adapter; refuses one made for another base model, a damaged one and one whose config
        disagrees with its tensors (see `read_adapter`)."""
        files = read_adapter(Path(directory), base)
        model = cls(base, files.config)
        model.load_adapter_state(files.state)
        return model
