"""blockswap: substitute whole encoder blocks with compact, distilled modules."""

from .compact import CompactBlock, CompactSpec
from .config import Config, load_config
from .errors import BlockswapError
from .export import load, load_model, save
from .measure import Cost, cost, count_macs, count_params, latency
from .substitute import drop_blocks, substitute, substituted_blocks

__all__ = [
    "BlockswapError",
    "CompactBlock",
    "CompactSpec",
    "Config",
    "Cost",
    "cost",
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
