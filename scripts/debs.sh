# Sourced by scripts/build-image and scripts/demo-images: `need PACKAGE[:COMMAND]...` installs the
# Debian packages that are missing (root, apt-get). With :COMMAND, a package counts as present
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
