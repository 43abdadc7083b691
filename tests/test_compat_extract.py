"""tools/extract_compat.py: its small C preprocessor, and re-extraction of committed data."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "compat" / "data"
#: Where the QEMU trees named in the committed JSON are unpacked (no default: it is yours).
SRC_BASE = Path(os.environ["MIGCOMPAT_QEMU_SRC"]) if os.environ.get("MIGCOMPAT_QEMU_SRC") else None


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "extract_compat", ROOT / "tools" / "extract_compat.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["extract_compat"] = mod
    spec.loader.exec_module(mod)
    return mod


ex = _load_tool()


def _macros(text: str) -> dict[str, object]:
    macros: dict[str, object] = {}
    for line, logical in ex._logical_lines(ex.strip_comments(text)):
        s = logical.strip()
        if s.startswith("#define"):
            rest = s[len("#define") :].strip()
            import re

            m = re.match(r"(\w+)(\([^)]*\))?\s*(.*)$", rest)
            assert m
            macros[m.group(1)] = ex._make_macro(m.group(1), m.group(2), m.group(3), "t", line)
    return macros


def _expand_str(src: str, macros: dict[str, object]) -> str | None:
    return ex.string_value(ex.tokenize(src), macros)


def test_stringify_paste_and_varargs() -> None:
    m = _macros(
        '#define SUFFIX "-machine"\n'
        "#define tostring(s) #s\n"
        "#define stringify(s) tostring(s)\n"
        "#define PICK(a, b, c, d, ...) d\n"
        '#define NAME2(p, ma, mi) p "-" #ma "." #mi SUFFIX\n'
        '#define NAME3(p, ma, mi, mc) p "-" #ma "." #mi "." #mc SUFFIX\n'
        "#define NAME(p, ...) PICK(__VA_ARGS__, NAME3, NAME2) (p, __VA_ARGS__)\n"
        "#define SYM(a, b) a##_##b\n"
        "#define MAJOR 6\n"
    )
    assert _expand_str('NAME("pc-q35", 10, 2)', m) == "pc-q35-10.2-machine"
    assert _expand_str('NAME("pc-q35", 4, 0, 1)', m) == "pc-q35-4.0.1-machine"
    assert _expand_str("stringify(MAJOR)", m) == "6"
    assert _expand_str("tostring(MAJOR)", m) == "MAJOR"
    toks = ex.expand(ex.tokenize("SYM(virt, 10)"), m)
    assert [t.text for t in toks] == ["virt_10"]


def test_comments_keep_line_numbers() -> None:
    text = 'a /* x\n y */ b // c\n"/* not a comment */"\n'
    out = ex.strip_comments(text)
    assert out.count("\n") == text.count("\n")
    assert '"/* not a comment */"' in out


def test_interpreter_follows_calls_and_returns() -> None:
    src = (
        'static void base(MachineClass *m) { m->alias = "q"; '
        "compat_props_add(m->compat_props, defaults, defaults_len); }\n"
        "static void v2(MachineClass *m) { base(m); m->alias = NULL; "
        "compat_props_add(m->compat_props, hw_compat_2, hw_compat_2_len); }\n"
        "static void v1(MachineClass *m) { v2(m); if (1 > 2) { m->is_default = true; } "
        "compat_props_add(m->compat_props, hw_compat_1, hw_compat_1_len); }\n"
    )
    toks = ex.tokenize(src)
    funcs = ex.find_functions(toks, "t.c")
    st_ = ex.MachineState()
    ex.Interpreter(funcs, {}).run(funcs["v1"].body, st_)
    assert [c["array"] for c in st_.compat] == ["defaults", "hw_compat_2", "hw_compat_1"]
    assert st_.alias is None and st_.is_default is False
    assert st_.chain == ["v2", "base"]
    reg = ex.MachineState()
    assert (
        ex.Interpreter({}, {}).run(ex.tokenize("if (3 > 2) { return; } register();"), reg) is False
    )


@pytest.mark.property
@given(st.lists(st.text(alphabet="abc-_.09 ", max_size=8), min_size=1, max_size=5))
def test_adjacent_string_literals_concatenate(parts: list[str]) -> None:
    src = " ".join(f'"{p}"' for p in parts)
    assert ex.string_value(ex.tokenize(src), {}) == "".join(parts)


@pytest.mark.property
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["drv-a", "drv-b"]),
            st.sampled_from(["p", "q"]),
            st.integers(0, 99),
            st.booleans(),
        ),
        max_size=8,
    )
)
def test_global_property_array_parse(rows: list[tuple[str, str, int, bool]]) -> None:
    body = ",\n".join(
        f'    {{ "{d}", "{p}", "{v}"' + (", .optional = true" if o else "") + " }"
        for d, p, v, o in rows
    )
    sf = ex.SourceFile(
        "t.c",
        lines=list(
            enumerate(f"GlobalProperty hw_compat_9_9[] = {{\n{body}\n}};".split("\n"), start=1)
        ),
    )
    arrays = ex.find_global_property_arrays(sf, {})
    got = [
        (e["driver"], e["property"], e["value"], e["optional"])
        for e in arrays["hw_compat_9_9"]["entries"]
    ]
    assert got == [(d, p, str(v), o) for d, p, v, o in rows]


# ---------------------------------------------------------------------------------------
# re-extraction: the committed JSON is exactly what the script produces from the tree
# ---------------------------------------------------------------------------------------

COMMITTED = sorted(DATA.glob("compat-*.json"))


@pytest.mark.parametrize("path", COMMITTED, ids=[p.stem for p in COMMITTED])
def test_reextraction_matches_committed(path: Path) -> None:
    committed = json.loads(path.read_text())
    name = committed["source"]["tree"]
    how = (
        f"trees come from `dpkg-source -x` of the Debian .dsc named in {path.name}, "
        "or `apt-get source qemu`"
    )
    if SRC_BASE is None:
        pytest.skip(
            f"QEMU tree {name} not found: set MIGCOMPAT_QEMU_SRC to the directory "
            f"holding it ({how})"
        )
    tree = SRC_BASE / name
    if not (tree / "VERSION").exists():
        pytest.skip(f"QEMU tree {tree} not present ({how})")
    fresh = json.loads(json.dumps(ex.extract(tree)))
    assert fresh["source"] == committed["source"]
    for key in committed:
        assert fresh[key] == committed[key], key


def test_behaviour_reextraction_matches_committed() -> None:
    path = DATA / "behaviour.json"
    committed = json.loads(path.read_text())
    captures = ROOT / "fixtures" / "captures"
    fresh = json.loads(json.dumps(ex.extract_behaviour(captures)))
    have = {r["fixture"] for r in fresh["runs"]}
    missing = [r["fixture"] for r in committed["runs"] if r["fixture"] not in have]
    assert not missing, f"behaviour.json cites fixtures that are not in the tree: {missing}"
    assert fresh["runs"] == committed["runs"], (
        "fixtures changed: rerun tools/extract_compat.py --behaviour-from fixtures/captures "
        "-o compat/data/behaviour.json"
    )
