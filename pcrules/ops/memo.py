"""What the dashboard computed, by the question and the log's stamp (:func:`.queries.log_stamp`)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class Memo:
    """The latest ``size`` answers by key. The keys carry the log's stamp, so a log that has changed is asked
    again, while a filter chosen again, or Refresh on a log nothing was written to, reads no row. Safe to use
    from the refresh and its helper thread at once (a key missing in both is computed twice, harmlessly)."""

    def __init__(self, size: int = 48):
        self.size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value
