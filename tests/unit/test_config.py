"""Decoder configs validate themselves; bad settings name the field, the value and what is accepted."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anydecode import ConfigError, SamplingConfig


@given(
    temperature=st.floats(0, 10, allow_nan=False),
    top_k=st.integers(0, 1000),
    top_p=st.floats(0.01, 1.0),
    min_p=st.floats(0, 1.0),
    seed=st.one_of(st.none(), st.integers(0, 2**31)),
)
@settings(max_examples=60, deadline=None)
def test_valid_settings_round_trip_through_strings(temperature, top_k, top_p, min_p, seed):
    direct = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed)
    as_strings = {k: repr(v) if isinstance(v, float) else str(v) for k, v in direct.as_dict().items()}
    parsed = SamplingConfig.from_mapping(as_strings, from_strings=True)
    assert parsed == direct


@given(value=st.one_of(st.floats(-100, -1e-9), st.floats(allow_nan=True).filter(math.isnan)))
@settings(max_examples=30, deadline=None)
def test_out_of_range_temperature_is_rejected_with_field_and_value(value):
    with pytest.raises(ConfigError) as info:
        SamplingConfig.from_mapping({"temperature": value})
    assert "temperature" in str(info.value)


@given(bad=st.one_of(st.text(min_size=1).filter(lambda s: not s.strip().lstrip("-").isdigit()),
                     st.lists(st.integers()), st.booleans()))
@settings(max_examples=60, deadline=None)
def test_ill_typed_top_k_names_the_field_and_the_accepted_types(bad):
    with pytest.raises(ConfigError) as info:
        SamplingConfig.from_mapping({"top_k": bad}, from_strings=True)
    message = str(info.value)
    assert "top_k" in message and "accepted:" in message and "temperature: float" in message


def test_unknown_key_suggests_the_closest_field():
    with pytest.raises(ConfigError, match=r"unknown setting 'tempreature'.*did you mean 'temperature'"):
        SamplingConfig.from_mapping({"tempreature": "1"}, from_strings=True)


@pytest.mark.parametrize("key,value", [("top_p", 0.0), ("top_p", 1.5), ("min_p", -0.1), ("top_k", -1), ("seed", -3)])
def test_bounds(key, value):
    with pytest.raises(ConfigError, match=key):
        SamplingConfig.from_mapping({key: value})


def test_greedy_is_temperature_zero():
    assert SamplingConfig(temperature=0).greedy
    assert not SamplingConfig(temperature=0.5).greedy
