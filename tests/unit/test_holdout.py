"""Held-out split: whole dialogs, a stable choice, and generation that skips them."""

import pytest

from persodpo import storage as st
from persodpo.config import load_config
from persodpo.errors import ConfigError, InputError
from persodpo.generate.stage import load_prompt_ids
from persodpo.ingest.focus import read_focus
from persodpo.ingest.stage import bundled_sample, hold_out, run_stage


def _sample():
    table, _ = read_focus(bundled_sample())
    return table


def test_whole_dialogs_are_held_out_and_the_choice_is_stable():
    table = _sample()
    held = hold_out(table, 0.25, "valid")
    rows = held.select(["dialog_id", "split"]).to_pylist()
    by_dialog: dict[str, set] = {}
    for r in rows:
        by_dialog.setdefault(r["dialog_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_dialog.values())           # never a dialog split in two
    valid = sorted(d for d, s in by_dialog.items() if s == {"valid"})
    assert len(valid) == 3 == round(0.25 * len(by_dialog))
    # Same dialogs whatever the row order.
    again = hold_out(table.take(list(reversed(range(table.num_rows)))), 0.25, "valid")
    assert sorted({r["dialog_id"] for r in again.to_pylist() if r["split"] == "valid"}) == valid
    assert held.column("prompt_id").to_pylist() == table.column("prompt_id").to_pylist()


def test_a_holdout_keeps_at_least_one_dialog_on_each_side():
    table = _sample()
    import pyarrow.compute as pc

    dialogs = table.column("dialog_id").unique()
    two = table.filter(pc.is_in(table.column("dialog_id"), value_set=dialogs[:2]))
    splits = hold_out(two, 0.9, "valid").column("split").to_pylist()
    assert "train" in splits and "valid" in splits
    one = table.filter(pc.is_in(table.column("dialog_id"), value_set=dialogs[:1]))
    with pytest.raises(ConfigError, match="holdout_fraction"):
        hold_out(one, 0.5, "valid")


def test_generate_answers_only_its_split(tmp_path):
    out = str(tmp_path / "prompts")
    cfg = load_config(None, ["ingest.holdout_fraction=0.25", f"ingest.output={out}"])
    summary = run_stage(cfg)
    assert summary["splits"]["valid"] > 0 and summary["splits"]["train"] > 0
    t = st.read_table(out)
    train = load_prompt_ids(out, None, None, "train")
    valid = load_prompt_ids(out, None, None, "valid")
    assert len(train) == summary["splits"]["train"] and len(valid) == summary["splits"]["valid"]
    assert set(train) | set(valid) == set(t.column("prompt_id").to_pylist()) and not set(train) & set(valid)
    with pytest.raises(InputError, match="no rows of split 'test'"):
        load_prompt_ids(out, None, None, "test")
