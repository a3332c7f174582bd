#!/usr/bin/env bash
# On the GPU machine (device tool), from the repo root, with carry = [.gpu_carry, .tts_carry, .whl]:
#   bash bench/gpu_run.sh "python bench/voice_to_voice.py --config gpu-bench ..." "python bench/soak.py ..."
# Installs the carried wheels, rebuilds the model home (bench/gpu_stack.py --setup), runs each command in turn
# (each one's log under $OUT), then copies bench/results/*_h*.json and PNGs written by them to $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD/.tts_carry PYTHONUNBUFFERED=1
export QUICKTURN_HOME=$PWD/.gpu_carry/home QUICKTURN_SPEECH=$PWD/.gpu_carry/speech
python3 bench/gpu_stack.py --setup || exit 1
# The device's copy of .git can be older than the tree it runs (2026-12-06: a run at f2c57df wrote d9c0ad7), so a
# result's commit must come from QUICKTURN_COMMIT, written out in full on the machine that made the tree
if [ -z "${QUICKTURN_COMMIT:-}" ]; then
  echo "WARNING: QUICKTURN_COMMIT is not set: results will name this copy's .git HEAD, which may not be the code" \
       "that ran. Pass QUICKTURN_COMMIT=<full hash from your checkout>." >&2
elif git rev-parse -q --verify HEAD >/dev/null 2>&1 && [ "$(git rev-parse HEAD)" = "$QUICKTURN_COMMIT" ] \
     && ! git diff --quiet HEAD -- agent asr llm tts kernels 2>/dev/null; then
  echo "WARNING: QUICKTURN_COMMIT is this copy's .git HEAD, but the code differs from it: it came from a stale .git" >&2
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
touch /tmp/t0
i=0
for cmd in "$@"; do
  i=$((i + 1))
  echo "=== [$i] $cmd ($(date -u +%T))"
  bash -c "$cmd" 2>&1 | tee "$OUT/log$i.txt" | grep -v -E "^\s*$" | tail -40
done
find bench/results -newer /tmp/t0 -type f \( -name "*.json" -o -name "*.png" \) -exec cp {} "$OUT"/ \;
ls -la "$OUT"
