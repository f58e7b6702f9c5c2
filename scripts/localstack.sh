#!/usr/bin/env bash
# Start LocalStack (SQS + Secrets Manager) without Docker, in its own
# Python 3.11 virtual environment, on 127.0.0.1:4566.  Idempotent: does
# nothing when one already answers.  `scripts/localstack.sh stop` stops the
# one this script started (by its PID file), nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LOCALSTACK_VENV:-.localstack-venv}
RUN=.run
PIDFILE=$RUN/localstack.pid
LOG=$RUN/localstack.log
URL=http://127.0.0.1:4566/_localstack/health
PY=${PYTHON311:-python3.11}
mkdir -p "$RUN"

answers() { curl -fsS --max-time 2 "$URL" >/dev/null 2>&1; }

if [ "${1:-start}" = "stop" ]; then
  if [ -f "$PIDFILE" ]; then
    pid=$(cat "$PIDFILE")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
  fi
  exit 0
fi

# Installed even when one already answers: a test may start a LocalStack of
# its own (with other services) from this environment.
if [ ! -x "$VENV/bin/python" ] || [ ! -f "$VENV/.installed" ] || \
   ! cmp -s infra/localstack/requirements-py311.lock "$VENV/.installed"; then
  echo "Installing LocalStack into $VENV (about 90 s, once)..."
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps \
      -r infra/localstack/requirements-py311.lock 2> >(grep -v '^WARNING: Location' >&2)
  cp infra/localstack/requirements-py311.lock "$VENV/.installed"
fi

if answers; then
  echo "LocalStack already answers on 127.0.0.1:4566"
  exit 0
fi

echo "Starting LocalStack (log: $LOG)"
# CloudFormation and CloudWatch: infra/cloudformation/queues.yaml can be applied
# here (infra/README.md); loaded lazily, they cost nothing until used.
GATEWAY_LISTEN=127.0.0.1:4566 SERVICES=sqs,secretsmanager,cloudformation,cloudwatch DNS_ADDRESS=0 \
SQS_ENDPOINT_STRATEGY=path LOCALSTACK_HOST=127.0.0.1:4566 \
DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 \
  nohup "$VENV/bin/python" -m localstack.runtime.main >"$LOG" 2>&1 &
echo $! > "$PIDFILE"
for _ in $(seq 1 120); do
  if answers; then echo "LocalStack is up"; exit 0; fi
  if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "LocalStack exited; last lines of $LOG:" >&2; tail -30 "$LOG" >&2; exit 1
  fi
  sleep 0.5
done
echo "LocalStack did not answer within 60 s; see $LOG" >&2
exit 1
