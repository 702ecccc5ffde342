# The cdc-cache worker image: `docker build -t cdc-cache .`
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
RUN python -m venv /opt/cdc-cache
COPY pyproject.toml README.md ./
COPY cdc_cache ./cdc_cache
COPY dataflows ./dataflows
RUN /opt/cdc-cache/bin/pip install --no-cache-dir .

FROM python:3.11.11-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /var/lib/cdc-cache --create-home cdc
COPY --from=build /opt/cdc-cache /opt/cdc-cache
ENV PATH=/opt/cdc-cache/bin:$PATH PYTHONUNBUFFERED=1
USER cdc
WORKDIR /var/lib/cdc-cache
ENTRYPOINT ["cdc-cache"]
CMD ["run", "--config", "/etc/cdc-cache/worker.yaml"]
