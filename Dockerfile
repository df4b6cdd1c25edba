# The image of a worker and of its flow runs, for Docker and Kubernetes work pools (docs/operations.md,
# "Other work pools"): the pipelines in /opt/mixpanel-pipelines, their locked dependencies with the extras of
# EXTRAS and no dev group, `prefect` on the PATH. Build from the clone:
#   docker build --build-arg EXTRAS="s3" -t mixpanel-pipelines .
# A Docker or Kubernetes pool starts it with its own command (`prefect flow-run execute`); run alone it
# is a process worker of the pool `mixpanel`.
FROM python:3.11-slim

ARG EXTRAS=""
# bytecode compiled once here, not by every flow run's process; no uv cache kept in the image
ENV UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1 \
    PYTHONUNBUFFERED=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MP_PIPELINES_STATE_DIR=/var/lib/mixpanel-pipelines \
    PATH=/opt/mixpanel-pipelines/.venv/bin:$PATH

# the clone is mounted for the build only, so no layer keeps a copy of it; the steps are a script that
# tests/test_production.py runs outside a container (no container engine in CI)
RUN --mount=type=bind,target=/tmp/src \
    /tmp/src/docker/install.sh /opt/mixpanel-pipelines $EXTRAS \
    && useradd --uid 1000 --create-home prefect \
    && mkdir -p /var/lib/mixpanel-pipelines \
    && chown prefect: /var/lib/mixpanel-pipelines

USER prefect
WORKDIR /opt/mixpanel-pipelines
CMD ["prefect", "worker", "start", "--pool", "mixpanel", "--type", "process"]
