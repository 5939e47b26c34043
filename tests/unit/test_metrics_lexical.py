"""Persona coverage and the reference metrics against hand-checked values."""

import math

import pyarrow as pa
import pytest

from persodpo.score.config import ScoreConfig
from persodpo.score.lexical import ReferenceScorer, coverage
from persodpo.score.metric import Cols
from persodpo.score.registry import build_metrics
from persodpo.score.text import content_words
from persodpo.words import word_count

PERSONA = ["I want to learn more about the Royal Navy.", "I have never been on a frigate.",
           "I am not too familiar with the Falkland war.", "I love the country of England.",
           "I wish to travel to Argentina one day."]


def test_content_words_drop_function_words_and_fold_plurals():
    assert content_words("I love the country of England.") == {"country", "england"}
    assert content_words("I like dogs and museums!") == {"dog", "museum"}
    assert word_count("  one two\nthree  ") == 3


def test_coverage_counts_persona_sentences_the_reply_uses():
    # royal+navy (2/2), frigate (1/1) used; falkland/war/familiar 0/3; country/england 1/2 -> used
    # (>= half); travel/argentina 0/2.  3 of 5.
    reply = "The frigate was part of the Royal Navy and was built in England."
    assert coverage(PERSONA, reply) == pytest.approx(3 / 5)
    assert coverage(PERSONA, reply, min_overlap=1.0) == pytest.approx(2 / 5)
    assert coverage(PERSONA, "Hello!") == 0.0
    assert coverage(["I am.", "I do."], "anything") is None


def test_reference_metrics_hand_checked():
    s = ReferenceScorer()
    bleu, chrf, rouge = s.score("the cat sat on the mat", "the cat sat on the mat")
    assert (bleu, chrf, rouge) == pytest.approx((1.0, 1.0, 1.0))
    # All n-gram precisions are 1; brevity penalty exp(1 - 7/6).
    assert s.score("the cat sat on the mat", "the cat sat on the mat today")[0] == pytest.approx(math.exp(-1 / 6), abs=1e-6)
    # LCS "the cat on the mat" = 5 of 6 tokens on both sides: F1 = 5/6.
    assert s.score("the cat is on the mat", "the cat sat on the mat")[2] == pytest.approx(5 / 6)
    assert s.score("xyz", "abc") == pytest.approx((0.0, 0.0, 0.0))


def test_reference_metrics_are_the_library_calls():
    import sacrebleu
    from rouge_score import rouge_scorer

    hyp, ref = "It was built in 1843 near the cliffs of Dover.", "The lighthouse was built in 1843."
    got = ReferenceScorer().score(hyp, ref)
    want = (sacrebleu.sentence_bleu(hyp, [ref]).score / 100, sacrebleu.sentence_chrf(hyp, [ref], word_order=2).score / 100,
            rouge_scorer.RougeScorer(["rougeL"]).score(ref, hyp)["rougeL"].fmeasure)
    assert got == pytest.approx(want)


def test_reference_and_coverage_nulls_carry_reasons():
    rows = [{"text": "the cat", "gold": "the cat", "persona": PERSONA},
            {"text": None, "gold": "the cat", "persona": PERSONA},
            {"text": "the cat", "gold": "", "persona": ["I am."]}]
    metrics = build_metrics(ScoreConfig(metrics=["reference", "persona_coverage"]))
    ref, cov = (m.compute(Cols(pa.Table.from_pylist(rows))) for m in metrics)
    assert ref.columns["ref_rouge_l"] == [pytest.approx(1.0), None, None]
    assert ref.errors == [None, "no usable text", "the prompt has no gold reply"]
    assert cov.columns["persona_coverage"] == [0.0, None, None]
    assert cov.errors == [None, "no usable text", "persona has no content words"]
