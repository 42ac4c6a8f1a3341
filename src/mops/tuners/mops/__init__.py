"""The Mixture-of-Prompts tuner: `MoPConfig` (settings) and `MoPModel` (base model + adapter)."""

from mops.tuners.mops.config import MoPConfig
from mops.tuners.mops.model import MoPModel

__all__ = ["MoPConfig", "MoPModel"]
