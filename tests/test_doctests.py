"""Every docstring example in the packages runs, and says what it shows (``doctest``).

Run on the modules as imported (``migcompat.compat._tables``), not on the files, so the
examples see the same objects as every other caller.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import migcompat

PACKAGES = ("migcompat", "migcompat.protocol", "migcompat.compat", "migcompat.capture",
            "migcompat.lab", "migcompat.cli")  # fmt: skip


def _modules() -> list[str]:
    names = set(PACKAGES)
    for pkg in PACKAGES[1:]:
        mod = importlib.import_module(pkg)
        names |= {m.name for m in pkgutil.iter_modules(mod.__path__, f"{pkg}.")}
    return sorted(names - {"migcompat.__main__", "migcompat.cli.__main__"})


def _examples(name: str) -> int:
    mod = importlib.import_module(name)
    return sum(len(t.examples) for t in doctest.DocTestFinder().find(mod, name))


MODULES = _modules()
WITH_EXAMPLES = [m for m in MODULES if _examples(m)]


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_doctests(name: str) -> None:
    mod = importlib.import_module(name)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"


def test_the_examples_are_found() -> None:
    """The modules known to hold examples are among those run (a finder that found
    nothing would make every run above vacuous)."""
    assert migcompat.__name__ == "migcompat"
    assert {"migcompat.compat._tables", "migcompat.compat._partition",
            "migcompat.lab.partition"} <= set(WITH_EXAMPLES)  # fmt: skip
    assert sum(_examples(m) for m in WITH_EXAMPLES) >= 16
