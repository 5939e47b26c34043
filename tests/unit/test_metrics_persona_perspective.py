"""FoCus-fitting persona metrics: second-person hypotheses for c_score, UniEval keeps the latest turns."""

import pytest

from persodpo.score.perspective import hypotheses, to_second_person
from persodpo.score.unieval import fitted_input, unieval_input


@pytest.mark.parametrize("first, second", [
    ("I love iron architecture.", "You love iron architecture."),
    ("I'm interested in castles and my dad was a mason.", "You're interested in castles and your dad was a mason."),
    ("I was born in Ohio, and I would like to visit Rome.", "You were born in Ohio, and you would like to visit Rome."),
    ("I am a teacher.", "You are a teacher."),
    ("Me and my friends have been to Paris.", "You and your friends have been to Paris."),
    ("I've seen it myself; the house is mine.", "You've seen it yourself; the house is yours."),
    ("I'd like to go, I'll go soon.", "You'd like to go, you'll go soon."),
    ("He likes trains.", "He likes trains."),                    # third person: left alone
    ("Mine is the Irish castle.", "Yours is the Irish castle."),
])
def test_first_person_persona_sentences_become_second_person(first, second):
    assert to_second_person(first) == second


def test_speaker_perspective_keeps_the_sentences_and_others_are_refused():
    persona = ["I love dogs.", "My home is in Kyoto."]
    assert hypotheses(persona, "speaker") == persona
    assert hypotheses(persona, "user") == ["You love dogs.", "Your home is in Kyoto."]
    with pytest.raises(ValueError, match="use user or speaker"):
        hypotheses(persona, "third")


def test_c_score_refuses_an_unknown_perspective_naming_the_key():
    from persodpo.errors import ConfigError
    from persodpo.score.config import MetricSpec, ScoreConfig
    from persodpo.score.nli import CScore

    with pytest.raises(ConfigError, match="persona_perspective"):
        CScore(MetricSpec(name="c_score", params={"persona_perspective": "they"}), ScoreConfig())


def test_unieval_drops_the_oldest_turns_when_the_input_is_too_long():
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn{i} " + "w " * 20} for i in range(6)]
    words = lambda s: len(s.split())   # noqa: E731 - a tokenizer stand-in: one token per word
    full = unieval_input("the reply", history)
    fitted = fitted_input("the reply", history, None, words, max_length=70)
    assert words(full) > 70 >= words(fitted)
    assert "turn5" in fitted and "turn4" in fitted and "turn0" not in fitted     # latest kept, oldest gone
    assert fitted_input("the reply", history, None, words, max_length=10_000) == full
    # Even when the last turn alone is too long it is kept (truncation then cuts it).
    assert "turn5" in fitted_input("the reply", history, None, words, max_length=5)
