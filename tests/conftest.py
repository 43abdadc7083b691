"""Shared test configuration."""

from __future__ import annotations

from hypothesis import settings

# One profile for every property test (packaging's tests/property habit); CI
# raises the example count with HYPOTHESIS_PROFILE=ci.
settings.register_profile("default", max_examples=100, deadline=None)
settings.register_profile("ci", max_examples=300, deadline=None, print_blob=True)
settings.load_profile(__import__("os").environ.get("HYPOTHESIS_PROFILE", "default"))
