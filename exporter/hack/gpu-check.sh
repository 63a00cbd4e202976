#!/usr/bin/env bash
# Real-hardware check of the kubemeter GPU exporter (see README.md next to this file).
#
# On a machine with an NVIDIA GPU, PyTorch and no network:
#   1. installs kubemeter from the wheels in ./wheels into a fresh venv (system site
#      packages visible, so the machine's PyTorch is used),
#   2. starts the exporter with the REAL NVML backend (no kubelet, no API server: GPU
#      processes show up in the unattributed series, namespace="" pod=""),
#   3. runs a CUDA load with PyTorch for LOAD_S seconds, then waits AFTER_S seconds,
#   4. prints /metrics before, during and after the load, and checks: the GPU's model is
#      reported, per-process samples exist for the load's PID, the counters grow while the
#      load runs and stay flat after it ends.
#
# Usage: exporter/hack/gpu-check.sh            (about a minute)
# Env:   PYTHON (default python3), LOAD_S (30), AFTER_S (15), PORT (19400),
#        DRY_RUN=1 (plumbing test without a GPU: simulated backend, no PyTorch)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
LOAD_S="${LOAD_S:-30}"
AFTER_S="${AFTER_S:-15}"
PORT="${PORT:-19400}"
DRY_RUN="${DRY_RUN:-0}"
WORK="$(mktemp -d /tmp/kubemeter-gpu-check.XXXXXX)"
EXPORTER_PID=""
LOAD_PID=""

cleanup() {
  [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null || true
  [ -n "$EXPORTER_PID" ] && kill "$EXPORTER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

say() { printf '\n=== %s\n' "$*"; }

say "machine"
if command -v nvidia-smi >/dev/null; then nvidia-smi -L || true; else echo "nvidia-smi: not found"; fi
"$PYTHON" --version

say "install kubemeter from $HERE/wheels"
"$PYTHON" -m venv --system-site-packages "$WORK/venv"
VPY="$WORK/venv/bin/python"
if ls "$HERE"/wheels/kubemeter-*.whl >/dev/null 2>&1; then
  if ! "$VPY" -m pip install -q --no-index --find-links "$HERE/wheels" kubemeter; then
    echo "full install failed; installing the exporter's own dependencies only"
    "$VPY" -m pip install -q --no-index --find-links "$HERE/wheels" --no-deps kubemeter
    "$VPY" -m pip install -q --no-index --find-links "$HERE/wheels" \
      nvidia-ml-py prometheus-client grpcio protobuf PyYAML pydantic
  fi
elif "$PYTHON" -c "import kubemeter_exporter" 2>/dev/null; then
  echo "no wheels; using the kubemeter already importable by $PYTHON"
  VPY="$PYTHON"
else
  echo "no wheels in $HERE/wheels and kubemeter is not installed: see $HERE/README.md" >&2
  exit 2
fi
"$VPY" -c "import kubemeter_exporter, pynvml, prometheus_client; print('kubemeter', kubemeter_exporter.__version__)"

say "start the exporter (real NVML backend)"
ARGS=(--listen "127.0.0.1:$PORT" --interval 1s --no-kube --node-name "$(hostname)"
      --pod-resources-socket "$WORK/no-kubelet.sock" --log-level INFO)
if [ "$DRY_RUN" = "1" ]; then
  ARGS+=(--simulate "$HERE/../../examples/scenarios/demo.yaml")
fi
"$VPY" -m kubemeter_exporter.cli "${ARGS[@]}" >"$WORK/exporter.log" 2>&1 &
EXPORTER_PID=$!
for _ in $(seq 1 50); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -s "http://127.0.0.1:$PORT/healthz" || { cat "$WORK/exporter.log"; exit 1; }

snapshot() {  # snapshot NAME: save /metrics and print the kubemeter lines
  curl -s "http://127.0.0.1:$PORT/metrics" >"$WORK/$1.prom"
  say "/metrics ($1)"
  grep -E '^kubemeter_' "$WORK/$1.prom" | grep -v '_created' || true
}

sleep 3
snapshot before

say "CUDA load for ${LOAD_S}s"
if [ "$DRY_RUN" = "1" ]; then
  sleep "$LOAD_S" &
else
  "$VPY" - "$LOAD_S" <<'PY' &
import sys, time
import torch
assert torch.cuda.is_available(), "PyTorch sees no CUDA device"
end = time.time() + float(sys.argv[1])
a = torch.randn(8192, 8192, device="cuda")
b = torch.randn(8192, 8192, device="cuda")
n = 0
while time.time() < end:
    c = a @ b
    n += 1
    if n % 50 == 0:
        torch.cuda.synchronize()
torch.cuda.synchronize()
print(f"load done: {n} matmuls on {torch.cuda.get_device_name(0)}", flush=True)
PY
fi
LOAD_PID=$!
echo "load pid $LOAD_PID"
sleep $(( LOAD_S / 3 ))
snapshot during-1
sleep $(( LOAD_S / 3 ))
snapshot during-2
wait "$LOAD_PID" || true
LOAD_PID_DONE=$LOAD_PID
LOAD_PID=""
sleep 3
snapshot after-1
sleep "$AFTER_S"
snapshot after-2

say "checks"
set +e
"$VPY" - "$WORK" "$LOAD_PID_DONE" "$DRY_RUN" <<'PY'
import sys
from pathlib import Path
from prometheus_client.parser import text_string_to_metric_families

work, load_pid, dry = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"

def read(name):
    out = {}
    for fam in text_string_to_metric_families((work / f"{name}.prom").read_text()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out

def total(m, metric):
    return sum(v for _, v in m.get(metric, []))

snaps = {n: read(n) for n in ("before", "during-1", "during-2", "after-1", "after-2")}
ok = True
def check(cond, text):
    global ok
    ok &= bool(cond)
    print(("PASS " if cond else "FAIL ") + text)

d2 = snaps["during-2"]
models = {l["gpu_model"] for l, _ in d2.get("kubemeter_gpu_info", [])}
check(models, f"GPU model(s) reported: {sorted(models)}")
up = [v for _, v in d2.get("kubemeter_exporter_nvml_up", [])]
check(up == [1.0], f"NVML up during the load: {up}")
pids = {l["pid"]: v for l, v in d2.get("kubemeter_gpu_process_sm_utilization_percent", [])}
check(dry or load_pid in pids, f"per-process sample for load pid {load_pid}: {pids}")
A = "kubemeter_gpu_allocated_milliseconds_total"
B = "kubemeter_gpu_active_milliseconds_total"
a = [total(snaps[n], A) for n in ("during-1", "during-2", "after-1", "after-2")]
b = [total(snaps[n], B) for n in ("during-1", "during-2", "after-1", "after-2")]
print(f"allocated ms: during {a[0]:.0f} -> {a[1]:.0f}, after {a[2]:.0f} -> {a[3]:.0f}")
print(f"active ms:    during {b[0]:.0f} -> {b[1]:.0f}, after {b[2]:.0f} -> {b[3]:.0f}")
check(a[1] > a[0] and b[1] > b[0], "counters grow while the load runs")
check(dry or (a[3] == a[2] and b[3] == b[2]), "counters are flat after the load ended")
errs = {l["reason"]: v for l, v in d2.get("kubemeter_exporter_nvml_errors_total", [])}
print(f"nvml errors: {errs}")
sys.exit(0 if ok else 1)
PY
RC=$?
say "exporter log"
tail -n 30 "$WORK/exporter.log"
exit $RC
