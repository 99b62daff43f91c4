# The pilotfish image: one image for every subcommand (pilotfish up|registry|dns|lb|sidecar).
#
#   docker build -t pilotfish .       with an image registry (base: python:3.11-slim-bookworm)
#   scripts/build-image               without one (debootstrap base, wheels built on the host)
#
# Configuration comes from PILOTFISH_* environment variables (every flag has one) or flags.
ARG BASE=python:3.11-slim-bookworm

# Stage 1: the pilotfish wheel built from the source, and the wheels it depends on (from
# ./.wheels when scripts/build-image made it: OFFLINE=1 then allows no index at all),
# installed into a virtual environment that the final stage copies.
FROM ${BASE} AS wheels
ARG OFFLINE=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY . /src
RUN python3 -m venv /opt/pilotfish \
 && /opt/pilotfish/bin/pip wheel -q ${OFFLINE:+--no-index} --find-links /src/.wheels \
        -w /wheels "/src[all]" \
 && /opt/pilotfish/bin/pip install -q --no-index --find-links /wheels "pilotfish[all]" \
 && /opt/pilotfish/bin/pip uninstall -q -y pip setuptools

# Stage 2: the base, an unprivileged user and the environment; no compilers, no pip, no wheels.
FROM ${BASE}
ARG BASE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="pilotfish" \
      org.opencontainers.image.description="Service discovery and load balancing for containers: registry API, DNS, TCP balancer, Docker sidecar" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE}"
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin pilotfish
COPY --from=wheels /opt/pilotfish /opt/pilotfish
# Listen on every interface inside the container; PILOTFISH_HEALTH_URL is what HEALTHCHECK
# asks (the API's by default: set it to the LB's, DNS's or sidecar's /health for those).
ENV PATH=/opt/pilotfish/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PILOTFISH_API=0.0.0.0:8500 \
    PILOTFISH_DNS=0.0.0.0:8600 \
    PILOTFISH_LB_API=0.0.0.0:8700 \
    PILOTFISH_HEALTH_URL=http://127.0.0.1:8500/v1/health
USER pilotfish:pilotfish
EXPOSE 8500/tcp 8600/udp 8600/tcp 8700/tcp
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['PILOTFISH_HEALTH_URL'], timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["pilotfish"]
CMD ["up"]
