"""The catalog is the one home of the request's limits and defaults (issue 27)."""

from __future__ import annotations

import inspect

from engine.model.generate.continuation import continue_seed
from engine.model.generate.request import GenerationRequest
from engine.music import catalog
from engine.music.request import ComposeOptions
from engine.service.options import validate_options
from tests.conftest import make_settings


def test_a_request_that_says_nothing_gets_the_catalogs_temperature_and_top_p(tmp_path):
    asked = validate_options(bars=2, settings=make_settings(tmp_path))
    made = GenerationRequest(None, ComposeOptions(bars=2))
    defaults = inspect.signature(continue_seed).parameters
    for name, value in (
        ("temperature", catalog.DEFAULT_TEMPERATURE),
        ("top_p", catalog.DEFAULT_TOP_P),
    ):
        assert getattr(asked, name) == getattr(ComposeOptions(), name) == value
        assert getattr(made.options, name) == defaults[name].default == value
    assert catalog.MIN_TEMPERATURE <= catalog.DEFAULT_TEMPERATURE <= catalog.MAX_TEMPERATURE
    assert catalog.MIN_TOP_P <= catalog.DEFAULT_TOP_P <= catalog.MAX_TOP_P
