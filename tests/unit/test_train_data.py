"""Checking the pairs table and turning it into TRL rows; the model card."""

from __future__ import annotations

import pyarrow as pa
import pytest

from persodpo.contracts import PAIRS, conform
from persodpo.errors import InputError
from persodpo.train.data import WEIGHT, check_pairs, training_rows
from persodpo.train.synthetic import CHOSEN, easy_pairs
from persodpo.train.weighting import margin_weights


def _with(table: pa.Table, row: int, **changes) -> pa.Table:
    rows = table.to_pylist()
    rows[row].update(changes)
    return pa.Table.from_pylist(rows, schema=table.schema)


def test_synthetic_pairs_follow_the_contract():
    t = easy_pairs(8)
    assert conform(t, PAIRS).schema.equals(PAIRS)
    assert len(set(t.column("pair_id").to_pylist())) == 8
    assert all(c[0]["content"] == CHOSEN for c in t.column("chosen").to_pylist())
    assert min(t.column("margin").to_pylist()) > 0


def test_check_counts_types_recipes_and_margins():
    t = easy_pairs(8)
    s = check_pairs(t, source="p", need_margin=True, pair_types=["content"]).as_dict()
    assert s["rows"] == 8 and s["used"] == 6 and s["by_type"] == {"content": 6}
    assert s["recipes"] == {"synthetic-easy": 8} and 0 < s["margin_min"] <= s["margin_mean"] <= s["margin_max"]


@pytest.mark.parametrize("change, field, msg", [
    (dict(prompt=[]), "prompt", "non-empty"),
    (dict(chosen=[{"role": "bot", "content": "hi"}]), "chosen", "role 'bot'"),
    (dict(rejected=[{"role": "assistant", "content": "  "}]), "rejected", "no text"),
    (dict(prompt=[{"role": "assistant", "content": "hi"}]), "prompt", "last message must have role 'user'"),
    (dict(pair_type="style"), "pair_type", "expected 'content' or 'format'"),
    (dict(margin=-0.2), "margin", "scored higher"),
    (dict(margin=None), "margin", "finite margin"),
])
def test_bad_rows_name_file_record_and_field(change, field, msg):
    t = easy_pairs(4).append_column("path", pa.array(["bucket/pairs/part-00001.parquet"] * 4))
    bad = _with(t, 2, **change)
    with pytest.raises(InputError, match=msg) as err:
        check_pairs(bad, source="s3://bucket/pairs", need_margin=True, pair_types=["content", "format"])
    e = err.value
    assert (e.file, e.record, e.field) == ("bucket/pairs/part-00001.parquet", t.column("pair_id")[2].as_py(), field)


def test_missing_margin_is_fine_without_weighting_and_missing_columns_are_not():
    t = _with(easy_pairs(4), 1, margin=None)
    assert check_pairs(t, source="p", need_margin=False, pair_types=["content", "format"]).used == 4
    with pytest.raises(InputError, match="missing column") as err:
        check_pairs(t.drop_columns(["rejected"]), source="p", need_margin=False, pair_types=["content"])
    assert err.value.field == "rejected"


def test_training_rows_are_ordered_filtered_and_weighted():
    t = easy_pairs(12)
    shuffled = t.take(list(range(11, -1, -1)))
    a = training_rows(t, pair_types=["content"])
    b = training_rows(shuffled, pair_types=["content"])
    assert a.equals(b) and a.num_rows == 9 and a.column_names == ["prompt", "chosen", "rejected"]
    w = training_rows(t, pair_types=["content", "format"],
                      weights_fn=lambda m, groups: margin_weights(m, "linear", groups=groups))
    assert w.column_names[-1] == WEIGHT
    kept = t.sort_by("pair_id")
    weights, types = w.column(WEIGHT).to_numpy(), kept.column("pair_type").to_pylist()
    for pair_type in set(types):   # mean 1 within each pair type
        assert weights[[x == pair_type for x in types]].mean() == pytest.approx(1.0)


def test_model_card_names_pairs_recipe_config_and_metrics():
    from persodpo.config import load_config
    from persodpo.train.card import model_card

    c = load_config(None, ["train.beta=0.25"]).train
    hist = [{"loss": 0.69, "rewards/accuracies": 0.0, "step": 1}, {"loss": 0.21, "rewards/accuracies": 1.0, "step": 9}]
    card = model_card(base_model="tiny:llama", pairs_uri="s3://b/pairs", recipe="persodpo",
                      pairs={"used": 10, "rows": 12, "by_type": {"content": 10}}, train_config=c.model_dump(mode="json"),
                      history=hist, summary={"global_step": 9, "world_size": 2})
    assert "base_model: tiny:llama" in card and "`s3://b/pairs`" in card and "recipe: persodpo" in card
    assert "| loss | 0.69 | 0.21 |" in card and "| rewards/accuracies | 0 | 1 |" in card
    assert "beta: 0.25" in card and "ZeRO-2" in card
