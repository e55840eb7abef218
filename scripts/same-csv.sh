#!/usr/bin/env bash
# Same seeds, same CSVs: runs one small pipeline (SFT, preference pairs, a reward model, then every
# registered agent for a few updates with evaluation, on a single-turn and a multi-turn env) with
# two aligngym binaries and compares every CSV they write, the wall-clock columns aside. Used to
# show that a refactor changes no behaviour:
#   scripts/same-csv.sh OLD_BINARY NEW_BINARY [WORK_DIR]
set -euo pipefail
old=$1
new=$2
work=${3:-$(mktemp -d)}
agents="ppo dpo grpo rloo reinforce_pp online_dpo kto best_of_n"

pipeline() {
  local bin=$1 out=$2 env=$3
  mkdir -p "$out"
  "$bin" sft --env "$env" --steps 60 --seed 3 --out "$out/sft" > /dev/null
  "$bin" prefs --env "$env" --policy "$out/sft" --pairs 32 --seed 3 --out "$out/prefs.jsonl" > /dev/null
  "$bin" train-rm --prefs "$out/prefs.jsonl" --init "$out/sft" --set epochs=1 --seed 3 --out "$out/rm" > /dev/null
  for a in $agents; do
    local extra=()
    case $a in dpo|kto) extra=(--prefs "$out/prefs.jsonl") ;; esac
    "$bin" train --agent "$a" --env "$env" --policy "$out/sft" "${extra[@]}" --seed 3 --quiet \
      --set run.updates=2 --set run.eval_every=1 --out "$out/$a" > /dev/null
  done
  "$bin" train --agent ppo --env "$env" --policy "$out/sft" --reward "rm:$out/rm" --seed 3 --quiet \
    --set run.updates=2 --set run.eval_every=1 --out "$out/ppo-rm" > /dev/null
}

status=0
for env in arithmetic-v0 guess-number-v0; do
  pipeline "$old" "$work/old/$env" "$env"
  pipeline "$new" "$work/new/$env" "$env"
  while IFS= read -r f; do
    rel=${f#"$work/old/"}
    # Wall-clock columns (and the rows' timestamps) differ between any two runs.
    strip='import csv,sys
r=list(csv.reader(open(sys.argv[1])))
drop={i for i,h in enumerate(r[0]) if "wall" in h or h in ("timestamp","time","seconds","elapsed")} if r else set()
dropm=len(r)>0 and "metric" in r[0] and "value" in r[0]
for row in r:
    if dropm and row[r[0].index("metric")].find("wall")>=0: continue
    print(",".join(c for i,c in enumerate(row) if i not in drop))'
    if ! diff <(python3 -c "$strip" "$f") <(python3 -c "$strip" "$work/new/$rel") > /dev/null; then
      echo "differs: $rel"; status=1
    else
      echo "same:    $rel"
    fi
  done < <(find "$work/old/$env" -name '*.csv' | sort)
done
exit $status
