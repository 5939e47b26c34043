"""Margin-weighted DPO really runs inside TRL 1.16's loss: values and gradients.

One in-process DPOTrainer on the tiny random Llama (no DeepSpeed, no Ray). A batch without
weights goes through TRL's own ``_compute_loss`` untouched, so it is the plain-DPO reference.
"""

from __future__ import annotations

import numpy as np
import pytest

from persodpo.train.weighting import margin_weights

torch = pytest.importorskip("torch")


# -- the weight function ---------------------------------------------------------------------------
def test_none_is_all_ones():
    assert margin_weights([0.0, 0.3, 5.0], "none").tolist() == [1.0, 1.0, 1.0]


def test_linear_is_mean_normalised_and_clipped():
    w = margin_weights([0.1, 0.2, 0.3], "linear")
    assert np.allclose(w, [0.5, 1.0, 1.5]) and np.isclose(w.mean(), 1.0)
    w = margin_weights([0.0, 1.0, 100.0], "linear", lo=0.2, hi=2.0)
    assert w.tolist()[0] == 0.2 and w.tolist()[2] == 2.0


def test_each_pair_type_is_normalised_on_its_own_and_keeps_mean_one_after_clipping():
    margins = [1.0, 1.0, 1.0, 0.05, 0.4, 3.0, 9.0]          # format pairs: 1.0; content: z units
    types = ["format"] * 3 + ["content"] * 4
    for mode in ("linear", "sigmoid"):
        w = margin_weights(margins, mode, lo=0.25, hi=2.0, groups=types)
        fmt, content = w[:3], w[3:]
        assert np.allclose(fmt, 1.0)                           # equal margins: equal weights
        assert np.isclose(content.mean(), 1.0, atol=1e-9) and content.min() >= 0.25 and content.max() <= 2.0
        assert np.all(np.diff(content) >= 0)                   # still monotone in the margin
    w = margin_weights(margins, "linear", lo=0.25, hi=2.0, groups=types)
    assert w[-1] == 2.0 and w[3] == 0.25                       # clipped at both ends, mean still 1
    # Without groups the content margins would be scaled by the format ones: not the same weights.
    assert not np.allclose(margin_weights(margins, "linear", lo=0.25, hi=2.0)[3:], w[3:])


def test_sigmoid_spread_is_at_most_two_before_clipping():
    w = margin_weights([0.0, 0.01, 100.0], "sigmoid", scale=1.0, lo=0.01, hi=100.0)
    assert w.max() / w.min() <= 2.0 + 1e-9 and np.isclose(w.mean(), 1.0)


def test_weight_bounds_must_contain_one():
    with pytest.raises(ValueError, match="must contain 1"):
        margin_weights([0.1, 0.2], "linear", lo=1.5, hi=3.0)


def test_sigmoid_is_monotone_and_saturates():
    w = margin_weights([0.0, 0.5, 5.0, 50.0], "sigmoid", scale=0.5)
    assert np.all(np.diff(w) >= 0) and np.isclose(w[2], w[3], rtol=1e-3)


@pytest.mark.parametrize("margins, msg", [([0.1, -0.2], "negative"), ([0.1, float("nan")], "finite"),
                                          ([0.0, 0.0], "every margin is 0")])
def test_bad_margins_are_refused(margins, msg):
    with pytest.raises(ValueError, match=msg):
        margin_weights(margins, "linear")


# -- inside TRL ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig

    from persodpo.models import resolve_model
    from persodpo.train.dpo import weighted_trainer_class
    from persodpo.train.synthetic import easy_pairs

    path = resolve_model("tiny:llama")
    rows = easy_pairs(4, seed=3).select(["prompt", "chosen", "rejected"]).to_pylist()
    args = DPOConfig(output_dir=str(tmp_path_factory.mktemp("dpo")), use_cpu=True, bf16=False, report_to="none",
                     per_device_train_batch_size=4, max_steps=1, save_strategy="no", disable_tqdm=True,
                     gradient_checkpointing=False, beta=0.5)
    t = weighted_trainer_class()(model=path, args=args, train_dataset=Dataset.from_list(rows),
                                 processing_class=AutoTokenizer.from_pretrained(path))
    t.model.train()
    return t


def _loss_and_grads(trainer, rows, weights=None):
    batch = trainer.data_collator(rows)
    if weights is not None:
        batch["pair_weight"] = torch.tensor(weights, dtype=torch.float64)
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = torch.cat([p.grad.flatten().clone() for p in trainer.model.parameters() if p.grad is not None])
    return loss.detach(), grads


def test_weight_one_equals_plain_dpo_exactly(trainer):
    rows = [trainer.train_dataset[i] for i in range(4)]
    plain_loss, plain_grads = _loss_and_grads(trainer, rows)
    w1_loss, w1_grads = _loss_and_grads(trainer, rows, [1.0, 1.0, 1.0, 1.0])
    assert torch.equal(plain_loss, w1_loss)
    assert torch.equal(plain_grads, w1_grads)


def test_weights_scale_each_pairs_loss_and_gradient(trainer):
    rows = [trainer.train_dataset[i] for i in range(4)]
    w = [0.25, 2.0, 1.0, 3.5]
    per_pair = [_loss_and_grads(trainer, [r]) for r in rows]           # plain DPO, one pair at a time
    want_loss = sum(wi * l for wi, (l, _) in zip(w, per_pair)) / 4
    want_grads = sum(wi * g for wi, (_, g) in zip(w, per_pair)) / 4
    plain_loss, plain_grads = _loss_and_grads(trainer, rows)
    got_loss, got_grads = _loss_and_grads(trainer, rows, w)
    assert torch.allclose(got_loss, want_loss, rtol=1e-5, atol=1e-7)
    # float32 sums in another order: differences are ~1e-7 of the largest gradient entry
    assert torch.allclose(got_grads, want_grads, rtol=1e-4, atol=1e-5 * float(want_grads.abs().max()))
    assert not torch.allclose(got_loss, plain_loss, rtol=1e-3)
    assert not torch.allclose(got_grads, plain_grads, rtol=1e-2)


def test_weights_reach_the_loss_through_the_training_loop(tmp_path):
    """The pair_weight column survives TRL's column pruning and the collator: with every weight 2
    the first logged loss is exactly twice the plain one (same seed, same batch)."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig

    from persodpo.models import resolve_model
    from persodpo.train.dpo import weighted_trainer_class

    from persodpo.train.synthetic import easy_pairs

    path = resolve_model("tiny:llama")
    rows = easy_pairs(4, seed=4).select(["prompt", "chosen", "rejected"]).to_pylist()
    losses = []
    for w in (None, 2.0):
        data = [dict(r, pair_weight=w) for r in rows] if w else rows
        args = DPOConfig(output_dir=str(tmp_path / str(w)), use_cpu=True, bf16=False, report_to="none",
                         per_device_train_batch_size=4, max_steps=1, save_strategy="no", disable_tqdm=True,
                         logging_steps=1, gradient_checkpointing=False)
        t = weighted_trainer_class()(model=path, args=args, train_dataset=Dataset.from_list(data),
                                     processing_class=AutoTokenizer.from_pretrained(path))
        t.train()
        losses.append(next(h["loss"] for h in t.state.log_history if "loss" in h))
    assert losses[1] == pytest.approx(2 * losses[0], rel=1e-5)


def test_pad_share_is_logged_and_the_grouped_sampler_reads_trls_columns(trainer):
    """compute_loss records the padded share of its batch (all ranks) for every logged row, and
    the length-grouped sampler gets one length per pair from TRL's tokenized columns."""
    rows = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(rows)
    trainer._metrics["train"].clear()
    trainer.compute_loss(trainer.model, batch)
    mask = batch["attention_mask"]
    assert trainer._metrics["train"]["pad_share"] == [pytest.approx(1 - float(mask.sum()) / mask.numel())]
    assert 0 < trainer._metrics["train"]["pad_share"][0] < 1
    trainer._metrics["train"].clear()

    trainer.group_by_length = True
    try:
        sampler = trainer._get_train_sampler()
    finally:
        del trainer.group_by_length
    want = [len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in rows]
    assert sampler.lengths == want and sorted(sampler) == [0, 1, 2, 3]
