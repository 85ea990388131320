"""The settings table in docs/operations.md is the settings model's, so it cannot drift from it."""

from mge.settings import Settings
from tests.support.settings_doc import DOC, rendered


def test_the_documented_settings_table_is_generated_from_the_model():
    text = DOC.read_text()
    assert rendered(text) == text, (
        "docs/operations.md is out of date with the settings model: run `make docs`"
    )
    for name in Settings.model_fields:
        assert f"`MGE_{name.upper()}`" in text
