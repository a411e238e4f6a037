#!/usr/bin/env bash
# Apptainer (the HPC jobs' container runtime, `hpc.container`): from PATH when it is there, else built once from the
# release source in ../shared/vendor (no registry here ships it), checked against SHA256SUMS first, into
# .tools/apptainer; skipped when the installed `apptainer version` is the pinned one. First time ~14 min on 2 cores.
# Its C build dependencies are Debian packages in bootstrap's apt list.
set -euo pipefail
cd "$(dirname "$0")/../.."
APPTAINER_VERSION=1.5.3
ROOT=$PWD
# The real path: Apptainer compiles its prefix in, and .tools may be a link.
PREFIX=$(realpath -m "$ROOT/.tools")/apptainer
VENDOR_DIR=${MLOPS_VENDOR_DIR:-$ROOT/../shared/vendor}
tarball=apptainer-$APPTAINER_VERSION.tar.gz
die() { echo "setup/apptainer: $*" >&2; exit 1; }

if command -v apptainer >/dev/null && [ "$(command -v apptainer)" != "$ROOT/.tools/bin/apptainer" ]; then exit 0; fi
if [ -x "$PREFIX/bin/apptainer" ] && [ "$("$PREFIX/bin/apptainer" version 2>/dev/null)" = "$APPTAINER_VERSION" ]; then
  ln -sf "$PREFIX/bin/apptainer" "$ROOT/.tools/bin/apptainer"; exit 0
fi

[ -f "$VENDOR_DIR/$tarball" ] || die "$VENDOR_DIR/$tarball is missing (Apptainer $APPTAINER_VERSION release source)"
want=$(awk -v f="$tarball" '$2 == f || $2 == "*" f {print $1}' "$VENDOR_DIR/SHA256SUMS" 2>/dev/null || true)
[ -n "$want" ] || die "$VENDOR_DIR/SHA256SUMS has no sha256 for $tarball"
got=$(sha256sum "$VENDOR_DIR/$tarball" | cut -d' ' -f1)
[ "$got" = "$want" ] || die "$VENDOR_DIR/$tarball has sha256 $got, SHA256SUMS says $want"
command -v go >/dev/null || die "Go is missing to build Apptainer $APPTAINER_VERSION"

printf '\n==> Building Apptainer %s from %s into %s (first time: ~14 min on 2 cores)\n' \
  "$APPTAINER_VERSION" "$VENDOR_DIR/$tarball" "$PREFIX"
mkdir -p "$ROOT/.tools/cache" "$ROOT/.tools/bin"
src=$(mktemp -d "$ROOT/.tools/cache/apptainer.XXXXXX")
trap 'rm -rf "$src"' EXIT
log=$src.log
tar -xzf "$VENDOR_DIR/$tarball" -C "$src" --strip-components=1
# The full compiler output goes to a log; the terminal gets one line per finished stage, so a long build shows progress.
build() {
  local stage=$1; shift
  local t0=$SECONDS
  "$@" >>"$log" 2>&1 || { tail -n 20 "$log" >&2; die "Apptainer $APPTAINER_VERSION build failed at '$stage' (log: $log)"; }
  echo "    $stage done in $((SECONDS - t0)) s"
}
# Apptainer's Makefile runs `go clean -cache` before building its starter: its own Go cache, or it would empty the
# user's (and break a Go build running beside it).
export GOFLAGS=-mod=mod GOCACHE=$src/.go-cache
# Its version comes from `git describe` when the source sits inside a git repository (this one), else from VERSION.
export GIT_CEILING_DIRECTORIES=$ROOT/.tools/cache:$(realpath -m "$ROOT/.tools/cache")
(cd "$src" && build "mconfig" ./mconfig --prefix="$PREFIX" \
   && build "make (Go and C, the long part)" make -C builddir \
   && rm -rf "$PREFIX" && build "make install" make -C builddir install)
"$PREFIX/bin/apptainer" version | grep -qx "$APPTAINER_VERSION" || die "the built $PREFIX/bin/apptainer is not version $APPTAINER_VERSION"
ln -sf "$PREFIX/bin/apptainer" "$ROOT/.tools/bin/apptainer"
rm -f "$log"
echo "    Apptainer $("$PREFIX/bin/apptainer" version) ready at $PREFIX"
