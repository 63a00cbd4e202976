"""Test-suite wiring. Fixture plugins live in tests/support (on sys.path via pytest's
`pythonpath = ["tests"]`; the repo root is never put on sys.path, so `operator/` cannot
shadow the standard library)."""

pytest_plugins = ["support.cluster"]
