"""Every fault test runs without the user's trust key and sees every warning."""

from __future__ import annotations

import pytest

from .helpers import isolate_trust


@pytest.fixture(autouse=True)
def _hermetic_trust(monkeypatch, tmp_path):
    yield from isolate_trust(monkeypatch, tmp_path)
