"""The one dynamic-provider base: what changes is done again, what vanished is made again.

Every provider of this project describes a thing that is *done* (a job run, a folder staged, a daemon
started): a changed input means doing it again, so diff replaces (delete first, since the old one holds the
ports, the folder or the GPUs). Two exceptions are declared per provider, not re-coded in each:

- `settings_only`: inputs that say how to reach the thing, not what it is (the connection's key, its time-outs).
  Their change is an in-place update that only records the new values, so rotating a key re-runs nothing and
  `delete` still reaches the cluster with the current key.
- `vanished(olds)`: a reason the thing is gone outside Pulumi (a daemon died, a folder was removed); diff then
  replaces it, so `pulumi up` makes it again and never twice.
"""
from __future__ import annotations

from typing import Optional

from pulumi.dynamic import DiffResult, ResourceProvider, UpdateResult


class ReplacingProvider(ResourceProvider):
    settings_only: tuple[str, ...] = ()

    def vanished(self, olds: dict) -> Optional[str]:
        """The input to name when the thing is gone outside Pulumi; None when it is there."""
        return None

    def diff(self, _id: str, olds: dict, news: dict) -> DiffResult:
        changed = [k for k in news if not k.startswith("__") and news.get(k) != olds.get(k)]
        replaces = [k for k in changed if k not in self.settings_only]
        gone = self.vanished(olds)
        if gone:
            replaces.append(gone)
        return DiffResult(changes=bool(changed or replaces), replaces=replaces, delete_before_replace=True)

    def update(self, _id: str, olds: dict, news: dict) -> UpdateResult:
        """Only `settings_only` inputs changed: keep what was measured, record the new settings."""
        return UpdateResult(outs={**olds, **{k: news.get(k) for k in self.settings_only if k in news}})
