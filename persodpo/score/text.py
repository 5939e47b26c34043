"""Small text helpers shared by the metrics: content words, dialogue rendering (word counts:
:mod:`persodpo.words`)."""

from __future__ import annotations

import re
from functools import lru_cache

_WORD = re.compile(r"[a-z0-9]+")

# Function words, plus the verbs every FoCus persona sentence uses ("I like/love/want/wish to
# visit/see ..."): matching them says nothing about whether a reply uses the persona.
STOPWORDS = frozenset("""
a about above after again against all also am an and any are aren as at be because been before being below
between both but by can cannot could couldn did didn do does doesn doing don down during each even ever every
few for from further get gets got had hadn has hasn have haven having he her here hers herself him himself his
how i if in into is isn it its itself just let like likes liked love loves loved me more most much must my
myself never no nor not now of off on once one only or other ought our ours ourselves out over own really same
shall she should shouldn so some such than that the their theirs them themselves then there these they this
those through to too under until up upon us very was wasn we were weren what when where which while who whom
why will with won would wouldn you your yours yourself yourselves want wants wanted wish wishes wished would
day days someday time times go going went visit visited visiting see seen saw learn learned know knew known
think thought enjoy enjoyed interested interest place places thing things lot lots many well still yet always
""".split())


def _stem(w: str) -> str:
    # Crude plural folding: "dogs" ~ "dog", "museums" ~ "museum"; leaves "class", "bus", "this" alone.
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


# Bytes that are not [a-z0-9] become spaces: a reply becomes " tok tok ... " in one C call, and
# "is this word in the reply" is a substring test for " word " (same tokens as _WORD.findall).
_SEP = bytes(b if (48 <= b <= 57 or 97 <= b <= 122) else 32 for b in range(256))


def padded(text: str) -> bytes:
    return b" " + text.lower().encode("utf-8").translate(_SEP) + b" "


def tokens(text: str) -> set[str]:
    """Lower-cased alphanumeric tokens ("England's" -> "england", "s")."""
    return set(_WORD.findall(text.lower()))


def words(text: str) -> list[str]:
    return [_stem(w) for w in _WORD.findall(text.lower())]


def content_words(text: str) -> frozenset[str]:
    return frozenset(w for w in words(text) if len(w) >= 3 and w not in STOPWORDS)


def surface_forms(stem: str) -> tuple[bytes, ...]:
    """The tokens that fold to ``stem`` (itself, and its plural when _stem would strip it), as
    space-padded bytes, so a reply is matched without stemming every word of it."""
    forms = (stem, stem + "s") if _stem(stem + "s") == stem else (stem,)
    return tuple(b" " + f.encode("utf-8") + b" " for f in forms)


@lru_cache(maxsize=8192)
def persona_content(persona: tuple[str, ...]) -> tuple[tuple[tuple[bytes, ...], ...], ...]:
    """Per persona sentence, its content words as surface forms. Every candidate of a prompt
    shares the persona: computed once per prompt, not per candidate."""
    return tuple(tuple(surface_forms(w) for w in sorted(content_words(p))) for p in persona)


def render_history(history: list[dict] | None, turns: int | None = None, *, user: str = "User",
                   assistant: str = "Assistant") -> str:
    msgs = list(history or [])
    if turns:
        msgs = msgs[-turns:]
    return "\n".join(f"{user if m['role'] == 'user' else assistant}: {m['content']}" for m in msgs)
