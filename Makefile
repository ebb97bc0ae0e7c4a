# Two commands on a fresh machine: `make run` (the whole stack, foreground) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8080
export PORT

.PHONY: run status stop test call bench live-check clean run-outbound call-outbound phone-line

# What is installed, one stamp each: the runtime dependencies (`make run`), and the test or bench
# extras on top of them. A venv made by `make test` is one `make run` uses as it is; `make test` after
# `make run` only adds the extras.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed (found $$($(PYTHON) --version))"; exit 1; }
	@$(PYTHON) -m venv $(VENV) || \
		{ echo "could not create a venv: on Debian, apt-get install python3-venv"; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[bench]'
	@touch $@

run: $(VENV)/.installed
	$(PY) -m common.stack

# The running stack's programs and their pids; `make stop` stops it (from another terminal). Both find
# it by its run directory, as `make run` chose it: the same BRIDGE_RUN_DIR (or none, for the default).
status: $(VENV)/.installed
	@$(PY) -m common.stack status

stop: $(VENV)/.installed
	@$(PY) -m common.stack stop

test: $(VENV)/.installed-test
	$(PY) -m pytest

# How many calls this box carries (bench/load.py): JSON and a plot under docs/, a table on stdout.
bench: $(VENV)/.installed-bench
	$(PY) -m bench.load

# Does this key, model and region work? With GEMINI_API_KEY (or the Vertex variables) set: the real
# stack against the real service, one scripted call, a table of steps. Without: the same call against
# the emulator, once per model generation (docs/models.md).
live-check: $(VENV)/.installed-test
	$(PY) -m bench.live_check

# One call against `make run`'s stack, with synthetic speech: a short summary here, what came back in
# out/. Exits non-zero when no reply played.
call: $(VENV)/.installed
	@$(PY) -m softphone call --url http://127.0.0.1:$(PORT) --say-tone --out out/reply.wav --summary out/reply.json

# Outbound calls offline (docs/outbound.md): the stack set up to dial through the local Twilio REST
# stand-in (softphone/twilio_rest.py), then, from another terminal, one call the stand-in answers as
# ANSWER: human, voicemail, no-answer or busy. The credentials are the stand-in's, not real ones.
TWILIO_REST_PORT ?= 8090
ANSWER ?= human
OUTBOUND_ENV := TWILIO_API_URL=http://127.0.0.1:$(TWILIO_REST_PORT) \
	TWILIO_ACCOUNT_SID=AC00000000000000000000000000000000 TWILIO_AUTH_TOKEN=stand-in-auth-token \
	BRIDGE_API_TOKEN=stand-in-api-token BRIDGE_DIAL_ALLOW='+1555*' BRIDGE_DIAL_FROM=+15550100001

run-outbound: $(VENV)/.installed
	$(OUTBOUND_ENV) $(PY) -m common.stack

call-outbound: $(VENV)/.installed
	@$(OUTBOUND_ENV) $(PY) -m softphone outbound --url http://127.0.0.1:$(PORT) --answer $(ANSWER) \
		--rest-port $(TWILIO_REST_PORT)

# Or, instead of call-outbound, the stand-in alone until Ctrl-C: its calls ring the browser phone, so a
# person answers (http://127.0.0.1:$(PORT)/phone, "Call me"). It holds the stand-in's port meanwhile.
phone-line: $(VENV)/.installed
	@$(OUTBOUND_ENV) $(PY) -m softphone line --rest-port $(TWILIO_REST_PORT)

clean:
	rm -rf $(VENV) .run out *.egg-info
