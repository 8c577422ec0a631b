"""jaxuq.tta without torch: TU's sample-major views layout, Zero's vote and tie-breaking, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxuq.tta import tta_views, zero_vote


def test_views_are_sample_major_with_one_key_per_view():
    x = jnp.arange(3.0)[:, None]  # 3 samples
    views = tta_views(lambda k, a: a + jax.random.uniform(k), jax.random.key(0), x, 4)
    assert views.shape == (12, 1)
    base = np.repeat(np.arange(3.0), 4)
    shift = np.asarray(views[:, 0]) - base
    np.testing.assert_allclose(shift.reshape(3, 4), np.tile(shift[:4], (3, 1)), atol=1e-6)  # view k same key


def _onehot_logits(classes, conf):
    """Views voting for `classes` with confidence `conf` (higher = lower entropy)."""
    out = np.full((len(classes), 4), -5.0, np.float32)
    for i, (c, s) in enumerate(zip(classes, conf)):
        out[i, c] = s
    return out


def test_vote_filters_the_most_confident_views_and_breaks_ties_with_the_next():
    # 5 views; filter 0.4 -> the 2 most confident vote: classes 1 and 2 tie; the 3rd most confident
    # (class 2) breaks the tie; the least confident (class 0, twice) never vote
    logits = _onehot_logits([1, 0, 2, 0, 2], [9.0, 0.5, 8.0, 0.4, 7.0])
    out = np.asarray(zero_vote(logits, 5, filter_views=0.4))
    np.testing.assert_allclose(np.exp(out[0]) - 1e-8, [0, 1 / 5, 2 / 5, 0], atol=1e-6)
    # without a tie only the filtered views count
    logits = _onehot_logits([3, 3, 2, 2, 2], [9.0, 8.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(np.exp(np.asarray(zero_vote(logits, 5, 0.4))[0]) - 1e-8, [0, 0, 0, 2 / 5], atol=1e-6)


@pytest.mark.parametrize("kw,err,match", [
    (dict(num_tta=5, filter_views=0.0), ValueError, "filter_views"),
    (dict(num_tta=5, filter_views=1.5), ValueError, "filter_views"),
    (dict(num_tta=5, filter_views=0.1), ValueError, "num_tta"),
    (dict(num_tta=5, filter_views=0.4, eps=0.0), ValueError, "eps"),
    (dict(num_tta=2.0, filter_views=0.5), TypeError, "num_tta"),
    (dict(num_tta=3, filter_views=0.5), ValueError, "logits"),
])
def test_bad_input(kw, err, match):
    with pytest.raises(err, match=match):
        zero_vote(np.zeros((10, 4), np.float32), **kw)
