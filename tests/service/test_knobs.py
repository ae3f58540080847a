"""The knob bounds are defined once (``service.knobs``): the settings, the PUT /config schema and
the batcher's ``Knobs`` take exactly the same values."""

from __future__ import annotations

import pydantic
import pytest

from skipvit.service.knobs import (
    BOUNDS,
    MAX_BATCH_SIZE,
    PIPELINE_DEPTH,
    REQUEST_TIMEOUT_S,
    Bound,
    Knobs,
    waits_past_timeout,
)
from skipvit.service.schemas import ConfigUpdate
from skipvit.service.settings import Settings

SETTINGS = {**BOUNDS, "request_timeout_s": REQUEST_TIMEOUT_S, "pipeline_depth": PIPELINE_DEPTH}


def outside(bound: Bound) -> list[float]:
    below = bound.ge - 1 if bound.ge is not None else bound.gt
    return [v for v in (below, None if bound.le is None else bound.le + 1) if v is not None]


def limits(bound: Bound) -> list[float]:
    return [v for v in (bound.ge, bound.le) if v is not None]


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_settings_take_the_knobs_within_their_bounds(name):
    bound = SETTINGS[name]
    assert Settings().model_dump()[name] == bound.default
    for value in outside(bound):
        with pytest.raises(pydantic.ValidationError, match=name):
            Settings(**{name: value})
    for value in limits(bound):
        assert getattr(Settings(**{name: value}), name) == value


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_put_config_and_the_batcher_take_the_same_values(name):
    bound = BOUNDS[name]
    assert getattr(Knobs(), name) == bound.default
    for value in outside(bound):
        with pytest.raises(pydantic.ValidationError, match=name):
            ConfigUpdate(**{name: value})
        with pytest.raises(ValueError, match=name):
            Knobs(**{name: value})
    for value in limits(bound):
        assert getattr(ConfigUpdate(**{name: value}), name) == value
        assert getattr(Knobs().update(**{name: value}), name) == value


def test_a_bound_names_its_range():
    with pytest.raises(ValueError, match=r"max_batch_size must be >= 1 and <= 4096, got 0"):
        MAX_BATCH_SIZE.check("max_batch_size", 0)
    with pytest.raises(ValueError, match=r"timeout_s must be > 0, got 0"):
        REQUEST_TIMEOUT_S.check("timeout_s", 0)
    assert MAX_BATCH_SIZE.constraints() == {"ge": 1, "le": 4096}
    assert REQUEST_TIMEOUT_S.constraints() == {"gt": 0}


def test_the_wait_for_company_must_end_before_the_timeout():
    assert waits_past_timeout(1000, 1.0) and not waits_past_timeout(999, 1.0)
