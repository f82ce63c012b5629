# Entrepot as a drop-in for the registry:2 image: same paths, same port, same entrypoint rules.
#
#   docker build -t entrepot .
#   docker run -d -p 5000:5000 -v /srv/registry:/var/lib/registry entrepot
#
# It runs as the user `entrepot` (uid/gid 10001), not as root like registry:2: a store that
# registry:2 wrote is owned by root, so give it to that user once
# (`chown -R 10001:10001 /srv/registry`) or run as its owner (`--user "$(stat -c %u:%g
# /srv/registry)"`); Entrepot refuses to start on a store it cannot write, naming the path.
#
# BASE is any Debian bookworm image (bookworm's python3 is 3.11). The tests build one with
# debootstrap that already holds python3, python3-venv and ca-certificates; on another base
# (debian:bookworm-slim) they are installed here.
#
# One COPY and one RUN: every layer is a full copy of the root filesystem with Docker's vfs
# storage driver (the tests' dockerd), so the build makes as few as it can.
ARG BASE=debian:bookworm-slim
FROM ${BASE}

# The package from this checkout (see .dockerignore), the image's config and entrypoint.
COPY . /src/entrepot/
RUN set -eux; \
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null \
        || [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3 python3-venv ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --system --gid 10001 entrepot; \
    useradd --system --uid 10001 --gid entrepot --home-dir /var/lib/registry \
        --no-create-home --shell /usr/sbin/nologin entrepot; \
    mkdir -p /var/lib/registry /etc/docker/registry; \
    chown entrepot:entrepot /var/lib/registry; \
    python3 -m venv /opt/entrepot; \
    /opt/entrepot/bin/pip install --no-cache-dir --disable-pip-version-check /src/entrepot; \
    ln -s /opt/entrepot/bin/entrepot /usr/local/bin/entrepot; \
    install -m 0644 /src/entrepot/deploy/image/config.yml /etc/docker/registry/config.yml; \
    install -m 0755 /src/entrepot/deploy/image/entrypoint.sh /entrypoint.sh; \
    rm -rf /src/entrepot

USER entrepot:entrepot
VOLUME ["/var/lib/registry"]
EXPOSE 5000
# /health on the address the configuration names (REGISTRY_HTTP_ADDR and the other
# overrides included): 200 while the storage is healthy (health.storagedriver in the default
# config), else unhealthy.
HEALTHCHECK --interval=10s --timeout=10s --start-period=20s --retries=3 \
    CMD ["sh", "-c", "exec entrepot healthcheck \"${REGISTRY_CONFIGURATION_PATH:-/etc/docker/registry/config.yml}\""]

ENTRYPOINT ["/entrypoint.sh"]
CMD ["/etc/docker/registry/config.yml"]
