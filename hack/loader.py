"""The one way the scripts in hack/ and bench/ import hack/ helpers and tests/support.

hack/*.py and bench/*.py are scripts (`python bench/bench_ingest.py`), not an installed
package, and the repository root is never put on sys.path (tests/conftest.py says why). So:

- `load_hack("pgtmp")` imports hack/pgtmp.py once and keeps it in sys.modules as
  `kubemeter_pgtmp`, the name tests/support gives it too: a process that loads a helper both
  ways holds one copy of it (one `PostgresUnavailableError`, one `DevClusterError`).
- `load_support("prometheus")` imports tests/support/prometheus.py as `support.prometheus`,
  as the test suite does (pytest's `pythonpath = ["tests"]`): tests/ goes on sys.path.

A script names what it needs as an attribute of this module, which loads it on first use
(a module `__getattr__`, PEP 562); mypy, which checks hack/ and bench/ as top-level modules
(pyproject.toml, [tool.mypy]), sees the real modules through the imports under
TYPE_CHECKING below, so the script keeps the helper's types:

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hack"))  # bench/ only
    from loader import devcluster, pgtmp, prometheus

hack/ scripts find this module as their own sibling; bench/ scripts put hack/ on sys.path
first. A new helper gets a line under TYPE_CHECKING. Standard library only; a script never
imports a helper by its plain name (`import pgtmp`): that would be a second copy of it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what mypy sees; at run time `_load_attribute` loads them on first use
    import devcluster as devcluster
    import pgtmp as pgtmp

    from support import prometheus as prometheus

HACK_DIR = Path(__file__).resolve().parent
REPO_ROOT = HACK_DIR.parent
SUPPORT_DIR = REPO_ROOT / "tests" / "support"


def load_hack(name: str) -> ModuleType:
    """hack/<name>.py, imported on the first call as `kubemeter_<name>`, cached after."""
    module_name = f"kubemeter_{name}"
    cached = sys.modules.get(module_name)
    if cached is not None:
        return cached
    path = HACK_DIR / f"{name}.py"
    if not path.is_file():
        raise ModuleNotFoundError(f"no hack helper {path}", name=module_name, path=str(path))
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}", name=module_name, path=str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while it runs
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def load_support(name: str) -> ModuleType:
    """tests/support/<name>.py as `support.<name>`, with tests/ put on sys.path once."""
    tests = str(SUPPORT_DIR.parent)
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module(f"support.{name}")


def _load_attribute(name: str) -> ModuleType:
    """`loader.<name>`: hack/<name>.py if there is one, else tests/support/<name>.py."""
    if not name.startswith("_"):
        if (HACK_DIR / f"{name}.py").is_file():
            return load_hack(name)
        if (SUPPORT_DIR / f"{name}.py").is_file():
            return load_support(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if not TYPE_CHECKING:  # hidden from mypy, which would type every unknown name as a module
    __getattr__ = _load_attribute
