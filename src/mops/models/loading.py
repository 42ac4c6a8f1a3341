"""Load a frozen base LM and its tokenizer by short name, local folder, local GGUF file or hub id.

Packaged GGUF models are dequantized once (~17 s for SmolLM2) into a safetensors folder under
`MOPS_HOME/models/<name>`, then loaded from there (~2 s). The conversion writes to a temporary
folder and renames it into place, so concurrent first loads never leave a half-written cache.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from importlib import metadata
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from mops.errors import ConfigError, ModelLoadError
from mops.models.fingerprint import folder_fingerprint, weights_digest
from mops.models.registry import DEFAULT_MODEL, PACKAGED_MODELS
from mops.models.report import compression_settings, read_compression_report
from mops.paths import atomic_folder, cache_dir, mops_home
from mops.progress import console


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
SOURCE_FILE = "mops_source.json"


@dataclass
class BaseModel:
    """A loaded frozen base model: `model` is in eval mode with every parameter frozen."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str  # what the user asked for (short name, path or hub id)
    path: str  # the folder the weights were read from (or the hub id)
    compression: str | None = None  # e.g. "sparsegpt-85%+int8", from the folder's compression report
    compression_settings: dict | None = None  # its full CompressionConfig, calibration (data, samples, seed) included
    fingerprint: str | None = None  # SHA-256 of the weights read (models.fingerprint); None for an uncached hub id

    @property
    def identity(self) -> dict:
        """What an adapter must match: name, architecture, depth and width."""
        cfg = self.model.config
        return {
            "base_model": self.name,
            "architecture": (cfg.architectures or [type(self.model).__name__])[0],
            "model_type": cfg.model_type,
            "num_hidden_layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size,
            "compression": self.compression,
            "compression_settings": self.compression_settings,
        }

    @property
    def provenance(self) -> dict:
        """What results record about the base: identity, where it was read from, weight fingerprint, dtype."""
        return {**self.identity, "path": self.path, "fingerprint": self.fingerprint,
                "dtype": str(self.model.dtype).removeprefix("torch.")}


def cublas_workspace_for_determinism() -> None:
    """Set CUBLAS_WORKSPACE_CONFIG (unless the user did) before the first cuBLAS call: without it
    `torch.use_deterministic_algorithms(True)` raises on CUDA, and cuBLAS reads it only when it starts."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` -> CUDA when available, else CPU; refuses a device this torch or machine cannot use. Choosing
    CUDA prepares cuBLAS for deterministic runs (`cublas_workspace_for_determinism`)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "no visible GPU"
            raise ConfigError(f"--device {device}: this torch ({torch.__version__}) has {build}; use --device cpu "
                              "or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
        cublas_workspace_for_determinism()
    elif dev.type != "cpu":
        raise ConfigError(f"--device {device!r}: mops runs on cpu or cuda")
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 matmuls natively: GPUs, and CPUs with AVX512-BF16 or AMX. Elsewhere (e.g.
    AVX2-only CPUs) oneDNN emulates them, about 70x slower than fp32 (576 x 1536 matmul, measured on an EPYC)."""
    return device.type == "cuda" or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def fast_dtype(device: str = "auto") -> str:
    """The cheaper compute dtype on `device`: bfloat16 where it is native, else float32."""
    return "bfloat16" if native_bf16(resolve_device() if device == "auto" else torch.device(device)) else "float32"


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` -> fp32 on CPU, bf16 on GPU. A half dtype on a CPU that emulates it is slow: say so."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not a dtype: use one of auto, {', '.join(DTYPES)}")
    native = {"bfloat16": native_bf16, "float16": lambda d: bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())}
    if device.type == "cpu" and dtype in native and not native[dtype](device):
        console.print(f"[yellow]warning: --dtype {dtype}: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no "
                      f"native {dtype} matmul and emulates it, far slower than float32; use --dtype float32 here")
    return DTYPES[dtype]


# bitsandbytes logs a warning on EVERY int8 matmul with float32 inputs ("inputs will be cast ... to
# float16"), and one at import on CPUs without the optional `kernels` package (4-bit only).
_NOISY_LOGGERS = ("bitsandbytes.autograd._functions", "bitsandbytes.backends.cpu.ops")


def silence_bitsandbytes() -> None:
    """Keep bitsandbytes' per-call and import-time warnings off the console (errors still show)."""
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Loading, converting and saving log and warn per tensor; keep the console readable (errors still show)."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logger.setLevel(level)
            hf_logging.enable_progress_bar()


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """Dequantize a GGUF file into a safetensors model folder at `target` (atomic; safe to race)."""
    if (target / SOURCE_FILE).is_file():
        return target
    with atomic_folder(target, SOURCE_FILE) as tmp, quiet_transformers():
        try:
            model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        except Exception as err:  # the GGUF reader raises many types for a damaged file
            raise ModelLoadError(
                f"could not read GGUF file {gguf_path} (corrupt or truncated?): {type(err).__name__}: {err}. "
                "Reinstall the package that ships it (see `mops models`)."
            ) from err
        # A GGUF-loaded model is flagged as quantized and save_pretrained refuses; it is plain float now.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        source = {"gguf": str(gguf_path), "bytes": gguf_path.stat().st_size,
                  "fingerprint": weights_digest(tmp),
                  "versions": {"transformers": transformers.__version__, "gguf": metadata.version("gguf")}}
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2))
    return target


def resolve_model_path(name_or_path: str) -> str:
    """Turn a short name, GGUF file or folder into something `from_pretrained` reads (folder or hub id)."""
    if name_or_path in PACKAGED_MODELS:
        spec = PACKAGED_MODELS[name_or_path]
        target = cache_dir("models") / spec.name
        if not (target / SOURCE_FILE).is_file():
            with tempfile.TemporaryDirectory(dir=cache_dir("tmp")) as work:
                convert_gguf(spec.locate_gguf(Path(work)), target)
        return str(target)
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        stat = path.stat()
        return str(convert_gguf(path.resolve(), cache_dir("models") / f"{path.stem}-{stat.st_size}"))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a Hugging Face model folder: config.json is missing")
        return str(path)
    if "/" not in name_or_path or name_or_path.startswith((".", "/", "~")):
        known = ", ".join(PACKAGED_MODELS)
        raise ModelLoadError(
            f"unknown model '{name_or_path}': use one of {known}, a local model folder, a .gguf file, "
            "or a Hugging Face hub id (org/name)"
        )
    return name_or_path  # a hub id


def load_base_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: str = "auto",
    device: str = "auto",
    attn_implementation: str = "sdpa",
    name: str | None = None,
) -> BaseModel:
    """Load a causal LM frozen and in eval mode, plus its tokenizer (pad token = EOS if it has none).

    A compressed folder (`mops.compression`) carries a compression report: its label and settings are recorded
    on the `BaseModel`; LLM.int8() folders load as int8 (`bitsandbytes` layers) on `device`. `name`: what to
    record as the model's name (default `name_or_path`; a compressed base keeps its uncompressed name).
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)  # setting errors before any loading (not reported as damage)
    source = resolve_model_path(name_or_path)
    is_cache = source.startswith(str(mops_home()))
    report = read_compression_report(Path(source))
    placement: dict = {}
    if report.get("config", {}).get("int8"):
        silence_bitsandbytes()
        placement = {"device_map": {"": str(dev)}}  # int8 layers are placed at load, never moved with .to()
    with quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=torch_dtype, attn_implementation=attn_implementation, **placement
            )
        except OSError as err:
            if Path(source).exists():
                raise _damaged(source, err, is_cache) from err
            raise ModelLoadError(
                f"could not load '{name_or_path}' from the Hugging Face Hub (no network or unknown id?): {err}. "
                f"Offline, use a packaged model ({', '.join(PACKAGED_MODELS)}) or a local folder."
            ) from err
        except Exception as err:  # safetensors / json errors from a damaged folder
            raise _damaged(source, err, is_cache) from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if type(getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)).__name__ == "BPE":
        tokenizer.clean_up_tokenization_spaces = False  # transformers ignores it for BPE, with a warning per run
    model.requires_grad_(False)
    model.eval()
    if not placement:
        model = model.to(dev)
    return BaseModel(model=model, tokenizer=tokenizer, name=name or name_or_path, path=source,
                     compression=report.get("label"), compression_settings=compression_settings(report),
                     fingerprint=source_fingerprint(source))


def source_fingerprint(source: str) -> str | None:
    """The weights' fingerprint of a folder, or of a hub id's locally cached snapshot (None if not cached)."""
    folder = Path(source)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(source, local_files_only=True))
        except Exception:  # not in the local hub cache: nothing to fingerprint without downloading again
            return None
    return folder_fingerprint(folder)


def _damaged(source: str, err: Exception, is_cache: bool) -> ModelLoadError:
    hint = f" Delete {source} and it will be rebuilt." if is_cache else ""
    return ModelLoadError(f"could not read the model folder {source} (damaged?): {type(err).__name__}: {err}.{hint}")
