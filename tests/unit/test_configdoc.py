from pathlib import Path

from lakeward.app.configdoc import render


def test_config_reference_is_generated_from_the_models():
    committed = (Path(__file__).parents[2] / "docs" / "config-reference.md").read_text()
    assert committed == render(), "docs/config-reference.md is stale: run `python -m lakeward.app.configdoc > docs/config-reference.md`"
