from __future__ import annotations

import pytest

from bench.queue_flood import flood
from tests.conftest import make_settings

pytestmark = pytest.mark.slow


def test_many_requests_queued_at_once_all_done_once_by_two_workers(tmp_path, tiny_model_path):
    settings = make_settings(
        tmp_path,
        default_model_path=tiny_model_path,
        queue_cap=1000,
        user_rate_per_min=1000,
        user_max_concurrent=1000,
        batch_wait_ms=20,
    )
    result = flood(settings, n_requests=40, n_workers=2, bars=1)
    assert result["all_done"], result
    assert result["requests_with_all_artifacts"] == 40
    assert result["artifact_files"] == 40 * 6 and result["duplicates"] == 0
    assert result["max_batch"] > 1  # waiting requests were decoded together
    # No fault, so no message sent twice: one generate and one render task per request (the
    # two workers' reapers re-sent 350 of 200 before: issue #26)
    assert result["generate_messages"] == 40 and result["render_messages"] == 40, result
    assert result["leftover_messages"] == 0, result  # and none left unconsumed in the broker
