#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU (pip install -e ".[cuda,test]"), in under
# 8 minutes, one Markdown report of: the devices, the blog's table at matmul precision
# "highest" (and at "default", to show what TF32 changes), the parity tests on the GPU, a
# sweep scaling curve (nets/s, peak device memory, compile time apart), and the benchmark.
#
#   bash scripts/gpu_check.sh [--out REPORT.md] [--allow-cpu]
#
# Without a GPU it refuses in one line (exit 2). --allow-cpu is a dry run on the CPU with
# tiny sizes, to check the script itself; its figures say nothing about a GPU.
# Not yet run on a GPU: see docs/gpu.md.
set -uo pipefail
cd "$(dirname "$0")/.."

PROG="gpu_check.sh"
out="gpu_report.md"
allow_cpu=0
while (($#)); do
    case "$1" in
        --out) out="${2:?}"; shift 2 ;;
        --allow-cpu) allow_cpu=1; shift ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "$PROG: error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
python="${PYTHON:-python3}"  # the environment with jax-iris installed

backend="$("$python" -c 'import jax; print(jax.default_backend())' 2>/dev/null)" || {
    echo "$PROG: error: $python cannot import jax; install the package first (docs/install.md)" >&2
    exit 2
}
if [[ "$backend" != "gpu" && "$allow_cpu" != 1 ]]; then
    echo "$PROG: error: JAX finds no GPU (backend: $backend); install the cuda extra" \
        "(docs/gpu.md) or pass --allow-cpu for a dry run" >&2
    exit 2
fi

if [[ "$backend" == "gpu" ]]; then
    sizes="${SIZES:-1000 10000 100000}"; epochs="${EPOCHS:-1000}"
    bench=(--repeats 1 --skip c); parity=(tests/test_parity.py)
else  # the dry run: every step, tiny sizes, the benchmark without its torch.compile parts
    sizes="${SIZES:-16 64}"; epochs="${EPOCHS:-20}"
    bench=(--epochs 20 --repeats 1 --grid-epochs 5 --skip b c)
    parity=(tests/test_parity.py -m "not slow")
fi
BUDGET_S=470  # every step's limit is cut to what is left of 8 minutes
work="$(mktemp -d "${TMPDIR:-/tmp}/jax_iris_gpu_check.XXXXXX")"
trap 'rm -rf "$work"' EXIT
started=$SECONDS

report() { printf '%s\n' "$@" >> "$work/report.md"; }
# step TITLE LIMIT_S COMMAND...: the command's output in a code block, its time and exit code.
step() {
    local title="$1" limit="$2"; shift 2
    local t0=$SECONDS rc left=$((BUDGET_S - (SECONDS - started)))
    if ((left < 5)); then
        report "## $title" "" "Skipped: the check's 8-minute budget was spent." ""
        return
    fi
    ((limit > left)) && limit=$left
    echo "$PROG: $title" >&2
    timeout "$limit" "$@" > "$work/step.txt" 2>&1
    rc=$?
    report "## $title" "" '```' "$(tail -n 60 "$work/step.txt")" '```' ""
    if ((rc == 124)); then
        report "Stopped after its limit of $limit s."
    else
        report "Exit $rc in $((SECONDS - t0)) s."
    fi
    report ""
}

report "# GPU check" "" "$(date -u '+%Y-%m-%d %H:%M UTC'), backend: $backend" ""
[[ "$backend" == "gpu" ]] || report "**Dry run on the CPU (--allow-cpu): no GPU figures.**" ""

step "Devices and versions" 30 "$python" -c '
import jax, jaxlib
print("jax", jax.__version__, "jaxlib", jaxlib.__version__)
for d in jax.devices():
    print(d.id, d.platform, d.device_kind)'
if command -v nvidia-smi > /dev/null; then
    step "nvidia-smi" 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi

for precision in highest default; do
    step "The blog's table at matmul precision $precision" 60 \
        "$python" scripts/train.py --arch both --matmul-precision "$precision" \
        --no-tensorboard --checkpoint-dir "$work/ck-$precision"
done

step "Parity tests (JAX at highest on this device, PyTorch on the CPU)" 120 \
    env JAX_DEFAULT_MATMUL_PRECISION=highest "$python" -m pytest -q -p no:cacheprovider \
    "${parity[@]}"

cat > "$work/curve.py" <<'PY'
"""Seed sweeps of growing size: the first call compiles and runs, the second only runs."""
import sys
import time

import jax

from jax_iris import platform
from jax_iris.config import TrainConfig
from jax_iris.sweep import train_seeds

epochs, sizes = int(sys.argv[1]), [int(n) for n in sys.argv[2:]]
device = jax.devices()[0]
group = platform.group_size(jax.default_backend())
print(f"{device.device_kind}, {epochs} epochs, attention net, group size {group}")
print(f"{'nets':>8} {'compile+run s':>14} {'run s':>8} {'nets/s':>10} {'peak memory':>12}")
for n in sizes:
    config = TrainConfig(arch="atten", epochs=epochs, log_every=epochs)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        result = train_seeds(config, range(n), group_size=group)
        jax.block_until_ready(jax.tree_util.tree_leaves(result))
        times.append(time.perf_counter() - start)
    stats = device.memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    shown = f"{peak / 2**30:.2f} GiB" if peak else "n/a"
    print(f"{n:>8} {times[0]:>14.2f} {times[1]:>8.2f} {n / times[1]:>10.0f} {shown:>12}", flush=True)
PY
# shellcheck disable=SC2086  # the sizes are words
step "Sweep scaling curve (compile time = first call - second call)" 180 \
    "$python" "$work/curve.py" "$epochs" $sizes
step "Benchmark" 150 "$python" benchmarks/benchmark.py "${bench[@]}"

report "Whole check: $((SECONDS - started)) s."
cp "$work/report.md" "$out"
echo "$PROG: wrote $out ($((SECONDS - started)) s)" >&2
