#!/usr/bin/env bash
# Measure what a real torchvision/torchaudio install costs, next to the project's current CPU-torch set.
#
# Why: laion-clap imports torchvision and encodec 0.1.1 imports torchaudio; neither PyPI build loads
# beside the CPU torch 2.13.0 wheel (their .so files link libtorch_cuda / libc10_cuda). This script
# builds each candidate environment in a fresh scratch venv under $SCRATCH (never the project's .venv),
# with an empty pip cache so the timings are those of a fresh CI machine, and records
#   - wall time of each install step, and the venv size,
#   - whether torchvision / torchaudio / laion_clap / encodec import, and `pip check`,
#   - the import time of torch and of the two metric libraries.
#
# Usage:  bash benchmarks/measure_installs.sh [current] [torch214] [torch29]     (default: all three)
# Output: one line per measurement on stdout, and $SCRATCH/<option>/measure.log.
# RUN_TESTS=1 also runs tests/test_metrics.py and tests/test_embedders.py with each venv (in the
# torch214/torch29 venvs the stand-in tests fail by design: they say the shims can go).
# KEEP=1 keeps the venvs (default: removed; they take 2–8 GB each).
set -uo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
SCRATCH="${SCRATCH:-/tmp/eeg2music_install_bench}"
PYTHON="${PYTHON:-python3}"
OPTIONS=("$@")
[ ${#OPTIONS[@]} -eq 0 ] && OPTIONS=(current torch214 torch29)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# The project's runtime requirements, read from pyproject.toml (torch is installed by each option first).
project_requirements() {
    "$PYTHON" - "$REPO/pyproject.toml" <<'EOF'
import sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
print("\n".join(d for d in deps if not d.replace(" ", "").startswith("torch")))
EOF
}

timed() {  # timed LABEL CMD... : run CMD, print "LABEL seconds status"
    local label=$1; shift
    local start end status
    start=$(date +%s.%N)
    "$@" >>"$LOG" 2>&1
    status=$?
    end=$(date +%s.%N)
    printf '%-28s %7.1f s  exit %d\n' "$label" "$(echo "$end - $start" | bc)" "$status"
}

probe_imports() {  # which libraries import, and how long the imports take (cold-ish, second run)
    "$VENV/bin/python" - <<'EOF'
import importlib, time
for name in ("torch", "torchvision", "torchaudio", "laion_clap", "encodec"):
    start = time.perf_counter()
    try:
        module = importlib.import_module(name)
        version = getattr(module, "__version__", "")
        print(f"import {name:<12} ok    {time.perf_counter() - start:5.1f} s  {version}")
    except Exception as err:  # report, do not stop: the point is to see which fail
        print(f"import {name:<12} FAIL  {type(err).__name__}: {str(err)[:120]}")
EOF
}

for option in "${OPTIONS[@]}"; do
    VENV="$SCRATCH/$option/venv"
    LOG="$SCRATCH/$option/measure.log"
    rm -rf "$SCRATCH/$option"
    mkdir -p "$SCRATCH/$option"
    export PIP_CACHE_DIR="$SCRATCH/$option/pip-cache"   # empty cache: a fresh machine
    echo "== $option  ($(date -u +%FT%TZ), $(nproc) cores)"
    timed "venv + pip upgrade" bash -c "'$PYTHON' -m venv '$VENV' && '$VENV/bin/python' -m pip install -q --upgrade pip"
    case $option in
        current)   # what the Makefile does today: the CPU wheel on this disk, no torchvision/torchaudio
            timed "torch 2.13.0+cpu" "$VENV/bin/pip" install -q "torch==2.13.0"
            EXTRA=(); NO_DEPS=("encodec==0.1.1" "einops") ;;
        torch214)  # the proposal: the CUDA build of torch 2.14.1 (on this disk, runs on CPU) and its
                   # torchvision; torchaudio 2.11.0 (newest on PyPI, declares no torch pin) and encodec as
                   # ordinary requirements, as pyproject.toml would list them
            timed "torch 2.14.1 + tv 0.29.1" "$VENV/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1"
            EXTRA=("torchvision==0.29.1" "torchaudio==2.11.0" "einops>=0.6" "encodec==0.1.1"); NO_DEPS=() ;;
        torch29)   # a set the three PyTorch projects released together, all from PyPI (~3 GB download)
            timed "torch 2.9.1 + tv + ta" "$VENV/bin/pip" install -q "torch==2.9.1" "torchvision==0.24.1" "torchaudio==2.9.1"
            EXTRA=("einops>=0.6" "encodec==0.1.1"); NO_DEPS=() ;;
        *) echo "unknown option $option"; continue ;;
    esac
    mapfile -t requirements < <(project_requirements)
    timed "project requirements" "$VENV/bin/pip" install -q "${requirements[@]}" "${EXTRA[@]}"
    [ ${#NO_DEPS[@]} -gt 0 ] && timed "--no-deps ${NO_DEPS[*]}" "$VENV/bin/pip" install -q --no-deps "${NO_DEPS[@]}"
    rm -rf "$PIP_CACHE_DIR"
    echo "venv size                    $(du -sh "$VENV" | cut -f1)"
    echo "torch versions               $("$VENV/bin/pip" list 2>/dev/null | grep -E '^(torch|torchvision|torchaudio) ' | tr -s ' ' | paste -sd ';')"
    echo "pip check                    $("$VENV/bin/pip" check 2>&1 | tr '\n' ';' | cut -c1-300)"
    probe_imports
    if [ "${RUN_TESTS:-0}" = 1 ]; then  # the metric tests with this venv's libraries (no install of eeg2music)
        ( cd "$REPO" && PYTHONPATH="$REPO" timed "pytest metrics+embedders" "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
            tests/test_metrics.py tests/test_embedders.py )
        tail -n 6 "$LOG" | grep -E "passed|failed" || true
    fi
    [ "${KEEP:-0}" = 1 ] || rm -rf "$VENV"
done
