#!/usr/bin/env bash
# Issue 15 on one H200: does `apptainer exec --nv` of this project's Apptainer build (tools/setup/apptainer.sh) see
# the GPU from inside an image? The image is the smallest that can tell: Debian's busybox-static and libc6 plus
# tools/gpu/cudaprobe.c (loads the libcuda.so.1 that --nv binds in and names each GPU), built into a SIF here.
#
#   here:    tools/gpu/apptainer_nv.sh pack    # .gpu-nv/: apptainer.tar.xz (the install, less its CNI plugins),
#                                              # nv.sif, SHA256SUMS; about 41 MiB
#   device:  run(kind="nvidia-h200", carry=[".gpu-nv"], command="bash tools/gpu/apptainer_nv.sh check")
#
# The device machine (Firecracker) withholds CAP_SYS_RESOURCE from root, so the install's default
# `root default capabilities = full` stops every exec there ("Requesting capability set ... while permitted capability
# set is ..."); check sets it to `no` on that copy. Its output: $OUT/apptainer-nv-h200.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
KIT=.gpu-nv
PREFIX=$PWD/.tools/apptainer  # the device extracts the install at the same absolute path
case ${1:-} in
pack)
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
  mkdir -p "$KIT" "$work"/rootfs/{bin,usr/bin,etc,proc,sys,dev,tmp,root,home}
  (cd "$work" && apt-get download busybox-static libc6 >/dev/null)
  for deb in "$work"/*.deb; do dpkg -x "$deb" "$work/rootfs"; done
  for c in sh ls cat echo env; do ln -sf busybox "$work/rootfs/bin/$c"; done
  echo "busybox-static and libc6 from Debian $(. /etc/os-release; echo "$VERSION_CODENAME")" > "$work/rootfs/etc/os-release-note"
  gcc -O2 -o "$work/rootfs/usr/bin/cudaprobe" tools/gpu/cudaprobe.c -ldl
  "$PREFIX/bin/apptainer" build --force "$KIT/nv.sif" "$work/rootfs/" >/dev/null
  tar --exclude=apptainer/libexec/apptainer/cni -C "$(dirname "$PREFIX")" -cJf "$KIT/apptainer.tar.xz" apptainer
  sha256sum "$KIT/apptainer.tar.xz" "$KIT/nv.sif" > "$KIT/SHA256SUMS"
  du -sh "$KIT" ;;
check)
  sha256sum -c "$KIT/SHA256SUMS"
  [ -x "$PREFIX/bin/apptainer" ] || { mkdir -p "$(dirname "$PREFIX")"; tar -xJf "$KIT/apptainer.tar.xz" -C "$(dirname "$PREFIX")"; }
  A=$PREFIX/bin/apptainer
  sed -i 's/^root default capabilities = .*/root default capabilities = no/' "$PREFIX/etc/apptainer/apptainer.conf"
  {
    date -u; uname -r; grep CapPrm /proc/self/status; "$A" version
    echo '--- exec --nv: nvidia-smi'; "$A" exec --nv "$KIT/nv.sif" nvidia-smi -L
    "$A" exec --nv "$KIT/nv.sif" nvidia-smi --query-gpu=name,driver_version,memory.total,pci.bus_id --format=csv
    echo '--- exec --nv: CUDA driver API'; "$A" exec --nv "$KIT/nv.sif" cudaprobe
    "$A" exec --nv "$KIT/nv.sif" cat /etc/os-release-note
    echo '--- exec without --nv: the driver must be absent'
    if "$A" exec "$KIT/nv.sif" cudaprobe; then echo "FAIL: the GPU was reachable without --nv"; exit 1; fi
    echo 'PASS: apptainer exec --nv sees the GPU; without --nv it does not'
  } 2>&1 | tee "${OUT:-/tmp}/apptainer-nv-h200.log" ;;
*) echo "usage: $0 pack|check" >&2; exit 2 ;;
esac
