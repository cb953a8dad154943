"""The docs' examples use caller keys the shim accepts: a reader who copies them gets a shim that starts
and requests that pass, not "a caller key must be at least 24 characters long"."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from worker.config.settings import load_settings

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
KEY_IN_EXAMPLE = re.compile(r"(?:SHIM_API_KEYS=|Authorization: Bearer )([A-Za-z0-9._~-]+)")


def test_every_caller_key_in_the_docs_examples_is_one_the_settings_accept() -> None:
    keys = {key for doc in DOCS for key in KEY_IN_EXAMPLE.findall(doc.read_text())}
    assert keys, "the docs show no caller key"
    for key in sorted(keys):
        settings = load_settings(shim_api_keys=key)
        assert [secret.get_secret_value() for secret in settings.shim_api_keys] == [key]


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_a_bearer_example_uses_a_key_the_same_doc_or_the_readme_sets(doc: Path) -> None:
    bearers = set(re.findall(r"Authorization: Bearer ([A-Za-z0-9._~-]+)", doc.read_text()))
    readme = set(re.findall(r"SHIM_API_KEYS=([A-Za-z0-9._~-]+)", (ROOT / "README.md").read_text()))
    assert bearers <= readme | {"<key>"} or not bearers, sorted(bearers - readme)
