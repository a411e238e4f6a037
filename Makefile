# mlops-validation. `make up` runs the validation on the embedded default (stack `dev`), `make test` runs
# every test, `make down` removes what `make up` made. STACK=<site> points them at another stack.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
STACK ?= dev

export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/.venv/bin:$(PATH)
export PYTHONPATH := $(CURDIR)
export PULUMI_HOME := $(CURDIR)/.tools/pulumi-home
export PULUMI_BACKEND_URL ?= file://$(CURDIR)/.pulumi-state
# Passphrase of the local secrets provider. This default is for the embedded default only and is no
# secret: a real site exports its own PULUMI_CONFIG_PASSPHRASE (or uses another secrets provider).
# tools/stack.sh refuses it for any other stack; a passphrase file of the site's own is used as it is.
ifeq ($(origin PULUMI_CONFIG_PASSPHRASE)$(origin PULUMI_CONFIG_PASSPHRASE_FILE),undefinedundefined)
export PULUMI_CONFIG_PASSPHRASE := mlops-validation-dev-only
endif
export PULUMI_SKIP_UPDATE_CHECK := true
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION := true
export DO_NOT_TRACK := 1

.PHONY: setup up preview down unlock test unit-test integration-test report faults soak
.PHONY: drift acceptance revalidate schedule unschedule
setup:
	@tools/bootstrap.sh

up: setup        ## pulumi up on $(STACK), then reports/$(STACK)/{outputs.json,report.md}
	@tools/stack.sh up $(STACK)

preview: setup   ## what CI runs on pull requests
	@tools/stack.sh preview $(STACK)

down: setup      ## pulumi destroy on $(STACK): daemons stopped, jobs cancelled, files removed
	@tools/stack.sh down $(STACK)

unlock: setup    ## clear the lock an interrupted `make up` left (make up does it itself when no pulumi holds it)
	@tools/stack.sh unlock $(STACK)

report:          ## rebuild reports/$(STACK)/report.md from its outputs.json
	@.venv/bin/python -m validation.report reports/$(STACK)/outputs.json

test: setup      ## workload tests, unit tests, then a real pulumi up / acceptance tests / destroy of a throwaway stack
	@.venv-workloads/bin/python -m pytest -q tests/workloads --ignore=tests/workloads/test_oumi_cloud.py --ignore=tests/workloads/test_oumi_eval.py
	@.venv-oumi/bin/python -m pytest -q tests/workloads/test_oumi_cloud.py tests/workloads/test_oumi_eval.py  # need Oumi
	@.venv/bin/python -m pytest -q tests/unit tests/integration
	@.venv/bin/python -m pytest -q tests/faults  # faults injected into a small stack (docs/reliability.md)

# -- history, CI and the schedule (README: "History, CI and the schedule") ------------------------------------------
drift: setup     ## pulumi preview --expect-no-changes on $(STACK): fails where the stack differs from its code/config
	@tools/stack.sh drift $(STACK)

acceptance:      ## the acceptance tests on reports/$(STACK)/outputs.json (a stack already up, e.g. a site's)
	@STACK_OUTPUTS=reports/$(STACK)/outputs.json .venv/bin/python -m pytest -q tests/integration/test_acceptance.py

revalidate: setup  ## make down, then make up: every job runs again, and its figures join reports/$(STACK)/history.jsonl
	@tools/stack.sh down $(STACK)
	@tools/stack.sh up $(STACK)

SCHEDULE ?= *-*-* 03:00:00
schedule:        ## a systemd timer runs `make revalidate` on $(STACK) at $(SCHEDULE) (systemd OnCalendar)
	@tools/schedule.sh install $(STACK) '$(SCHEDULE)'

unschedule:      ## remove the timer of `make schedule`
	@tools/schedule.sh remove $(STACK)

faults: setup    ## the fault suite, then its table in docs/reliability.md
	@.venv/bin/python -m pytest -q tests/faults
	@.venv/bin/python tools/reliability_table.py

soak: setup      ## 1,000 sbatch submissions and a 10-minute predictor soak, then their table in docs/reliability.md
	@.venv/bin/python tools/load_test.py sbatch --jobs $${SOAK_JOBS:-1000}
	@.venv/bin/python tools/load_test.py predictor --seconds $${SOAK_SECONDS:-600}
	@.venv/bin/python tools/reliability_table.py
