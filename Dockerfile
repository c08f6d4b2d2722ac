# dtq server image.
#
#   docker build -t dtq .
#   docker run -p 5000:5000 -v dtq-data:/data -e DTQ_ADMIN_PASSWORD=... dtq
#
# Secrets: DTQ_ADMIN_PASSWORD and DTQ_JWT_SECRET, or (Docker/Kubernetes secrets) files named by
# DTQ_ADMIN_PASSWORD_FILE and DTQ_JWT_SECRET_FILE; one trailing newline is dropped, and setting a
# variable together with its _FILE is refused at start. E.g.
#
#   docker run ... -v ./secrets:/run/secrets:ro -e DTQ_ADMIN_PASSWORD_FILE=/run/secrets/admin dtq
#
# Without an admin password the first start creates the `admin` user with a random password and
# writes it to /data/admin-password.txt (mode 0600; the log says where, never the password
# itself): `docker exec <container> cat /data/admin-password.txt`. The JWT secret is generated
# and kept in /data unless one is given. Keep /data on a volume: it holds the LMDB environment
# (tasks, users, keys).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# lmdb and msgspec ship manylinux wheels (x86_64 and aarch64): no compiler needed.
# The docs assets (Swagger UI from swagger-ui-bundle-v2, the vendored ReDoc bundle in
# dtq/net/static) are installed with the package: /docs and /redoc work without internet.
# constraints.txt pins every runtime dependency to the version CI tested (tools/constraints.py),
# so two builds of the same commit install the same code.
WORKDIR /tmp/dtq-src
COPY pyproject.toml README.md constraints.txt ./
COPY dtq ./dtq
RUN pip install --no-cache-dir -c constraints.txt . \
    && cd / \
    && rm -rf /tmp/dtq-src

RUN groupadd --system --gid 10001 dtq \
    && useradd --system --uid 10001 --gid dtq --home-dir /home/dtq --create-home \
        --shell /usr/sbin/nologin dtq \
    && mkdir -p /data \
    && chown dtq:dtq /data

ENV DTQ_DATA_DIR=/data \
    DTQ_HOST=0.0.0.0
VOLUME ["/data"]
WORKDIR /home/dtq
USER dtq

EXPOSE 5000

# `dtq healthcheck` reads the same settings as `dtq serve` (DTQ_PORT, DTQ_CERTFILE -> https,
# DTQ_CONFIG, ...), connects to 127.0.0.1 for the 0.0.0.0 bind, and exits 0 only when /health
# answers 2xx within its timeout (4 s, under Docker's 5 s). To move the server, set DTQ_PORT
# (`-e DTQ_PORT=8000`) rather than `dtq serve --port`: the check sees the environment, not flags.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["dtq", "healthcheck", "--timeout", "4"]

# `dtq serve` shuts down cleanly on SIGTERM (docker stop), also as PID 1. The host comes from
# DTQ_HOST above, so the health check and the server agree on it.
CMD ["dtq", "serve"]
