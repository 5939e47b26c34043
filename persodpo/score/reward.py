"""Reward models as a metric: ``reward_model`` scores (dialogue context, reply) with a
sequence-classification reward model, the way its model card does.

The conversation (the prompt's turns, then the reply as the assistant's turn; optionally the
persona as a system message) goes through the model's **own chat template**
(``tokenizer.apply_chat_template``), and the reward is the classifier's output on it (logit
``params.output_index``, default 0: the single reward head of Skywork-Reward-V2-class models).
Production checkpoints: ``Skywork/Skywork-Reward-V2-Llama-3.1-8B`` (the default),
``Skywork/Skywork-Reward-V2-Qwen3-0.6B`` (small), ``internlm/internlm2-7b-reward``; ArmoRM-style
models that need ``trust_remote_code`` are refused rather than run with code from the hub.

Batches are sorted by length (less padding); a conversation longer than ``max_length`` tokens
keeps its **latest** tokens (left truncation: the turns the reply answers and the reply itself).
Rewards are unbounded logits, comparable within one model only: the pairs recipes normalise per
prompt anyway.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from persodpo.score.devices import pick_device
from persodpo.score.metric import Cols, ModelMetric, Result


def conversation(history: list[dict], reply: str, persona: list[str] | None = None) -> list[dict]:
    """The chat the reward model judges: [system persona], the turns, the reply."""
    msgs = [{"role": "system", "content": "Your persona: " + " ".join(persona)}] if persona else []
    msgs += [{"role": m["role"], "content": m["content"]} for m in history]
    return msgs + [{"role": "assistant", "content": reply}]


class RewardModel:
    """A reward model loaded once; ``rewards`` returns one float per conversation."""

    def __init__(self, source: str, device: str = "cpu", max_length: int = 4096, batch_size: int = 8):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from persodpo.errors import ConfigError
        from persodpo.models import resolve_model

        path = resolve_model(source)
        self.tok = AutoTokenizer.from_pretrained(path)
        if not getattr(self.tok, "chat_template", None):
            raise ConfigError(f"{source}: the tokenizer has no chat template; a reward model scores the chat the "
                              "way its card formats it", key="score.metrics.model")
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.tok.truncation_side = "left"   # keep the latest turns and the reply
        self.tok.padding_side = "right"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tok.pad_token_id   # where the classifier finds the last token
        self.source, self.n_outputs = source, int(self.model.config.num_labels)
        self.device, self.max_length, self.batch_size = device, max_length, batch_size
        self.torch = torch

    def encode(self, chat: list[dict]) -> list[int]:
        text = self.tok.apply_chat_template(chat, tokenize=False)
        # The template already wrote the special tokens it wants (BOS included).
        ids = self.tok(text, add_special_tokens=False).input_ids
        return ids[-self.max_length:]

    def rewards(self, chats: list[list[dict]], output_index: int = 0) -> np.ndarray:
        if not 0 <= output_index < self.n_outputs:
            from persodpo.errors import ConfigError

            raise ConfigError(f"{self.source}: output_index {output_index}, but the model has {self.n_outputs} "
                              "output(s)", key="score.metrics.params.output_index")
        torch = self.torch
        encoded = [self.encode(c) for c in chats]
        out = np.zeros(len(chats), dtype=np.float64)
        order = sorted(range(len(chats)), key=lambda i: len(encoded[i]))
        pad = self.tok.pad_token_id
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, :len(encoded[i])] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            out[idx] = logits[:, output_index].float().cpu().numpy()
        return out


def load_reward_model(source: str, num_gpus: float = 0.0, **kw: Any) -> RewardModel:
    return RewardModel(source, device=pick_device(num_gpus), **kw)


class RewardModelScore(ModelMetric):
    name = "reward_model"
    family = "reward"
    default_model = "Skywork/Skywork-Reward-V2-Llama-3.1-8B"
    reads = ("text", "history", "persona")
    description = "a sequence-classification reward model's score of (dialogue context, reply), its own chat template"

    def writes(self) -> list[str]:
        return [self.param("column", "reward_model")]

    def compute(self, cols: Cols, model: RewardModel) -> Result:
        col = self.writes()[0]
        texts, histories = cols["text"], cols["history"]
        personas = cols.get("persona") if self.param("include_persona", False) else [None] * len(cols)
        values: list = [None] * len(cols)
        errors: list = [None] * len(cols)
        todo = []
        for i, (t, h) in enumerate(zip(texts, histories)):
            if not t:
                errors[i] = "no usable text"
            elif not h:
                errors[i] = "the prompt has no dialogue history"
            else:
                todo.append(i)
        if todo:
            r = model.rewards([conversation(histories[i], texts[i], personas[i]) for i in todo],
                              int(self.param("output_index", 0)))
            for i, v in zip(todo, r):
                values[i] = float(v)
        return Result({col: values}, errors)
