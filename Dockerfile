# kubemeter images: two targets from one build.
#
#   docker build --target operator -t kubemeter .            # `kubemeter operator`, the CLI
#   docker build --target exporter -t kubemeter-exporter .   # `kubemeter-exporter` (DaemonSet)
#
# BASE_IMAGE is any Debian-like image; python3 (with venv) is installed with apt only when it
# lacks it. Without Docker, `make image` (hack/build-image.sh) builds both targets with buildah
# from a Debian root filesystem made by mmdebstrap that already holds python3 (docs/images.md).
#
# Dependencies come from the hash-locked files in requirements/ (hack/lock.py compiles them
# from pyproject.toml): the operator gets [project] dependencies, the exporter only the
# `exporter` extra (no kopf, kubernetes or SQLAlchemy). The kubemeter wheel itself is
# installed with --no-deps. Both run as uid 10001 from the venv /opt/kubemeter, with no pip.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BASE_IMAGE} AS base
RUN if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && echo 'kubemeter:x:10001:10001:kubemeter:/home/kubemeter:/usr/sbin/nologin' >>/etc/passwd \
    && echo 'kubemeter:x:10001:' >>/etc/group \
    && mkdir -p /home/kubemeter \
    && chown 10001:10001 /home/kubemeter
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# pip and hatchling (build.lock) in a venv of their own: they build the wheel and install
# /opt/kubemeter, and stay out of the images. PIP_CERT: an optional CA bundle for a
# TLS-intercepting proxy, given as the build secret `ca` (hack/build-image.sh does).
FROM base AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/build.lock /src/requirements/
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes -r /src/requirements/build.lock

FROM builder AS wheel
COPY pyproject.toml README.md /src/
COPY operator /src/operator
COPY exporter /src/exporter
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels /src

# /opt/kubemeter: a venv without pip. The locked dependencies go in before the wheel, so a
# change of the sources alone reuses that layer.
FROM builder AS venv-exporter
COPY requirements/exporter.lock /src/requirements/
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv --without-pip /opt/kubemeter \
    && /opt/build/bin/pip --python /opt/kubemeter/bin/python install \
        --require-hashes -r /src/requirements/exporter.lock
COPY --from=wheel /wheels /wheels
# The wheel holds both packages; the exporter image keeps only its own (the exporter
# imports nothing of the operator: import-linter contract "exporter-alone").
RUN /opt/build/bin/pip --python /opt/kubemeter/bin/python install --no-deps /wheels/*.whl \
    && rm -r /opt/kubemeter/lib/python3*/site-packages/kubemeter_operator \
        /opt/kubemeter/bin/kubemeter /opt/kubemeter/bin/kubectl-kubemeter

FROM builder AS venv-operator
COPY requirements/operator.lock /src/requirements/
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv --without-pip /opt/kubemeter \
    && /opt/build/bin/pip --python /opt/kubemeter/bin/python install \
        --require-hashes -r /src/requirements/operator.lock
COPY --from=wheel /wheels /wheels
RUN /opt/build/bin/pip --python /opt/kubemeter/bin/python install --no-deps /wheels/*.whl \
    && /opt/build/bin/pip --python /opt/kubemeter/bin/python check

FROM base AS runtime
ENV PATH=/opt/kubemeter/bin:$PATH
WORKDIR /home/kubemeter
USER 10001:10001
LABEL org.opencontainers.image.source="https://github.com/kubemeter/kubemeter" \
      org.opencontainers.image.licenses="Apache-2.0"

FROM runtime AS exporter
LABEL org.opencontainers.image.title="kubemeter-exporter" \
      org.opencontainers.image.description="kubemeter GPU exporter: per-pod GPU time counters for Prometheus"
COPY --from=venv-exporter /opt/kubemeter /opt/kubemeter
# Scenarios for `kubemeter-exporter --simulate /usr/share/kubemeter/scenarios/demo.yaml`.
COPY examples/scenarios /usr/share/kubemeter/scenarios
EXPOSE 9400
CMD ["kubemeter-exporter"]

# The last stage: what a plain `docker build .` gives.
FROM runtime AS operator
LABEL org.opencontainers.image.title="kubemeter" \
      org.opencontainers.image.description="kubemeter operator and CLI: meter, price and budget GPU time and LLM tokens per tenant"
COPY --from=venv-operator /opt/kubemeter /opt/kubemeter
CMD ["kubemeter", "operator"]
