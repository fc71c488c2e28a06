from __future__ import annotations

import io

import pytest

from resilience.cli import SCENES, demo, main


def test_demo_runs_every_scene_and_tells_what_the_policies_did() -> None:
    out = io.StringIO()
    assert demo(list(SCENES), out) == 0
    text = out.getvalue()
    assert "retrying in" in text
    assert "attempt exceeded 50 ms: cancelled" in text
    assert "circuit closed -> open (failure_threshold)" in text
    assert "circuit half_open -> closed" in text
    assert "call rejected without touching the backend" in text
    assert "served" in text
    assert "rate limit reached for 'acme'" in text
    assert "answering with the fallback" in text
    assert "bread: 40 in stock (5 minutes ago)" in text


def test_unknown_scene_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--scenes", "nope"])
    assert "unknown scene 'nope'; choose from retry" in capsys.readouterr().err


def test_scenes_stay_reachable_from_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--scenes", "ratelimit", "fallback"]) == 0
    text = capsys.readouterr().out
    assert "rate limit reached for 'acme'" in text
    assert "answering with the fallback" in text
    assert "== Bulkhead" not in text  # only the scenes named


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf"])
def test_a_bad_duration_is_a_clear_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--duration", value])
    assert f"must be a number > 0, got {value!r}" in capsys.readouterr().err
