#!/usr/bin/env bash
# Every GPU measurement of the project in one run (issues 3, 4, 5), for a lent GPU host.
#
# On the GPU host (Python with torch/timm/OpenCV, no Ray), from the repo root with .devpack carried:
#   mkdir -p /tmp/site && tar -xJf .devpack/ray-site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
#   bash bench/gpu_run.sh
# CPU dry run of the same script with tiny settings:  SMALL=1 PY=.venv/bin/python bash bench/gpu_run.sh
#
# Steps, most important first, each under its own time limit so one stall can't eat the rest:
#   1. prepare the real images; train ResNet-50 and DenseNet-201 from scratch with the paper's recipe
#      (Adam 1e-4, 10 epochs, batch 32, 224²) through the real Ray Train job; tune; evaluate.
#   2. OOD referral on those models (bench/ood_referral.py).
#   3. training throughput: Ray Train vs a bare loop; DenseNet-201 vs ResNet-50 images/s.
#   4. bulk classification throughput: the classify job vs a bare loop; the bare ensemble alone (bf16);
#      bench/read_path.py on the host's CPU (the read task per image against the bare decode).
#   5. (PART=3) DenseNet-201 vs ResNet-50 under torch.compile (compiling DenseNet takes minutes), and
#      the bare ensemble under torch.compile.
# Results land in $OUT (logs, metrics.json, ensemble.json, comparison.md, one JSON line per bench).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
PY=${PY:-python3}
DATA=${DATA:-.devpack/leukemia-q80}
RUN=${RUN:-/tmp/gpurun}
export RAY_DATA_DISABLE_PROGRESS_BARS=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RAY_DEDUP_LOGS=0
mkdir -p "$OUT"
if [ "${SMALL:-0}" = 1 ]; then
  A=test_resnet; B=test_efficientnet; TRAIN="--epochs 1 --image-size 64 --limit 200"; DEV=cpu
  TT="--backbone test_resnet --image-size 64 --steps 4 --batch-size 16"; TM="--image-size 64 --steps 2 --batch-size 8"
  CT="--n-images 128 --image-size 64 --backbones test_resnet,test_efficientnet"; OODL=40; S=1
  ENS="--image-size 64 --backbones test_resnet,test_efficientnet --batch-size 32 --steps 2"; RP="--n-images 4 --rounds 1"
else
  A=densenet201; B=resnet50; TRAIN="--epochs 10 --batch-size 32 --image-size 224"; DEV=cuda
  TT="--backbone resnet50 --batch-size 64 --steps 40"; TM="--batch-size 128 --steps 30 --channels-last"
  CT="--n-images 8192"; OODL=400; S=1
  ENS="--batch-size 512 --steps 30"; RP="--n-images 40 --rounds 5"
fi

step() {  # step NAME SECONDS CMD...: log to $OUT/NAME.log, show the tail, keep going on failure
  local name=$1 secs=$2; shift 2
  local t0=$(date +%s)
  echo "=== $name: $*"
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 8 "$OUT/$name.log"
  echo "=== $name rc=$rc $(( $(date +%s) - t0 ))s"
}

$PY -c "import torch, timm, ray; print('torch', torch.__version__, 'timm', timm.__version__, 'ray', ray.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null
CLI="$PY -m alle_dist.cli"
PART=${PART:-all}   # 1: train + tune + evaluate + OOD; 2: the throughput benches; 3: torch.compile (each fits one 10-min call)
if [ "$PART" = all ] || [ "$PART" = 1 ]; then
step prepare 60 $CLI prepare --data "$DATA" --run-dir "$RUN" --seed 0
step train_$B 150 $CLI train --run-dir "$RUN" --backbone $B --pretrained none --workers 1 $TRAIN
step train_$A 200 $CLI train --run-dir "$RUN" --backbone $A --pretrained none --workers 1 $TRAIN
step tune 60 $CLI tune --run-dir "$RUN" --backbones $A,$B
step evaluate 60 $CLI evaluate --run-dir "$RUN"
cp "$RUN/ensemble.json" "$RUN/report/metrics.json" "$RUN/report/comparison.md" "$OUT/" 2>/dev/null
for b in $A $B; do cp "$RUN/models/$b/meta.json" "$OUT/meta_$b.json" 2>/dev/null; done
step ood 90 $PY bench/ood_referral.py --run-dir "$RUN" --device $DEV --limit $OODL
fi
if [ "$PART" = all ] || [ "$PART" = 2 ]; then
step train_bench 100 $PY bench/train_throughput.py --mode ray --device $DEV $TT
step members_bench 120 $PY bench/train_throughput.py --mode members --device $DEV $TM
step classify_bench 150 $PY bench/classify_throughput.py --device $DEV --data "$DATA" $CT
step ensemble_bench 90 $PY bench/classify_throughput.py --device $DEV --data "$DATA" --models-only $ENS
step read_path 120 $PY bench/read_path.py --data "$DATA" $RP
fi
if [ "$PART" = all ] || [ "$PART" = 3 ]; then
step members_compile 400 $PY bench/train_throughput.py --mode members --device $DEV $TM --compile
step ensemble_compile 180 $PY bench/classify_throughput.py --device $DEV --data "$DATA" --models-only --compile $ENS
fi
grep -h '^{' "$OUT"/*.log > "$OUT/results.jsonl" 2>/dev/null
echo "=== results"; cat "$OUT/results.jsonl"
