"""Compat tables: golden checks against the committed extraction, and the array rule."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migcompat.compat import (
    MachineType,
    UnknownMachine,
    compat_releases,
    compat_table,
    diff_machines,
    effective_properties,
    rule_arrays,
    versioned_array,
)
from migcompat.protocol import InputError, Release

# ---------------------------------------------------------------------------------------
# golden facts, each checked against the committed JSON of that release
# ---------------------------------------------------------------------------------------


def test_extracted_releases_and_source_identity() -> None:
    assert {"5.2", "7.2", "10.0", "10.2"} <= {str(r) for r in compat_releases()}
    t = compat_table("7.2")
    assert str(t.qemu_version) == "7.2.22"  # Debian's stable patches applied (VERSION file)
    assert t.source["debian_version"] == "1:7.2+dfsg-7+deb12u18"
    assert len(t.source["sha256"]) == 64
    assert "v7.2.22.diff" in t.source["debian_patches_applied"]


def test_hw_compat_9_2_migration_entries_10_0() -> None:
    t = compat_table("10.0")
    rows = {(e.driver, e.property): e for e in t.arrays["hw_compat_9_2"]}
    e = rows[("migration", "send-switchover-start")]
    assert e.value == "off" and e.file == "hw/core/machine.c" and e.line == 47


def test_macros_resolve_to_strings() -> None:
    t = compat_table("10.2")
    drivers = {e.driver for e in t.arrays["hw_compat_8_1"]}
    assert "virtio-net-device" in drivers  # TYPE_VIRTIO_NET
    assert "base-pci-bridge" in drivers  # TYPE_PCI_BRIDGE
    cpu = {e.driver for e in t.arrays["pc_compat_10_0"]}
    assert cpu == {"x86_64-cpu"}  # TYPE_X86_CPU with TARGET_X86_64
    assert ("qemu64-x86_64-cpu", "family") in {e.key for e in t.arrays["pc_compat_6_0"]}


def test_optional_entries() -> None:
    t = compat_table("10.2")
    opt = {(e.driver, e.property): e.optional for e in t.arrays["hw_compat_2_6"]}
    assert opt[("virtio-pci", "disable-modern")] is True
    assert opt[("virtio-mmio", "format_transport_address")] is False


def test_debian_stable_patches_change_arrays() -> None:
    """7.2.22 carries entries the 7.2.0 tarball lacks (backports via v7.2.N.diff)."""
    keys = {e.key for e in compat_table("7.2").arrays["hw_compat_7_1"]}
    assert ("virtio-rng-pci", "vectors") in keys


def test_aliases_and_defaults() -> None:
    for rel in compat_releases():
        t = compat_table(rel)
        line = f"{rel.major}.{rel.minor}"
        assert t.aliases["q35"] == f"pc-q35-{line}"
        assert t.aliases["pc"] == f"pc-i440fx-{line}"
        assert t.aliases["virt"] == f"virt-{line}"
        assert t.aliases["pseries"] == f"pseries-{line}"
        assert t.aliases["s390-ccw-virtio"] == f"s390-ccw-virtio-{line}"
        assert t.resolve("q35").name == f"pc-q35-{line}"


def test_registration_lifecycle() -> None:
    t = compat_table("10.2")
    with pytest.raises(
        UnknownMachine,
        match=r"pc-q35-4\.2 .*not registered by 10\.2.*oldest "
        r"is 5\.0",
    ):
        t.resolve("pc-q35-4.2")
    with pytest.raises(UnknownMachine, match="newer than itself"):
        t.resolve("pc-q35-11.0")
    assert t.resolve("pc-q35-5.0").deprecated
    assert not t.resolve("pc-q35-8.0").deprecated
    # 10.0 only deletes with QEMU_DELETE_MACHINES set: everything stays registered
    assert compat_table("10.0").resolve("pc-q35-2.4").deprecated
    assert compat_table("7.2").resolve("pc-i440fx-1.4").deprecated


def test_lifecycle_rule_for_a_newer_build() -> None:
    t = compat_table("10.2")
    assert t.lifecycle_state(Release("5.0"), Release("11.1.3")) == "deleted"
    assert t.lifecycle_state(Release("5.2"), Release("11.1.3")) == "deprecated"
    assert t.lifecycle_state(Release("8.2"), Release("11.1.3")) == "supported"
    assert compat_table("7.2").lifecycle_state(Release("2.4"), Release("7.2")) is None


def test_migration_properties() -> None:
    t = compat_table("10.2")
    p = t.migration_properties
    assert (
        p["send-switchover-start"]["kind"] == "state"
        and p["send-switchover-start"]["default"] is True
    )
    assert p["store-global-state"]["default"] is True
    assert p["zero-page-detection"]["default"] == "multifd"
    assert p["x-max-bandwidth"]["qmp"] == "max-bandwidth"
    assert p["x-postcopy-ram"]["kind"] == "capability" and p["x-postcopy-ram"]["qmp"] == (
        "postcopy-ram"
    )
    assert "send-switchover-start" not in compat_table("7.2").migration_properties
    assert compat_table("7.2").migration_properties["store-global-state"]["file"] == (
        "migration/migration.c"
    )


def test_effective_zero_page_detection() -> None:
    _, props = effective_properties("pc-q35-8.2", "10.2", driver="migration")
    got = {p.property: p.value for p in props}
    assert got["zero-page-detection"] == "legacy"
    assert got["send-switchover-start"] == "off"
    _, props = effective_properties("pc-q35-9.0", "10.2", driver="migration")
    assert "zero-page-detection" not in {p.property for p in props}


def test_older_array_wins_example() -> None:
    """virtio-mem unplugged-inaccessible: pc_compat_8_0 says auto, pc_compat_6_2 says off."""
    _, props = effective_properties("pc-q35-6.2", "10.2", driver="virtio-mem")
    p = {x.property: x for x in props}["unplugged-inaccessible"]
    assert p.value == "off" and p.array == "pc_compat_6_2"
    assert [o.array for o in p.overrides] == ["pc_compat_8_0"]
    _, props = effective_properties("pc-q35-7.0", "10.2", driver="virtio-mem")
    assert {x.property: x.value for x in props}["unplugged-inaccessible"] == "auto"


def test_diff() -> None:
    d = diff_machines("pc-q35-9.2", "pc-q35-10.0", "10.2")
    only = {(p.driver, p.property) for p in d.only_a}
    assert ("migration", "send-switchover-start") in only
    assert not d.only_b


def test_machine_type_values() -> None:
    assert MachineType("pc-q35-4.0.1").version == Release("4.0.1")
    assert MachineType("s390-ccw-virtio-9.2").family == "s390-ccw-virtio"
    assert sorted([MachineType("pc-q35-10.0"), MachineType("pc-q35-9.2")])[0].name == ("pc-q35-9.2")
    assert MachineType("virt-9.2").__eq__(1) is NotImplemented
    for bad in ("q35", "pc-q35", "9.2", ""):
        with pytest.raises(InputError):
            MachineType(bad)


# ---------------------------------------------------------------------------------------
# the rule, checked against what the extractor found QEMU's options functions doing
# ---------------------------------------------------------------------------------------

_KINDS = {
    "pc-q35": ("hw", "pc"),
    "pc-i440fx": ("hw", "pc"),
    "virt": ("hw",),
    "pseries": ("hw",),
    "s390-ccw-virtio": ("hw",),
}


def _versioned_machines() -> list[tuple[str, str]]:
    out = []
    for rel in compat_releases():
        t = compat_table(rel)
        for m in t.machines.values():
            if m.version is not None and m.registered and m.family in _KINDS:
                out.append((str(rel), m.name))
    return out


MACHINES = _versioned_machines()


@pytest.mark.property
@settings(max_examples=300, deadline=None)
@given(st.sampled_from(MACHINES))
def test_rule_matches_extracted_order(case: tuple[str, str]) -> None:
    """Machine X.Y adds hw(/pc)_compat_V for every V >= X.Y, newest first."""
    rel, name = case
    t = compat_table(rel)
    m = t.machines[name]
    extracted = [a for a in m.arrays if (v := versioned_array(a)) and v[0] in _KINDS[m.family]]
    assert extracted == rule_arrays(m.version, list(t.arrays), _KINDS[m.family])


@pytest.mark.property
@settings(max_examples=300, deadline=None)
@given(st.sampled_from(MACHINES))
def test_older_array_wins(case: tuple[str, str]) -> None:
    """Each effective value comes from the lowest-version versioned array that sets it."""
    rel, name = case
    t = compat_table(rel)
    m = t.machines[name]
    _, props = effective_properties(name, rel)
    for p in props:
        setters = [a for a in m.arrays if any(e.key == (p.driver, p.property) for e in t.arrays[a])]
        versioned = [a for a in setters if versioned_array(a)]
        if versioned:
            oldest = min(
                versioned,
                key=lambda a: (
                    versioned_array(a)[1],  # type: ignore[index]
                    m.arrays.index(a),
                ),
            )
            # within one version, pc_compat_X_Y is added after hw_compat_X_Y and wins
            same = [a for a in versioned if versioned_array(a)[1] == versioned_array(oldest)[1]]  # type: ignore[index]
            assert p.array == max(same, key=m.arrays.index)


@pytest.mark.property
@given(
    st.sampled_from(sorted({v for _, n in MACHINES for v in [MachineType(n).version]})),
    st.lists(
        st.tuples(st.sampled_from(["hw", "pc"]), st.integers(2, 12), st.integers(0, 12)),
        max_size=30,
    ),
)
def test_rule_arrays_shape(version: Release, arrays: list[tuple[str, int, int]]) -> None:
    names = [f"{k}_compat_{a}_{b}" for k, a, b in arrays]
    got = rule_arrays(version, names, ("hw", "pc"))
    vers = [versioned_array(a)[1] for a in got]  # type: ignore[index]
    assert all(v >= version.line for v in vers)
    assert vers == sorted(vers, reverse=True)
    assert set(got) == {n for n in names if versioned_array(n)[1] >= version.line}  # type: ignore[index]


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "migcompat", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_machine_show_json() -> None:
    r = _cli("machine", "show", "q35", "--release", "10.0", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["machine"] == "pc-q35-10.0" and out["requested"] == "q35"
    r = _cli(
        "machine", "show", "pc-q35-8.2", "--release", "10.2", "--driver", "migration", "--json"
    )
    props = {p["property"]: p for p in json.loads(r.stdout)["properties"]}
    assert props["zero-page-detection"]["array"] == "hw_compat_8_2"
    assert props["zero-page-detection"]["provenance"].startswith("hw/core/machine.c:")


def test_cli_machine_errors_exit_2() -> None:
    r = _cli("machine", "show", "pc-q35-4.2", "--release", "10.2")
    assert r.returncode == 2
    assert "pc-q35-4.2" in r.stderr and "oldest is 5.0" in r.stderr
    assert "Traceback" not in r.stderr
    r = _cli("machine", "show", "q35", "--release", "11.1")
    assert r.returncode == 2 and "no compat table for QEMU 11.1" in r.stderr
    r = _cli("machine", "show", "bogus", "--release", "10.2")
    assert r.returncode == 2 and "aliases" in r.stderr


def test_cli_machine_diff_and_list() -> None:
    r = _cli("machine", "diff", "pc-q35-9.2", "pc-q35-10.0", "--release", "10.2", "--json")
    assert r.returncode == 0
    only = {(p["driver"], p["property"]) for p in json.loads(r.stdout)["only_a"]}
    assert ("migration", "send-switchover-start") in only
    r = _cli("machine", "list", "--release", "10.2", "--family", "pc-q35", "--json")
    names = [m["name"] for m in json.loads(r.stdout)["machines"]]
    assert names[0] == "pc-q35-5.0" and names[-1] == "pc-q35-10.2"
    r = _cli("machine", "list", "--release", "10.2")
    assert r.returncode == 0 and "pc-q35-10.2" in r.stdout


def test_function_local_arrays_are_scoped() -> None:
    """s390x declares ``static GlobalProperty compat[]`` in each options function."""
    t = compat_table("10.2")
    m = t.resolve("s390-ccw-virtio-7.1")
    local = [a for a in m.arrays if "@" in a]
    assert local == [
        "compat@ccw_machine_9_2_class_options",
        "compat@ccw_machine_9_0_class_options",
        "compat@ccw_machine_7_1_class_options",
    ]
    _, props = effective_properties("s390-ccw-virtio-7.1", "10.2", driver="zpci")
    assert {p.property: p.value for p in props} == {
        "relaxed-translation": "off",
        "interpret": "off",
        "forwarding-assist": "off",
    }
    _, props = effective_properties("s390-ccw-virtio-9.2", "10.2", driver="zpci")
    assert {p.property for p in props} == {"relaxed-translation"}


def test_overlay_adds_compat_entry_to_previous_line() -> None:
    _, props = effective_properties("pc-q35-10.1", "10.2+keepalive", driver="migration")
    p = {x.property: x for x in props}["postcopy-rp-keepalive-period"]
    assert p.value == "0" and p.array == "hw_compat_10_1"
    _, props = effective_properties("q35", "10.2+keepalive", driver="migration")
    assert "postcopy-rp-keepalive-period" not in {x.property for x in props}
    _, props = effective_properties("pc-q35-10.1", "10.2", driver="migration")
    assert "postcopy-rp-keepalive-period" not in {x.property for x in props}
