# The cdc-cache image: `docker build -t cdc-cache .`
#   worker:   docker run cdc-cache run --config /etc/cdc-cache/worker.yaml   (the default)
#   gateway:  docker run cdc-cache gateway
#   inspect:  docker run cdc-cache inspect --config /etc/cdc-cache/worker.yaml
#   verify:   docker run cdc-cache verify --db mysql://... --rules ... --redis-url ...
# The database drivers of inspect and verify (PyMySQL with cryptography for MySQL 8's
# caching_sha2_password, psycopg with its bundled libpq) are project dependencies, so they
# are installed here; tests/unit/test_image_drivers.py fails when the image would lack one.
# Dependencies are installed from pyproject.toml alone, before the source is copied, so a
# code change rebuilds only the last layers. Runs as an unprivileged user (uid 10001) and
# writes only to /var/lib/cdc-cache (the recovery store), so the root fs can be read-only.
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/cdc-cache
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(d for d in tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'] if not d.startswith('cdc-cache-client')))" > /tmp/requirements.txt \
 && /opt/cdc-cache/bin/pip install -r /tmp/requirements.txt
# The client distribution (CacheAside, key names) is in this repository, pinned by the worker.
COPY client ./client
COPY README.md ./
COPY cdc_cache ./cdc_cache
COPY dataflows ./dataflows
RUN /opt/cdc-cache/bin/pip install --no-deps ./client . \
 && /opt/cdc-cache/bin/python -m compileall -q /opt/cdc-cache/lib

FROM python:3.11.11-slim-bookworm
RUN useradd --system --uid 10001 --gid 0 --home-dir /var/lib/cdc-cache --create-home cdc
COPY --from=build /opt/cdc-cache /opt/cdc-cache
ENV PATH=/opt/cdc-cache/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001
WORKDIR /var/lib/cdc-cache
VOLUME /var/lib/cdc-cache
EXPOSE 9108 8765 9110
ENTRYPOINT ["cdc-cache"]
CMD ["run", "--config", "/etc/cdc-cache/worker.yaml"]
