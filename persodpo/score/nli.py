"""NLI-based metrics: persona consistency (C-score) and NLI coherence, sharing one NLI model.

``c_score`` (Madotto et al., 2019): for each persona sentence p_j, NLI(reply, p_j) is +1
(entailment), 0 (neutral) or -1 (contradiction); C = sum over j. The authors of PersoDPO ran
their classifier once on the concatenated persona; scoring per sentence keeps one contradicted
fact from being averaged away. ``params``: ``premise`` = ``reply`` (default: the reply is the
premise, the persona fact the hypothesis, as in Dialogue NLI) or ``persona``; ``mode`` =
``argmax`` (default, the paper's definition) or ``expected`` (p_entail - p_contradict, smoother);
``persona_perspective`` = ``user`` (default: FoCus personas are the user's and replies say "you",
so "I love X." becomes "You love X.", persodpo.score.perspective) or ``speaker`` (verbatim, the
paper's setting).

``coherence_nli`` (Dziri et al., 2019 style): premise = the last ``context_turns`` turns of the
dialogue (default 2), hypothesis = the reply; score = p_entail - p_contradict (``score`` param:
``entail_minus_contradict`` | ``not_contradict`` | ``entail``), in [-1, 1].

Any 3-way NLI sequence classifier works; its ``id2label`` must name entailment, neutral and
contradiction (any case, prefixes allowed), which is checked at load time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from persodpo.score.devices import pick_device
from persodpo.score.metric import Cols, ModelMetric, Result
from persodpo.score.text import render_history

ENTAIL, NEUTRAL, CONTRA = 0, 1, 2   # column order of NliModel.probs


def label_order(id2label: dict) -> list[int]:
    """Model output indices of (entailment, neutral, contradiction); ValueError if not all found."""
    found: dict[str, int] = {}
    for idx, label in id2label.items():
        low = str(label).lower()
        for key in ("entail", "neutral", "contradict"):
            if low.startswith(key) or key in low:
                found[key] = int(idx)
    missing = [k for k in ("entail", "neutral", "contradict") if k not in found]
    if missing:
        raise ValueError(f"NLI model labels {dict(id2label)} do not name {missing} "
                         "(need entailment/neutral/contradiction in config.id2label)")
    return [found["entail"], found["neutral"], found["contradict"]]


class NliModel:
    """A 3-way NLI classifier loaded once; ``probs`` returns (entail, neutral, contradict) rows."""

    def __init__(self, source: str, device: str = "cpu", max_length: int = 256, batch_size: int = 64):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from persodpo.models import resolve_model

        path = resolve_model(source)
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        try:
            self.order = label_order(self.model.config.id2label)
        except ValueError as exc:
            from persodpo.errors import ConfigError

            raise ConfigError(f"{source}: {exc}", key="score.metrics.model") from None
        self.device, self.max_length, self.batch_size = device, max_length, batch_size
        self.torch = torch

    def probs(self, premises: list[str], hypotheses: list[str]) -> np.ndarray:
        out = np.zeros((len(premises), 3), dtype=np.float64)
        torch = self.torch
        # Batches of similar lengths pad less.
        order = sorted(range(len(premises)), key=lambda i: len(premises[i]) + len(hypotheses[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            p = [premises[i] for i in idx]
            h = [hypotheses[i] for i in idx]
            enc = self.tok(p, h, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
            with torch.inference_mode():
                logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits.float()
            pr = torch.softmax(logits, dim=-1).cpu().numpy()
            out[idx] = pr[:, self.order]
        return out


def load_nli(source: str, num_gpus: float = 0.0, **kw: Any) -> NliModel:
    return NliModel(source, device=pick_device(num_gpus), **kw)


def c_score_from_probs(probs: np.ndarray, mode: str = "argmax") -> float:
    """Sum over persona sentences of +1 entail / 0 neutral / -1 contradict (or the expectation)."""
    if mode == "expected":
        return float(np.sum(probs[:, ENTAIL] - probs[:, CONTRA]))
    labels = np.argmax(probs, axis=1)
    return float(np.sum(labels == ENTAIL) - np.sum(labels == CONTRA))


class CScore(ModelMetric):
    name = "c_score"
    family = "nli"
    default_model = "cross-encoder/nli-deberta-v3-base"
    reads = ("text", "persona")
    description = "persona consistency: NLI per persona sentence vs the reply, summed (Madotto et al.)"

    def __init__(self, spec, cfg):
        super().__init__(spec, cfg)
        self.perspective = self.param("persona_perspective", "user")
        if self.perspective not in ("user", "speaker"):
            from persodpo.errors import ConfigError

            raise ConfigError(f"persona_perspective {self.perspective!r}: use user or speaker",
                              key="score.metrics.c_score.params.persona_perspective")

    def writes(self) -> list[str]:
        return ["c_score"]

    def compute(self, cols: Cols, model: NliModel) -> Result:
        from persodpo.score.perspective import hypotheses

        mode = self.param("mode", "argmax")
        reply_first = self.param("premise", "reply") == "reply"
        n = len(cols)
        prem, hyp, owner = [], [], []
        errors: list[str | None] = [None] * n
        for i, (text, persona) in enumerate(zip(cols["text"], cols["persona"])):
            sentences = hypotheses([p for p in (persona or []) if p and p.strip()], self.perspective)
            if text is None or not text.strip():
                errors[i] = "no usable text"
            elif not sentences:
                errors[i] = "the prompt has no persona"
            else:
                for p in sentences:
                    prem.append(text if reply_first else p)
                    hyp.append(p if reply_first else text)
                    owner.append(i)
        vals: list[float | None] = [None] * n
        if prem:
            probs = model.probs(prem, hyp)
            owner_arr = np.asarray(owner)
            for i in sorted(set(owner)):
                vals[i] = c_score_from_probs(probs[owner_arr == i], mode)
        return Result({"c_score": vals}, errors)


class CoherenceNli(ModelMetric):
    name = "coherence_nli"
    family = "nli"
    default_model = CScore.default_model   # the same NLI model: one actor pool for both
    reads = ("text", "history")
    description = "coherence as NLI of the reply given the last turns of the dialogue"

    def writes(self) -> list[str]:
        return ["coherence_nli"]

    def compute(self, cols: Cols, model: NliModel) -> Result:
        turns = int(self.param("context_turns", 2))
        how = self.param("score", "entail_minus_contradict")
        n = len(cols)
        idx, prem, hyp = [], [], []
        errors: list[str | None] = [None] * n
        for i, (text, history) in enumerate(zip(cols["text"], cols["history"])):
            if text is None or not text.strip():
                errors[i] = "no usable text"
            elif not history:
                errors[i] = "the prompt has no dialogue history"
            else:
                idx.append(i)
                prem.append(render_history(history, turns))
                hyp.append(text)
        vals: list[float | None] = [None] * n
        if idx:
            pr = model.probs(prem, hyp)
            if how == "not_contradict":
                s = 1.0 - pr[:, CONTRA]
            elif how == "entail":
                s = pr[:, ENTAIL]
            else:
                s = pr[:, ENTAIL] - pr[:, CONTRA]
            for i, v in zip(idx, s):
                vals[i] = float(v)
        return Result({"coherence_nli": vals}, errors)
