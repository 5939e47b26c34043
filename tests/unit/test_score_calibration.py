"""The calibrated panel's maps, on tables built by hand (persodpo.score.calibration)."""

import pyarrow as pa
import pytest

from persodpo.score.calibration import MIN_COMMON, PanelStats, apply, calibrated


def _table(a, b):
    n = len(a)
    return pa.table({"judge_a_coh": pa.array(a, pa.float64()), "judge_b_coh": pa.array(b, pa.float64()),
                     "judge_coh": pa.array([None] * n, pa.float64())})


def test_affine_judges_map_onto_one_scale_so_a_skipped_judge_shifts_nothing():
    latent = [1, 2, 3, 1, 2, 3, 2, 3]
    a = [q + 1 for q in latent]                  # offset +1
    b = [2 * q - 1 for q in latent]              # double spread
    a_skip = a[:6] + [None, None]                # judge a skipped the last two (its own generator)
    full, skip = PanelStats(["a", "b"], ["coh"]), PanelStats(["a", "b"], ["coh"])
    full.add(_table(a, b))
    skip.add(_table(a_skip, b))
    f_full, f_skip = full.fit()["coh"], skip.fit()["coh"]
    assert f_skip["fitted_on"] == "common" and f_skip["n_common"] == 6 >= MIN_COMMON
    got = apply(_table(a_skip, b), {"coh": f_skip}, ["a", "b"]).column("judge_coh").to_pylist()
    # The same latent gets the same panel score whoever scored it; the raw mean would not.
    by_latent = {}
    for q, v in zip(latent, got):
        by_latent.setdefault(q, set()).add(round(v, 9))
    assert all(len(vs) == 1 for vs in by_latent.values())
    raw = [(x + y) / 2 if x is not None else y for x, y in zip(a_skip, b)]
    assert raw[7] != raw[2] and latent[7] == latent[2]
    assert calibrated(b[6], f_skip, "b") == pytest.approx(got[6])
    assert f_full["fitted_on"] == "common" and f_full["n_common"] == 8


def test_a_small_common_set_falls_back_to_each_judges_own_run_and_constant_judges_add_no_preference():
    a = [1, 2, 3, 4, None, None, None]
    b = [None, None, None, 5, 4, 3, 2]
    s = PanelStats(["a", "b"], ["coh"])
    s.add(_table(a, b))
    fit = s.fit()["coh"]
    assert fit["fitted_on"] == "each_judge" and fit["n_common"] == 1
    assert fit["judges"]["a"]["mean"] == pytest.approx(2.5) and fit["judges"]["b"]["mean"] == pytest.approx(3.5)
    const = PanelStats(["a", "b"], ["coh"])
    const.add(_table([3.0] * 6, [1, 2, 3, 4, 5, None]))
    f = const.fit()["coh"]
    assert f["judges"]["a"]["sd"] == 0
    out = apply(_table([3.0] * 6, [1, 2, 3, 4, 5, None]), {"coh": f}, ["a", "b"]).column("judge_coh").to_pylist()
    assert out[-1] == pytest.approx(f["ref_mean"]) and out[0] < out[2] < out[4]


def test_rows_no_judge_scored_stay_null():
    s = PanelStats(["a", "b"], ["coh"])
    t = _table([1, 2, 3, 4, 5, None], [2, 3, 4, 5, 1, None])
    s.add(t)
    assert apply(t, s.fit(), ["a", "b"]).column("judge_coh").to_pylist()[-1] is None


# -- the audit's statistics (persodpo.score.audit) ---------------------------------------------
def test_krippendorff_alpha_ordinal_matches_krippendorffs_published_example():
    from persodpo.score.audit import krippendorff_alpha_ordinal

    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", 4 coders x 12 units,
    # missing values left out: ordinal alpha = 0.815.
    n = None
    coders = [[1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n], [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
              [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n], [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n]]
    units = [[v for v in unit if v is not None] for unit in zip(*coders)]
    assert krippendorff_alpha_ordinal(units) == pytest.approx(0.8154, abs=1e-4)
    assert krippendorff_alpha_ordinal([[1, 1], [2, 2], [3, 3]]) == pytest.approx(1.0)
    assert krippendorff_alpha_ordinal([[3, 3], [3, 3]]) is None          # no variation: undefined
    assert krippendorff_alpha_ordinal([[1], [2]]) is None                 # nothing pairable
    assert krippendorff_alpha_ordinal([[1, 5], [5, 1], [1, 5]]) < 0       # systematic disagreement


def test_spearman_and_self_preference():
    from persodpo.score.audit import ranks, self_preference, spearman

    assert ranks([10, 20, 20, 30]) == [1, 2.5, 2.5, 4]
    assert spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2], [1, 2]) is None
    rows = [(5.0, None, True, False), (4.0, None, True, False), (2.0, None, False, True), (1.0, None, False, True)]
    assert self_preference(rows) == pytest.approx((4.5 - 1.5) / 1.8257, abs=1e-3)
    assert self_preference([(3.0, None, False, True)] * 3) is None        # no own replies: not measurable


def test_audit_samples_are_deterministic_and_near_their_share():
    from persodpo.score.judges import audit_sampled

    ids = [f"c{i}" for i in range(2000)]
    picked = [c for c in ids if audit_sampled(c, 0.1)]
    assert 150 < len(picked) < 250 and picked == [c for c in ids if audit_sampled(c, 0.1)]
    assert not any(audit_sampled(c, 0.0) for c in ids) and all(audit_sampled(c, 1.0) for c in ids)
