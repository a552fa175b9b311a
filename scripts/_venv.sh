# Sourced by scripts/serve and scripts/test: make sure the virtualenv exists and
# holds exactly what requirements.txt pins (reinstalled when the file changes).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CHAT_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "Creating virtualenv in $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
want="$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)"
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  echo "Installing requirements.txt into $VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements.txt"
  echo "$want" > "$VENV/.requirements.sha256"
fi
cd "$ROOT"
