"""What a garbage collection is asked to do (GcOptions) and what it did (GcResult)."""

from __future__ import annotations

from dataclasses import dataclass, field

from entrepot.oci.digest import Digest
from entrepot.registry.retention import RetentionRule


@dataclass(frozen=True)
class GcOptions:
    dry_run: bool = False
    delete_untagged: bool = False
    grace: float = 3600.0  # seconds
    concurrency: int = 32  # storage calls in flight
    progress_every: float = 5.0  # seconds between progress lines
    rules: tuple[RetentionRule, ...] = ()  # retention rules for tags and untagged manifests
    # Walk the store, and make the bulk calls, in child processes where the driver can (a
    # disk: the command's runs, where a large store's walk and sweep take two CPUs; each
    # child costs a process start).
    apart: bool = False


@dataclass
class GcResult:
    repositories: int = 0
    manifests_marked: int = 0
    blobs_marked: int = 0
    manifests_eligible: list[tuple[str, Digest]] = field(default_factory=list)
    blobs_eligible: dict[Digest, int] = field(default_factory=dict)  # digest -> bytes
    manifests_deleted: list[tuple[str, Digest]] = field(default_factory=list)
    tags_eligible: list[tuple[str, str]] = field(default_factory=list)  # by retention rules
    tags_deleted: list[tuple[str, str]] = field(default_factory=list)
    blobs_recovered: int = 0  # put back from an interrupted collection's quarantine
    blobs_deleted: dict[Digest, int] = field(default_factory=dict)  # digest -> bytes
    blobs_kept_fresh: int = 0  # unmarked, but written or linked within the grace window
    manifests_kept_fresh: int = 0  # would go (untagged, by a rule), but linked within it
    repositories_kept_fresh: int = 0  # emptied, but with a layer linked within it
    blobs_relinked: int = 0  # quarantined, then found linked by a push during the sweep
    layer_links_deleted: int = 0
    repositories_removed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rested: float = 0.0  # seconds of those spent resting while the machine was busy

    @property
    def bytes_freed(self) -> int:
        return sum(self.blobs_deleted.values())

    @property
    def took(self) -> str:
        """How long the run took, for its summary line."""
        if self.rested < 0.05:
            return f"{self.seconds:.1f}s"
        return f"{self.seconds:.1f}s, {self.rested:.1f}s of it resting as the machine was busy"
