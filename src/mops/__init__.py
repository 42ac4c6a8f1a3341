"""mops: Mixture of Prompts (MoPs) for compressed LLM task adaptation.

Dun et al., "Sweeping Heterogeneity with Smart MoPs" (AAAI 2025), as a library and a CLI.
"""

from mops.errors import ConfigError, DataError, ModelLoadError, MopsError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "ModelLoadError", "MopsError", "__version__"]
