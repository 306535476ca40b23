"""The public contract covers what plugins use: plugins import only ``harness`` and ``harness.testing``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import harness

REPO = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = {"harness", "harness.testing"}


def _harness_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in names
                  if (n == "harness" or n.startswith("harness.")) and n not in PUBLIC_MODULES]
    return found


def test_plugins_and_examples_import_only_the_public_api():
    files = [p for root in ("plugins", "examples") for p in (REPO / root).rglob("*.py")]
    assert len(files) > 20
    private = [hit for p in files for hit in _harness_imports(p)]
    assert private == [], "plugins must import from `harness` (or `harness.testing`) only:\n" + "\n".join(private)


def test_every_exported_name_resolves():
    for name in harness.__all__:
        assert getattr(harness, name) is not None, name
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        harness.nope  # noqa: B018


def test_import_harness_does_not_import_torch():
    code = "import sys, harness; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_docs_the_code_and_readme_cite_exist_and_link_to_real_files():
    """The contract, protocol and plugin guide live in the repository, and every relative link in
    them (and in the README) points at a file that exists."""
    import re

    docs = REPO / "docs"
    assert {"contract.md", "protocol.md", "plugins.md", "offline-data.md"} <= {p.name for p in docs.glob("*.md")}
    cited = set()
    for path in [*(REPO / "harness").rglob("*.py"), REPO / "README.md"]:
        cited |= set(re.findall(r"docs/[\w.-]+\.md", path.read_text(encoding="utf-8")))
    assert cited and all((REPO / c).is_file() for c in cited), cited
    for page in [REPO / "README.md", REPO / "examples" / "README.md", *docs.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).exists(), f"{page.relative_to(REPO)} links to missing {target}"
