# GPU training image: CUDA PyTorch with tuneship (transformers, peft, trl, bitsandbytes).
#
#   docker build -f docker/train.Dockerfile -t tuneship/train:0.1.0 .
#   docker run --gpus all -v $PWD/data:/data -v $PWD/runs:/runs tuneship/train:0.1.0 \
#     train --data /data/train.jsonl --name tickets --runs-dir /runs
#   offline: python docker/wheelhouse.py train, then add --network none --build-arg OFFLINE=1
#
# The base image is pinned in docker/versions.env (CUDA_TORCH_IMAGE); tests check the ARG.
ARG CUDA_TORCH_IMAGE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime
FROM ${CUDA_TORCH_IMAGE}
ARG OFFLINE=0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
WORKDIR /src
COPY docker/wheelhouse/ /wheelhouse/
COPY pyproject.toml README.md ./
COPY tuneship/ tuneship/
COPY train/ train/
COPY export/ export/
COPY serve/ serve/
COPY clients/ clients/
COPY entrypoints/ entrypoints/
# torch comes from the base image; everything else tuneship trains with is added.
RUN if [ "$OFFLINE" = "1" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse; fi \
 && python3 -m pip install . "bitsandbytes==0.50.2" \
 && rm -rf /wheelhouse /src \
 && useradd --create-home --uid 10001 --shell /usr/sbin/nologin tuneship
USER 10001
WORKDIR /home/tuneship
HEALTHCHECK --interval=30s --timeout=10s CMD ["tuneship", "--version"]
ENTRYPOINT ["tuneship"]
CMD ["--help"]
