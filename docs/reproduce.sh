#!/usr/bin/env bash
# Regenerate the figures of README.md and docs/: every run they quote, with its wall time.
#
#   bash docs/reproduce.sh                 # every section, about 25 min on 2 cores
#   bash docs/reproduce.sh blog sweeps     # some sections: blog sweeps grid seeds10k
#                                          #   distributed benchmark fuzz
#
# Outputs go to $REPRO_OUT (default: repro/, ignored by git): one folder per section with
# the command's outputs and its log (stdout, stderr and `/usr/bin/time -v`), and
# repro/STAMP: date, machine and versions. The figures docs/ shows are copied from there
# into docs/figures/. Run it on a quiet machine: the timings are wall times. The numbers
# in the docs are then read off the logs and summary.json files (section by section, the
# page that quotes them is named below).
set -euo pipefail
cd "$(dirname "$0")/.."

out="${REPRO_OUT:-repro}"
python="${PYTHON:-python}"
mkdir -p "$out"
all=(blog sweeps grid seeds10k distributed benchmark fuzz)
sections=("$@")
[ ${#sections[@]} -gt 0 ] || sections=("${all[@]}")

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "python: $("$python" -c 'import sys; print(sys.version.split()[0])')"
    "$python" -m pip list --format=freeze 2>/dev/null |
        grep -iE '^(jax|jaxlib|flax|optax|numpy|torch|scikit-learn|jax-iris)==' || true
} >"$out/STAMP"
cat "$out/STAMP"

# timed NAME CMD...: run CMD under /usr/bin/time -v, its output in $out/NAME.log.
timed() {
    local name="$1"
    shift
    local start=$SECONDS
    /usr/bin/time -v "$@" >"$out/$name.log" 2>&1
    echo "$name: $((SECONDS - start)) s wall, peak $(awk '/Maximum resident/ {print int($NF / 1024)}' "$out/$name.log") MB"
}

sweep() { timed "$1" "$python" scripts/sweep.py "${@:2}"; }

for section in "${sections[@]}"; do
    start=$SECONDS
    echo "== $section"
    case "$section" in
    blog) # README: the blog's table (train.log) and its two curves
        mkdir -p "$out/blog"
        root="$PWD"
        (
            cd "$out/blog"
            /usr/bin/time -v "$python" "$root/scripts/train.py" --arch both --baselines \
                >train.log 2>&1
            "$python" "$root/scripts/plot.py" checkpoints/atten.pkl checkpoints/linear.pkl \
                --out figures >plot.log 2>&1
        )
        cp "$out/blog/figures/accuracy.png" "$out/blog/figures/loss.png" docs/figures/
        ;;
    sweeps) # docs/results.md: the seed sweeps, on the blog's split and a split per net
        sweep sigmoid --arch atten linear --seeds 1000 --out "$out/sigmoid"
        sweep logits --arch atten linear --seeds 1000 --head logits --out "$out/logits"
        sweep vary_sigmoid --arch atten linear --seeds 1000 --vary-split --out "$out/vary_sigmoid"
        sweep vary_logits --arch atten linear --seeds 1000 --vary-split --head logits \
            --out "$out/vary_logits"
        cp "$out/sigmoid/accuracy.png" docs/figures/sweep_sigmoid.png
        cp "$out/logits/accuracy.png" docs/figures/sweep_logits.png
        ;;
    grid) # docs/results.md: 9,600 nets over learning rate and weight decay
        sweep grid --arch atten linear --head sigmoid logits --seeds 200 \
            --lr 0.001 0.005 0.02 0.05 --weight-decay 0 1e-3 1e-2 --out "$out/grid"
        cp "$out/grid/success.png" docs/figures/grid_success.png
        cp "$out/grid/paired_test_accuracy.png" docs/figures/grid_paired.png
        ;;
    seeds10k) # docs/performance.md: memory stays flat over 10 chunks
        sweep seeds10k --arch atten --seeds 10000 --out "$out/seeds10k"
        ;;
    distributed) # docs/sweeps.md: one process x 2 devices against 2 processes x 1 device
        args=(--arch atten --seeds 200 --epochs 1000)
        export JAX_PLATFORMS=cpu
        rm -rf "$out/dist_one" "$out/dist_two"  # timed from scratch, not resumed
        JAX_IRIS_CACHE_DIR= sweep dist_one "${args[@]}" --host-devices 2 --out "$out/dist_one"
        port=$(( 20000 + RANDOM % 20000 ))
        JAX_IRIS_CACHE_DIR= "$python" scripts/sweep.py "${args[@]}" --host-devices 1 \
            --out "$out/dist_two" --coordinator "127.0.0.1:$port" --num-processes 2 \
            --process-id 1 >"$out/dist_two_1.log" 2>&1 &
        JAX_IRIS_CACHE_DIR= sweep dist_two "${args[@]}" --host-devices 1 --out "$out/dist_two" \
            --coordinator "127.0.0.1:$port" --num-processes 2 --process-id 0
        wait
        cmp "$out/dist_one/sweep.csv" "$out/dist_two/sweep.csv" && echo "sweep.csv identical"
        # Dead-process detection: kill -9 one process's command mid-sweep (after the join
        # and compile), and time how long the other takes to stop.
        for victim in 1 0; do
            port=$(( 20000 + RANDOM % 20000 ))
            rm -rf "$out/dead_$victim"
            pids=()
            for id in 0 1; do
                JAX_IRIS_CACHE_DIR= "$python" scripts/sweep.py --arch atten --seeds 4000 \
                    --host-devices 1 --out "$out/dead_$victim" \
                    --coordinator "127.0.0.1:$port" --num-processes 2 --process-id "$id" \
                    >"$out/dead_${victim}_$id.log" 2>&1 &
                pids+=($!)
            done
            sleep 30
            kill -9 "${pids[$victim]}"
            killed=$(date +%s.%N)
            status=0
            wait "${pids[$((1 - victim))]}" || status=$?
            wait "${pids[$victim]}" || true
            took=$("$python" -c "import time; print(f'{time.time() - $killed:.1f}')")
            echo "process $((1 - victim)) stopped $took s" \
                "after process $victim was killed (exit $status):" \
                "$(tail -n 1 "$out/dead_${victim}_$((1 - victim)).log")"
        done
        ;;
    benchmark) # docs/performance.md: JAX against PyTorch, and the fused program's flags
        timed benchmark "$python" benchmarks/benchmark.py --repeats 2
        timed benchmark_linear "$python" benchmarks/benchmark.py --arch linear --repeats 2 \
            --skip a c d
        timed fused_bench "$python" benchmarks/fused_bench.py
        ;;
    fuzz) # docs/troubleshooting.md: signals at random moments
        JAX_IRIS_FUZZ_TRIES=3 timed fuzz "$python" -m pytest -q -s -p no:cacheprovider \
            tests/test_signal_fuzz.py
        ;;
    *)
        echo "unknown section $section: expected one of ${all[*]}" >&2
        exit 2
        ;;
    esac
    echo "== $section: $((SECONDS - start)) s"
done
