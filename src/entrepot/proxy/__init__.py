"""Upstream registries and the pull-through cache in front of them.

``upstream`` is the HTTP client for one upstream registry (token auth, failover between
urls, streaming blobs); the cache modules serve upstream content through local storage
with the same interface as a local repository.
"""
