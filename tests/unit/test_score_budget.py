"""The budget ledger: reservations never let spending pass the cap."""

from persodpo.budget import Ledger


def test_reservations_stop_before_the_cap_and_settle_to_real_cost():
    led = Ledger(1.0)
    assert led.reserve(0.4) and led.reserve(0.4)
    assert not led.reserve(0.3)            # 0.8 reserved + 0.3 > 1.0: refused, nothing spent
    led.settle(0.4, 0.1)                    # the real cost was lower: the rest is free again
    assert led.reserve(0.3)
    led.settle(0.4, 0.35)
    led.settle(0.3, 0.3)
    s = led.state()
    assert s["spent_usd"] == 0.75 and s["reserved_usd"] == 0.0
    assert s["granted"] == 3 and s["refused"] == 1 and s["overruns"] == 0
    assert not led.reserve(0.26) and led.reserve(0.25)


def test_an_underestimate_is_counted_not_hidden():
    led = Ledger(1.0)
    led.reserve(0.1)
    led.settle(0.1, 0.2)
    assert led.state()["overruns"] == 1 and led.state()["spent_usd"] == 0.2
