#!/usr/bin/env bash
# The research runs of issue 8 on SmolLM2-135M (CPU research config): every run is paired per seed with
# the baseline of the same settings (shared through MOPS_HOME/stages), 3 seeds, logged to results/experiments.
set -euo pipefail
cd "$(dirname "$0")/../.."
COMMON="--data dolly --max-length 128 -b 4 --steps 40 --lr 1e-2 --recovery-steps 20
 --recovery-lr 1e-2 --gate-pretrain-steps 200 --gate-pretrain-examples 280 --eval-limit-per-task 10
 --checkpoint-every 20 --seeds 0,1,2 --experiment-log results/experiments"
run() { local name=$1 note=$2; shift 2; mops train $COMMON ${COMPRESS:+--compress $COMPRESS} -o "results/experiments/$name" --note "$note" "$@"; }
COMPRESS=sparsegpt:0.75
run s75-gatelr1e-4 "reference: gate lr 1e-4 (the previous best), everything else default" --gate-lr 1e-4 --routing attention --set gate_input=sequence
run s75-merge "merge routing (SMEAR-style): 7 experts x 70 prompts, each input's 70 slots = gate-weighted mean of the experts; gate lr 1e-4" --gate-lr 1e-4 --prompts-per-expert 70 --set routing=merge --set gate_input=sequence
run s75-merge-gatelr1e-3 "merge routing, gate lr 1e-3" --gate-lr 1e-3 --prompts-per-expert 70 --set routing=merge --set gate_input=sequence
run s75-merge-nopretrain "control: merge routing without gate pretraining (random gate), gate lr 1e-4" --gate-lr 1e-4 --prompts-per-expert 70 --set routing=merge --gate-pretrain-steps 0 --set gate_input=sequence
run s75-merge-lr3e-2 "lr sweep: prompts lr 3e-2 for both baseline and merge MoPs, gate lr 1e-4" --lr 3e-2 --gate-lr 1e-4 --prompts-per-expert 70 --set routing=merge --set gate_input=sequence
run s75-merge-lr1e-1 "lr sweep: prompts lr 1e-1 for both baseline and merge MoPs, gate lr 1e-4" --lr 1e-1 --gate-lr 1e-4 --prompts-per-expert 70 --set routing=merge --set gate_input=sequence
run s75-merge-lr1e-1-prompt "merge routing, lr 1e-1, the gate reads the prompt only (as when generating) instead of the whole sequence" --lr 1e-1 --routing merge --set gate_input=prompt
run s75-merge-lr3e-1 "lr sweep: prompts lr 3e-1 for both baseline and merge MoPs (prompt-only gate input)" --lr 3e-1 --routing merge
COMPRESS=sparsegpt:0.9
run s90-merge-lr1e-1 "merge routing, prompt-only gate input, at SparseGPT 90%, lr 1e-1" --lr 1e-1 --routing merge
COMPRESS=sparsegpt:0.85
run s85-merge-lr1e-1 "merge routing, prompt-only gate input, at SparseGPT 85%, lr 1e-1" --lr 1e-1 --routing merge
COMPRESS=
run dense-merge-lr1e-1 "merge routing, prompt-only gate input, on the uncompressed model, lr 1e-1" --lr 1e-1 --routing merge
COMPRESS=sparsegpt:0.75
run s75-strength-learned "attention routing, gate strength s learned from 0 (starts neutral = baseline), gate lr 1e-3" --gate-lr 1e-3 --set gate_strength=0 --set learn_gate_strength=true --routing attention --set gate_input=sequence
run s75-taskinit "attention routing, experts initialised from their task's examples (baseline gets the same init), gate lr 1e-4" --gate-lr 1e-4 --set prompt_init=task_examples --routing attention --set gate_input=sequence
run s75-smooth0.5 "attention routing, soft pretraining targets (label smoothing 0.5), gate lr 1e-4" --gate-lr 1e-4 --set gate_pretrain_smoothing=0.5 --routing attention --set gate_input=sequence
