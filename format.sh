#!/usr/bin/env bash
# Format and lint with the pinned ruff. Reformats in place, but exits non-zero when it
# had to change anything or when the linter finds something, so a clean run means
# the tree was already clean.
set -uo pipefail
cd "$(dirname "$0")"
want=$(sed -n 's/^ruff==//p' requirements/lint.txt)
have=$(ruff --version 2>/dev/null | awk '{print $2}')
if [ "$have" != "$want" ]; then
  echo "format.sh: ruff $want is required (found '${have:-none}'): pip install -r requirements/lint.txt" >&2
  exit 1
fi
status=0
if ! ruff format --check . >/dev/null; then
  ruff format .
  echo "format.sh: files were reformatted; review and re-run" >&2
  status=1
fi
ruff check . || status=1
exit $status
