"""Deterministic text metrics: persona coverage and the reference metrics vs the gold reply.

``persona_coverage``: the share of persona sentences the reply uses, where a sentence counts as
used when at least ``min_overlap`` (default 0.5) of its content words (no function words, no
generic persona verbs, plurals folded) occur in the reply. Sentences without content words are
left out of the share.

``reference``: sentence BLEU (sacreBLEU, effective order), chrF++ (sacreBLEU chrF with word
bigrams) and ROUGE-L F1 (rouge-score) against the gold reply, all on a 0..1 scale (sacreBLEU's
0..100 divided by 100).
"""

from __future__ import annotations

from persodpo.score.metric import Cols, DeterministicMetric, Result
from persodpo.score.text import padded, persona_content


def coverage(persona: list[str] | tuple[str, ...], reply: str, min_overlap: float = 0.5) -> float | None:
    return _coverage(persona_content(tuple(persona)), reply, min_overlap)


def _coverage(content, reply: str, min_overlap: float) -> float | None:
    # Plain loops: this runs per candidate and generator expressions cost more than the matching.
    n = used = 0
    r = padded(reply)
    for words in content:
        if not words:
            continue
        n += 1
        hits = 0
        for forms in words:
            for f in forms:
                if f in r:
                    hits += 1
                    break
        if hits >= min_overlap * len(words):
            used += 1
    return used / n if n else None


class PersonaCoverage(DeterministicMetric):
    name = "persona_coverage"
    reads = ("text", "persona")
    description = "share of persona sentences whose content words the reply uses"

    def writes(self) -> list[str]:
        return ["persona_coverage"]

    def compute(self, cols: Cols) -> Result:
        min_overlap = float(self.param("min_overlap", 0.5))
        persona_col = cols.table.column("persona")
        pids = cols.get("prompt_id")
        by_prompt: dict = {}
        vals, errors = [], []
        for i, text in enumerate(cols["text"]):
            if text is None:
                vals.append(None)
                errors.append("no usable text")
                continue
            # The persona is the prompt's: converted once per prompt, not per candidate.
            pid = pids[i]
            content = by_prompt.get(pid) if pid is not None else None
            if content is None:
                content = persona_content(tuple(persona_col[i].as_py() or ()))
                if pid is not None:
                    by_prompt[pid] = content
            v = _coverage(content, text, min_overlap)
            vals.append(v)
            errors.append(None if v is not None else "persona has no content words")
        return Result({"persona_coverage": vals}, errors)


class ReferenceScorer:
    """The three library scorers, built once (building them per call costs as much as scoring)."""

    def __init__(self):
        from rouge_score import rouge_scorer
        from sacrebleu.metrics import BLEU, CHRF

        self.bleu = BLEU(effective_order=True)
        self.chrf = CHRF(word_order=2)
        self.rouge = rouge_scorer.RougeScorer(["rougeL"])

    def score(self, hyp: str, ref: str) -> tuple[float, float, float]:
        return (self.bleu.sentence_score(hyp, [ref]).score / 100.0,
                self.chrf.sentence_score(hyp, [ref]).score / 100.0,
                self.rouge.score(ref, hyp)["rougeL"].fmeasure)


_SCORER: ReferenceScorer | None = None


def reference_scorer() -> ReferenceScorer:
    global _SCORER  # one per worker process: Ray reuses workers across tasks
    if _SCORER is None:
        _SCORER = ReferenceScorer()
    return _SCORER


class ReferenceMetrics(DeterministicMetric):
    name = "reference"
    reads = ("text", "gold")
    description = "sentence BLEU, chrF++ and ROUGE-L F1 against the gold reply (0..1)"

    def writes(self) -> list[str]:
        return ["ref_bleu", "ref_chrf", "ref_rouge_l"]

    def compute(self, cols: Cols) -> Result:
        scorer = reference_scorer()
        out: dict[str, list] = {c: [] for c in self.writes()}
        errors = []
        for text, gold in zip(cols["text"], cols["gold"]):
            if text is None or not text.strip():
                reason = "no usable text"
            elif gold is None or not gold.strip():
                reason = "the prompt has no gold reply"
            else:
                for c, v in zip(out, scorer.score(text, gold)):
                    out[c].append(v)
                errors.append(None)
                continue
            for c in out:
                out[c].append(None)
            errors.append(reason)
        return Result(out, errors)
