"""Persona similarity by sentence embeddings (all-MiniLM-L6-v2 by default).

Sentence-transformers is not a dependency: its MiniLM recipe is mean pooling of the last hidden
states over real tokens, then L2 normalisation, which is a few lines of transformers.

``pooling`` param: ``concat`` (default: cosine of the reply and the whole persona as one text,
like the authors' "Persona Distance"), ``max`` (the best-matching persona sentence) or ``mean``
(average cosine over persona sentences).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from persodpo.score.devices import pick_device
from persodpo.score.metric import Cols, ModelMetric, Result


class Embedder:
    def __init__(self, source: str, device: str = "cpu", max_length: int = 256, batch_size: int = 64,
                 cache_size: int = 20_000):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from persodpo.models import resolve_model

        path = resolve_model(source)
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device, self.max_length, self.batch_size = device, max_length, batch_size
        self.torch = torch
        # Personas repeat for every candidate of a prompt: embed each once per actor.
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def _encode(self, texts: list[str]) -> np.ndarray:
        torch = self.torch
        out = []
        # Batches of similar lengths pad less (a long reply no longer pads a whole batch).
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        texts = [texts[i] for i in order]
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start:start + self.batch_size]
            enc = self.tok(chunk, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items()}
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(mean, p=2, dim=1).cpu().numpy())
        if not out:
            return np.zeros((0, 1), dtype=np.float32)
        emb = np.concatenate(out)
        result = np.empty_like(emb)
        result[order] = emb
        return result

    def encode(self, texts: list[str], *, cache: bool = False) -> np.ndarray:
        """Unit-length embeddings, one row per text (cached by text when ``cache``)."""
        if not cache:
            return self._encode(texts)
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            for t, v in zip(todo, self._encode(todo)):
                self._cache[t] = v
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return np.stack([self._cache[t] for t in texts])


def load_embedder(source: str, num_gpus: float = 0.0, **kw: Any) -> Embedder:
    return Embedder(source, device=pick_device(num_gpus), **kw)


class PersonaSimilarity(ModelMetric):
    name = "persona_similarity"
    family = "embedding"
    default_model = "packaged:all-minilm-l6-v2"   # the real all-MiniLM-L6-v2, shipped in a wheel
    reads = ("text", "persona")
    description = "cosine similarity of reply and persona sentence embeddings"

    def writes(self) -> list[str]:
        return ["persona_similarity"]

    def compute(self, cols: Cols, model: Embedder) -> Result:
        pooling = self.param("pooling", "concat")
        n = len(cols)
        rows, replies, personas = [], [], []
        errors: list[str | None] = [None] * n
        for i, (text, persona) in enumerate(zip(cols["text"], cols["persona"])):
            sentences = [p.strip() for p in (persona or []) if p and p.strip()]
            if text is None or not text.strip():
                errors[i] = "no usable text"
            elif not sentences:
                errors[i] = "the prompt has no persona"
            else:
                rows.append(i)
                replies.append(text)
                personas.append(sentences)
        vals: list[float | None] = [None] * n
        if rows:
            r = model.encode(replies)
            if pooling == "concat":
                p = model.encode([" ".join(s) for s in personas], cache=True)
                sims = np.sum(r * p, axis=1)
            else:
                flat = [s for ss in personas for s in ss]
                pe = model.encode(flat, cache=True)
                sims, k = [], 0
                for j, ss in enumerate(personas):
                    cos = pe[k:k + len(ss)] @ r[j]
                    k += len(ss)
                    sims.append(cos.max() if pooling == "max" else cos.mean())
            for i, v in zip(rows, sims):
                vals[i] = float(v)
        return Result({"persona_similarity": vals}, errors)
