#!/usr/bin/env bash
# tools/schedule.sh install|remove STACK [ONCALENDAR] — the scheduled re-validation on this machine: a systemd timer
# (tools/systemd/) that runs `make revalidate STACK=<stack>` at ONCALENDAR (systemd's calendar syntax), each run
# joining reports/<stack>/history.jsonl. `render STACK ONCALENDAR DIR` only writes the two unit files into DIR.
# (Not a SLURM scrontab entry: the job would hold the node that the validation's own jobs need, and `make down`
# stops the slurmctld that keeps the crontab.)
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:-} stack=${2:-} when=${3:-"*-*-* 03:00:00"}
units=${SYSTEMD_UNIT_DIR:-/etc/systemd/system}
timer=mlops-validation@$stack.timer

usage() { echo "usage: tools/schedule.sh install|remove STACK [ONCALENDAR] | render STACK ONCALENDAR DIR" >&2; exit 2; }
[ -n "$stack" ] || usage
if [[ ! $stack =~ ^[A-Za-z0-9_.-]+$ ]] || [ ! -f "Pulumi.$stack.yaml" ]; then
  echo "schedule.sh: STACK '$stack' is no stack of this repo (no Pulumi.$stack.yaml)" >&2; exit 2
fi

render() {  # render DIR: the service template and this stack's timer
  local dir=$1 make
  make=$(command -v make) || { echo "schedule.sh: make is not on PATH" >&2; exit 2; }
  if command -v systemd-analyze >/dev/null && ! systemd-analyze calendar "$when" >/dev/null 2>&1; then
    echo "schedule.sh: SCHEDULE '$when' is no systemd calendar event (e.g. '*-*-* 03:00:00', 'Mon 04:00', 'daily')" >&2
    exit 2
  fi
  mkdir -p "$dir"
  sed -e "s|@REPO@|$PWD|g" -e "s|@MAKE@|$make|g" tools/systemd/mlops-validation@.service \
    > "$dir/mlops-validation@.service"
  sed -e "s|@STACK@|$stack|g" -e "s|@ONCALENDAR@|$when|g" tools/systemd/mlops-validation@.timer > "$dir/$timer"
}

running() { [ -d /run/systemd/system ]; }

case $action in
  render)
    [ -n "${4:-}" ] || usage
    render "$4"
    ;;
  install)
    if ! running; then
      echo "schedule.sh: systemd is not running on this machine (PID 1 is $(ps -o comm= -p 1)): no timer can run" \
           "here; 'tools/schedule.sh render $stack \"$when\" DIR' writes the units to install where it runs" >&2
      exit 2
    fi
    render "$units"
    systemctl daemon-reload
    systemctl enable --now "$timer"
    systemctl list-timers --no-pager "$timer"
    ;;
  remove)
    if running; then systemctl disable --now "$timer" 2>/dev/null || true; fi
    rm -f "$units/$timer"
    # the service template goes with the last stack's timer
    compgen -G "$units/mlops-validation@?*.timer" >/dev/null || rm -f "$units/mlops-validation@.service"
    if running; then systemctl daemon-reload; fi
    echo "schedule.sh: no scheduled re-validation of stack '$stack' any more"
    ;;
  *) usage ;;
esac
