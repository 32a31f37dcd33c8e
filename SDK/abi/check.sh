#!/usr/bin/env bash
# ABI lock: compile every public header alone as C11 and C++17 with
# -Wall -Wextra -pedantic -Werror, then compare the ABI with the committed
# baseline using libabigail. An incompatible change fails with the diff.
#   SDK/abi/check.sh            check
#   SDK/abi/check.sh --update   rewrite the baseline (after an intended,
#                               compatible addition; review the diff)
set -euo pipefail
sdk="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

status=0
for header in "$sdk"/include/oyako/*.h; do
    name="$(basename "$header")"
    printf '#include <oyako/%s>\n' "$name" > "$work/use.c"
    cp "$work/use.c" "$work/use.cpp"
    cc -std=c11 -Wall -Wextra -pedantic -Werror -I "$sdk/include" -c "$work/use.c" -o "$work/use.o" || { echo "abi: $name does not compile alone as C11"; status=1; }
    c++ -std=c++17 -Wall -Wextra -pedantic -Werror -I "$sdk/include" -c "$work/use.cpp" -o "$work/use.o" || { echo "abi: $name does not compile alone as C++17"; status=1; }
done
[ "$status" -eq 0 ] || exit 1
echo "abi: every public header compiles alone as C11 and C++17 (-Wall -Wextra -pedantic -Werror)"

cc -std=c11 -g -O0 -fPIC -shared -I "$sdk/include" "$sdk/abi/abi_surface.c" -o "$work/liboyako-abi.so"
abidw --no-corpus-path --out-file "$work/current.xml" "$work/liboyako-abi.so"
if [ "${1:-}" = "--update" ]; then
    cp "$work/current.xml" "$sdk/abi/oyako-abi.xml"
    echo "abi: baseline updated: $sdk/abi/oyako-abi.xml"
    exit 0
fi
# abidiff exit status: bit 2 (4) = ABI change, bit 3 (8) = incompatible change.
set +e
abidiff --no-added-syms "$sdk/abi/oyako-abi.xml" "$work/current.xml" > "$work/diff.txt"
result=$?
set -e
if [ $((result & 8)) -ne 0 ] || [ $((result & 3)) -ne 0 ]; then
    echo "abi: INCOMPATIBLE change against the committed baseline (abidiff exit $result):"
    cat "$work/diff.txt"
    exit 1
fi
if [ $((result & 4)) -ne 0 ]; then
    echo "abi: compatible change against the baseline (new types or appended fields); run SDK/abi/check.sh --update and commit:"
    cat "$work/diff.txt"
    exit 1
fi
echo "abi: matches the baseline SDK/abi/oyako-abi.xml"
