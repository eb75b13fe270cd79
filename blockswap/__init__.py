"""blockswap: substitute whole encoder blocks with compact, distilled modules."""

from .compact import CompactBlock
from .config import CompactConfig, Config, load_config
from .export import load, load_model, save
from .measure import count_macs, count_params, latency
from .substitute import drop_blocks, substitute, substituted_blocks

__all__ = [
    "CompactBlock",
    "CompactConfig",
    "Config",
    "count_macs",
    "count_params",
    "drop_blocks",
    "latency",
    "load",
    "load_config",
    "load_model",
    "save",
    "substitute",
    "substituted_blocks",
]
__version__ = "0.1.0"
