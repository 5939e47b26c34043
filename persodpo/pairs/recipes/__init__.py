"""The recipe registry: a recipe turns the candidate pool into a selection of pairs.

Adding a recipe is one module with a function ``(pool, recipe_config, pairs_config) ->
RecipeResult``, one entry here, and one config subsection (``persodpo/pairs/config.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import pandas as pd

    from persodpo.pairs.config import PairsConfig


@dataclass
class RecipeResult:
    selection: "pd.DataFrame"            # persodpo.pairs.select.SELECTION_COLUMNS
    scores: "pd.Series"                  # the recipe's score per pool row (NaN: not scored by the recipe)
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    name: str
    run: Callable[["pd.DataFrame", object, "PairsConfig"], RecipeResult]
    section: str                          # attribute of PairsConfig holding this recipe's settings
    template: str | None = None           # a fixed prompt template (the paper recipes), else the candidates'
    uses_format_signal: bool = False      # reads PairsConfig.format_column from the scores

    def config(self, pairs_cfg: "PairsConfig"):
        return getattr(pairs_cfg, self.section)

    def metric_columns(self, pairs_cfg: "PairsConfig") -> tuple[str, ...]:
        return tuple(getattr(self.config(pairs_cfg), "weights", {}) or ())


def _registry() -> dict[str, Recipe]:
    from persodpo.pairs.recipes import paper, persodpo, simple

    return {
        "persodpo": Recipe("persodpo", persodpo.run, "persodpo", uses_format_signal=True),
        "paper-length-prior": Recipe("paper-length-prior", paper.run_length_prior, "paper_length_prior",
                                     template=paper.TEMPLATE),
        "paper-perso": Recipe("paper-perso", paper.run_perso, "paper_perso", template=paper.TEMPLATE),
        "simple": Recipe("simple", simple.run, "simple", uses_format_signal=True),
    }


def get_recipe(name: str) -> Recipe:
    recipes = _registry()
    if name not in recipes:
        from persodpo.errors import ConfigError

        raise ConfigError(f"unknown recipe {name!r}; known: {sorted(recipes)}", key="pairs.recipe")
    return recipes[name]


def recipe_names() -> list[str]:
    return list(_registry())
