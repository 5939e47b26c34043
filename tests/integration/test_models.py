"""Model sources that work offline: tiny random models and the packaged SmolLM2-135M-Instruct."""

import pytest

from persodpo.models import MINILM, NLI_LABELS, SMOLLM2, resolve_model


@pytest.mark.parametrize("arch", ["tiny:llama", "tiny:qwen2"])
def test_tiny_causal_lm_generates_with_chat_template(arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(arch)
    assert resolve_model(arch) == path  # cached
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    enc = tok.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 5 or tok.eos_token_id in out[0].tolist()


def test_tiny_nli_classifier_has_three_labels():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model("tiny:bert-nli")
    model = AutoModelForSequenceClassification.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    logits = model(**tok(["I like cats."], ["Cats are nice."], return_tensors="pt")).logits
    assert logits.shape == (1, 3)
    assert tuple(model.config.id2label[i] for i in range(3)) == NLI_LABELS


def test_packaged_minilm_is_found():
    assert resolve_model(MINILM).endswith("model")


@pytest.mark.slow
def test_packaged_smollm2_answers_sensibly():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(SMOLLM2)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert "quantization_config" not in model.config.to_dict()
    enc = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0][enc["input_ids"].shape[1]:])


def test_unknown_sources_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny model"):
        resolve_model("tiny:gpt9")
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model(str(tmp_path))
    assert resolve_model("Qwen/Qwen2-0.5B-Instruct") == "Qwen/Qwen2-0.5B-Instruct"
