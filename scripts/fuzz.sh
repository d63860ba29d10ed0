#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (default 20 s each; set
# FUZZ_SECONDS for a longer run, e.g. FUZZ_SECONDS=3600 scripts/fuzz.sh).
# The toolchain is stable; RUSTC_BOOTSTRAP lets cargo-fuzz pass its
# sanitizer flags. Crashes are saved under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECONDS:-20}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --version 0.13.2 >/dev/null
fi
export RUSTC_BOOTSTRAP=1
# Sanitizer flags differ from the normal build's: keep these artifacts apart
# so neither build invalidates the other.
fuzz_target_dir="${CARGO_TARGET_DIR:-$PWD/target}-fuzz"
cd fuzz
cargo fuzz build -O --target-dir "$fuzz_target_dir"
for target in $(cargo fuzz list); do
  echo "== fuzz $target for ${secs}s" >&2
  mkdir -p "corpus/$target"
  # Committed seeds (queries, messages) give the fuzzer valid shapes to
  # mutate; random bytes rarely parse as PromQL.
  if [ -d "seeds/$target" ]; then cp -n seeds/"$target"/* "corpus/$target"/; fi
  cargo fuzz run -O --target-dir "$fuzz_target_dir" "$target" "corpus/$target" -- -max_total_time="$secs" -max_len=65536 2>&1 | grep -E "^Done|ERROR|panicked" || true
  # A crash makes cargo fuzz exit non-zero and leaves an artifact.
  if ls "artifacts/$target"/crash-* >/dev/null 2>&1; then
    echo "fuzz target $target crashed; see fuzz/artifacts/$target" >&2
    exit 1
  fi
done
