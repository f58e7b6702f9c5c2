#!/usr/bin/env bash
# checkov (policy as code) over the deploy templates, from a virtual
# environment of its own: checkov 3.3 pins boto3 1.35 and packaging<24,
# which the project's .venv cannot hold beside its own pins (docs/deploy.md,
# "Policy scan"). Installed once from infra/policy/checkov-py311.lock
# (about 30 s, ~270 MB); `scripts/policy.sh install` only installs.
#   scripts/policy.sh DIR       scan DIR (a packaged template and its stacks/)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${POLICY_VENV:-.policy-venv}
LOCK=infra/policy/checkov-py311.lock
PY=${PYTHON311:-python3.11}
if [ ! -x "$VENV/bin/checkov" ] || ! cmp -s "$LOCK" "$VENV/.installed"; then
  echo "Installing checkov into $VENV (about 30 s, once)..." >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r "$LOCK" \
      2> >(grep -v '^WARNING: Location' >&2)
  cp "$LOCK" "$VENV/.installed"
fi
[ "${1:-}" = "install" ] && exit 0
exec "$VENV/bin/checkov" --config-file infra/policy/checkov.yaml -d "$1"
