"""An r larger than ToMe allows is cut per block; the cut is said once, and the model reports what it merges."""

import logging

import vwt_export as vx


def test_a_capped_r_warns_with_the_value_used(tome_models, caplog):
    model = tome_models["cls"]  # 1 prefix + 16 patches, 4 blocks
    with caplog.at_level(logging.WARNING):
        capped = vx.compress(model, "tome", r=1000)
    assert capped.block_r == [8, 4, 2, 1] and capped.r_capped
    assert capped.block_tokens == [17, 9, 5, 3] and capped.tokens_out == 2
    (record,) = caplog.records
    assert "r=1000" in record.getMessage()
    assert "merging [8, 4, 2, 1] tokens per block instead" in record.getMessage()


def test_an_r_within_bounds_is_used_as_given_and_says_nothing(tome_models, caplog):
    with caplog.at_level(logging.WARNING):
        plain = vx.compress(tome_models["cls"], "tome", r=2)
    assert plain.block_r == [2, 2, 2, 2] and not plain.r_capped and caplog.records == []
