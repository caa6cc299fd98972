"""The one best-checkpoint rule and the sweet-spot score (dreambooth_sweep/objective.py)."""

from __future__ import annotations

import math
from types import SimpleNamespace

from dreambooth_sweep.objective import BestTracker, best_of, is_better, sweet_spot_score

OBJ = SimpleNamespace(metric="eval/dino", prompt_metric="eval/clip_t", penalty=2.0, tolerance=0.01)


def test_best_tracker_never_takes_step_0_nan_or_a_later_tie() -> None:
    best = BestTracker()
    assert best.best_step is None and best.best_score is None
    assert not best.update(0, 0.90)  # the base model is the baseline, never a candidate
    assert best.update(100, 0.55)
    assert not best.update(200, 0.50)
    assert not best.update(300, 0.55)  # a tie keeps the earlier checkpoint
    assert not best.update(400, math.nan) and not best.update(500, math.inf)
    assert (best.best_step, best.best_score) == (100, 0.55)
    low = BestTracker(maximize=False)
    assert low.update(10, 0.3) and low.update(20, 0.2) and not low.update(30, 0.25)
    assert low.best_step == 20


def test_best_of_is_the_same_rule_over_any_items() -> None:
    history = {0: 0.9, 10: 0.4, 20: 0.6, 30: 0.6, 40: math.nan}
    assert best_of(history.items(), score=lambda kv: kv[1], step=lambda kv: kv[0]) == (20, 0.6)
    assert best_of([(0, 0.9)], score=lambda kv: kv[1], step=lambda kv: kv[0]) is None
    # trials listed by number: on equal score and step the first (lower number) wins
    items = [("t0", 10, 0.5), ("t1", 10, 0.5), ("t2", 20, 0.5)]
    assert best_of(items, score=lambda t: t[2], step=lambda t: t[1])[0] == "t0"
    assert best_of(history.items(), score=lambda kv: kv[1], step=lambda kv: kv[0], maximize=False) == (
        10,
        0.4,
    )
    assert not is_better(True, None) and not is_better("0.5", None) and is_better(0.5, None)


def test_sweet_spot_score_penalises_lost_prompt_fidelity_and_keeps_nan() -> None:
    base = {"eval/dino": 0.3, "eval/clip_t": 0.30}
    assert sweet_spot_score({"eval/dino": 0.7, "eval/clip_t": 0.30}, base, OBJ) == 0.7
    assert math.isclose(sweet_spot_score({"eval/dino": 0.7, "eval/clip_t": 0.24}, base, OBJ), 0.7 - 2 * 0.05)
    # NaN in, NaN out: a failed CLIP-T must not score as "no penalty"
    assert math.isnan(sweet_spot_score({"eval/dino": 0.7, "eval/clip_t": math.nan}, base, OBJ))
    assert math.isnan(sweet_spot_score({"eval/dino": math.nan, "eval/clip_t": 0.3}, base, OBJ))
