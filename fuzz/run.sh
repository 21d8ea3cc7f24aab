#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 60), from the seed corpus in fuzz/corpus/<target>
# (read only) and a scratch corpus of new finds under fuzz/corpus-work/<target>. Needs
# cargo-fuzz (`cargo install cargo-fuzz`); libFuzzer and AddressSanitizer need nightly features,
# which RUSTC_BOOTSTRAP=1 enables on the stable toolchain. A crash or an over-allocation stops
# the run, leaves the input under fuzz/artifacts/<target>/ and fails the script.
# The input sequence is fixed (libFuzzer -seed=1) so CI's short runs repeat what was checked;
# FUZZ_SEED=0 picks a random seed, as longer explorations should.
#   fuzz/run.sh 3600            an hour per target
#   FUZZ_SEED=0 fuzz/run.sh 3600
#   fuzz/run.sh 60 framer_chunks one target
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
fi
if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz/run.sh: cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 1
fi
export RUSTC_BOOTSTRAP=1
cargo fuzz build
for t in "${targets[@]}"; do
    mkdir -p "corpus-work/$t"
    echo "== $t: ${secs} s"
    cargo fuzz run "$t" "corpus-work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -seed="${FUZZ_SEED:-1}" -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1
done
