"""The forward decoder against QEMU's own: ``scripts/analyze-migration.py`` of the same release.

For each provisioned build (5.2, 7.2, 10.0, 11.1): the lab migrates a ``-S`` guest to a file
(``migrate "exec:cat > mig.bin"``), QEMU's ``analyze-migration.py`` from that build's
Debian source package (fetched by ``.ci/run`` into ``~/.cache/migcompat/src``; run from
there, never copied) decodes it, and ForwardReader must list the same sections (section
id, name, instance id, version) in the same order, and the same value for every field
both decode. Values are compared as bit patterns: the script prints integers as hex
text (``0x…``, with the signed value for negatives) and unknown types as hex bytes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from migcompat.protocol import (
    DeviceState,
    ForwardReader,
    ForwardStop,
    SectionHeader,
    decoded_value,
)

pytestmark = pytest.mark.qemu

try:
    from migcompat.lab import find_build
    from migcompat.lab.builds import run_dir
    from migcompat.lab.vmstate import (
        analyze_migration,
        cached_analyze_migration_script,
        record_file_migration,
        source_cache_dir,
    )
except ImportError:  # pragma: no cover
    find_build = None  # type: ignore[assignment]

RELEASES = ["5.2", "7.2", "10.0", "11.1"]
_INT_TEXT = re.compile(r"^0x([0-9a-f]+)(?: \(-?\d+\))?$")


def _theirs(x: Any) -> Any:
    """analyze-migration's getDict() value as a canonical ('int', bits) / ('bytes', b) tree."""
    if isinstance(x, bool):
        return ("bool", x)
    if isinstance(x, str):
        m = _INT_TEXT.match(x)
        if m:
            return ("int", int(m.group(1), 16))
        return ("bytes", bytes.fromhex(x))
    if isinstance(x, dict):
        return {k: _theirs(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_theirs(v) for v in x]
    raise AssertionError(f"unexpected analyze-migration value {x!r}")


def _ours(fields: list[dict[str, Any]], data: bytes) -> dict[str, Any]:
    # Fields of one name repeated (an array QEMU wrote element by element) are a list;
    # one element alone is shown bare (7.2's script lists an indexed one, 10.0's does not:
    # _one_bare() folds both sides alike).
    out: dict[str, Any] = {}
    for f in fields:
        v = _ours_one(f, data)
        if f["name"] in out:
            prev = out[f["name"]]
            out[f["name"]] = _Run([*prev, v]) if isinstance(prev, _Run) else _Run([prev, v])
        else:
            out[f["name"]] = _Run([v]) if "index" in f else v
    return {k: list(v) if isinstance(v, _Run) else v for k, v in out.items()}


class _Run(list):  # type: ignore[type-arg]
    """Values of one repeated field name (not an array field's own list)."""


def _ours_one(f: dict[str, Any], data: bytes) -> Any:
    t, v = f["type"], f["value"]
    if t == "tmp":  # the script has no reader for "tmp": it shows the bytes
        return ("bytes", data[f["offset"] : f["offset"] + f["size"]])
    if t in ("struct", "subsection"):
        if "count" in f:
            return [_ours(item, data) for item in v]
        return _ours(v, data)
    if "count" in f:
        size = f["size"] // f["count"] if f["count"] else 0
        return [_leaf(x, size) for x in v]
    return _leaf(v, f["size"])


def _leaf(v: Any, size: int) -> Any:
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, int):
        return ("int", v & ((1 << (8 * size)) - 1))
    return ("bytes", bytes.fromhex(v["raw"]))


def _one_bare(x: Any) -> Any:
    """Lists of one element shown as the element (both sides, before comparing)."""
    if isinstance(x, dict):
        return {k: _one_bare(v) for k, v in x.items()}
    if isinstance(x, list):
        return _one_bare(x[0]) if len(x) == 1 else [_one_bare(v) for v in x]
    return x


def _leaves(x: Any) -> int:
    if isinstance(x, dict):
        return sum(_leaves(v) for v in x.values())
    if isinstance(x, list):
        return sum(_leaves(v) for v in x)
    return 1


def decode_file(release: str, data: bytes) -> list[Any]:
    reader = ForwardReader(release, pages=False, decode_fields=True)
    for i in range(0, len(data), 1 << 16):  # streamed, as from a socket
        reader.receive_data(data[i : i + (1 << 16)])
    reader.receive_data(b"")
    return list(reader.events())


@pytest.fixture(scope="module", params=RELEASES)
def recorded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    release = request.param
    if find_build is None or find_build(release) is None:
        pytest.skip(f"no QEMU {release} provisioned: run `migcompat lab provision {release}`")
    build = find_build(release)
    script = cached_analyze_migration_script(build)
    if script is None:
        why = "the mirror may not carry that source"
        logs = list(source_cache_dir().glob(f"{build.suite}/*/fetch.log"))
        if logs and "404" in logs[0].read_text(errors="replace"):
            why = f"the Debian mirror answered 404 for it: {logs[0]}"
        pytest.skip(
            f"analyze-migration.py of qemu {build.package_version} not fetched ({why}; .ci/run "
            "fetches with `python -m migcompat.lab.vmstate fetch`)"
        )
    work = Path(run_dir()) / f"oracle-{release}"
    mig = work / "mig.bin"
    machine = record_file_migration(build, mig)
    return release, machine, mig.read_bytes(), analyze_migration(script, mig)


def test_sections_agree(recorded: Any) -> None:
    release, machine, data, theirs = recorded
    evs = decode_file(release, data)
    assert not [e for e in evs if isinstance(e, ForwardStop)]
    ours = [
        (e.section_id, e.idstr, e.instance_id, e.version_id)
        for e in evs
        if isinstance(e, SectionHeader) and e.kind in ("START", "FULL")
    ]
    assert ours == [(s["section_id"], s["name"], s["instance_id"], s["version"]) for s in theirs]
    devices = [e for e in evs if isinstance(e, DeviceState)]
    assert len(devices) == len(theirs) - 1  # all but ram
    print(f"{release} {machine}: {len(ours)} sections agree ({len(devices)} device sections)")


def test_fields_agree(recorded: Any) -> None:
    release, machine, data, theirs = recorded
    evs = decode_file(release, data)
    by_id = {e.section_id: e for e in evs if isinstance(e, DeviceState)}
    compared = 0
    for sec in theirs:
        if sec["name"] == "ram":
            continue
        dev = by_id[sec["section_id"]]
        ours = _ours(dev.fields or [], data)
        assert _one_bare(ours) == _one_bare(_theirs(sec["state"])), (release, sec["name"])
        compared += _leaves(ours)
    assert compared > 500
    print(f"{release} {machine}: {compared} field values agree")


def test_decoded_value_is_plain_data(recorded: Any) -> None:
    release, _machine, data, _oracle = recorded
    dev = next(e for e in decode_file(release, data) if isinstance(e, DeviceState))
    assert dev.idstr in ("timer", "apic")  # the first device section in every release
    assert all(isinstance(decoded_value(f), (int, bool, dict, list)) for f in dev.fields or [])


def test_release_without_its_script_against_the_nearest_older_one() -> None:
    """Where a release's own source is not to be had (the mirror lacks sid's 11.1 upload),
    the newest older release's analyze-migration.py reads its file: not the same-release
    oracle (that test skips), but a check that the decode agrees with QEMU's reader."""
    if find_build is None:
        pytest.skip("the lab is not importable")
    have = [r for r in RELEASES if find_build(r) is not None]
    scripts = {r: cached_analyze_migration_script(find_build(r)) for r in have}
    missing = [r for r in have if scripts[r] is None]
    if not missing:
        pytest.skip("every provisioned release has its own analyze-migration.py")
    for release in missing:
        older = [
            r
            for r in have
            if scripts[r] is not None and RELEASES.index(r) < RELEASES.index(release)
        ]
        if not older:
            continue
        script = scripts[older[-1]]
        assert script is not None
        mig = Path(run_dir()) / f"oracle-{release}" / "mig.bin"
        record_file_migration(find_build(release), mig)
        data = mig.read_bytes()
        theirs = analyze_migration(script, mig)
        evs = decode_file(release, data)
        ours = [
            (e.section_id, e.idstr, e.instance_id, e.version_id)
            for e in evs
            if isinstance(e, SectionHeader) and e.kind in ("START", "FULL")
        ]
        assert ours == [
            (s["section_id"], s["name"], s["instance_id"], s["version"]) for s in theirs
        ]
        by_id = {e.section_id: e for e in evs if isinstance(e, DeviceState)}
        compared = 0
        for sec in theirs:
            if sec["name"] != "ram":
                got = _one_bare(_ours(by_id[sec["section_id"]].fields or [], data))
                assert got == _one_bare(_theirs(sec["state"])), (release, sec["name"])
                compared += _leaves(got)
        print(f"{release} with {older[-1]}'s script: {len(ours)} sections, {compared} values agree")
