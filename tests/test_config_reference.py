"""The README's config reference is the one the schema renders, and its example config loads."""

from __future__ import annotations

import re
from pathlib import Path

from resilience.config import load
from resilience.config.reference import BEGIN, END, render_reference
from resilience.config.schema import ConfigSchema
from resilience.config.schema_retry import RetrySection

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_reference_is_up_to_date() -> None:
    text = README.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    assert text[start:end] == render_reference(), (
        "the README's config reference is out of date: run "
        "`.venv/bin/python -m resilience.config.reference --write README.md`"
    )


def test_the_reference_names_every_key_with_its_default_and_range() -> None:
    reference = render_reference()
    assert "| `attempts` | integer | 3 | [1, 100] |" in reference
    assert "| `max_pushback` | duration | 60 | [0, TIMEOUT_MAX] |" in reference
    assert "| `failure_rate` | number or null | null | (0, 1] |" in reference
    assert "**`policies.<name>.retry.backoff (kind: exponential or exponential_jitter)`**" in reference
    for name in RetrySection.model_fields:
        assert f"| `{name}` |" in reference
    for name in ConfigSchema.model_fields:
        assert f"| `{name}` |" in reference
    rows = [line for line in reference.splitlines() if line.startswith("| `")]
    assert all(line.count(" | ") >= 4 for line in rows)


def test_the_readme_example_config_loads() -> None:
    section = README.read_text().split("## Configuration", 1)[1]
    example = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert example is not None
    config = load_text(example.group(1))
    assert sorted(config.data.policies) == ["default", "writes"]
    assert config.data.services["orders"].balancer.kind == "peak_ewma"


def load_text(text: str) -> object:
    from resilience.config import loads

    return loads(text, environ={"ETCD_PASSWORD": "x"})


def test_a_dict_reference_example() -> None:
    assert load({"policies": {"default": {"bulkhead": 4}}}).data.policies["default"].bulkhead is not None
