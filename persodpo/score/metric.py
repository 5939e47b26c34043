"""What a metric is: the columns it reads and writes, its kind, and a pure function over a batch.

Kinds decide how the stage runs a metric on Ray Data:
  deterministic  plain ``map_batches`` tasks (all deterministic metrics fused into one pass)
  model          a class-based actor pool that loads the model once (GPU on clusters); metrics
                 naming the same model share the pool
  judge          LLM judges through litellm async actor pools (persodpo.score.judges)

A metric never raises for a bad row: it returns None for that row and a reason, which ends up in
``score_errors`` as {column: reason}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

if TYPE_CHECKING:
    from persodpo.score.config import MetricSpec, ScoreConfig

DETERMINISTIC, MODEL, JUDGE = "deterministic", "model", "judge"


class Cols:
    """Lazy Python-list view of a batch's columns (``to_pylist`` once per column)."""

    def __init__(self, table: pa.Table):
        self.table = table
        self._cache: dict[str, list] = {}

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, name: str) -> list:
        if name not in self._cache:
            self._cache[name] = self.table.column(name).to_pylist()
        return self._cache[name]

    def get(self, name: str, default: Any = None) -> list:
        if name not in self.table.column_names:
            return [default] * self.table.num_rows
        return self[name]


@dataclass
class Result:
    """Values per written column (float or None) and, per row, why they are None (or None).
    Columns and errors are Python lists or Arrow arrays (for vectorised metrics)."""

    columns: dict[str, Any]
    errors: Any = field(default_factory=list)

    @classmethod
    def empty(cls, names: list[str], n: int) -> "Result":
        return cls({c: [None] * n for c in names}, [None] * n)


def error_column(metric_name: str) -> str:
    """The private column a metric's per-row reasons travel in until the final step."""
    return f"_err_{metric_name}"


class Metric:
    name: ClassVar[str]
    kind: ClassVar[str]
    reads: ClassVar[tuple[str, ...]]
    description: ClassVar[str] = ""

    def __init__(self, spec: "MetricSpec", cfg: "ScoreConfig"):
        self.spec, self.cfg = spec, cfg
        self.params = dict(spec.params)

    def writes(self) -> list[str]:
        raise NotImplementedError

    def param(self, key: str, default: Any) -> Any:
        return self.params.get(key, default)


class DeterministicMetric(Metric):
    kind = DETERMINISTIC

    def compute(self, cols: Cols) -> Result:
        raise NotImplementedError


class ModelMetric(Metric):
    """A metric computed with a model. ``family`` names the loader (persodpo.score.models)."""

    kind = MODEL
    family: ClassVar[str]
    default_model: ClassVar[str]

    @property
    def model(self) -> str:
        return self.spec.model or self.default_model

    def pool_key(self) -> tuple:
        s = self.spec
        conc = tuple(s.concurrency) if isinstance(s.concurrency, (tuple, list)) else s.concurrency
        return (self.family, self.model, s.num_cpus, s.num_gpus, conc, s.batch_size)

    def compute(self, cols: Cols, model: Any) -> Result:
        raise NotImplementedError
