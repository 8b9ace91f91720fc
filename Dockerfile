# syntax=docker/dockerfile:1
#
# stream-detector image: CPU TensorFlow, non-root, read-only-root-filesystem friendly.
#
#   docker build -t stream-detector .                         # model mounted at run time
#   docker build --target model-baked --build-arg MODEL_DIR=models/prod \
#       -t stream-detector:0.1.0-model-2026-01 .             # model baked in
#
# Run (the only writable path it needs is /tmp):
#   docker run --read-only --tmpfs /tmp -v "$PWD/models/prod:/opt/stream-detector/model:ro" \
#       -p 9400:9400 stream-detector run --model /opt/stream-detector/model \
#       --bootstrap-servers kafka:9092 --input-topic metrics --output-topic anomalies
#
# The base image is pinned to an exact Python patch release and Debian release; pin it by
# digest too in your registry mirror (`python:3.11.13-slim-bookworm@sha256:...`).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---- build: install the package and its dependencies into a virtual environment --------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Every dependency, pinned and hashed: requirements/prod.lock (`make lock` regenerates it
# from setup.cfg for this Python on x86_64, tensorflow-cpu: no CUDA libraries). --no-deps:
# nothing outside the lock is installed. Before the sources, so the layer stays cached.
COPY requirements/prod.lock ./requirements/
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/prod.lock
COPY pyproject.toml setup.cfg README.md ./
COPY stream_detector ./stream_detector
# The build backend comes from the lock too, so nothing is fetched for the build.
RUN pip install --no-cache-dir --no-deps --no-build-isolation .

# ---- runtime: the venv on a clean slim base, as an unprivileged user --------------------
FROM ${PYTHON_IMAGE} AS runtime-base
RUN groupadd --system --gid 10001 detector \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin detector
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    KERAS_HOME=/tmp/.keras \
    MPLCONFIGDIR=/tmp/matplotlib \
    HOME=/tmp
# The model directory: a read-only volume mount, or baked in by the `model-baked` target.
RUN mkdir -p /opt/stream-detector/model
WORKDIR /tmp
EXPOSE 9400
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=3s --start-period=120s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9400/healthz', timeout=2)"]
ENTRYPOINT ["stream-detector"]
CMD ["run", "--model", "/opt/stream-detector/model"]

# ---- model-baked: the runtime image with a model artifact inside -----------------------
FROM runtime-base AS model-baked
# A directory in the build context holding model.keras and metadata.json.
ARG MODEL_DIR=models/default
# Owned by root: the detector (uid 10001) can read it, never change it.
COPY --chown=0:0 ${MODEL_DIR}/ /opt/stream-detector/model/

# ---- runtime (default target): no model inside, mount one at /opt/stream-detector/model -
FROM runtime-base AS runtime
