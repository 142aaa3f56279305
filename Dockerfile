# syntax=docker/dockerfile:1.7
# The operator image: Kopf, the Kubernetes client and the typed API. No torch, no compilers, no pip at run
# time. Build from the repository root:  docker build -t ghcr.io/kubetune/operator:0.1.0 .
# Pin the base by digest in release builds: --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Exact pins of the operator's whole dependency closure: the versions the tests ran
# (regenerate: .venv/bin/python -m tests.chart.locks operator; tests/chart/test_images.py checks them).
COPY <<'EOF' /src/operator-lock.txt
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiohttp-retry==2.9.1
aiosignal==1.4.0
annotated-types==0.8.0
attrs==26.1.0
certifi==2026.10.19.post1
charset-normalizer==3.5.3
click==8.5.1
durationpy==0.11
frozenlist==1.8.0
idna==3.20
iso8601==2.1.0
jsonpatch==1.48
jsonpointer==3.12
kopf==1.45.2
kubernetes==37.0.1
multidict==7.2.1
oauthlib==4.0.1
prometheus-client==0.26.0
propcache==0.5.4
pydantic==2.14.4
pydantic-core==2.50.5
python-dateutil==2.9.0.post0
python-json-logger==4.2.0
pyyaml==6.0.4
requests==2.34.2
requests-oauthlib==2.0.0
six==1.17.0
typing-extensions==4.16.0
typing-inspection==0.4.5
urllib3==2.8.0
websocket-client==1.9.2
yarl==1.25.1
EOF
COPY pyproject.toml README.md constraints.txt ./
COPY operator/ operator/
COPY trainer-image/src/ trainer-image/src/
RUN python -m venv /opt/kubetune \
 && /opt/kubetune/bin/pip install --prefer-binary -c constraints.txt -c operator-lock.txt '.[operator]' \
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
