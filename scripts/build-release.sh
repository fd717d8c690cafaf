#!/usr/bin/env bash
# Builds a recorded release of vmm (tests/compat/releases) from this
# repository's own history: the release's commit exported with
# `git archive`, built with its own Cargo.lock (--locked), its binaries
# installed in build/releases/VERSION/ (or $VMM_RELEASES_DIR/VERSION/).
# Prints that directory. Cached: a second call only prints it.
#
# Tests call it concurrently: one builds while the others wait on a lock.
# The releases share one cargo target directory, so dependencies the
# releases have in common are compiled once.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
version=${1:?usage: build-release.sh VERSION (see tests/compat/releases)}
commit=$(awk -v v="$version" '$1 == v { print $2 }' "$top/tests/compat/releases")
[ -n "$commit" ] || { echo "release $version is not recorded in tests/compat/releases" >&2; exit 1; }
cache="${VMM_RELEASES_DIR:-$top/build/releases}"
out="$cache/$version"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -x "$out/vmm" ] && [ "$(cat "$out/COMMIT" 2>/dev/null)" = "$commit" ]; then
    echo "release $version: cached in $out" >&2
    echo "$out"
    exit 0
fi
git -C "$top" cat-file -e "$commit^{commit}" 2>/dev/null || {
    echo "commit $commit of release $version is not in this clone (a shallow clone? run git fetch --unshallow)" >&2
    exit 1
}
echo "release $version: building $commit" >&2
rm -rf "$out"
src="$cache/src-$version"
rm -rf "$src"
mkdir -p "$src"
git -C "$top" archive "$commit" | tar -x -C "$src"
(cd "$src" && CARGO_TARGET_DIR="$cache/target" cargo build --release --locked --quiet -p vmm)
mkdir -p "$out.tmp"
cp "$cache/target/release/vmm" "$cache/target/release/vmmctl" "$out.tmp/"
echo "$commit" > "$out.tmp/COMMIT"
mv "$out.tmp" "$out"
rm -rf "$src"
echo "release $version: built in $out" >&2
echo "$out"
