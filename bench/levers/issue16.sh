#!/usr/bin/env bash
# Issue 16's toy-world measurements, one lever at a time against the table's settings (docs/RESULTS.md
# section 10): the sampler, stage-2 length, and the speed levers (--train-size, fewer LoRA steps at a higher
# learning rate, TaylorSeer and first-block caches). Each run writes out/levers16/<name>/quality.json.
# One thread (the other core pretrains): OMP_NUM_THREADS=1 bash bench/levers/issue16.sh [names...]
set -euo pipefail
cd "$(dirname "$0")/../.."
SCEN=${SCEN:-6}
run() {  # name, then bench quality options
  local name=$1; shift
  [ -f "out/levers16/$name/quality.json" ] && { echo "skip $name (done)"; return; }
  echo "== $name: $*  ($(date +%H:%M))"
  local started=$SECONDS
  .venv/bin/loraedit bench quality --scenarios "$SCEN" --seed 0 --quiet --out "out/levers16/$name" "$@" \
    > "out/levers16/$name.log" 2>&1
  echo "$name took $((SECONDS - started)) s"
}
mkdir -p out/levers16
want=" ${*:-base euler trainsize48 trainsize72 s50lr2 ts2 ts3 fbc01 st15 fast fastfbc fastlr stage2x50 stage2x200} "
has() { [[ "$want" == *" $1 "* ]]; }
has base        && run base        --modes mask-aware,mask-aware+frames
has euler       && run euler       --modes mask-aware --sampler euler
has trainsize48 && run trainsize48 --modes mask-aware --train-size 48x48
has trainsize72 && run trainsize72 --modes mask-aware --train-size 72x72
has s50lr2      && run s50lr2      --modes mask-aware --stage1-steps 50 --lr 2e-3
has ts2         && run ts2         --modes mask-aware --taylorseer 2
has ts3         && run ts3         --modes mask-aware --taylorseer 3
has fbc01       && run fbc01       --modes mask-aware --first-block-cache 0.1
has st15        && run st15        --modes mask-aware --steps 15
has fast        && run fast        --modes mask-aware --train-size 0.5 --steps 15 --taylorseer 3
has fastfbc     && run fastfbc     --modes mask-aware --train-size 0.5 --steps 15 --first-block-cache 0.1
has fastlr      && run fastlr      --modes mask-aware --stage1-steps 50 --lr 2e-3 --steps 15 --taylorseer 3
has stage2x50   && run stage2x50   --modes mask-aware+frames --stage2-steps 50
has stage2x200  && run stage2x200  --modes mask-aware+frames --stage2-steps 200
echo "all done ($(date +%H:%M))"
