#!/usr/bin/env bash
# tools/stack.sh up|preview|drift|down|unlock STACK — one Pulumi stack's lifecycle, with its reports.
# Run through the Makefile, which sets the Pulumi environment (local backend, tools on PATH).
set -uo pipefail
cd "$(dirname "$0")/.."
action=$1 stack=$2
reports=reports/$stack
mkdir -p .pulumi-state "$reports"

if [ ! -f "Pulumi.$stack.yaml" ]; then
  echo "stack.sh: no Pulumi.$stack.yaml here (a site copies examples/Pulumi.mysite.yaml)" >&2; exit 2
fi
# The Makefile's passphrase is published: it may encrypt only the stacks this repo ships for this machine.
PUBLIC_PASSPHRASE=mlops-validation-dev-only
case $stack in
  dev | itest | itest-*) ;;
  *) if [ "$action" != down ] && [ "${PULUMI_CONFIG_PASSPHRASE:-}" = "$PUBLIC_PASSPHRASE" ]; then
       echo "stack.sh: stack '$stack' would keep its secrets (sshPrivateKey, ...) under the embedded default's" \
            "public passphrase: export PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE of your own" >&2
       exit 2
     fi ;;
esac

# A lock that an interrupted run left (its pulumi is gone) is cleared; one that a running pulumi holds is named.
# (The local file backend only; a site's Pulumi backend keeps its own locks.)
locks="${PULUMI_BACKEND_URL#file://}/.pulumi/locks/organization/mlops-validation/$stack"
if [ "$action" = unlock ] || { [[ $action != preview && $action != drift && ${PULUMI_BACKEND_URL:-} == file://* ]] \
                                && compgen -G "$locks/*.json" >/dev/null; }; then
  for lock in "$locks"/*.json; do
    [ -f "$lock" ] || continue
    read -r pid host since < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))
print(d.get("pid", ""), d.get("hostname", ""), d.get("timestamp", ""))' "$lock" 2>/dev/null)
    if [ "$action" != unlock ] && [ "$host" = "$(hostname)" ] && [ -n "$pid" ] \
       && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q pulumi; then
      echo "stack.sh: stack '$stack' is being updated by pulumi (pid $pid, since $since): wait for it, or stop" \
           "it and run: make unlock STACK=$stack" >&2
      exit 2
    fi
  done
  echo "stack.sh: clearing the lock of stack '$stack' that an interrupted run left (pulumi cancel)" >&2
  pulumi cancel --yes --stack "$stack" >/dev/null || exit 1
  [ "$action" = unlock ] && exit 0
fi
# Pulumi starts its plugins in process groups of their own: a `pulumi up` killed outright (SIGKILL of the terminal's
# group, a closed terminal) would leave them running their operations (a job's wait). A detached reaper ends them
# once this script is gone (tools/reap_plugins.py); the tag in their environment tells it which.
export MLOPS_PULUMI_RUN="$$-$(date +%s%N)"
setsid python3 tools/reap_plugins.py "$MLOPS_PULUMI_RUN" $$ </dev/null >/dev/null 2>&1 &
pulumi stack select --create --secrets-provider passphrase "$stack" >/dev/null || exit 1

# Creates an interrupted run left pending stay in every later state until cleared (Pulumi keeps them for a person
# to judge). Here each is safe to drop: its job was cancelled (the submit script, the reaper above) and a create
# starts from a clean slate (the embedded cluster stops a crashed run's daemons, a job clears its folder).
if [ "$action" = up ] || [ "$action" = down ]; then
  pending=$(pulumi stack export --stack "$stack" 2>/dev/null | python3 -c 'import json, sys
ops = json.load(sys.stdin).get("deployment", {}).get("pending_operations") or []
print(" ".join(op["resource"]["urn"].rsplit("::", 1)[-1] for op in ops if op.get("type") == "creating"))' 2>/dev/null)
  if [ -n "$pending" ]; then
    echo "stack.sh: dropping the creates an interrupted run left pending ($pending): pulumi refresh --clear-pending-creates" >&2
    pulumi refresh --yes --non-interactive --clear-pending-creates --stack "$stack" >/dev/null || exit 1
  fi
fi

# Pulumi prints a dynamic provider's failure as a Python traceback; end with its last line, the cause.
explain() {
  local log=$1
  local causes
  causes=$(grep -E '^\s+[A-Za-z_.]*(Error|Unreachable|Exception): ' "$log" | sed -E 's/^\s+[A-Za-z_.]*\.//' | sort -u)
  if [ -n "$causes" ]; then printf '\nmlops-validation: %s failed:\n%s\n' "$action" "$causes" >&2; fi
}

case $action in
  up)
    log=$(mktemp)
    started=$(date +%s.%N)
    pulumi up --yes --non-interactive --stack "$stack" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    seconds=$(python3 -c "import time; print(round(time.time() - $started, 1))")
    # Whatever the outcome, keep what was measured: the outputs and a report a person can read.
    pulumi stack output --json --stack "$stack" > "$reports/outputs.json" 2>/dev/null || echo '{}' > "$reports/outputs.json"
    # The run's record: exit code, time, when it ended and from which commit ("dirty": tracked files differ from it,
    # beyond the encryptionsalt line that selecting a stack adds to its Pulumi.<stack>.yaml).
    commit=$(git rev-parse HEAD 2>/dev/null || true)
    modified=$([ -z "$commit" ] || git diff --quiet -I '^encryptionsalt: ' HEAD 2>/dev/null || echo yes)
    python3 - "$reports/outputs.json" "$rc" "$seconds" "$commit" "$modified" <<'PY'
import datetime, json, sys
path, rc, seconds, commit, modified = sys.argv[1:]
outputs = json.load(open(path))
outputs["_run"] = {"action": "up", "exit_code": int(rc), "pulumi_seconds": float(seconds), "commit": commit or None,
                   "dirty": bool(modified),
                   "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")}
json.dump(outputs, open(path, "w"), indent=2)
PY
    # Every run joins the stack's history (reports/<stack>/history.jsonl), which the report compares it with.
    .venv/bin/python -m validation.history append "$reports/outputs.json" \
      || echo "stack.sh: the run was not added to $reports/history.jsonl" >&2
    .venv/bin/python -m validation.report "$reports/outputs.json" || true
    [ "$rc" = 0 ] || { explain "$log"; rm -f "$log"; exit "$rc"; }
    rm -f "$log"
    echo "Outputs: $reports/outputs.json   Report: $reports/report.md"
    ;;
  preview | drift)
    # drift: the deployed stack must equal what its code and config declare (a vanished daemon, a changed job
    # script or data digest shows as a change). The output is kept for CI's pull-request comment and artifacts.
    flags=(); [ "$action" = drift ] && flags=(--expect-no-changes)
    pulumi preview --non-interactive --diff "${flags[@]}" --stack "$stack" 2>&1 | tee "$reports/$action.txt"
    rc=${PIPESTATUS[0]}
    if [ "$rc" != 0 ] && [ "$action" = drift ]; then
      echo "stack.sh: stack '$stack' differs from its code and config, or its preview failed: $reports/drift.txt" >&2
    fi
    exit "$rc"
    ;;
  down)
    log=$(mktemp)
    pulumi destroy --yes --non-interactive --stack "$stack" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || { explain "$log"; rm -f "$log"; exit "$rc"; }
    rm -f "$log"
    ;;
  *) echo "usage: tools/stack.sh up|preview|drift|down|unlock STACK" >&2; exit 2 ;;
esac
