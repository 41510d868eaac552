# syntax=docker/dockerfile:1
#
# The operator image: the continual-training package WITHOUT the `train` extra, so no torch, no CUDA and
# no transformers: it starts in a second or two and weighs a small fraction of the trainer image. The
# trainer runs in its own image (trainer_image/Dockerfile), started by the operator as Jobs.
#
#   docker build -t ghcr.io/continual-training/operator:0.1.0 .
#
# The build context is the repository root; .dockerignore keeps the virtualenv, caches and tests out.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: install the package into a virtualenv that the final stage copies as is ---------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Only what the package is built from, so that a change to the tests or docs reuses this layer.
# (README.m[d]: the readme pyproject.toml names, copied when present.)
COPY pyproject.toml README.m[d] LICENSE ./
COPY operator/ operator/
COPY trainer_image/continual_trainer/ trainer_image/continual_trainer/
# `.`, not `.[train]`: the operator never imports torch (an import-linter contract enforces it).
RUN pip install --no-cache-dir . \
 && pip check \
 && ! pip show --quiet torch 2>/dev/null

# -- run ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="continual-training operator" \
      org.opencontainers.image.description="Kubernetes operator for continual LoRA fine-tuning (kopf)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="python:3.11-slim-bookworm"

# 65532: the conventional "nonroot" UID (as in distroless images), the one the chart's pod runs as.
RUN groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin nonroot
COPY --from=build /opt/venv /opt/venv
# The chart mounts a read-only root filesystem with an emptyDir on /tmp: HOME points there.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
# Numeric, so that the kubelet can check runAsNonRoot against it.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 8081
ENTRYPOINT ["continual-training"]
CMD ["operator", "--all-namespaces"]
