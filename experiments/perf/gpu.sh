#!/usr/bin/env bash
# Issue 5's GPU run, prepared for a session that is lent a device machine (one H200 here; 15
# minutes of device time in all, so everything runs in one call of about 6 minutes):
#
#   bash experiments/perf/gpu.sh prepare   # here: wheels -> .whl/, tokenizer + SST-2 -> .gpu/
#   then the device tool: run(command="bash experiments/perf/gpu.sh run",
#                             carry=[".whl", ".gpu"], timeout_s=600)
#
# `run` writes to $OUT: bench.md/bench.json (ours vs the PyTorch peer on the GPU, bf16 compute
# with float32 master weights, BERT-base B256×S128 and BERT-large B128×S128 with random init,
# each with our attention and with the fused one (jax.nn.dot_product_attention: cuDNN's kernel
# where it applies; in training only without attention dropout, so its train rows run ours);
# MFU = the formula's FLOPs/s against the measured bf16 matmul), sst2_epoch.json (one SST-2
# epoch of BERT-base with random init in bf16: wall time and examples/s, and run.json's split
# of the wall time; the accuracy of a randomly initialised BERT after one epoch says nothing),
# and, on a machine with two GPUs or more, sst2_2proc.json: 300 steps of the same run as two
# processes of one GPU each (jax.distributed on localhost). The embedded MiniLM cannot travel:
# its model.safetensors is 87 MB and a call carries 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."

case "${1:-}" in
  prepare)
    for folder in /.whl/ /.gpu/; do
      grep -qxF "$folder" .git/info/exclude || echo "$folder" >> .git/info/exclude
    done
    # What the device image lacks (`.library/device/KINDS.md`); versions as in our venv.
    rm -rf .whl && python3 -m pip download -q --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        ml-collections==1.1.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
    rm -rf .gpu && mkdir -p .gpu/tokenizer .gpu/data
    tokenizer_dir=$(.venv/bin/python -c \
        "from research.models import hf_io; print(hf_io.embedded_checkpoint_dir())")
    cp "$tokenizer_dir"/{config.json,tokenizer.json,tokenizer_config.json,vocab.txt} \
        "$tokenizer_dir"/special_tokens_map.json .gpu/tokenizer/
    cp -r ../shared/data/sst2 .gpu/data/
    du -sh .whl .gpu
    ;;
  run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 RESEARCH_DATA_DIR=.gpu/data \
        HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
    python3 -m benchmarks.bench --dtype bfloat16 --attention ours,fused \
        --tokenizer .gpu/tokenizer --out "$OUT" 2>&1 | tee "$OUT/bench.log"
    python3 -m research.main --config configs/sst2.py --workdir /tmp/sst2_epoch \
        --config.model.checkpoint= --config.model.tokenizer=.gpu/tokenizer \
        --config.model.dtype=bfloat16 --config.train.num_epochs=1 \
        2>&1 | tail -n 30 | tee "$OUT/sst2_epoch.log"
    cp /tmp/sst2_epoch/results.json "$OUT/sst2_epoch.json"
    cp /tmp/sst2_epoch/run.json "$OUT/sst2_epoch_run.json"
    if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
      for rank in 0 1; do
        CUDA_VISIBLE_DEVICES=$rank python3 -m research.main --config configs/sst2.py \
            --workdir /tmp/sst2_2proc --coordinator_address=localhost:12355 \
            --num_processes=2 --process_id=$rank --config.model.checkpoint= \
            --config.model.tokenizer=.gpu/tokenizer --config.model.dtype=bfloat16 \
            --config.train.num_steps=300 > "$OUT/sst2_2proc_$rank.log" 2>&1 &
      done
      wait
      cp /tmp/sst2_2proc/results.json "$OUT/sst2_2proc.json"
    fi
    ;;
  *)
    echo "usage: bash experiments/perf/gpu.sh prepare|run" >&2
    exit 2
    ;;
esac
