#!/bin/bash
# Device-machine helper (see docs/benchmarks.md): the GPU machine reaches no registry and takes at most 64 MiB per
# call, so large inputs travel in several calls to the same warm machine and wait in /root/stash.
#   bash tools/gpu/stash.sh DIR   # copies DIR's files into /root/stash; its *.whl are installed into /root/site
set -euo pipefail
mkdir -p /root/stash /root/site
for f in "$1"/*; do case $f in *.whl) ;; *) cp -r "$f" /root/stash/ ;; esac; done
# One pip call for all wheels: with --target, separate calls would skip a folder that another wheel already made
# (google/, opentelemetry/ are shared by several).
if ls "$1"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site "$1"/*.whl
fi
ls /root/stash; du -sh /root/site
