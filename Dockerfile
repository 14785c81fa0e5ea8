# syntax=docker/dockerfile:1
# Production image: dependencies built in one stage, a slim non-root runtime in the
# other. `python -m app` checks the configuration, applies migrations (under an
# advisory lock), then runs uvicorn's process manager.
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
# FORWARDED_ALLOW_IPS=*: the container's port is reached only through the platform's
# TLS proxy, so the X-Forwarded-For entry it appends (the last) and X-Forwarded-Proto
# are believed (client addresses for the rate limits). If the port is reachable any
# other way, or through a chain of proxies, list the proxies' addresses instead.
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ENVIRONMENT=production \
    HOST=0.0.0.0 \
    PORT=8000 \
    FORWARDED_ALLOW_IPS=*
USER app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; url = 'http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/health'; sys.exit(urllib.request.urlopen(url, timeout=2.5).status != 200)"]
# Workers: one per core, at most 4 unless WEB_CONCURRENCY says otherwise. Each opens
# up to DB_POOL_SIZE + DB_MAX_OVERFLOW (default 10) connections, and one for /health,
# so an instance opens at most 44: two instances fit the 97 a 0.25 CU Neon compute accepts (README,
# "Sizing connections"). SIGTERM reaches uvicorn directly (exec): in-flight requests
# finish, pools close.
CMD ["sh", "-c", "WEB_CONCURRENCY=${WEB_CONCURRENCY:-$(( $(nproc) < 4 ? $(nproc) : 4 ))} exec python -m app"]
