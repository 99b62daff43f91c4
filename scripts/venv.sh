# Sourced by scripts/up and scripts/test: make_venv EXTRAS makes ./.venv with pilotfish installed.
make_venv() {
    if ! python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
        echo "pilotfish needs Python 3.11 or newer as python3" >&2
        exit 1
    fi
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
    fi
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -e ".$1"
}
