"""Persona sentences in the second person, for NLI against a reply that addresses the user.

FoCus personas are the **user's** ("I love iron architecture.") and the replies speak to that
user ("You must have loved the bridge"). Used verbatim as NLI hypotheses, the I/you mismatch
reads as a contradiction or a neutral, and entailment rarely fires. ``to_second_person``
rewrites a first-person sentence the way the reply would state it ("You love iron
architecture."); ``persona_perspective: speaker`` keeps the sentence as written (the paper's
setting, where the persona is the replying speaker's).

The rule set is small and closed (tested sentence by sentence): first-person pronouns and the
verbs that agree with "I" (am/was/'m); everything else is left alone (a third-person fact
stays one).
"""

from __future__ import annotations

import re

# Contractions first: "I'm" must not become "You'm".
_RULES: list[tuple[re.Pattern, str]] = [(re.compile(p, re.I), r) for p, r in (
    (r"\bI'm\b", "you're"), (r"\bI am\b", "you are"), (r"\bI was\b", "you were"),
    (r"\bI've\b", "you've"), (r"\bI'd\b", "you'd"), (r"\bI'll\b", "you'll"),
    (r"\bmyself\b", "yourself"), (r"\bmine\b", "yours"), (r"\bmy\b", "your"), (r"\bme\b", "you"),
    (r"\bI\b", "you"),
)]


def to_second_person(sentence: str) -> str:
    out = sentence
    for rx, repl in _RULES:
        out = rx.sub(repl, out)
    # Capitalise the first letter again (rules write lower case; "I" was upper case anywhere).
    stripped = out.lstrip()
    if stripped:
        lead = len(out) - len(stripped)
        out = out[:lead] + stripped[0].upper() + stripped[1:]
    return out


def hypotheses(persona: list[str], perspective: str) -> list[str]:
    if perspective == "speaker":
        return list(persona)
    if perspective != "user":
        raise ValueError(f"persona_perspective {perspective!r}: use user or speaker")
    return [to_second_person(p) for p in persona]
