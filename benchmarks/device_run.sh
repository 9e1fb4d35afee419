#!/usr/bin/env bash
# One GPU lease in one call: the GPU check, then as many chunks of the GPU study as the time allows,
# each chunk's results packed for the trip back. For a machine with a GPU, torch, pyarrow and PyYAML
# and no network: Ray and pydantic come as carried wheels (../shared/tools/device-wheels.sh builds
# .whl/). Everything it returns is in $OUT: log, bench.txt (the GPU check's table), bench.json,
# calibration.json (the package's table with this GPU's rows measured here) and chunks.pack.json +
# chunks.tgz.NNN (every chunk run here, `python -m orchestrator.pack --unpack OUT DEST` restores
# them) - at most 8 files of at most 16 MiB, checked at the end.
#
#   benchmarks/device_run.sh                              # check, then chunks 1, 2, ... of 54 while time allows
#   benchmarks/device_run.sh --no-bench --chunks "7 8"    # the next lease: chunks 7 and 8 (if they fit)
#   benchmarks/device_run.sh --dry --chunks 1             # on a CPU: the same steps, tiny (tests run this)
#
# Options: --chunks "I J ..." (default 1..N), --of N (default 54: sweeps/gpu_study.yaml's chunk count
# for 6 minutes a chunk), --config NAME (gpu_study), --minutes M (the whole call's time, default 9),
# --bench-budget S (the GPU check's own budget, default 240), --no-bench, --device-kind KIND (h200;
# the rows that predict a chunk's time), --dry. A chunk starts only when its predicted wall time x 1.3
# fits before the deadline, less 45 s kept for packing; it runs under `timeout`, so an overrun stops
# it cleanly (its finished trials are kept and packed; `--chunk I/N --resume` finishes it later).
# Exit status: 0 when every step succeeded, else the first failure's (the files come back either way).
set -uo pipefail

DRY=0 BENCH=1 CHUNKS="" OF="" CONFIG="" MINUTES=9 BENCH_BUDGET=240 KIND=""
while (($#)); do
    case "$1" in
    --dry) DRY=1 ;;
    --no-bench) BENCH=0 ;;
    --chunks) CHUNKS="$2"; shift ;;
    --of) OF="$2"; shift ;;
    --config) CONFIG="$2"; shift ;;
    --minutes) MINUTES="$2"; shift ;;
    --bench-budget) BENCH_BUDGET="$2"; shift ;;
    --device-kind) KIND="$2"; shift ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "device_run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
PY=${PYTHON:-python3}
OUTDIR=${OUT:-$ROOT/device-out}
RESULTS=${RESULTS:-/tmp/qkc-results}
mkdir -p "$OUTDIR" "$RESULTS"
START=$(date +%s)
DEADLINE=$(( START + $(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 }') ))
PACK_RESERVE=45
STATUS=0
exec > >(tee -a "$OUTDIR/log") 2>&1
TEE_PID=$!

say() { echo "[device_run $(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*"; }
fail() { local rc=$1; shift; say "FAILED ($rc): $*"; ((STATUS == 0)) && STATUS=$rc; }

if ((DRY)); then  # a CPU, tiny shapes, the smoke sweep in chunks: every step of the real run, in a minute or two
    CONFIG=${CONFIG:-smoke} OF=${OF:-4} KIND=${KIND:-cpu}
    BENCH_ARGS=(--device cpu --tiny --budget "$BENCH_BUDGET")
    SETS=(--set steps=12 --set warmup=2 --set checkpoint_every=5 --set "grid.lr=[0.01]" --set "grid.seed=[0,1]")
else
    CONFIG=${CONFIG:-gpu_study} OF=${OF:-54} KIND=${KIND:-h200}
    BENCH_ARGS=(--budget "$BENCH_BUDGET")
    SETS=()
fi
CHUNKS=${CHUNKS:-$(seq -s ' ' 1 "$OF")}
say "start: config $CONFIG, chunks [$CHUNKS] of $OF, ${MINUTES} min, dry=$DRY, out $OUTDIR, results $RESULTS"

# ---- 1. the carried wheels (Ray, pydantic; the image has torch, pyarrow, PyYAML) -----------------
if ((DRY)); then
    say "dry: no wheels installed (this Python's own packages)"
    export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
else
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        say "no .whl/ here: build it with ../shared/tools/device-wheels.sh and carry .whl"; exit 3
    fi
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
        { say "pip install of .whl/ failed"; exit 3; }
    export PYTHONPATH=/tmp/site:$ROOT
fi
export PYTHONUNBUFFERED=1
$PY -c "import ray, pydantic, pyarrow, torch, yaml; print('python', __import__('sys').version.split()[0], 'torch', torch.__version__, 'ray', ray.__version__, 'cuda', torch.cuda.is_available())" ||
    { say "a package is missing (above): nothing can run"; exit 3; }
if ((!DRY)); then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; fi

# ---- 2. the GPU check, and this GPU's calibration rows -------------------------------------------
CAL=$OUTDIR/calibration.json
cp orchestrator/spec/calibration.json "$CAL"
if ((BENCH)); then
    say "benchmarks.gpu ${BENCH_ARGS[*]}"
    $PY -m benchmarks.gpu "${BENCH_ARGS[@]}" --json "$OUTDIR/bench.json" --calibrate --calibration-out "$CAL" |
        tee "$OUTDIR/bench.txt"
    rc=$?
    ((rc == 0)) && say "benchmarks.gpu done" || fail "$rc" "benchmarks.gpu (its table is in bench.txt; chunks go on)"
fi

# ---- 3. chunks of the study, while the time allows; each packed at once ----------------------------
STAGE=$RESULTS/.pack-stage
DONE=()
pack_all() {  # every chunk folder run here, as one pack, replacing the last one only when it succeeds
    local others spectra rc
    others=$(find "$OUTDIR" -maxdepth 1 -type f ! -name 'chunks.*' | wc -l)
    rm -rf "$STAGE"
    for spectra in all last; do
        $PY -m orchestrator.pack "${DONE[@]}" "$STAGE" --name chunks --spectra "$spectra" \
            --max-files $((8 - others)) --max-mib 15
        rc=$?
        if ((rc == 0)); then
            rm -f "$OUTDIR"/chunks.*
            mv "$STAGE"/chunks.* "$OUTDIR"/
            return 0
        fi
        rm -rf "$STAGE"
        ((rc == 2)) || break
    done
    fail "$rc" "orchestrator.pack (the last pack that fitted is kept)"
}

plan_of() {  # chunk $1's plan as JSON: from this GPU's rows measured here, else from the package's table
    local table
    for table in "$CAL" orchestrator/spec/calibration.json; do
        $PY -m orchestrator.sweep --config "$CONFIG" ${SETS[@]+"${SETS[@]}"} --chunk "$1/$OF" --results "$RESULTS" \
            --dry-run --json --device-kind "$KIND" --calibration "$table" && return 0
    done
    return 2
}

for I in $CHUNKS; do
    plan=$(plan_of "$I") || { fail 2 "the plan of chunk $I/$OF"; break; }
    PRED="" NAME=""
    read -r PRED NAME < <(echo "$plan" | $PY -c 'import json, sys
p = json.load(sys.stdin); c = p["chunk"]
print(int(p["wall_s"]), "%s-chunk%dof%d" % (c["study"], c["index"], c["count"]))')
    [[ -n "${NAME:-}" ]] || { fail 2 "reading the plan of chunk $I/$OF"; break; }
    LEFT=$(( DEADLINE - $(date +%s) - PACK_RESERVE ))
    NEED=$(( PRED * 13 / 10 ))
    if ((NEED > LEFT)); then
        say "chunk $I/$OF: predicted ${PRED} s (x1.3 = ${NEED} s), ${LEFT} s left: stopping here"
        break
    fi
    say "chunk $I/$OF: predicted ${PRED} s, ${LEFT} s left"
    t0=$(date +%s)
    timeout --signal=TERM --kill-after=30 "$LEFT" \
        $PY -m orchestrator.sweep --config "$CONFIG" ${SETS[@]+"${SETS[@]}"} --chunk "$I/$OF" --results "$RESULTS" --resume
    rc=$?
    say "chunk $I/$OF: exit $rc after $(( $(date +%s) - t0 )) s (predicted ${PRED} s)"
    ((rc == 0)) || fail "$rc" "chunk $I/$OF (its finished trials are packed; --chunk $I/$OF --resume finishes it)"
    if [[ -d "$RESULTS/$NAME" ]]; then
        DONE+=("$RESULTS/$NAME")
        pack_all
    fi
done

# ---- 4. what goes back: at most 8 files of at most 16 MiB, 64 MiB in all ----------------------------
say "chunks run here: ${#DONE[@]} (${DONE[*]:-none})"
$PY - "$OUTDIR" <<'PY' || fail 4 "the files in OUT are over the limits"
import os, sys
out = sys.argv[1]
files = sorted(f for f in os.listdir(out) if os.path.isfile(os.path.join(out, f)))
sizes = {f: os.path.getsize(os.path.join(out, f)) for f in files}
big = [f for f, s in sizes.items() if s > 16 * 2**20]
total = sum(sizes.values())
for f in files:
    print(f"  {f:<28} {sizes[f] / 2**20:8.2f} MiB")
ok = len(files) <= 8 and not big and total <= 64 * 2**20
print(f"OUT: {len(files)} files, {total / 2**20:.1f} MiB: {'ok' if ok else 'OVER THE LIMITS (8 files, 16 MiB each, 64 MiB)'}")
sys.exit(0 if ok else 1)
PY
say "done, exit $STATUS"
exec 1>&- 2>&-
wait "$TEE_PID" 2>/dev/null
exit "$STATUS"
