# syntax=docker/dockerfile:1
# Production image: dependencies built in one stage, a slim non-root runtime in the
# other. `python -m app` checks the configuration, applies migrations (under an
# advisory lock), then runs uvicorn's process manager with one worker per core.
FROM python:3.11-slim AS build
WORKDIR /build
COPY requirements.txt .
RUN python -m venv /venv \
 && /venv/bin/pip install --no-cache-dir --disable-pip-version-check -r requirements.txt

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home app
COPY --from=build /venv /venv
COPY backend /srv/backend
WORKDIR /srv/backend
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ENVIRONMENT=production \
    HOST=0.0.0.0 \
    PORT=8000
USER app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2.5).status != 200)"]
# SIGTERM reaches uvicorn directly (exec): in-flight requests finish, pools close.
CMD ["sh", "-c", "WEB_CONCURRENCY=${WEB_CONCURRENCY:-$(nproc)} exec python -m app"]
