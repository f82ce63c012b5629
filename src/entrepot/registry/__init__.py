"""Registry services over a storage driver: blobs, uploads, manifests, tags, catalog, referrers."""
