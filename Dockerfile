# One image for the operator, the retrain Job's trainer and the model server; the command picks which:
#   feedbackloop-operator (default) | feedbackloop-train | feedbackloop-serve
# Not built in this repository's CI (no container engine here): `make lint` runs hadolint on it and
# tests/unit/test_dockerfile.py checks its key properties.

# Stage 1: wheels for the project and every pinned dependency (all have manylinux wheels: no compiler).
FROM python:3.11.7-slim-bookworm AS wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY jobs/ jobs/
COPY serving/ serving/
RUN python -m pip install --no-cache-dir pip==26.3 \
    && python -m pip wheel --no-cache-dir --wheel-dir /wheels .

# Stage 2: the runtime, installed from those wheels only; no compilers, no pip cache, a numeric non-root user.
FROM python:3.11.7-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
COPY --from=wheels /wheels /wheels
RUN python -m pip install --no-cache-dir --no-index --find-links=/wheels feedbackloop-operator==0.1.0 \
    && rm -rf /wheels
# readOnlyRootFilesystem works with an emptyDir at /tmp (HOME and matplotlib's cache live there).
USER 10001:10001
EXPOSE 8080 8081
CMD ["feedbackloop-operator"]
