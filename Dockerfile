# syntax=docker/dockerfile:1.7
# The operator image: Kopf, the Kubernetes client and the typed API. No torch, no compilers, no pip at run
# time. Build from the repository root:  docker build -t ghcr.io/kubetune/operator:0.1.0 .
# Pin the base by digest in release builds: --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Exact pins of the operator's whole dependency closure: the versions the tests ran (scripts/lock.sh).
COPY locks/operator-image.txt locks/operator-image.txt
COPY pyproject.toml README.md ./
# Only the operator's package: neither the trainer's stages nor kubetune_sandbox (the API emulator and local
# cluster) are in this image (tests/chart/test_images.py checks the file list these lines give).
COPY operator/ operator/
RUN python -m venv /opt/kubetune \
 && /opt/kubetune/bin/pip install --prefer-binary -c locks/operator-image.txt '.[operator]' \
 && /opt/kubetune/bin/pip check \
 && /opt/kubetune/bin/pip uninstall --yes pip setuptools wheel \
 && python -m compileall -q /opt/kubetune/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kubetune operator" \
      org.opencontainers.image.source="https://github.com/kubetune/kubetune" \
      org.opencontainers.image.licenses="Apache-2.0"
# The runtime needs no installer either.
RUN PIP_ROOT_USER_ACTION=ignore python -m pip uninstall --yes pip setuptools wheel
COPY --from=build /opt/kubetune /opt/kubetune
# HOME and caches point at /tmp: the chart mounts a small emptyDir there and keeps the root filesystem
# read-only. Bytecode is compiled at build time, so nothing needs to write next to the code.
ENV PATH=/opt/kubetune/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache
# A numeric user, so that Pod Security's runAsNonRoot can check it without a passwd lookup (the chart's
# podSecurityContext.runAsUser).
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["kubetune"]
CMD ["operator"]
