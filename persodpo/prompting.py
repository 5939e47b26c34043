"""Versioned prompt templates: a prompt row -> chat messages (TRL conversational form).

Shared by generation (what the generators see), pairs (the DPO ``prompt`` column) and evaluation,
so a pair's prompt is exactly the prompt its replies answered. The template name is recorded in
each candidate row and the manifest.

- ``persobench-json-v1``: the PersoDPO/PersoBench authors' instruction, word for word (one user
  message: personas, "User1:/User2:" context, task bullets, JSON output format with a word limit).
- ``persobench-json-knowledge-v1``: the same plus the grounding knowledge sentence(s).
- ``plain-v1``: persona (and knowledge) in a system message, the real multi-turn history, a plain
  text reply within the word limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

Messages = list[dict]


@dataclass(frozen=True)
class Template:
    name: str
    response_format: str               # "json" | "plain": which parser reads the output
    build: Callable[[dict, int], Messages]
    # Tokens the format itself costs on top of the reply (JSON wrapper, quotes, escapes).
    format_overhead_tokens: int = 0


def _context_lines(history: list[dict]) -> str:
    # The authors' context format: "User1:" is the human, "User2:" the machine.
    return "\n".join(f"{'User1' if m['role'] == 'user' else 'User2'}: {m['content']}" for m in history)


def _personas(row: dict) -> str:
    return " ".join(p.strip() for p in row["persona"])


def _persobench(row: dict, word_limit: int, *, knowledge: bool) -> Messages:
    prompt = (
        "I will provide you with a conversation context and the personas of the participants, "
        "that can be annotated with speaker information.\n"
        "As a participant in this conversation, your task is to generate a personalized response, "
        "considering the conversation context and personas.\n\n"
        "Participant Personas:\n"
        f"{_personas(row)}\n\n"
    )
    if knowledge and row.get("knowledge"):
        prompt += "Knowledge:\n" + "\n".join(row["knowledge"]) + "\n\n"
    prompt += (
        "Conversation Context:\n"
        f"{_context_lines(row['history'])}\n\n"
        "Task Instruction:\n"
        "* Provide an unannotated response.\n"
        "* If only one persona is available, personalize the response accordingly.\n"
        "* If the conversation context is a single query, respond appropriately to the query.\n"
        "\nOutput Format: only give a JSON of the following format:\n"
        "{\n"
        f'  "response": "provide the personalized natural language response here (in {word_limit} words or less)."\n'
        "}\n"
    )
    return [{"role": "user", "content": prompt}]


def _plain(row: dict, word_limit: int) -> Messages:
    system = ("You are the assistant in a conversation about a landmark. The user's persona:\n"
              + "\n".join(f"- {p}" for p in row["persona"]))
    if row.get("knowledge"):
        system += "\nFacts you may use:\n" + "\n".join(f"- {k}" for k in row["knowledge"])
    system += (f"\nReply to the user's last message in {word_limit} words or less, personalized to the "
               "persona. Write only the reply, with no speaker name.")
    return [{"role": "system", "content": system}, *[dict(m) for m in row["history"]]]


TEMPLATES: dict[str, Template] = {
    "persobench-json-v1": Template("persobench-json-v1", "json", lambda r, w: _persobench(r, w, knowledge=False), 12),
    "persobench-json-knowledge-v1": Template("persobench-json-knowledge-v1", "json",
                                             lambda r, w: _persobench(r, w, knowledge=True), 12),
    "plain-v1": Template("plain-v1", "plain", _plain, 0),
}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown prompt template {name!r}; known: {sorted(TEMPLATES)}") from None


def build_messages(row: dict, template: str = "persobench-json-v1", word_limit: int = 110) -> Messages:
    """Chat messages for one prompt row (needs ``persona``, ``history``, optionally ``knowledge``)."""
    return get_template(template).build(row, word_limit)


def max_new_tokens(template: str, word_limit: int, tokens_per_word: float = 2.0, slack: int = 16) -> int:
    """A token budget that a reply within the word limit never hits.

    English averages ~1.3 tokens per word with modern BPE tokenizers; 2.0 covers names, numbers
    and small vocabularies, and the format overhead covers the JSON wrapper. (The authors capped
    110-word replies at 110 tokens, which truncated many of them.)
    """
    t = get_template(template)
    return int(word_limit * tokens_per_word) + t.format_overhead_tokens + slack
