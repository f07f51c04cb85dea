# GPU serving image: the official vLLM OpenAI-compatible image plus tuneship's adapter guard.
#
#   docker build -f docker/serve.Dockerfile -t tuneship/serve:0.1.0-vllm0.32.0 .
#   offline: python docker/wheelhouse.py gpu, then add --network none --build-arg OFFLINE=1
#
# The base image is pinned by version in docker/versions.env (VLLM_IMAGE); tests check that
# the ARG default below matches it. vLLM, torch and CUDA come from that image untouched;
# tuneship is added without dependencies beyond the few its serving code imports.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0
FROM ${VLLM_IMAGE}
ARG OFFLINE=0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
WORKDIR /src
COPY docker/wheelhouse/ /wheelhouse/
COPY pyproject.toml README.md ./
COPY tuneship/ tuneship/
COPY train/ train/
COPY export/ export/
COPY serve/ serve/
COPY clients/ clients/
COPY entrypoints/ entrypoints/
# hadolint ignore=DL3013
# (the unpinned "." is this source tree; everything else is pinned)
RUN if [ "$OFFLINE" = "1" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse; fi \
 && python3 -m pip install --no-deps . \
 && python3 -m pip install "click>=8.1,<9" "pyyaml>=6,<7" "rich>=13,<16" "openai>=1.50,<4" \
 && rm -rf /wheelhouse /src \
 && useradd --create-home --uid 10001 --shell /usr/sbin/nologin tuneship
USER 10001
WORKDIR /home/tuneship
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]
CMD ["--model", "/models/base", "--host", "0.0.0.0", "--port", "8000"]
