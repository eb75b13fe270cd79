"""The one error type a user can cause. The CLI prints its message as one line and exits with 2.

Each kind says where the problem is; the message itself says what was wrong and what to do.
"""

from __future__ import annotations


class BlockswapError(Exception):
    """A user-caused problem: bad input, a missing asset, an unsatisfiable request."""


class UsageError(BlockswapError):
    """A command-line argument is malformed."""


class ConfigError(BlockswapError):
    """A configuration value is invalid."""


class DataError(BlockswapError):
    """Data a user pointed at cannot be used."""


class ModelLoadError(BlockswapError):
    """A model or tokenizer could not be found or loaded."""


class UnsupportedModelError(BlockswapError):
    """The model is not an encoder classifier blockswap knows how to substitute."""


class RunError(BlockswapError):
    """A run cannot start or continue as asked (run folder, teacher, resume)."""


class StopRuleUnsatisfied(BlockswapError):
    """No step of the curve satisfies the stop rule (the curve is still written)."""


class TrainingDiverged(BlockswapError):
    """A training or distillation loss became NaN or infinite."""


class MissingDependency(BlockswapError):
    """An optional dependency (an extra) is not installed."""


class DeployError(BlockswapError):
    """An export could not be made or does not match the PyTorch model (parity)."""
