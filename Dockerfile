# dtq server image.
#
#   docker build -t dtq .
#   docker run -p 5000:5000 -v dtq-data:/data -e DTQ_ADMIN_PASSWORD=... dtq
#
# Without DTQ_ADMIN_PASSWORD the first start creates the `admin` user with a random password and
# prints it once to the log. The JWT secret is generated and kept in /data unless DTQ_JWT_SECRET
# is set. Keep /data on a volume: it holds the LMDB environment (tasks, users, keys).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# lmdb and msgspec ship manylinux wheels (x86_64 and aarch64): no compiler needed.
# The docs assets (Swagger UI from swagger-ui-bundle-v2, the vendored ReDoc bundle in
# dtq/net/static) are installed with the package: /docs and /redoc work without internet.
WORKDIR /tmp/dtq-src
COPY pyproject.toml README.md ./
COPY dtq ./dtq
RUN pip install --no-cache-dir . \
    && cd / \
    && rm -rf /tmp/dtq-src

RUN groupadd --system --gid 10001 dtq \
    && useradd --system --uid 10001 --gid dtq --home-dir /home/dtq --create-home \
        --shell /usr/sbin/nologin dtq \
    && mkdir -p /data \
    && chown dtq:dtq /data

ENV DTQ_DATA_DIR=/data
VOLUME ["/data"]
WORKDIR /home/dtq
USER dtq

EXPOSE 5000

# No curl in the slim image: Python's urllib. Any error or non-2xx status fails the check.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('DTQ_PORT', '5000'), timeout=4)"]

# `dtq serve` shuts down cleanly on SIGTERM (docker stop), also as PID 1.
CMD ["dtq", "serve", "--host", "0.0.0.0"]
