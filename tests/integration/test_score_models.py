"""Model metrics with real architectures offline: the packaged all-MiniLM-L6-v2 for embeddings,
a tiny random BERT NLI classifier for the C-score and NLI coherence, a tiny random T5 for the
UniEval-style yes/no coherence. Random weights test the plumbing against direct computations."""

import json

import numpy as np
import pyarrow as pa
import pytest

from persodpo.models import MINILM, resolve_model
from persodpo.score.config import ScoreConfig
from persodpo.score.metric import Cols
from persodpo.score.nli import label_order
from persodpo.score.registry import build_metrics, load_family

PERSONA = ["I have two dogs.", "I love hiking in the mountains.", "I want to visit Paris."]
HISTORY = [{"role": "user", "content": "Where is the Eiffel Tower?"},
           {"role": "assistant", "content": "It is in Paris, a city you want to visit."},
           {"role": "user", "content": "How tall is it?"}]


def _cols(rows):
    return Cols(pa.Table.from_pylist(rows))


def _metric(name, model, **params):
    return build_metrics(ScoreConfig(metrics=[{"name": name, "model": model, "params": params}]))[0]


@pytest.fixture(scope="module")
def minilm():
    return load_family("embedding", MINILM)


def test_minilm_is_the_sentence_transformers_recipe(minilm):
    mods = json.loads((__import__("pathlib").Path(resolve_model(MINILM)) / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in mods] == ["Transformer", "Pooling", "Normalize"]
    texts = ["My dogs love long walks.", "I adore my puppies.", "The stock market fell sharply today."]
    e = minilm.encode(texts)
    assert e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2
    # Mean pooling ignores padding: a text embeds the same alone and next to a much longer one.
    alone = minilm.encode(["I adore my puppies."])[0]
    padded = minilm.encode(["I adore my puppies.", " ".join(["word"] * 80)])[0]
    assert np.allclose(alone, padded, atol=1e-5)
    assert np.allclose(minilm.encode(texts, cache=True), e, atol=1e-6)


def test_persona_similarity_pooling_modes(minilm):
    rows = [{"text": "Your dogs would love the mountain trails near Paris.", "persona": PERSONA},
            {"text": "Quarterly revenue exceeded analyst expectations.", "persona": PERSONA},
            {"text": None, "persona": PERSONA}, {"text": "Hello", "persona": []}]
    got = {}
    for pooling in ("concat", "max", "mean"):
        r = _metric("persona_similarity", MINILM, pooling=pooling).compute(_cols(rows), minilm)
        got[pooling] = r.columns["persona_similarity"]
        assert got[pooling][0] > got[pooling][1] and got[pooling][2:] == [None, None]
        assert r.errors[2:] == ["no usable text", "the prompt has no persona"]
    reply = minilm.encode([rows[0]["text"]])[0]
    per_sentence = minilm.encode(PERSONA) @ reply
    assert got["max"][0] == pytest.approx(per_sentence.max(), abs=1e-5)
    assert got["mean"][0] == pytest.approx(per_sentence.mean(), abs=1e-5)
    assert got["concat"][0] == pytest.approx(float(minilm.encode([" ".join(PERSONA)])[0] @ reply), abs=1e-5)


def test_nli_labels_are_found_by_name_in_any_order():
    assert label_order({0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}) == [2, 1, 0]
    assert label_order({0: "entailment", 1: "neutral", 2: "contradiction"}) == [0, 1, 2]
    with pytest.raises(ValueError, match="do not name"):
        label_order({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})


@pytest.fixture(scope="module")
def tiny_nli():
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model("tiny:bert-nli")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForSequenceClassification.from_pretrained(path).eval()

    def probs(premise, hypothesis):   # (entail, neutral, contradict): tiny:bert-nli's own label order
        with torch.no_grad():
            return torch.softmax(model(**tok([premise], [hypothesis], return_tensors="pt")).logits, -1)[0].numpy()
    return load_family("nli", "tiny:bert-nli"), probs


def test_c_score_sums_nli_labels_over_persona_sentences(tiny_nli):
    nli, direct = tiny_nli
    rows = [{"text": "My dogs and I hike every weekend.", "persona": PERSONA},
            {"text": "Paris is lovely in the spring.", "persona": PERSONA[:2]},
            {"text": None, "persona": PERSONA}]
    from persodpo.score.perspective import hypotheses

    for premise, perspective in (("reply", "user"), ("persona", "user"), ("reply", "speaker")):
        r = _metric("c_score", "tiny:bert-nli", premise=premise, persona_perspective=perspective).compute(
            _cols(rows), nli)
        for i in (0, 1):
            facts = hypotheses(rows[i]["persona"], perspective)
            pairs = [(rows[i]["text"], p) if premise == "reply" else (p, rows[i]["text"]) for p in facts]
            labels = [int(np.argmax(direct(a, b))) for a, b in pairs]
            assert r.columns["c_score"][i] == labels.count(0) - labels.count(2)
        assert r.columns["c_score"][2] is None and r.errors[2] == "no usable text"
    soft = _metric("c_score", "tiny:bert-nli", mode="expected").compute(_cols(rows[:1]), nli).columns["c_score"][0]
    want = sum(direct(rows[0]["text"], p)[0] - direct(rows[0]["text"], p)[2] for p in hypotheses(PERSONA, "user"))
    assert soft == pytest.approx(want, abs=1e-5)


def test_coherence_nli_uses_the_last_turns(tiny_nli):
    nli, direct = tiny_nli
    rows = [{"text": "It is about 330 metres tall.", "history": HISTORY}, {"text": "Hi", "history": []}]
    r = _metric("coherence_nli", "tiny:bert-nli", context_turns=2).compute(_cols(rows), nli)
    p = direct("Assistant: It is in Paris, a city you want to visit.\nUser: How tall is it?", rows[0]["text"])
    assert r.columns["coherence_nli"][0] == pytest.approx(p[0] - p[2], abs=1e-5)
    assert r.columns["coherence_nli"][1] is None and r.errors[1] == "the prompt has no dialogue history"


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    """A random T5 with a locally trained WordPiece tokenizer that knows "Yes" and "No"."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    out = tmp_path_factory.mktemp("tiny-t5")
    tk = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["Yes No question: Is this a coherent response given the dialogue history? response: dialogue history:",
              *PERSONA, *(m["content"] for m in HISTORY)]
    tk.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"],
                                                             show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tok.save_pretrained(str(out))
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                   decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    T5ForConditionalGeneration(cfg).save_pretrained(str(out))
    return str(out)


def test_unieval_style_coherence_is_p_yes_over_yes_and_no(tiny_t5):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from persodpo.score.unieval import unieval_input

    rows = [{"text": "It is about 330 metres tall.", "history": HISTORY}, {"text": None, "history": HISTORY}]
    r = _metric("coherence_unieval", tiny_t5).compute(_cols(rows), load_family("seq2seq_yes_no", tiny_t5))
    tok, model = AutoTokenizer.from_pretrained(tiny_t5), AutoModelForSeq2SeqLM.from_pretrained(tiny_t5).eval()
    text = unieval_input(rows[0]["text"], HISTORY)
    assert text.startswith("question: Is this a coherent response given the dialogue history? </s> response: It is")
    assert text.endswith("dialogue history: Where is the Eiffel Tower? \n It is in Paris, a city you want to visit. \n How tall is it? \n\n")
    with torch.no_grad():
        logits = model(**tok([text], return_tensors="pt"), decoder_input_ids=torch.tensor([[tok.pad_token_id]])).logits
    p = torch.softmax(logits[0, 0], -1)
    yes, no = p[tok("Yes", add_special_tokens=False).input_ids[0]], p[tok("No", add_special_tokens=False).input_ids[0]]
    assert r.columns["coherence_unieval"][0] == pytest.approx(float(yes / (yes + no)), abs=1e-5)
    assert r.columns["coherence_unieval"][1] is None


def test_a_classifier_without_nli_labels_is_a_config_error(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, AutoTokenizer

    from persodpo.errors import ConfigError

    src = resolve_model("tiny:bert-nli")
    AutoTokenizer.from_pretrained(src).save_pretrained(str(tmp_path))
    BertForSequenceClassification(BertConfig(vocab_size=1100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=32, num_labels=3)).save_pretrained(str(tmp_path))
    with pytest.raises(ConfigError, match="do not name"):
        load_family("nli", str(tmp_path))


def test_reward_model_scores_the_chat_template_like_a_direct_forward_pass():
    """A tiny random LlamaForSequenceClassification (one output, built locally): the metric's
    batched, length-sorted, padded scores equal a forward pass of each conversation alone,
    formatted with the model's own chat template."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model("tiny:llama-reward")
    model = load_family("reward", "tiny:llama-reward")
    replies = ["It is 330 metres tall.", "Paris is lovely in spring, and your dogs would love the walks there.",
               "No idea.", "The tower was built for the 1889 World's Fair; it is about 330 m tall with its antennas."]
    rows = [{"text": t, "history": HISTORY, "persona": PERSONA} for t in replies]
    rows += [{"text": None, "history": HISTORY, "persona": PERSONA}, {"text": "Hi", "history": [], "persona": PERSONA}]
    r = _metric("reward_model", "tiny:llama-reward").compute(_cols(rows), model)
    got = r.columns["reward_model"]
    assert got[4:] == [None, None] and r.errors[4:] == ["no usable text", "the prompt has no dialogue history"]

    tok = AutoTokenizer.from_pretrained(path)
    ref = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    for reply, value in zip(replies, got[:4]):
        chat = [*HISTORY, {"role": "assistant", "content": reply}]
        ids = tok(tok.apply_chat_template(chat, tokenize=False), add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            want = ref(**ids).logits[0, 0].item()
        assert value == pytest.approx(want, abs=1e-5)
    assert len(set(round(v, 6) for v in got[:4])) == 4      # the replies are told apart
    # With the persona as a system message the model sees another chat: other rewards.
    with_persona = _metric("reward_model", "tiny:llama-reward", include_persona=True).compute(_cols(rows[:1]), model)
    assert with_persona.columns["reward_model"][0] != pytest.approx(got[0], abs=1e-6)
    # A conversation longer than max_length keeps its latest tokens (the reply), not its first.
    short = load_family("reward", "tiny:llama-reward", max_length=24)
    chat = [*HISTORY * 10, {"role": "assistant", "content": replies[0]}]
    assert short.encode(chat) == model.encode(chat)[-24:]
    with pytest.raises(Exception, match="output_index 3, but the model has 1 output"):
        _metric("reward_model", "tiny:llama-reward", output_index=3).compute(_cols(rows[:1]), model)
