"""`blockswap run`: the recipe of stages (recipe.py), their shared state (state.py) and the stages."""

from .recipe import RECIPE, Stage, run_pipeline

__all__ = ["RECIPE", "Stage", "run_pipeline"]
