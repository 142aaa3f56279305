# The operator image: Kopf, the Kubernetes client and the typed API. No torch, no build tools at run time.
# syntax=docker/dockerfile:1
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY operator/ operator/
COPY trainer-image/src/ trainer-image/src/
RUN python -m venv /opt/kubetune \
 && /opt/kubetune/bin/pip install --no-compile -c constraints.txt '.[operator]'

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/kubetune/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=build /opt/kubetune /opt/kubetune
# A numeric user so Pod Security "runAsNonRoot" can verify it without a passwd lookup.
USER 65532:65532
ENTRYPOINT ["kubetune"]
CMD ["operator"]
