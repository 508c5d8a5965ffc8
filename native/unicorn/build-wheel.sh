#!/usr/bin/env bash
# Build Unicorn 2.1.4 from its PyPI sdist, x86 only, with our patches (fast-store, io-permission,
# block-stop, stale-pc, tb-start-inline, mem-exit, tlb-min-size, jmp-cache-bits),
# and print the wheel's path (the only thing on stdout; logs go to stderr).
#
#   native/unicorn/build-wheel.sh               the wheel (built once, then cached)
#   native/unicorn/build-wheel.sh --unit-tests  also build Unicorn's own test_x86 and
#                                               test_ctl on the same patched tree and
#                                               print the directory holding them
#
# Why: stock 2.1.4 sends every guest store of a 32-bit guest through its slow path
# (docs/performance.md, native/unicorn/README.md), and its only safe stop from another
# thread was a per-block hook costing a fifth of guest compute (block-stop), which it
# needed because of a stale-PC bug (stale-pc); and its check at every block start was a helper
# call, a tenth of a Linux Guest's shell loop (tb-start-inline), as was the check after every
# guest load and store (mem-exit). It is built with link-time optimisation and hidden
# internal symbols, which takes about 4% off a Linux Guest's shell loop (.lto).
# The sdist is pinned by version AND sha256, so the patches always land on the exact
# bytes they were written and reviewed against.
#
# The cache (CUSE_LGUEST_CACHE, default /var/cache/cuse-lguest) is keyed by the
# sdist's hash and the hash of the recipe (patches + build flags), so a changed
# patch rebuilds and an unchanged one never does.
set -euo pipefail

VERSION=2.1.4
SDIST_SHA256=00567a70e323f749b419cd86bee4f9115beab7ebba32194581c090cbb7c59cff
LOCAL_LABEL=cuselguest.faststore.blockstop.stalepc.tbstart.memexit.lto.tlbmin.jcache # wheel version: 2.1.4+cuselguest.faststore.blockstop.stalepc.tbstart.memexit.lto.tlbmin.jcache
# The marker's "patch" names the build (what cuse_lguest/unicorn_build.py looks for);
# "patches" lists every patch, applied in this order.
PATCH_NAME=fast-store
PATCHES=(fast-store io-permission block-stop stale-pc tb-start-inline mem-exit tlb-min-size jmp-cache-bits)
# The library is built as one optimised unit: only the uc_* API (UNICORN_EXPORT) is visible, so
# calls between Unicorn's own functions are direct, not through the PLT, and link-time optimisation
# may inline across files (the TB lookup behind every indirect jump spans four of them). Fat LTO
# objects keep libunicorn.a, which the wheel also ships, usable by a linker without GCC's LTO;
# gcc-ar gives its archives the LTO symbol index. No -march: the wheel must run on any x86-64.
OPT_CFLAGS="-fvisibility=hidden -fno-semantic-interposition -fno-plt -flto=auto -ffat-lto-objects"
CMAKE_FLAGS=(-DCMAKE_BUILD_TYPE=Release -DUNICORN_ARCH=x86 -DUNICORN_BUILD_TESTS=on
	"-DCMAKE_C_FLAGS=$OPT_CFLAGS" "-DCMAKE_AR=$(command -v gcc-ar)" "-DCMAKE_RANLIB=$(command -v gcc-ranlib)")
# The marker section (non-allocated, so never loaded) that cuse_lguest/unicorn_build.py reads from the built library.
NOTE_SECTION=.cuse_lguest_build

HERE=$(cd "$(dirname "$0")" && pwd)
PATCH_FILES=()
for p in "${PATCHES[@]}"; do PATCH_FILES+=("$HERE/$p.patch"); done
PY=${PYTHON:-python3}
JOBS=$(nproc 2>/dev/null || echo 2)

log() { echo "build-wheel: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# Exit status 3 means only "the sdist could not be downloaded" (offline, say), so a
# caller may skip; a hash mismatch or a failed build is 1, and never a skip.
unavailable() { log "ERROR: $*"; exit 3; }

mode=wheel
case "${1:-}" in
	"") ;;
	--unit-tests) mode=unit-tests ;;
	*) die "usage: $0 [--unit-tests]" ;;
esac

pick_cache() {
	local c=${CUSE_LGUEST_CACHE:-/var/cache/cuse-lguest}
	if ! mkdir -p "$c" 2>/dev/null || [ ! -w "$c" ]; then
		c=${XDG_CACHE_HOME:-$HOME/.cache}/cuse-lguest
		mkdir -p "$c"
	fi
	echo "$c/unicorn"
}

sha256() { sha256sum "$1" | cut -d' ' -f1; }

need_tools() {
	local t missing=()
	for t in cmake gcc gcc-ar gcc-ranlib make patch objcopy sha256sum flock tar; do
		command -v "$t" >/dev/null || missing+=("$t")
	done
	[ ${#missing[@]} -eq 0 ] ||
		die "missing tools: ${missing[*]} (apt-get install cmake gcc make patch binutils coreutils util-linux tar)"
}

# The sdist, fetched once with pip and checked against the pinned hash.
fetch_sdist() {
	local dir=$CACHE/sdist file tmp got
	file=$dir/unicorn-$VERSION.tar.gz
	if [ -f "$file" ] && [ "$(sha256 "$file")" = "$SDIST_SHA256" ]; then
		echo "$file"; return
	fi
	mkdir -p "$dir"
	tmp=$(mktemp -d "$dir/.download.XXXXXX")
	log "downloading the unicorn==$VERSION sdist from PyPI"
	# The hash is checked below, by us, so that a mismatch is a plain failure (status 1).
	"$PY" -m pip download -q --no-deps --no-binary :all: "unicorn==$VERSION" -d "$tmp" >&2 ||
		{ rm -rf "$tmp"; unavailable "could not download the unicorn==$VERSION sdist (offline?)"; }
	[ -f "$tmp/unicorn-$VERSION.tar.gz" ] || { rm -rf "$tmp"; die "pip did not produce unicorn-$VERSION.tar.gz"; }
	got=$(sha256 "$tmp/unicorn-$VERSION.tar.gz")
	if [ "$got" != "$SDIST_SHA256" ]; then
		rm -rf "$tmp"
		die "sha256 mismatch for unicorn-$VERSION.tar.gz: expected $SDIST_SHA256, got $got. Refusing to build."
	fi
	mv "$tmp/unicorn-$VERSION.tar.gz" "$file"
	rm -rf "$tmp"
	echo "$file"
}

# Unpacked and patched sources, once per key.
prepare_tree() {
	[ -f "$WORK/src/.patched" ] && return
	rm -rf "$WORK/src" "$WORK/cmake-build"
	mkdir -p "$WORK/src"
	tar -xzf "$SDIST" -C "$WORK/src" --strip-components=1
	local p
	for p in "${PATCH_FILES[@]}"; do
		log "applying $(basename "$p")"
		patch -d "$WORK/src" -p1 --batch --forward --quiet <"$p" >&2 ||
			die "$(basename "$p") does not apply to unicorn-$VERSION (after the patches before it)"
	done
	touch "$WORK/src/.patched"
}

cmake_build() {
	if [ ! -f "$WORK/cmake-build/CMakeCache.txt" ]; then
		log "configuring (x86 only)"
		nice cmake -S "$WORK/src/src" -B "$WORK/cmake-build" "${CMAKE_FLAGS[@]}" >&2
	fi
	log "building targets: $*"
	nice cmake --build "$WORK/cmake-build" -j"$JOBS" --target "$@" >&2
}

ensure_build_deps() {
	"$PY" -c "import setuptools_scm, wheel" 2>/dev/null && return
	log "installing the sdist's build dependencies (setuptools-scm, wheel)"
	"$PY" -m pip install -q setuptools-scm wheel >&2
}

build_wheel() {
	local out=$WORK/dist
	cmake_build unicorn unicorn_archive
	# The sdist's setup.py takes a library from prebuilt/ instead of building it.
	# Building it ourselves is how we choose x86 only without touching setup.py.
	cp -L "$WORK/cmake-build/libunicorn.so.2" "$WORK/src/prebuilt/libunicorn.so.2"
	cp -L "$WORK/cmake-build/libunicorn.a" "$WORK/src/prebuilt/libunicorn.a"
	# patch_sha256 covers the whole patch set, in order.
	printf '{"patch": "%s", "patches": [%s], "patch_sha256": "%s", "sdist_sha256": "%s", "version": "%s+%s"}\n' \
		"$PATCH_NAME" "$(printf '"%s", ' "${PATCHES[@]}" | sed 's/, $//')" \
		"$(cat "${PATCH_FILES[@]}" | sha256sum | cut -d' ' -f1)" "$SDIST_SHA256" "$VERSION" "$LOCAL_LABEL" \
		>"$WORK/marker.json"
	objcopy --add-section "$NOTE_SECTION=$WORK/marker.json" \
		"$WORK/src/prebuilt/libunicorn.so.2"
	ensure_build_deps
	rm -rf "$out.tmp"
	log "packing the wheel"
	SETUPTOOLS_SCM_PRETEND_VERSION="$VERSION+$LOCAL_LABEL" \
		nice "$PY" -m pip wheel -q --no-build-isolation --no-deps "$WORK/src" -w "$out.tmp" >&2
	rm -rf "$out"
	mv "$out.tmp" "$out"
}

need_tools
CACHE=$(pick_cache)
mkdir -p "$CACHE"
# One build at a time per cache (bootstrap and the test suite may race).
exec 9>"$CACHE/.lock"
flock 9

SDIST=$(fetch_sdist)
RECIPE_SHA=$( { cat "${PATCH_FILES[@]}"; echo "${CMAKE_FLAGS[*]} $LOCAL_LABEL $NOTE_SECTION"; } | sha256sum | cut -c1-16)
WORK=$CACHE/build-${SDIST_SHA256:0:16}-$RECIPE_SHA
mkdir -p "$WORK"

wheel() { ls "$WORK"/dist/unicorn-"$VERSION+$LOCAL_LABEL"-*.whl 2>/dev/null | head -n1; }

case $mode in
	wheel)
		if [ -z "$(wheel)" ]; then
			prepare_tree
			build_wheel
			[ -n "$(wheel)" ] || die "pip wheel produced no unicorn-$VERSION+$LOCAL_LABEL wheel in $WORK/dist"
			log "built $(wheel)"
			# Trees of older recipes are dead weight (a few hundred MB each).
			find "$CACHE" -maxdepth 1 -name 'build-*' ! -path "$WORK" -exec rm -rf {} +
		else
			log "cached: $(wheel)"
		fi
		wheel ;;
	unit-tests)
		prepare_tree
		cmake_build test_x86 test_ctl
		echo "$WORK/cmake-build" ;;
esac
