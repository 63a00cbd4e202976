"""The images install exactly what pyproject.toml asks for: requirements/*.lock are compiled
(by hack/lock.py) from the current dependency lists, pin every input to a version it allows,
carry hashes for every package, and the exporter's lock holds none of the operator's
machinery. The `exporter` extra is exactly what the exporter imports."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from support.paths import REPO_ROOT

LOCK_DIR = REPO_ROOT / "requirements"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
SOURCES = {
    "operator": PYPROJECT["project"]["dependencies"],
    "exporter": PYPROJECT["project"]["optional-dependencies"]["exporter"],
    "build": PYPROJECT["build-system"]["requires"],
}
"""Lock name -> the pyproject list it is compiled from (hack/lock.py)."""
REGENERATE = "run `hack/lock.py` (or `make lock`)"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
_HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def pins(name: str) -> dict[str, tuple[str, int]]:
    """Lock -> {canonical package name: (pinned version, number of sha256 hashes)}."""
    out: dict[str, tuple[str, int]] = {}
    current: str | None = None
    for line in (LOCK_DIR / f"{name}.lock").read_text().splitlines():
        if m := _PIN.match(line):
            current = canonicalize_name(m.group(1))
            out[current] = (m.group(2), 0)
        if current is not None and (n := len(_HASH.findall(line))):
            version, hashes = out[current]
            out[current] = (version, hashes + n)
    return out


def lock_inputs(name: str) -> list[str]:
    """The requirement list hack/lock.py wrote at the top of the lock."""
    lines = (LOCK_DIR / f"{name}.lock").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# compiled from "))
    inputs = []
    for line in lines[start + 1 :]:
        if not line.startswith("#    "):
            break
        inputs.append(line.removeprefix("#    "))
    return inputs


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_lock_is_compiled_from_the_current_pyproject_list(name: str) -> None:
    assert lock_inputs(name) == SOURCES[name], f"requirements/{name}.lock is stale: {REGENERATE}"


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_input_is_pinned_to_a_version_it_allows(name: str) -> None:
    locked = pins(name)
    for text in SOURCES[name]:
        req = Requirement(text)
        key = canonicalize_name(req.name)
        assert key in locked, f"{req.name} is not in requirements/{name}.lock: {REGENERATE}"
        version = locked[key][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements/{name}.lock pins {req.name}=={version}, outside {req.specifier}: "
            + REGENERATE
        )


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_locked_package_carries_sha256_hashes(name: str) -> None:
    locked = pins(name)
    assert locked
    unhashed = sorted(pkg for pkg, (_, hashes) in locked.items() if hashes == 0)
    assert unhashed == [], f"no --hash in requirements/{name}.lock for {unhashed}"


def test_exporter_lock_holds_none_of_the_operator_machinery() -> None:
    machinery = {"kopf", "kubernetes", "sqlalchemy", "psycopg", "prometheus-api-client"}
    assert machinery & set(pins("exporter")) == set()
    assert machinery <= set(pins("operator"))  # the names are spelled as the locks spell them


def test_exporter_extra_uses_the_specifiers_of_the_main_dependencies() -> None:
    main = {canonicalize_name(Requirement(r).name): Requirement(r) for r in SOURCES["operator"]}
    for text in SOURCES["exporter"]:
        req = Requirement(text)
        assert canonicalize_name(req.name) in main, f"{req.name}: not in [project] dependencies"
        assert req.specifier == main[canonicalize_name(req.name)].specifier, req.name


def _third_party_imports(package: Path) -> set[str]:
    """Top-level modules imported anywhere (also inside functions) under `package`."""
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"__future__", package.name}


def test_exporter_extra_is_exactly_what_the_exporter_imports() -> None:
    dists = packages_distributions()
    modules = _third_party_imports(REPO_ROOT / "exporter" / "kubemeter_exporter")
    unknown = sorted(m for m in modules if m not in dists)
    assert unknown == [], f"imported by the exporter but installed by no distribution: {unknown}"
    imported = {canonicalize_name(d) for m in modules for d in dists[m]}
    extra = {canonicalize_name(Requirement(r).name) for r in SOURCES["exporter"]}
    assert imported == extra, (
        f"missing from the exporter extra: {sorted(imported - extra)}; "
        f"listed but not imported: {sorted(extra - imported)}"
    )
