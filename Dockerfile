# syntax=docker/dockerfile:1.7
# The evaluation server as one image: a builder stage compiles llama-cpp-python and builds the GGUF
# engine with build_engine; a slim runtime stage serves it under gunicorn on port 80.
#
#   docker build -t llm-eval .                                   # default model, Q4_K_M, CUDA
#   docker build --build-arg QUANT=Q8_0 -t llm-eval:q8 .         # re-runs only the quantize step
#   docker build --build-arg BACKEND=cpu -t llm-eval:cpu .       # no CUDA anywhere
#   HF_TOKEN=hf_... docker build --secret id=hf_token,env=HF_TOKEN -t llm-eval .   # a gated model
#   docker run --gpus all -p 8080:80 llm-eval
#   docker stop --time 90 <container>                            # drains: see STOPSIGNAL below
#
# Every RUN step calls a script under docker/; CI runs the same scripts (BACKEND=cpu) in tests/docker/.
# See the Docker section of README.md.

# BACKEND picks the pair of base images below: cuda (Ubuntu + CUDA) or cpu (slim Debian + Python).
ARG BACKEND=cuda
# CUDA 12.6 on Ubuntu 24.04, whose python3 is 3.12 (the pinned packages need Python >= 3.11).
ARG CUDA_VERSION=12.6.3
ARG UBUNTU_VERSION=24.04
# The CPU variant: Debian bookworm slim with the same Python minor version as CI.
ARG PYTHON_VERSION=3.11
ARG DEBIAN_VERSION=bookworm

# ---- Base images: one devel/runtime pair per backend. BuildKit builds only the pair that is used.
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS devel-cuda
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_VERSION} AS devel-cpu
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS runtime-cuda
# The image asks the NVIDIA runtime for a driver of CUDA >= 12.6; with the 12.x minor-version
# compatibility and SASS compiled for every listed GPU, a 12.0+ driver (>= 525) runs it too.
ENV NVIDIA_DISABLE_REQUIRE=1
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_VERSION} AS runtime-cpu

# ---- Builder: compile llama-cpp-python, then fetch, convert and quantize the model.
# Layers run from least to most often changed, so a new QUANT re-runs only the last RUN.
FROM devel-${BACKEND} AS builder
ARG BACKEND
# Compute capabilities to compile for: 80 A100, 86 A10/RTX 3090, 89 RTX 4090/L40S, 90 H100/H200.
ARG CUDA_ARCHITECTURES="80;86;89;90"
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN --mount=type=bind,source=docker/system-packages.sh,target=/tmp/system-packages.sh \
    bash /tmp/system-packages.sh builder
WORKDIR /src
COPY docker/install.sh docker/cuda-stub.sh docker/
COPY requirements.txt requirements-build.txt ./
# llama-cpp-python, compiled once per backend, CUDA version and architecture list. The cache mount
# keeps compiled wheels across builds, so even a changed requirements file does not recompile it.
RUN --mount=type=cache,id=llama-cpp-python-wheels,target=/cache/wheels \
    LLAMA_WHEEL_CACHE=/cache/wheels bash docker/install.sh wheel /wheels
# The serving venv (copied into the runtime image) and the build venv (torch & co., builder only).
RUN --mount=type=cache,id=pip,target=/root/.cache/pip \
    WHEEL_DIR=/wheels bash docker/install.sh venv /opt/venv requirements.txt
# torch is needed only to read checkpoints, so the build venv takes PyTorch's CPU wheels (200 MB,
# not 3 GB of CUDA libraries); pip prefers them as local versions of the same release (2.x.y+cpu).
RUN --mount=type=cache,id=pip,target=/root/.cache/pip \
    PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu \
    WHEEL_DIR=/wheels bash docker/install.sh venv /opt/build-venv requirements.txt requirements-build.txt
# The build pipeline's code and model specs.
COPY build_engine/ build_engine/
COPY models/specs/ models/specs/
COPY docker/build-engine.sh docker/
# MODEL: a hub id, or a spec name under models/specs/ (which pins the hub revision).
ARG MODEL=mistral-7b
# REVISION: a hub commit, branch or tag; empty means the spec's pinned revision (or the hub's main).
ARG REVISION=""
# Fetch and convert to a 16-bit GGUF (/build/NAME/NAME-F16.gguf). A gated model's token comes in as a
# BuildKit secret: a file under /run/secrets for this RUN only, never in an ARG, an ENV or a layer.
# The hub download lives in a cache mount, kept across builds and out of every layer.
RUN --mount=type=secret,id=hf_token,required=false \
    --mount=type=cache,id=huggingface,target=/root/.cache/huggingface \
    --mount=type=cache,id=pip,target=/root/.cache/pip \
    PYTHON=/opt/build-venv/bin/python HF_TOKEN_FILE=/run/secrets/hf_token \
    bash docker/build-engine.sh convert /build
# QUANT: one llama.cpp quantization type (Q4_K_M, Q5_K_M, Q8_0, ...). Declared here, after every
# step that does not depend on it, so changing it re-runs only this step and the runtime's last COPY.
# build_engine re-checks the checkpoint (a cache hit) and reuses the 16-bit GGUF above.
ARG QUANT=Q4_K_M
RUN --mount=type=secret,id=hf_token,required=false \
    --mount=type=cache,id=huggingface,target=/root/.cache/huggingface \
    PYTHON=/opt/build-venv/bin/python HF_TOKEN_FILE=/run/secrets/hf_token \
    bash docker/build-engine.sh quantize /build /engine

# ---- Engine only: `docker build --target engine --output type=local,dest=out .` exports the GGUF.
FROM scratch AS engine
COPY --from=builder /engine/ /

# ---- Runtime: the venv, the app and the engine; nothing else.
FROM runtime-${BACKEND} AS runtime
ARG BACKEND
RUN --mount=type=bind,source=docker/system-packages.sh,target=/tmp/system-packages.sh \
    bash /tmp/system-packages.sh runtime \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/app app
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY gunicorn.conf.py wsgi.py ./
COPY app/ app/
COPY docker/healthcheck.py docker/
# Last, so a new engine leaves every layer above it cached.
COPY --from=builder /engine /engine
# N_CTX: the context window of one request, in tokens (the server's N_CTX setting).
ARG N_CTX=4096
# N_GPU_LAYERS=-1: every layer on the GPU (ignored by the CPU build).
# N_PARALLEL / PREFIX_CACHE_SLOTS: 8 sequences decoded together, each in a KV slot of N_CTX cells,
# and 8 more slots keeping finished prompts for reuse: 16 x 4096 cells, 8 GiB for a 7B model with
# grouped-query attention (128 KiB a cell); lower them for a small GPU.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MODEL_PATH=/engine/model.gguf \
    N_GPU_LAYERS=-1 \
    N_CTX=${N_CTX} \
    N_PARALLEL=8 \
    PREFIX_CACHE_SLOTS=8
# Not root. Docker lets any user bind ports below 1024 inside a container's own network namespace
# (net.ipv4.ip_unprivileged_port_start=0 since Docker 20.10).
USER 10001:10001
EXPOSE 80
# Loading a 7B engine takes up to a few minutes on a cold disk: the start period covers it.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["python", "docker/healthcheck.py", "http://127.0.0.1:80/health"]
# SIGTERM drains: new requests get 503 while running ones finish, for up to DRAIN_TIMEOUT (60 s by
# default) plus 15 s for the processes to exit, so stop with `docker stop --time 90` (Docker's
# default of 10 s would cut long generations off).
STOPSIGNAL SIGTERM
# nginx on port 80 in front of gunicorn on a unix socket (app/serve.py), as scripts/serve.sh runs
# it; settings live in gunicorn.conf.py and app/config.py, only the port differs from bare metal.
CMD ["python", "-m", "app.serve", "--bind", "0.0.0.0:80"]
