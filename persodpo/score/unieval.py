"""UniEval-style coherence: a seq2seq evaluator answers a yes/no question about the reply.

UniEval (Zhong et al., 2022; ``MingZhong/unieval-dialog``, a T5) scores dialogue coherence as
P(Yes) / (P(Yes) + P(No)) for the first decoded token of

    question: Is this a coherent response given the dialogue history? </s> response: R </s>
    dialogue history: H

where H is the turns joined with " \\n " and ending in "\\n\\n" (their input format). The
PersoDPO authors' "Coh-UniEval" column is this score. Any seq2seq model whose tokenizer has
"Yes" and "No" tokens can be plugged in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from persodpo.score.devices import pick_device
from persodpo.score.metric import Cols, ModelMetric, Result

QUESTION = "question: Is this a coherent response given the dialogue history? </s> response: {reply} </s> dialogue history: {history}"


def unieval_input(reply: str, history: list[dict], turns: int | None = None) -> str:
    msgs = list(history)[-turns:] if turns else list(history)
    src = " \n ".join(m["content"] for m in msgs) + " \n\n"
    return QUESTION.format(reply=reply, history=src)


def fitted_input(reply: str, history: list[dict], turns: int | None, n_tokens, max_length: int) -> str:
    """The input with as many of the **latest** turns as fit in ``max_length`` tokens. The
    history comes after the reply and the tokenizer truncates from the right, so an input that
    is too long would lose the latest turns (the ones the reply answers) first: drop the oldest
    turns instead (at least the last turn is kept; if even that is too long, truncation cuts it)."""
    msgs = list(history)[-turns:] if turns else list(history)
    while len(msgs) > 1 and n_tokens(unieval_input(reply, msgs)) > max_length:
        msgs = msgs[1:]
    return unieval_input(reply, msgs)


class YesNoModel:
    def __init__(self, source: str, device: str = "cpu", max_length: int = 512, batch_size: int = 16):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from persodpo.models import resolve_model

        path = resolve_model(source)
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(path).to(device).eval()
        ids = {w: self.tok(w, add_special_tokens=False).input_ids for w in ("Yes", "No")}
        if any(len(v) == 0 or v[0] == self.tok.unk_token_id for v in ids.values()):
            from persodpo.errors import ConfigError

            raise ConfigError(f"{source}: the tokenizer has no 'Yes'/'No' token", key="score.metrics.model")
        self.yes, self.no = ids["Yes"][0], ids["No"][0]
        start = self.model.config.decoder_start_token_id
        self.start = start if start is not None else self.tok.pad_token_id
        self.device, self.max_length, self.batch_size, self.torch = device, max_length, batch_size, torch

    def n_tokens(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=True).input_ids)

    def p_yes(self, inputs: list[str]) -> np.ndarray:
        torch = self.torch
        out = np.zeros(len(inputs))
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))   # similar lengths pad less
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            chunk = [inputs[i] for i in idx]
            enc = self.tok(chunk, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items()}
            dec = torch.full((len(chunk), 1), self.start, dtype=torch.long, device=self.device)
            with torch.inference_mode():
                logits = self.model(**enc, decoder_input_ids=dec).logits[:, 0, :].float()
            probs = torch.softmax(logits, dim=-1)
            yes, no = probs[:, self.yes], probs[:, self.no]
            out[idx] = (yes / (yes + no).clamp(min=1e-12)).cpu().numpy()
        return out


def load_unieval(source: str, num_gpus: float = 0.0, **kw: Any) -> YesNoModel:
    return YesNoModel(source, device=pick_device(num_gpus), **kw)


class CoherenceUniEval(ModelMetric):
    name = "coherence_unieval"
    family = "seq2seq_yes_no"
    default_model = "MingZhong/unieval-dialog"
    reads = ("text", "history")
    description = "UniEval dialogue coherence: P(Yes) of a seq2seq evaluator"

    def writes(self) -> list[str]:
        return ["coherence_unieval"]

    def compute(self, cols: Cols, model: YesNoModel) -> Result:
        turns = self.param("context_turns", None)
        n = len(cols)
        idx, inputs = [], []
        errors: list[str | None] = [None] * n
        for i, (text, history) in enumerate(zip(cols["text"], cols["history"])):
            if text is None or not text.strip():
                errors[i] = "no usable text"
            elif not history:
                errors[i] = "the prompt has no dialogue history"
            else:
                idx.append(i)
                inputs.append(fitted_input(text, history, turns, model.n_tokens, model.max_length))
        vals: list[float | None] = [None] * n
        if idx:
            for i, v in zip(idx, model.p_yes(inputs)):
                vals[i] = float(v)
        return Result({"coherence_unieval": vals}, errors)
