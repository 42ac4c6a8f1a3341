"""Compression: settings validation, pruning (exact sparsity and N:M), SparseGPT vs magnitude, LLM.int8(), cache."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mops.cli.app import app
from mops.compression import CompressionConfig, compress_model, load_model, parse_pattern, read_compression_report
from mops.compression.calibration import calibration_dataset
from mops.evaluation.compressed import evaluate_compressed
from mops.compression.pruning import magnitude_prune_, prunable_linears
from mops.compression.stats import nm_violations, sparsity_report
from mops.errors import ConfigError, ModelLoadError
from mops.models import load_base_model
from mops.tuners.mops.config import MoPConfig
from mops.tuners.mops.model import MoPModel
from tests.conftest import save_tiny_model

CALIB = dict(calib_samples=16, calib_length=48)


# --- settings -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, sparsity", [("2:4", 0.5), ("4:8", 0.5), ("3:4", 0.75), ("7:8", 0.875)])
def test_pattern_means_n_pruned_of_m(text: str, sparsity: float) -> None:
    cfg = CompressionConfig(prune="sparsegpt", pattern=text)
    assert cfg.sparsity == sparsity


@pytest.mark.parametrize("kwargs, message", [
    (dict(prune="sparsegpt", pattern="4:4"), "0 < N < M"),
    (dict(prune="magnitude", pattern="5:4"), "0 < N < M"),
    (dict(prune="wanda", pattern="0:4"), "0 < N < M"),
    (dict(prune="sparsegpt", pattern="2-4"), "N:M"),
    (dict(prune="sparsegpt", ratio=1.0), "strictly between 0 and 1"),
    (dict(prune="sparsegpt", ratio=0.0), "strictly between 0 and 1"),
    (dict(prune="magnitude", ratio=-0.2), "strictly between 0 and 1"),
    (dict(prune="sparsegpt", ratio=0.5, pattern="2:4"), "exactly one of"),
    (dict(prune="sparsegpt"), "exactly one of"),
    (dict(prune="none"), "nothing to do"),
    (dict(prune="none", ratio=0.5, int8=True), "need a pruning method"),
    (dict(prune="obs", ratio=0.5), "--prune must be one of"),
])
def test_impossible_settings_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CompressionConfig(**kwargs)


@pytest.mark.parametrize("text", ["sparsegpt:0.85", "wanda:2:4", "magnitude:0.5+int8", "int8", "sparsegpt:7:8+int8"])
def test_short_form_round_trips(text: str) -> None:
    cfg = CompressionConfig.parse(text)
    assert cfg.spec == text
    assert CompressionConfig.parse(cfg.spec) == cfg
    assert "/" not in cfg.key and ":" not in cfg.key


def test_short_form_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="METHOD:RATIO"):
        CompressionConfig.parse("prune:0.5")
    with pytest.raises(ConfigError, match="neither a ratio"):
        CompressionConfig.parse("sparsegpt:lots")


def test_calibration_settings_change_the_key_only_for_calibrated_methods() -> None:
    assert CompressionConfig.parse("sparsegpt:0.5", calib_seed=1).key != CompressionConfig.parse("sparsegpt:0.5").key
    assert CompressionConfig.parse("magnitude:0.5", calib_seed=1).key == CompressionConfig.parse("magnitude:0.5").key


# --- magnitude pruning and the checks -------------------------------------------------------------------------

def test_magnitude_unstructured_is_exact_and_drops_the_smallest() -> None:
    w = torch.randn(48, 64)
    original = w.clone()
    magnitude_prune_(w, 0.85)
    assert int((w == 0).sum()) == int(w.numel() * 0.85)
    kept, dropped = original[w != 0].abs(), original[w == 0].abs()
    assert kept.min() >= dropped.max()
    assert torch.equal(w[w != 0], original[w != 0])  # survivors untouched


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "3:4", "7:8"])
def test_magnitude_nm_prunes_exactly_n_of_every_m(pattern: str) -> None:
    n, m = parse_pattern(pattern)
    w = torch.randn(16, 64)
    magnitude_prune_(w, n / m, pattern)
    zeros_per_group = (w.view(16, 64 // m, m) == 0).sum(-1)
    assert torch.all(zeros_per_group == n)
    assert nm_violations(w, pattern) == 0


def test_nm_check_finds_a_broken_group() -> None:
    w = torch.randn(4, 8)
    magnitude_prune_(w, 0.5, "2:4")
    w[2, 4:8] = torch.tensor([1.0, 2.0, 3.0, 0.0])  # one zero in this group of four
    assert nm_violations(w, "2:4") == 1


# --- llm-compressor SparseGPT / Wanda and the cache ------------------------------------------------------------

def _compress(model_dir: Path, text: str, **kw):
    return compress_model(str(model_dir), CompressionConfig.parse(text, **CALIB), device="cpu", **kw)


@pytest.mark.parametrize("text, target", [("sparsegpt:0.75", 0.75), ("wanda:0.5", 0.5), ("magnitude:0.9", 0.9)])
def test_unstructured_sparsity_of_every_matrix(tiny_model_dir: Path, text: str, target: float) -> None:
    report = _compress(tiny_model_dir, text).report
    matrices = report["sparsity"]["matrices"]
    assert len(matrices) == 4 * 7  # q, k, v, o, gate, up, down in each of 4 layers; never embeddings / head
    for name, entry in matrices.items():
        assert abs(entry["sparsity"] - target) < 0.01, name
    assert abs(report["sparsity"]["overall"] - target) < 0.01
    assert set(report["sparsity"]["per_layer"]) == {"0", "1", "2", "3"}


@pytest.mark.parametrize("arch", ["gemma3", "qwen2"])
def test_sparsegpt_prunes_other_families(tmp_path: Path, tiny_tokenizer, arch: str) -> None:
    """Gemma 3 (sliding-window + full attention layers) and Qwen2 go through llm-compressor's SparseGPT too."""
    report = _compress(save_tiny_model(tmp_path / arch, tiny_tokenizer, arch), "sparsegpt:0.75").report
    matrices = report["sparsity"]["matrices"]
    assert len(matrices) == 4 * 7 and all(abs(e["sparsity"] - 0.75) < 0.01 for e in matrices.values())


@pytest.mark.parametrize("text", ["sparsegpt:2:4", "sparsegpt:7:8", "wanda:3:4", "magnitude:4:8"])
def test_nm_pattern_verified_on_every_pruned_matrix(tiny_model_dir: Path, text: str) -> None:
    report = _compress(tiny_model_dir, text).report
    sp = report["sparsity"]
    assert sp["nm_verified"] is True and sp["nm_violations"] == 0
    n, m = parse_pattern(sp["nm_pattern"])
    assert sp["overall"] >= n / m - 1e-6
    model = load_base_model(str(_compress(tiny_model_dir, text).path), device="cpu").model
    for name, module in prunable_linears(model).items():  # checked again here, independently of the report
        assert nm_violations(module.weight.data, sp["nm_pattern"]) == 0, name


def test_sparsegpt_reconstructs_layers_better_than_magnitude(tiny_model_dir: Path, tiny_tokenizer) -> None:
    """Per pruned matrix: || X W^T - X W'^T || on the calibration inputs X of the ORIGINAL model."""
    original = load_base_model(str(tiny_model_dir), device="cpu").model
    calib = calibration_dataset(tiny_tokenizer, "dolly", 16, 48, seed=0)
    inputs: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, n=n: inputs.setdefault(n, []).append(args[0].reshape(-1, args[0].shape[-1])))
             for n, m in prunable_linears(original).items()]
    with torch.no_grad():
        for row in calib:
            original(input_ids=torch.tensor([row["input_ids"]]))
    for h in hooks:
        h.remove()
    pruned = {method: load_base_model(str(_compress(tiny_model_dir, f"{method}:0.6").path), device="cpu").model
              for method in ("sparsegpt", "magnitude")}
    wins, ratios = 0, []
    for name, module in prunable_linears(original).items():
        x = torch.cat(inputs[name])
        ref = x @ module.weight.T
        err = {m: (x @ prunable_linears(pruned[m])[name].weight.T - ref).norm().item() for m in pruned}
        wins += err["sparsegpt"] < err["magnitude"]
        ratios.append(err["sparsegpt"] / err["magnitude"])
    assert wins >= 0.9 * len(ratios), ratios
    assert sum(ratios) / len(ratios) < 0.9


def test_compressed_folder_reloads_and_is_cached(tiny_model_dir: Path, monkeypatch) -> None:
    first = _compress(tiny_model_dir, "sparsegpt:0.5")
    assert (first.path / "config.json").is_file() and list(first.path.glob("*.safetensors"))
    assert read_compression_report(first.path)["label"] == "sparsegpt-50%"
    assert first.report["bytes"]["disk"] > 0 and first.report["bytes"]["memory"] > 0
    assert first.report["calibration_sequences"] == 16

    import mops.compression.compress as compress_module

    monkeypatch.setattr(compress_module, "prune_model", lambda *a, **k: pytest.fail("compressed twice"))
    again = _compress(tiny_model_dir, "sparsegpt:0.5")
    assert again.path == first.path and again.report == first.report

    base = load_model(str(tiny_model_dir), CompressionConfig.parse("sparsegpt:0.5", **CALIB), device="cpu")
    assert base.compression == "sparsegpt-50%" and base.identity["compression"] == "sparsegpt-50%"
    # the identity an adapter is checked against names the calibration, not only the label
    assert base.name == str(tiny_model_dir)
    assert base.identity["compression_settings"] == CompressionConfig.parse("sparsegpt:0.5", **CALIB).to_dict()
    assert sparsity_report(base.model)["overall"] == pytest.approx(first.report["sparsity"]["overall"])
    # the report names the weights it was made from and the weights it made
    assert base.fingerprint == first.report["fingerprint"] != first.report["base_fingerprint"]
    assert first.report["base_fingerprint"] == load_base_model(str(tiny_model_dir), device="cpu").fingerprint


def test_failed_compression_leaves_no_folder(tiny_model_dir: Path, monkeypatch) -> None:
    import mops.compression.compress as compress_module

    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(compress_module, "prune_model", boom)
    cfg = CompressionConfig.parse("magnitude:0.5")
    with pytest.raises(RuntimeError):
        compress_model(str(tiny_model_dir), cfg, device="cpu")
    target = compress_module.compressed_path(str(tiny_model_dir), cfg)
    assert not target.exists() and not list(target.parent.glob(".*"))


# --- LLM.int8() -------------------------------------------------------------------------------------------------

def test_int8_is_close_to_fp32_and_smaller(tiny_model_dir: Path, tiny_tokenizer) -> None:
    compressed = _compress(tiny_model_dir, "int8")
    fp32 = load_base_model(str(tiny_model_dir), device="cpu")
    int8 = load_base_model(str(compressed.path), device="cpu")
    assert type(int8.model.model.layers[0].self_attn.q_proj).__name__ == "Linear8bitLt"
    assert int8.model.model.layers[0].self_attn.q_proj.weight.dtype == torch.int8
    ids = torch.tensor([tiny_tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]])
    with torch.no_grad():
        a, b = fp32.model(input_ids=ids).logits, int8.model(input_ids=ids).logits
    assert ((a - b).norm() / a.norm()).item() < 0.05
    assert compressed.report["bytes"]["memory"] < fp32.model.get_memory_footprint()


def test_int8_after_pruning_keeps_the_zeros_and_reuses_the_pruned_model(tiny_model_dir: Path, monkeypatch) -> None:
    pruned = _compress(tiny_model_dir, "magnitude:2:4").report
    import mops.compression.compress as compress_module

    monkeypatch.setattr(compress_module, "prune_model", lambda *a, **k: pytest.fail("pruned twice"))
    report = _compress(tiny_model_dir, "magnitude:2:4+int8").report
    assert report["seconds"]["prune"] == pruned["seconds"]["prune"] and report["seconds"]["int8"] > 0
    assert report["sparsity"]["nm_verified"] is True
    assert report["label"] == "magnitude-2:4+int8"


def test_mops_trains_through_int8_layers_without_warnings(tiny_model_dir: Path, tiny_tokenizer, caplog) -> None:
    base = load_model(str(tiny_model_dir), CompressionConfig.parse("int8"), device="cpu")
    mop = MoPModel(base, MoPConfig(num_experts=2, prompts_per_expert=2, injection_layer=2, tasks=["a", "b"]))
    params = mop.set_stage("mop")
    ids = torch.tensor([tiny_tokenizer("Summarise the text below in one line.")["input_ids"]] * 2)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # the cast warning used to print on every call
            logits = mop(ids, torch.ones_like(ids))
            logits.float().pow(2).mean().backward()
    assert mop.expert_prompts.grad is not None and mop.expert_prompts.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert not [r for r in caplog.records if r.name.startswith("bitsandbytes")]


# --- evaluation, CLI --------------------------------------------------------------------------------------------

def test_ppl_before_and_after_are_stored_once(tiny_model_dir: Path) -> None:
    compressed = _compress(tiny_model_dir, "magnitude:0.9")
    ppl = evaluate_compressed(compressed, "dolly", limit_per_task=2, max_length=48, device="cpu")
    before, after = ppl["before"]["overall"]["ppl"], ppl["after"]["overall"]["ppl"]
    assert before > 1 and after > 1 and before != after
    assert ppl["after"]["examples"] == 14
    stored = read_compression_report(compressed.path)["ppl"]
    assert list(stored) == ["dolly:test:2-per-task:len48"]


def test_cli_compress_writes_report_and_rejects_bad_specs(tiny_model_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "report.json"
    res = runner.invoke(app, ["compress", "-m", str(tiny_model_dir), "--prune", "wanda", "--pattern", "2:4",
                              "--calib-samples", "8", "--calib-length", "32", "--eval-limit-per-task", "1",
                              "--max-length", "32", "--device", "cpu", "--json", "-o", str(out)])
    assert res.exit_code == 0, res.output
    payload = json.loads(out.read_text())
    assert payload["sparsity"]["nm_verified"] is True and payload["eval"]["after"]["examples"] == 7
    assert json.loads(res.stdout)["label"] == "wanda-2:4"  # stdout is pure JSON (no library logs)

    for args, message in ((["--prune", "sparsegpt", "--pattern", "4:4"], "0 < N < M"),
                          (["--prune", "magnitude", "--ratio", "1.5"], "strictly between 0 and 1")):
        res = runner.invoke(app, ["compress", "-m", str(tiny_model_dir), *args])
        assert res.exit_code != 0 and isinstance(res.exception, ConfigError)
        assert message in str(res.exception)


def test_cli_sweep_writes_markdown_table(tiny_model_dir: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["compress-sweep", "-m", str(tiny_model_dir), "--settings",
                                   "magnitude:0.5,magnitude:2:4+int8", "--eval-limit-per-task", "1",
                                   "--max-length", "32", "--device", "cpu", "-o", str(tmp_path / "sweep")])
    assert res.exit_code == 0, res.output
    table = (tmp_path / "sweep" / "table.md").read_text()
    assert "| magnitude-50% |" in table and "| magnitude-2:4+int8 |" in table and "Uncompressed PPL" in table
    results = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert [r["label"] for r in results] == ["magnitude-50%", "magnitude-2:4+int8"]


def test_an_adapter_knows_the_calibration_of_its_compressed_base(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Two SparseGPT bases differing only in the calibration sample: an adapter of one is refused on the other,
    and `load_base_for` rebuilds the one it was trained on."""
    from mops.cli.common import load_base_for

    first = load_model(str(tiny_model_dir), CompressionConfig.parse("sparsegpt:0.5", **CALIB), device="cpu")
    other = load_model(str(tiny_model_dir), CompressionConfig.parse("sparsegpt:0.5", **CALIB, calib_seed=1),
                       device="cpu")
    assert first.compression == other.compression  # the same label ...
    assert first.fingerprint != other.fingerprint  # ... but other weights
    adapter = MoPModel(first, MoPConfig(num_experts=2, prompts_per_expert=2)).save_pretrained(tmp_path / "adapter")
    with pytest.raises(ModelLoadError, match="compression_settings"):
        MoPModel.from_pretrained(other, adapter)
    rebuilt = load_base_for(str(tiny_model_dir), None, adapter, device="cpu")
    assert rebuilt.fingerprint == first.fingerprint and rebuilt.identity == first.identity
    MoPModel.from_pretrained(rebuilt, adapter)
    # --compress with the adapter: its calibration is kept; another pruning is refused
    assert load_base_for(str(tiny_model_dir), "sparsegpt:0.5", adapter, device="cpu").fingerprint == first.fingerprint
    with pytest.raises(ConfigError, match="was trained on"):
        load_base_for(str(tiny_model_dir), "sparsegpt:0.6", adapter, device="cpu")
