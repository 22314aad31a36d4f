#!/usr/bin/env bash
# One sitting on a GPU machine that is reached through a tool which copies the working tree there
# and brings files back (book/rerun.md, "Many runs on one GPU, in sittings"):
#
#   tools/sitting.sh start MINUTES [ranlib.campaign run options]   # returns at once
#   tools/sitting.sh wait SECONDS OUT [ranlib.campaign pack options]
#
# `start` runs a campaign detached from the calling command (so it outlives it, until the machine
# goes back) with its results and checkpoints under .sitting/ (ignored by git: a re-copied working
# tree does not touch them), seeded with the committed results so that nothing is trained twice.
# Write benchmarks to .sitting/results/performance too: `wait` packs everything under .sitting/results.
# `wait` returns when the campaign ends or after SECONDS, whichever comes first, and packs what is
# done into OUT/campaign.tar.gz; `python -m ranlib.campaign unpack` puts it into this checkout.
set -euo pipefail

PYTHON=${PYTHON:-python3}
SITTING=${SITTING:-.sitting}
usage="usage: tools/sitting.sh start MINUTES [campaign run options] | wait SECONDS OUT [campaign pack options]"

case "${1:-}" in
start)
    [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
    minutes=$2
    shift 2
    if [ -f "$SITTING/campaign.pid" ] && kill -0 "$(cat "$SITTING/campaign.pid")" 2>/dev/null; then
        echo "sitting: a campaign is already running (pid $(cat "$SITTING/campaign.pid")); wait for it" >&2
        exit 1
    fi
    # Committed results the sitting lacks (no-clobber: what it wrote itself, benchmarks say, stays).
    mkdir -p "$SITTING/results"
    cp -rn results/. "$SITTING/results/"
    setsid nohup "$PYTHON" -m ranlib.campaign run --results-dir "$SITTING/results" \
        --checkpoint-dir "$SITTING/checkpoints" --budget-minutes "$minutes" "$@" \
        >>"$SITTING/campaign.out" 2>&1 </dev/null &
    echo $! >"$SITTING/campaign.pid"
    echo "sitting: campaign started (pid $!), log $SITTING/campaign.out"
    ;;
wait)
    [ $# -ge 3 ] || { echo "$usage" >&2; exit 2; }
    seconds=$2
    out=$3
    shift 3
    end=$((SECONDS + seconds))
    pid=$(cat "$SITTING/campaign.pid" 2>/dev/null || echo 0)
    while [ "$pid" != 0 ] && kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $end ]; do
        sleep 2
    done
    if [ "$pid" = 0 ]; then state="never started (packing what is there)"
    elif kill -0 "$pid" 2>/dev/null; then state="still running"
    else state="ended"; fi
    mkdir -p "$out"
    "$PYTHON" -m ranlib.campaign pack --results-dir "$SITTING/results" --checkpoint-dir "$SITTING/checkpoints" \
        --out "$out/campaign.tar.gz" "$@"
    echo "sitting: campaign $state; its log ends:"
    tail -n 40 "$SITTING/campaign.out" 2>/dev/null || true
    ;;
*)
    echo "$usage" >&2
    exit 2
    ;;
esac
