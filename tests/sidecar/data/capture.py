"""Re-record the `docker inspect` output the sidecar's table tests read (run by hand, as root).

    .venv/bin/python -m tests.sidecar.data.capture

Starts a throwaway dockerd (tests/fixtures/docker.py), runs one container per case, and
writes each container's inspect JSON to tests/sidecar/data/<case>.json. The bridge cases use
a user-defined bridge network on 10.251.77.0/24 that exists only for the capture.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.fixtures.docker import DockerEngine

HERE = Path(__file__).parent
NETWORK = "pf-capture"


def main() -> None:
    """Run every case and write its inspect output."""
    with DockerEngine() as engine:
        image = engine.import_busybox("pf-busybox:capture")
        cases: dict[str, tuple[str, ...]] = {
            "host_labels": (
                "--network", "host", "--expose", "8080", "-l", "SERVICE_NAME=web",
                "-l", "SERVICE_TAGS=blue,canary", "-l", "SERVICE_WEIGHT=5",
                "-l", "SERVICE_REGION=eu", "-e", "SERVICE_NAME=from-env",
                "-e", "SERVICE_ZONE=z1", "-e", "OTHER=x"),
            "host_env_only": (
                "--network", "host", "--expose", "9000", "-e", "SERVICE_NAME=api",
                "-e", "SERVICE_TAGS=v1"),
            "host_no_ports": ("--network", "host", "-l", "SERVICE_NAME=worker"),
            "host_label_port": ("--network", "host", "-l", "SERVICE_NAME=db",
                                "-l", "SERVICE_PORT=5432"),
            "host_multi_ports": (
                "--network", "host", "--expose", "80", "--expose", "443",
                "--expose", "53/udp", "-l", "SERVICE_443_NAME=secure",
                "-l", "SERVICE_80_TAGS=plain", "-l", "SERVICE_TAGS=all",
                "-l", "SERVICE_53_IGNORE=true"),
            "host_ignored": ("--network", "host", "--expose", "80", "-l", "SERVICE_IGNORE=1"),
            "host_service_id": ("--network", "host", "--expose", "80",
                                "-l", "SERVICE_ID=custom-id", "-l", "SERVICE_NAME=web"),
            "image_name": ("--network", "host", "--expose", "80"),
            "none": ("--network", "none", "-l", "SERVICE_NAME=isolated", "--expose", "80"),
            "health": ("--network", "host", "--expose", "8081", "-l", "SERVICE_NAME=hc",
                       "--health-cmd", "true", "--health-interval", "1s"),
        }
        for name, args in cases.items():
            engine.run("--name", f"cap-{name.replace('_', '-')}", *args, image=image)
        engine.run("--name", "cap-joined", "--network", "container:cap-host-labels",
                   "-l", "SERVICE_NAME=joined", image=image)
        engine.docker("network", "create", "--subnet", "10.251.77.0/24", NETWORK)
        try:
            engine.run("--name", "cap-bridge-published", "--network", NETWORK,
                       "-p", "127.0.0.1:18080:80", "-p", "18053:53/udp", "--expose", "9999",
                       "-l", "SERVICE_NAME=pub", image=image)
            engine.run("--name", "cap-bridge-dynamic", "--network", NETWORK, "--expose", "80",
                       "--expose", "81", "-P", "-l", "SERVICE_NAME=dyn", image=image)
            time.sleep(2.5)  # the health check has run
            names = [f"cap-{n.replace('_', '-')}" for n in cases] + [
                "cap-joined", "cap-bridge-published", "cap-bridge-dynamic"]
            for container in names:
                data = engine.inspect(container)
                case = container.removeprefix("cap-").replace("-", "_")
                (HERE / f"{case}.json").write_text(json.dumps(data, indent=1) + "\n")
        finally:
            engine.remove_all()
            engine.docker("network", "rm", NETWORK)


if __name__ == "__main__":
    main()
