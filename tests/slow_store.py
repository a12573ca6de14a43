"""A real local-directory store that can be made slow from outside its process (tests of store latency)."""
from __future__ import annotations

import time
from pathlib import Path

from classifiers.storage.store import LocalDirStore


class SwitchableSlowStore(LocalDirStore):
    """Every call sleeps `delay_s` while the file `flag` exists: the test process flips it, the actor obeys."""

    def __init__(self, root, flag, delay_s: float = 0.5):
        super().__init__(root)
        self.flag, self.delay_s = Path(flag), delay_s

    def __getstate__(self):
        return {"root": self.root, "flag": self.flag, "delay_s": self.delay_s}

    def __setstate__(self, state):
        self.__init__(state["root"], state["flag"], state["delay_s"])

    def _maybe_wait(self) -> None:
        if self.flag.exists():
            time.sleep(self.delay_s)

    def read(self, key):
        self._maybe_wait()
        return super().read(key)

    def write(self, key, data):
        self._maybe_wait()
        super().write(key, data)

    def list(self, prefix):
        self._maybe_wait()
        return super().list(prefix)
