"""Entrepot's benchmark harness: ``python -m bench`` (or ``make bench``).

It starts Debian's ``docker-registry`` (registry:2) and Entrepot one after the other, with
equivalent registry:2 configurations on 127.0.0.1, pins each (and the load generators) to
the same CPU cores with ``taskset``, drives the same load at both (wrk for request rates,
curl for concurrent downloads, a small httpx client for pushes) and prints one markdown
table with the ratio Entrepot/registry:2 per row. Raw figures go to
``bench/results/latest.json``.

Modules: ``fixtures`` (registry:2 on-disk layout written directly), ``servers`` (processes,
configs, RSS), ``wrk`` (wrk Lua scripts and their JSON summaries), ``clients`` (push client,
concurrent curl downloads), ``workloads`` (the rows), ``report`` (table, machine, JSON).
This package is not part of the pytest suite; ``python -m bench --quick`` is a smoke run.
"""
