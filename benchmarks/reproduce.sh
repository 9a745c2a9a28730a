#!/usr/bin/env bash
# Every figure of docs/benchmarks.md, in one command: many hours on 2 cores from an empty cache, most of it the
# headline's step-by-step rate baselines on the full test set (ResNet-32 at T = 512) and the lambda-by-search
# conversions. Each headline run is measured in parts of 1,000 images, cached in benchmarks/results/headline/ and reused,
# so an interrupted run resumes from its last finished part and, with the committed cache, only what is
# missing runs (the headline then takes a few minutes: the ANN accuracies and the plots).
#
#   bash benchmarks/reproduce.sh [TEST_IMAGES]     (default: Debian's dataset-fashion-mnist test set)
#
# Needs the package installed (pip install -e '.[plot]'); SKIP_HEADLINE=1 measures the speed only.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz}
RESULTS=benchmarks/results
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# 1. accuracy versus T of all four modes, the K sweep under every calibration and initial potential, T within
#    1 / 0.1 point, cost at matched accuracy, plots -> docs/benchmarks.md (between the headline markers),
#    docs/headline.json, docs/acc_vs_T_<model>.png, docs/acc_vs_sops_<model>.png
if [ -z "${SKIP_HEADLINE:-}" ]; then
    python benchmarks/headline.py --data "$DATA" --workers 2
fi

# 2. runtime speed: bsnn at its first full output (L + 1) K, the step-by-step modes at T = 256
for model in vgg_max resnet14; do
    for mode in bsnn bsnn-nosn phase if-rate; do
        bsnn convert "data/$model.onnx" --calib data/fmnist_calib.npz --percentile 99.9 --calibrate percentile --mode "$mode" \
            -o "$TMP/${model}_$mode.onnx" > /dev/null
    done
done
python benchmarks/bench_runtime.py --model "$TMP/vgg_max_bsnn.onnx" --timesteps 56 --samples 512 \
    > "$RESULTS/speed_vgg_max_bsnn.json"
python benchmarks/bench_runtime.py --model "$TMP/resnet14_bsnn.onnx" --timesteps 112 --samples 512 --repeats 2 \
    > "$RESULTS/speed_resnet14_bsnn.json"
for mode in bsnn-nosn phase if-rate; do
    python benchmarks/bench_runtime.py --model "$TMP/vgg_max_$mode.onnx" --timesteps 256 --samples 64 --repeats 2 \
        > "$RESULTS/speed_vgg_max_$mode.json"
done
# batch-1 latency with the OpenMP threading layer (splits one sample over the threads; see runtime.simulate)
NUMBA_THREADING_LAYER=omp python benchmarks/bench_runtime.py --model "$TMP/vgg_max_bsnn.onnx" --timesteps 56 \
    --samples 256 > "$RESULTS/speed_vgg_max_bsnn_omp.json"
NUMBA_THREADING_LAYER=omp python benchmarks/bench_runtime.py --model "$TMP/resnet14_bsnn.onnx" --timesteps 112 \
    --samples 256 --repeats 2 > "$RESULTS/speed_resnet14_bsnn_omp.json"
python benchmarks/latency.py
NUMBA_THREADING_LAYER=omp python benchmarks/latency.py
python benchmarks/speed_table.py "$RESULTS"/speed_*.json --doc docs/benchmarks.md

# 3. against the clock-driven dense PyTorch simulation (needs torch: pip install torch==2.13.0)
if python -c "import torch" 2> /dev/null; then
    python benchmarks/compare_runtime.py "$TMP/vgg_max_bsnn.onnx" --modes bsnn --threads 1,2 --repeats 2 --scheduled \
        --json-out "$RESULTS/compare_vgg_idle.json"
fi

# 4. the runtime against its peers at the first full output (light cone), with the runtime of 28282a1 in the
#    same run -> docs/benchmarks.md (between the runtime-speed markers), benchmarks/results/runtime_speed.json
python benchmarks/runtime_speed.py --before 28282a1

# 5. calibration memory
python benchmarks/calib_memory.py --counts 500 10000

# 6. the onnx wheel's zoo graphs at 224x224: conversion and one image at the first full output, with the oracles
python benchmarks/zoo_convert.py --images 64 --record-limit 3e8 --json "$RESULTS/zoo_run.json" --markdown docs/benchmarks.md
# and their conversion under both calibrations, back to back (search is bsnn's default)
python benchmarks/zoo_convert.py --images 64 --no-run --calibrate percentile search --json "$RESULTS/zoo_calibration.json" \
    --markdown docs/benchmarks.md

# 7. distributed: one process against a 2-worker Dask cluster (needs pip install -e '.[distributed]')
python benchmarks/distributed_speed.py --images 2000 --json "$RESULTS/distributed_speed.json"
