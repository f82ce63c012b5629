"""The whole conformance suite as it runs with every workflow enabled: Pull, Push,
Content Discovery and Content Management one after the other, on one namespace, so each
workflow also meets what the ones before it left (deleted manifests, untagged tags, blobs
pushed again)."""

from __future__ import annotations

from tests.api.conformance_setup import conformance_test
from tests.api.test_conformance_discovery import DISCOVERY
from tests.api.test_conformance_management import MANAGEMENT
from tests.api.test_conformance_pull import PULL
from tests.api.test_conformance_push import PUSH

test_conformance_suite = conformance_test(PULL, PUSH, DISCOVERY, MANAGEMENT)
