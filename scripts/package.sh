#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (metadata in Cargo.toml,
# [package.metadata.deb]; maintainer scripts in scripts/deb/; unit in scripts/):
#   bash scripts/package.sh             release build, then the .deb
#   bash scripts/package.sh --no-build  package the release binary already
#                                       built (scripts/test.sh: `cargo bench
#                                       --no-run` builds it, same profile)
# Prints the path of the .deb: <target dir>/debian/walrelay_<version>-1_<arch>.deb
# Install it with `dpkg -i` (docs/OPERATIONS.md, "Installing the Debian package").
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "package: installing cargo-deb" >&2
  cargo install --locked cargo-deb
fi
target="${CARGO_TARGET_DIR:-target}"
if [ "${1:-}" != "--no-build" ]; then
  cargo build --release --locked --bin walrelay
fi
[ -x "$target/release/walrelay" ] || { echo "package: no $target/release/walrelay; run without --no-build" >&2; exit 1; }
# --strip: the release profile keeps line tables for profiling (debug = 1);
# the package ships the stripped binary. --fast: lighter compression (the
# package is built on every CI run).
cargo deb --no-build --strip --fast
