#!/bin/bash
# Full fine-tuning against LoRA on a real model: peak resident memory, the size of a run's state
# (what a step commit writes), the training seconds per update and the wall time, for PPO (a
# separate critic) and DPO, 3 updates each on instruct-v0. Prints a markdown table.
#
#     scripts/lora-memory.sh BINARY MODEL_DIR WORK_DIR
#
# `make lora-memory` runs it on SmolLM2-135M-Instruct (`make smollm2`) and keeps the table in
# docs/perf/lora-smollm2.md. LoRA: r = 16, α = 32 on every linear layer; dtype as --dtype auto picks.
set -euo pipefail
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
B=$(realpath "$1")
M=$(realpath "$2")
mkdir -p "$3"
cd "$3"
test -f prefs.jsonl || "$B" prefs --env instruct-v0 --policy "$M" --pairs 16 --out prefs.jsonl --device cpu --seed 0 > /dev/null
COMMON=(--device cpu --quiet --overwrite --set run.updates=3 --set run.eval_every=3 --set eval.prompts=4
        --set eval.samples_per_prompt=1 --set batch_size=4)
LORA=(--set lora.r=16 --set lora.lora_alpha=32 --set lora.target_modules=all-linear)
for mode in full lora; do
  extra=()
  [ "$mode" = lora ] && extra=("${LORA[@]}")
  /usr/bin/time -v "$B" train --agent ppo --env instruct-v0 --policy "$M" --out "ppo-$mode" "${COMMON[@]}" \
    --set learning_rate=3e-6 --set max_new_tokens=12 --set num_minibatches=1 "${extra[@]}" 2> "ppo-$mode.time" > "ppo-$mode.out"
  /usr/bin/time -v "$B" train --agent dpo --env instruct-v0 --policy "$M" --prefs prefs.jsonl --out "dpo-$mode" \
    "${COMMON[@]}" --set learning_rate=1e-6 "${extra[@]}" 2> "dpo-$mode.time" > "dpo-$mode.out"
done
CPU=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
echo "\`scripts/lora-memory.sh\` (\`make lora-memory\`) on $(basename "$M"), $(nproc) cores of $CPU, $(date -u +%F), commit $COMMIT."
echo
echo "| run | peak RSS | state on disk | training s / update | wall |"
echo "|---|---|---|---|---|"
for r in ppo-full ppo-lora dpo-full dpo-lora; do
  rss=$(awk '/Maximum resident/ {printf "%.2f GB", $NF / 1048576}' "$r.time")
  wall=$(awk '/Elapsed \(wall/ {print $NF}' "$r.time")
  state=$(du -cb "$r"/state/*_state.safetensors | awk 'END {printf "%.1f MB", $1 / 1e6}')
  train=$(grep -o 'training [0-9.]*' "$r.out" | awk '{printf "%.1f", $2 / 3}')
  echo "| $r | $rss | $state | $train | $wall |"
done
