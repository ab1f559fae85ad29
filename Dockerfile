# Build stage: the dependencies named in pyproject.toml, in a virtualenv that the runtime
# stage copies whole; then a check that the catalogs compile, so a broken .po fails the
# build instead of the start.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && pip install -r requirements.txt
COPY bot bot
COPY handlers handlers
COPY storage storage
COPY locales locales
RUN python -c "from bot.telegram.i18n import make_i18n; make_i18n()" \
 && python -m compileall -q bot handlers storage

# Runtime stage: the virtualenv and the code, a non-root user, the database on a volume.
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DATABASE_PATH=/app/data/bot.sqlite3 \
    WEB_HOST=0.0.0.0 \
    WEB_PORT=8080
RUN useradd --create-home --uid 10001 bot && mkdir -p /app/data && chown bot:bot /app/data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --from=build /app/bot bot
COPY --from=build /app/handlers handlers
COPY --from=build /app/storage storage
COPY --from=build /app/locales locales
USER bot
VOLUME ["/app/data"]
EXPOSE 8080
# /healthz: event loop, database and background workers. `python -m bot healthcheck`
# because the slim image has no curl; it reads WEB_PORT like the bot does.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-m", "bot", "healthcheck"]
# Exec form: Python is PID 1 and gets `docker stop`'s SIGTERM itself, and stops cleanly.
CMD ["python", "-m", "bot"]
