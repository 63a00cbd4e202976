"""The exporter needs no Kubernetes API: no module imports a Kubernetes client, it runs with
``kubernetes`` unimportable, and the flags that used to configure the API are no-ops."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from kubemeter_exporter.cli import build, build_parser

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "exporter" / "kubemeter_exporter"
FORBIDDEN = {"kubernetes", "kubernetes_asyncio", "kopf", "kubemeter_operator"}


def imported_modules(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_no_exporter_module_imports_a_kubernetes_client() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10
    bad = {
        f"{f.relative_to(ROOT)}: {m}"
        for f in files
        for m in imported_modules(f)
        if m.split(".")[0] in FORBIDDEN
    }
    assert not bad


_PROBE = textwrap.dedent(
    """
    import json, pkgutil, importlib, sys
    sys.modules["kubernetes"] = None  # any `import kubernetes` now raises ImportError
    before = set(sys.modules)
    import kubemeter_exporter
    from kubemeter_exporter import cli
    from kubemeter_exporter.podresources.client import PodResourcesError

    # The real node path: NVML (absent here), the kubelet socket (absent), /proc.
    args = cli.build_parser().parse_args(
        ["--pod-resources-socket", sys.argv[1], "--kubeconfig", "/nonexistent", "--no-kube"]
    )
    collector, closers = cli.build(args)
    collector.sample()
    try:
        collector.pod_resources.list()
    except PodResourcesError:
        pass
    import kubemeter_exporter.server
    real = sorted(
        {m.split(".")[0] for m in sys.modules if m not in before}
        - set(sys.stdlib_module_names)
    )
    # Every module, and a simulated run.
    for mod in pkgutil.walk_packages(kubemeter_exporter.__path__, "kubemeter_exporter."):
        importlib.import_module(mod.name)
    sim, sim_closers = cli.build(
        cli.build_parser().parse_args(["--simulate", sys.argv[2], "--kubeconfig", "/x"])
    )
    for _ in range(3):
        sim.sample()
    for c in sim_closers:
        c.close()
    print(json.dumps({
        "real": real,
        "kubernetes": [m for m in sys.modules if m.split(".")[0] == "kubernetes"
                       and sys.modules[m] is not None],
        "sim_series": len(sim.series),
    }))
    """
)


def test_exporter_runs_with_kubernetes_unimportable(tmp_path: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            _PROBE,
            str(tmp_path / "no-kubelet.sock"),
            str(ROOT / "examples" / "scenarios" / "demo.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["kubernetes"] == []
    assert out["sim_series"] > 0
    # On a node the exporter needs NVML, prometheus_client and gRPC/protobuf, nothing else
    # (grpc's own imports: typing_extensions, and its optional grpc_* add-ons when present).
    allowed = {"kubemeter_exporter", "pynvml", "prometheus_client", "google", "cython_runtime"}
    extra = [
        m
        for m in out["real"]
        if m not in allowed and not m.startswith(("grpc", "_")) and m != "typing_extensions"
    ]
    assert extra == []


def test_api_flags_are_accepted_and_do_nothing(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "--kubeconfig",
            str(tmp_path / "missing-kubeconfig"),
            "--no-kube",
            "--pod-resources-socket",
            str(tmp_path / "kubelet.sock"),
            "--proc-root",
            str(tmp_path),
        ]
    )
    assert args.no_kube
    collector, closers = build(args)
    try:
        assert collector.pod_resources is not None  # the kubelet is the only pod source
        assert not hasattr(collector, "pods")
        collector.sample()  # no API server, no NVML: it still samples, never raises
    finally:
        for c in closers:
            getattr(c, "close", lambda: None)()
