# syntax=docker/dockerfile:1
# The service-discovery daemon. `builder` builds the wheel (migrations are packaged inside it)
# and installs it, without the [embedded] extra, into a virtualenv; the final stage is the slim
# base image plus that virtualenv: no compiler, no sources, no build tools.
#   docker build -t service-discovery .
# The base image is an argument so a mirror or a newer patch release needs no edit; the stages
# share it, so the virtualenv's interpreter path exists in the final stage. (`make image` builds
# with this file unchanged, passing a local stand-in where the image cannot be pulled.)
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# Dependencies first, in a layer keyed on pyproject.toml and constraints.txt alone, so that a
# change to the sources reuses it instead of downloading every dependency again. Their names are
# read from pyproject.toml: the daemon's go into /opt/venv, what builds the wheel (hatchling)
# into /opt/build, which stays in this stage. Only prebuilt wheels (--only-binary): if one has
# none for this platform the build fails here rather than needing a compiler. Their versions are
# the ones CI tested (constraints.txt, `make constraints`).
# The package index is reached with the pip configuration and CA bundle given as build secrets
# (`make image` passes the machine's, for a TLS-intercepting proxy; without them pip uses its
# defaults): mounted for this step only, they are in no layer of the image.
COPY pyproject.toml constraints.txt ./
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=ca-bundle \
    python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
print(*p["project"]["dependencies"], sep="\n", file=open("/tmp/daemon.txt", "w")); \
print(*p["build-system"]["requires"], sep="\n", file=open("/tmp/build.txt", "w"))' \
    && python -m venv /opt/venv /opt/build \
    && /opt/venv/bin/pip install --only-binary=:all: -c constraints.txt -r /tmp/daemon.txt \
    && /opt/build/bin/pip install --only-binary=:all: -c constraints.txt -r /tmp/build.txt
COPY README.md ./
COPY migrations/ migrations/
COPY protos/ protos/
COPY service_discovery/ service_discovery/
# The wheel, with nothing downloaded: built without isolation by /opt/build's hatchling, installed
# without dependencies (`pip check`: the layer above has them all).
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --no-deps -c constraints.txt /wheels/service_discovery-*.whl \
    && /opt/venv/bin/pip check

# Tilt's live-update target (see Tiltfile), not for deployment: the installed virtualenv plus
# the sources at /app/src, first on sys.path and owned by the app user so Tilt can sync over
# them. The layout is the wheel's (migrations and protos inside the package). Not built on
# `builder`: its /src copy of the sources would be the working directory, which `python -m`
# puts before PYTHONPATH.
FROM ${PYTHON_IMAGE} AS dev
COPY --from=builder /opt/venv /opt/venv
COPY --chown=10001:10001 service_discovery/ /app/src/service_discovery/
COPY --chown=10001:10001 migrations/ /app/src/service_discovery/migrations/
COPY --chown=10001:10001 protos/ /app/src/service_discovery/protos/
WORKDIR /app/src
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app/src \
    BIND_ADDRESS=0.0.0.0
USER 10001:10001
ENTRYPOINT ["service-discovery"]
CMD ["serve"]

FROM ${PYTHON_IMAGE}
# The group explicitly: useradd --user-group would give it the next system gid (999), not the
# 10001 of USER and of the manifests' runAsGroup.
RUN groupadd --system --gid 10001 service-discovery \
    && useradd --no-log-init --system --uid 10001 --gid 10001 \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin service-discovery
COPY --from=builder /opt/venv /opt/venv
# Bytecode was compiled at install time; the root filesystem is read-only in Kubernetes.
# The daemon binds 127.0.0.1 unless told otherwise; a container's loopback is its own, so the
# image listens on every interface (the network around it, e.g. a NetworkPolicy, decides who
# reaches it).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BIND_ADDRESS=0.0.0.0
# Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
# DNS (UDP and TCP), HTTP, gRPC: the daemon's default ports.
EXPOSE 8053/udp 8053/tcp 3000 8081
ENTRYPOINT ["service-discovery"]
CMD ["serve"]
