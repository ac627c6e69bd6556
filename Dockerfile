# pgtide: `docker build -t pgtide .` then
#   docker run -e DATABASE_URL=postgresql://user:pass@host:5432/db -p 8000:8000 pgtide
# The image serves the HTTP API and runs the sequencer; `serve` applies pending
# migrations at start (the engine in schema pgtide, and the apps the database records
# or PGTIDE_APPS names, e.g. -e PGTIDE_APPS=dynapharm).
# Other commands: docker run ... pgtide pgtide migrate --app dynapharm
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# A non-editable install: schema/ ships inside the wheel as cdc/schema.
COPY pyproject.toml README.md ./
COPY cdc ./cdc
COPY api ./api
COPY apps ./apps
COPY schema ./schema
RUN pip install . && rm -rf /src

RUN useradd --create-home --uid 10001 pgtide
USER pgtide
WORKDIR /home/pgtide

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"
CMD ["pgtide", "serve", "--host", "0.0.0.0", "--port", "8000"]
