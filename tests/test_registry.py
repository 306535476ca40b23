"""harness.registry.Registry: duplicates name both sources, conflicts fail on lookup, "did you mean"."""

from __future__ import annotations

import pytest

from harness.errors import ConfigError, DuplicateNameError, HarnessError, UnknownNameError
from harness.registry import Registry


@pytest.fixture
def reg() -> Registry[str]:
    r: Registry[str] = Registry("distiller")
    for name in ("random", "full", "sldd", "dd", "ld-rr", "ld"):
        r.register(name, f"item-{name}", "harness-distillers")
    return r


def test_register_get_source_contains_len(reg):
    assert reg.get("sldd") == "item-sldd"
    assert reg.source("sldd") == "harness-distillers"
    assert "sldd" in reg and "nope" not in reg
    assert len(reg) == 6
    assert [(n, s) for n, _, s in reg.items()] == [(n, "harness-distillers") for n in sorted(reg.names())]


def test_duplicate_names_both_distributions(reg):
    with pytest.raises(DuplicateNameError) as info:
        reg.register("random", "other", "thirdparty-dist")
    msg = str(info.value)
    assert "distiller 'random'" in msg
    assert "harness-distillers" in msg and "thirdparty-dist" in msg
    assert "HARNESS_PLUGINS" in msg  # says how to fix it
    assert isinstance(info.value, HarnessError) and info.value.exit_code == 2


def test_conflicting_name_fails_on_lookup_too(reg):
    with pytest.raises(DuplicateNameError):
        reg.register("random", "other", "thirdparty-dist")
    # neither plugin is silently picked
    with pytest.raises(DuplicateNameError, match=r"harness-distillers and thirdparty-dist"):
        reg.get("random")
    with pytest.raises(DuplicateNameError):
        reg.source("random")
    assert "random" not in reg
    assert "random" not in reg.names()
    assert len(reg) == 5
    # other names are unaffected
    assert reg.get("full") == "item-full"


def test_third_registration_of_a_conflict_is_still_a_conflict(reg):
    with pytest.raises(DuplicateNameError):
        reg.register("random", "b", "dist-b")
    with pytest.raises(DuplicateNameError, match="dist-c"):
        reg.register("random", "c", "dist-c")
    with pytest.raises(DuplicateNameError) as info:
        reg.get("random")
    for dist in ("harness-distillers", "dist-b", "dist-c"):
        assert dist in str(info.value)


def test_same_source_registering_twice_is_a_duplicate_too():
    r: Registry[int] = Registry("dataset")
    r.register("digits", 1, "harness-vision")
    with pytest.raises(DuplicateNameError, match="dataset 'digits'"):
        r.register("digits", 2, "harness-vision")


@pytest.mark.parametrize(
    "typo, suggestion",
    [("rnadom", "random"), ("randm", "random"), ("slld", "sldd"), ("ful", "full"), ("ld_rr", "ld-rr")],
)
def test_unknown_name_did_you_mean(reg, typo, suggestion):
    with pytest.raises(UnknownNameError) as info:
        reg.get(typo)
    msg = str(info.value)
    assert msg.startswith(f"unknown distiller '{typo}'")
    assert f"did you mean '{suggestion}'?" in msg
    assert "known: dd, full, ld, ld-rr, random, sldd" in msg
    assert isinstance(info.value, ConfigError)  # a user-fixable input error: exit code 2


def test_unknown_name_without_close_match_lists_known(reg):
    with pytest.raises(UnknownNameError) as info:
        reg.get("zzzzzzzz")
    msg = str(info.value)
    assert "did you mean" not in msg
    assert "known: dd, full, ld, ld-rr, random, sldd" in msg
    assert "harness ls" in msg


def test_unknown_name_in_empty_registry():
    with pytest.raises(UnknownNameError, match="none registered"):
        Registry("executor").get("ray")


def test_suggest(reg):
    assert reg.suggest("sld") == "sldd"
    assert reg.suggest("qqqq") is None


@pytest.mark.parametrize(
    "pattern, expected",
    [
        (None, ["dd", "full", "ld", "ld-rr", "random", "sldd"]),
        ("", ["dd", "full", "ld", "ld-rr", "random", "sldd"]),
        ("ld", ["ld", "ld-rr", "sldd"]),  # plain text: substring match
        ("dd", ["dd", "sldd"]),
        ("ld*", ["ld", "ld-rr"]),  # glob: anchored
        ("*d", ["dd", "ld", "sldd"]),
        ("?d", ["dd", "ld"]),
        ("[fr]*", ["full", "random"]),
        ("nothing", []),
    ],
)
def test_names_pattern(reg, pattern, expected):
    assert reg.names(pattern) == expected
