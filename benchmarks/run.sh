#!/usr/bin/env bash
# The runs behind BENCHMARKS.md: the frontier (every policy over both Azure traces, two
# engines, two SLO regimes and four loads), then the paper's overload setting (--rate
# peak): the target setting (TP2, the shipped length model) and every shipped twin profile
# on both traces. Run from the repository root after `make test` has built .venv; the
# frontier writes benchmarks/frontier/, each replay benchmarks/<name>.json and .md.
set -euo pipefail
traces=../shared/data/traces
out=benchmarks
replay() {  # name, then replay flags
    local name=$1
    shift
    echo "== $name" >&2
    .venv/bin/throttllem replay "$@" --json "$out/$name.json" | tee "$out/$name.md"
}
profiles=(
    a100-40gb/llama-2-13b/tp1 a100-40gb/llama-2-13b/tp2 a100-40gb/llama-2-13b/tp4
    a100-40gb/llama-3-8b/tp1 a100-40gb/llama-3-70b/tp8 h100-80gb/llama-3.1-8b/tp1
)
echo "== frontier" >&2
time .venv/bin/throttllem frontier --out "$out/frontier"
for trace in conv code; do
    # The target setting first: TP2, lengths from the shipped length model, with scaling.
    replay "target-$trace" --trace "$traces/AzureLLMInferenceTrace_$trace.csv" --lengths model \
        --policies max,static-best,reactive,throttllem,throttllem+scale,oracle \
        --plots "$out/plots-target-$trace"
done
for trace in conv code; do
    for profile in "${profiles[@]}"; do
        replay "${profile//\//-}-$trace" --profile "$profile" \
            --trace "$traces/AzureLLMInferenceTrace_$trace.csv"
    done
done
