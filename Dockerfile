# Build stage: install the dependencies named in pyproject.toml into /install.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && pip install --no-cache-dir --prefix=/install -r requirements.txt

# Runtime stage: the code and catalogs (compiled at start), a non-root user, the database on a volume.
FROM python:3.12-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 DATABASE_PATH=/app/data/bot.sqlite3
COPY --from=build /install /usr/local
RUN useradd --create-home --uid 10001 bot && mkdir -p /app/data && chown bot:bot /app/data
WORKDIR /app
COPY bot bot
COPY handlers handlers
COPY storage storage
COPY locales locales
USER bot
VOLUME ["/app/data"]
# Exec form, so `docker stop` sends SIGTERM to Python itself and the bot shuts down cleanly.
CMD ["python", "-m", "bot"]
