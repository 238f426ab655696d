# Sourced by scripts/venv and scripts/install: Python 3.11 or newer, with its venv
# module (on a fresh Debian a separate package, installed here: via sudo unless root).
# `need_python [INTERPRETER]` checks INTERPRETER (default: python3 on PATH).
need_python() {
  py=${1:-python3}
  "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "backupagent needs Python 3.11 or newer ($py is older)" >&2; exit 1; }
  if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -q && apt-get install -y -q python3-venv
    else
      sudo apt-get install -y python3-venv
    fi
  fi
}
