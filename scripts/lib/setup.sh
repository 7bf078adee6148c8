# Shared by scripts/test and scripts/demo: make sure the Debian packages and the venv exist.
# Sourced, not run. Sets VENV (default .venv, or $EDGE_AGENT_VENV) and puts it first on PATH.
#   ensure_debian_packages CMD=PKG ...   install missing commands' packages (apt-get as root), else say what to run
#   ensure_venv EXTRAS                    create the venv and install the checkout with those extras (once)

VENV=${EDGE_AGENT_VENV:-.venv}
PY=${PYTHON:-python3}

ensure_debian_packages() {
  local need=() pair cmd pkg
  for pair in "$@"; do
    cmd=${pair%%=*}; pkg=${pair#*=}
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${need[*]} with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "setup: missing Debian packages; run:  sudo apt-get install ${need[*]}" >&2
    return 1
  fi
}

ensure_venv() {
  local extras=$1 stamp
  if ! "$PY" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))' 2>/dev/null; then
    echo "setup: $PY is not Python 3.10-3.13; set PYTHON=python3.11 (or another supported version)" >&2
    return 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV" || { echo "setup: could not create $VENV; install python3-venv" >&2; return 1; }
  fi
  stamp="$VENV/.edge-agent-installed-$(echo "$extras" | tr ',' '-')"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing edge-agent[$extras] into $VENV (first run: a few minutes)" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # setuptools warns about every editable install; nothing for a newcomer to act on
    PYTHONWARNINGS=ignore "$VENV/bin/python" -m pip install -q -e ".[$extras]"
    touch "$stamp"
  fi
  export PATH="$PWD/$VENV/bin:$PATH"
}
