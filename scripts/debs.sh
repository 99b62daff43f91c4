# Sourced by scripts/build-image and scripts/demo-images: `need PACKAGE[:COMMAND]...` installs the
# Debian packages that are missing (root, apt-get); `need_engine NAME` stops with how to start a
# Docker engine when none answers. With :COMMAND, a package counts as present
# when that command is on PATH (Docker's own docker-ce gives `docker` without docker.io).
need() {
    local missing=() wanted deb command
    for wanted in "$@"; do
        deb=${wanted%%:*}
        command=${wanted#*:}
        if [ "$command" != "$wanted" ]; then
            command -v "$command" >/dev/null 2>&1 && continue
        elif dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "ok installed"; then
            continue
        fi
        missing+=("$deb")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

need_engine() {
    docker info >/dev/null 2>&1 && return 0
    cat >&2 <<MESSAGE
$1: no Docker engine answers${DOCKER_HOST:+ at $DOCKER_HOST}. Start one, then run this again:
    systemctl start docker          # a host with systemd
    dockerd --iptables=false --ip6tables=false --bridge=none >/var/log/dockerd.log 2>&1 &
                                    # anywhere else (a container, CI): the settings the stacks need
See docs/compose.md, "The Docker engine".
MESSAGE
    exit 1
}
