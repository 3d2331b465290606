"""A state store in Redis, shared by every server process: sessions, cooldowns, offers and queue status.

**Atomicity across processes.** The runtime holds ``store.session_lock(visitor_id,
session_id)`` around each read-decide-write of a session (an answer, an
expiry). Here that is a Redis lock with a random token and an expiry (``SET
lock token NX PX ttl``), taken by a Lua script that in the same round trip
returns the session, the visitor's cooldown and the queue status. Writes made
while the lock is held are buffered and applied by one more Lua script,
atomically and *only if the lock still carries our token*, which then
releases it: two round trips, two processes can never interleave inside one
session (no double offer), and a process that stalled past the lock's expiry
cannot overwrite what the next holder wrote (its commit is refused:
:class:`LockLost`). A process that dies holding a lock blocks that one
session until the lock expires (``lock_ttl_s``).

**Observations in one round trip.** Observations are most of the traffic, so
for them the runtime takes :meth:`RedisStore.observe_lock` instead: the
session, the visitor and the queue status are read from this process's cache
(what it last read or wrote), and one Lua script applies the writes only if
the session is not locked and all three are still what was read (compare and
set on their stored text; the queue status carries a version). Otherwise it
writes nothing and returns the current values; the cache learns them and the
runtime decides again (:class:`pcrules.stores.StaleRead`; after two stale
reads it takes the lock). Serving a visitor from the worker that served it
last (a load balancer with affinity) makes nearly every observation one round
trip; with any worker it still is whenever this one wrote the session last.
A stale cache costs a retry, never a wrong decision: nothing is decided on it
that Redis has not confirmed in the same script that writes the result.

**Group commit.** Inside :meth:`RedisStore.batch` those scripts are not sent
one by one: the batch sends them in one write when it ends and reads their
replies together, so observations decided together (``Runtime.observe_many``;
the server batches the requests that arrived at once) share one round trip.
Each is applied or refused on its own, in order; a refused one (a stale read,
also one of an earlier observation of the same session in the batch) is then
decided again on its own.

**Visitors** are shared by all of a visitor's sessions, which are locked
separately: the decline cooldown is therefore merged with ``max`` inside the
commit script, so a decision in one session never erases a cooldown set by a
decline in another.

**Expiries.** Unanswered offers sit in a sorted set by ``expires_at`` (event
time); :meth:`RedisStore.due_offers` returns the due ones at most every
``due_check_interval_s`` per process, and the runtime closes each under its
session's lock after re-reading it, so two processes never both expire one
offer. Nothing is lost if a process dies meanwhile: the offer stays in the set
until it is closed, and a later observation or answer of its session expires it
too. Sessions expire in Redis after ``session_ttl_s`` without a write (the
policy's ``session_idle_ttl_s``), a visitor's record when its cooldown ends,
an offer record with its session; :meth:`evict_idle` has nothing to do.

**Outages.** Every Redis failure surfaces as :class:`StoreUnavailable` (a
:class:`pcrules.PcrulesError`) with a readable message, before anything was
decided when Redis is already down; the client reconnects on the next call, so
the runtime recovers by itself when Redis returns.

**Losses.** Redis that restarted empty (no persistence) or was flushed would let every session start again:
second offers, cooldowns forgotten. Each store adopts a marker, ``<prefix>epoch`` (created when absent), at its
first contact; the scripts that would decide on or write a session Redis does not hold check, in the same round
trip, that the marker is still the one adopted (a session held as read needs no check: it was not lost). Gone:
nothing is written, :class:`DataLost` (a :class:`StoreUnavailable`) until someone re-creates the marker
(:meth:`RedisStore.acknowledge_loss`, ``SET <prefix>epoch ack``, a new server start). :meth:`check_persistence`
refuses at start-up a Redis that a crash makes forget (:class:`VolatileRedis`).

Keys (``prefix`` defaults to ``pcrules:``): ``s:<n>:<visitor><session>`` a
session, ``v:<visitor>`` a cooldown, ``o:<offer id>`` an offer, ``due`` the
sorted set of open offers, ``q`` the queue status hash, ``lock:<...>`` the
locks, ``epoch`` the state marker. Plain Redis (not Cluster): the scripts touch keys of several slots.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from ...core.decision import OfferStatus
from ...core.policy import PendingOffer, QueueStatus, SessionState, VisitorState
from ...errors import ErrorCode, StoreUnavailable
from .memory import Evicted, OfferRecord, StaleRead

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack_command

    _pack = _pack_command
except ImportError:  # hiredis is in the server extra; redis-py works without it
    _pack = None

__all__ = ["RedisStore", "StoreUnavailable", "StoreBusy", "LockLost", "DataLost", "VolatileRedis",
           "persistence_verdict"]

log = logging.getLogger("pcrules.redis_store")


class StoreBusy(StoreUnavailable):
    """A session's lock could not be had in time (another process holds it)."""

    code = ErrorCode.STORE_BUSY
    outage = False


class LockLost(StoreUnavailable):
    """The session's lock expired before our writes were committed: they were not applied."""

    code = ErrorCode.LOCK_LOST
    outage = False


class DataLost(StoreUnavailable):
    """Redis lost pcrules' state while we ran (restarted empty, flushed): refused until the loss is acknowledged.

    Deciding on the empty state would give visitors a second offer in a session and forget cooldowns; the
    code stays ``store_unavailable`` (the server answers 503).
    """


class VolatileRedis(StoreUnavailable):
    """Redis keeps no append-only file synced at least every second: a crash or restart would forget caps."""

    code = ErrorCode.STORE_VOLATILE


# The state marker: every script's last key is ``<prefix>epoch`` and its last argument the value this process
# adopted. A script about to decide on or write a session Redis does not hold (a new one, or one Redis lost)
# checks it first; gone (Redis restarted empty, FLUSHALL) or changed: nothing is written, the error names what
# is there now (see RedisStore._lost). A session Redis holds as it was read needs no check: it was not lost.
_EPOCH = """
  local epoch = redis.call('GET', KEYS[#KEYS])
  if epoch ~= ARGV[#ARGV] then return redis.error_reply('PCRULES_EPOCH ' .. (epoch or '')) end
"""

# First contact: the marker is created when there is none; whatever is there is adopted.
_ADOPT = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""

# Taken, or already ours (a retry after a reply lost on a broken connection).
_ACQUIRE = """
local s = redis.call('GET', KEYS[2])
if not s then""" + _EPOCH + """end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) or redis.call('GET', KEYS[1]) == ARGV[1] then
  return {1, s, redis.call('GET', KEYS[3]), redis.call('HGETALL', KEYS[4]), redis.call('GET', KEYS[5])}
end
return {0}
"""

# Ops of four arguments each from ARGV[i] up to the epoch (the last one):
#   set key value px | max key number px (set when greater than the stored number) |
#   zadd key score member | zrem key member -
_APPLY_OPS = """
while i < #ARGV do
  local op, key = ARGV[i], ARGV[i + 1]
  if op == 'set' then
    redis.call('SET', key, ARGV[i + 2], 'PX', ARGV[i + 3])
  elseif op == 'max' then
    local cur = tonumber(redis.call('GET', key) or '')
    if cur == nil or cur < tonumber(ARGV[i + 2]) then redis.call('SET', key, ARGV[i + 2], 'PX', ARGV[i + 3]) end
  elseif op == 'zadd' then
    redis.call('ZADD', key, ARGV[i + 2], ARGV[i + 3])
  elseif op == 'zrem' then
    redis.call('ZREM', key, ARGV[i + 2])
  else
    return redis.error_reply('pcrules commit: unknown op ' .. tostring(op))
  end
  i = i + 4
end
"""

# ARGV[1] = lock token (when KEYS[1] is given besides the marker), then the ops. A lock still ours proves that
# nothing was lost since it was taken (a loss takes it too); without one the marker is checked.
_COMMIT = """
if #KEYS > 1 and redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if #KEYS == 1 then""" + _EPOCH + """end
local i = 2
""" + _APPLY_OPS + """
if #KEYS > 1 then redis.call('DEL', KEYS[1]) end
return 1
"""

# An observation decided on cached reads: applied only if the session is not locked and the session, the
# visitor and the queue status version are still what was read ('' = no such key), then the ops from ARGV[4].
# Otherwise nothing is written and the current values come back: {0} locked, {2, session, visitor, version,
# queue hash (only when the version moved)}.
_CHECK_AND_COMMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
local s = redis.call('GET', KEYS[2]) or ''
local v = redis.call('GET', KEYS[3]) or ''
local qv = redis.call('GET', KEYS[5]) or ''
if s ~= ARGV[1] or v ~= ARGV[2] or qv ~= ARGV[3] then
  local q = {}
  if qv ~= ARGV[3] then q = redis.call('HGETALL', KEYS[4]) end
  return {2, s, v, qv, q}
end
if s == '' then""" + _EPOCH + """end
local i = 4
""" + _APPLY_OPS + """
return {1}
"""

_SET_QUEUE = _EPOCH + """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('INCR', KEYS[2])
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Open offers due by ARGV[1]; ids whose record is gone (expired with its session) are dropped from the set.
_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local rec = redis.call('GET', ARGV[3] .. id)
  if rec then table.insert(out, rec) else redis.call('ZREM', KEYS[1], id) end
end
return out
"""

_UNAVAILABLE_REPLIES = ("LOADING", "MISCONF", "READONLY", "MASTERDOWN", "NOREPLICAS", "OOM", "BUSY", "NOAUTH",
                        "WRONGPASS", "NOPERM")


def _unavailable(exc: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"shared state store (Redis) unavailable: {str(exc).rstrip('.')}")


def _send_evalsha(conn: Any, sha: str, calls: list[tuple[list[str], list[Any]]], epoch_key: str, epoch: str) -> None:
    """EVALSHA of one script for each (keys, args), in one write; the replies are read by the caller.

    The state marker's key and the value this process adopted go last (the scripts' _EPOCH check).
    """
    commands = [("EVALSHA", sha, len(keys) + 1, *keys, epoch_key, *args, epoch) for keys, args in calls]
    if _pack is None:
        conn.send_packed_command(conn.pack_commands(commands))
    else:  # what redis-py's packer does, minus a Python pass over every argument (all str or int here)
        conn.send_packed_command([b"".join(_pack(command) for command in commands)])


def _is_outage(exc: Exception) -> bool:
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError)):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(_UNAVAILABLE_REPLIES)


def _epoch_reply(exc: Exception) -> str | None:
    """The marker Redis holds now ("" when gone) if `exc` is a script's _EPOCH refusal, else None."""
    text = str(exc)
    return text[len("PCRULES_EPOCH "):] if text.startswith("PCRULES_EPOCH") else None


def _safe_url(url: str) -> str:
    """The URL without its password (in the authority or a ?password= parameter), to be printed or logged."""
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        if parts.password is None and not any(k == "password" for k, _ in query):
            return url
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
        if parts.username:
            netloc = f"{parts.username}@{netloc}"
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode([(k, v) for k, v in query
                                                                          if k != "password"])))
    except ValueError:
        return "(a Redis URL that could not be parsed)"


_FSYNC = {"always": "a crash loses nothing that was answered",
          "everysec": "a crash of the machine loses at most about the last second of writes"}
_FIX = "set appendonly yes and appendfsync everysec (or always)"


def persistence_verdict(config: dict[str, Any] | None, info: dict[str, Any] | None) -> tuple[bool, str]:
    """Whether a Redis with these settings keeps caps, cooldowns and pending offers through a crash, and why.

    ``config``: what ``CONFIG GET`` says of appendonly, appendfsync and save (None: CONFIG is refused, as on
    many managed services); ``info``: ``INFO persistence`` (None: refused too). Accepted: an append-only file
    synced always or every second. Refused: no append-only file (snapshots alone lose everything since the
    last one), appendfsync no (the OS writes when it likes), or settings that cannot be read.
    """
    if config is not None:
        aof, fsync, save = config.get("appendonly"), config.get("appendfsync"), str(config.get("save") or "").strip()
        if aof == "yes" and fsync in _FSYNC:
            return True, f"appendonly yes, appendfsync {fsync}: {_FSYNC[fsync]}"
        if aof == "yes":
            return False, (f"appendonly yes but appendfsync {fsync}: the operating system writes the file when it "
                           f"likes, so a crash can lose many seconds of caps, cooldowns and pending offers; set "
                           f"appendfsync everysec (or always)")
        if save:
            return False, (f"appendonly no, snapshots only (save '{save}'): a crash loses every cap, cooldown "
                           f"and pending offer since the last snapshot; {_FIX}")
        return False, (f"appendonly no and no snapshots (save ''): a restart forgets every cap, cooldown and "
                       f"pending offer; {_FIX}")
    if info is not None and "aof_enabled" in info:
        if str(info["aof_enabled"]) == "1":
            return True, ("CONFIG is refused (a managed Redis?), INFO persistence says the append-only file is on "
                          "(its appendfsync could not be read: everysec or always is needed)")
        return False, ("CONFIG is refused (a managed Redis?) and INFO persistence says the append-only file is off "
                       "(aof_enabled:0): a restart or failover can forget caps, cooldowns and pending offers; turn "
                       "the append-only file on with appendfsync everysec (or always)")
    return False, ("its persistence settings cannot be read (CONFIG GET and INFO persistence refused: CONFIG "
                   "disabled or renamed, as on managed services?): check that it keeps an append-only file with "
                   "appendfsync everysec or always")


def _num(value: float) -> str:
    return repr(float(value))


def _ms(seconds: float) -> int:
    return max(1, int(math.ceil(seconds * 1000)))


# --------------------------------------------------------------------------- (de)serialisation: compact JSON arrays


def _dump_session(s: SessionState) -> str:
    p = s.pending
    pending = None if p is None else [p.offer_id, p.rule, p.queue, p.offered_at, p.expires_at]
    row: list[Any] = [s.offers_made, 1 if s.in_chat else 0, s.last_seen, pending]
    if s.explore_seen or s.production_seen:  # only with exploration; older records simply lack them
        row += [[list(pair) for pair in s.explore_seen], 1 if s.production_seen else 0]
    return json.dumps(row, separators=(",", ":"))


def _load_session(raw: str | None) -> SessionState | None:
    if raw is None:
        return None
    row = json.loads(raw)
    offers_made, in_chat, last_seen, p = row[:4]
    pending = None if p is None else PendingOffer(p[0], p[1], p[2], p[3], p[4])
    if len(row) < 6:
        return SessionState(offers_made, pending, bool(in_chat), last_seen)
    seen = tuple((str(page), float(most)) for page, most in row[4])
    return SessionState(offers_made, pending, bool(in_chat), last_seen, seen, bool(row[5]))


def _load_visitor(raw: str | None) -> VisitorState | None:
    return None if raw is None else VisitorState(float(raw))


def _dump_offer(r: OfferRecord) -> str:
    return json.dumps([r.offer_id, r.visitor_id, r.session_id, r.rule, r.queue, r.offered_at, r.expires_at, r.ruleset,
                       r.ruleset_version, r.status.value, r.answered_at], separators=(",", ":"), ensure_ascii=False)


def _load_offer(raw: str | None) -> OfferRecord | None:
    if raw is None:
        return None
    v = json.loads(raw)
    return OfferRecord(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], OfferStatus(v[9]), v[10])


def _dump_queue(q: QueueStatus) -> str:
    return json.dumps([q.agents_available, q.estimated_wait_s, q.updated_at], separators=(",", ":"))


def _load_queues(flat: list[str]) -> dict[str, QueueStatus]:
    out = {}
    for i in range(0, len(flat), 2):
        agents, wait, updated = json.loads(flat[i + 1])
        out[flat[i]] = QueueStatus(agents, wait, updated)
    return out


class _Held:
    """One held session lock: what was read with it and what is to be written when it is released."""

    __slots__ = ("key", "visitor_id", "session_id", "lock_key", "token", "session", "visitor", "visitor_read",
                 "queues", "dirty", "offers", "depth", "read")

    def __init__(self, key: str, visitor_id: str, session_id: str, lock_key: str, token: str) -> None:
        self.key, self.visitor_id, self.session_id = key, visitor_id, session_id
        self.lock_key, self.token = lock_key, token  # token "": not locked, reads checked on commit
        self.session: SessionState | None = None
        self.visitor: VisitorState | None = None
        self.visitor_read: VisitorState | None = None
        self.queues: dict[str, QueueStatus] = {}
        self.dirty = False
        self.offers: dict[str, OfferRecord] = {}
        self.depth = 1
        self.read: tuple[str, str, str] = ("", "", "")  # session, visitor, queue version as read ("" = none)


class _Batch:
    __slots__ = ("pending", "written")

    def __init__(self) -> None:
        self.pending: list[tuple[Any, ...]] = []  # (held, keys, args, session written, cooldown written)
        self.written: list[bool] = []


class _SessionLock:
    __slots__ = ("_store", "_visitor_id", "_session_id", "_held", "_optimistic")

    def __init__(self, store: RedisStore, visitor_id: str, session_id: str, optimistic: bool = False) -> None:
        self._store, self._visitor_id, self._session_id = store, visitor_id, session_id
        self._optimistic = optimistic
        self._held: _Held | None = None

    def __enter__(self) -> None:
        self._held = self._store._acquire(self._visitor_id, self._session_id, self._optimistic)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        held, self._held = self._held, None
        assert held is not None
        held.depth -= 1
        if held.depth:
            return  # the same session, re-entered by the same thread
        self._store._local.held = None
        if isinstance(exc, StoreUnavailable):
            if held.token:
                self._store._release_quietly(held)
            return
        # Writes are applied whether the runtime leaves normally or with its own error (a late answer records
        # the expiry and then refuses): the same effect as a store that writes through, as the memory store does.
        self._store._commit(held)


class RedisStore:
    """A :class:`pcrules.StateStore` in Redis, safe to share between processes (and threads)."""

    def __init__(self, url: str | redis.Redis = "redis://127.0.0.1:6379/0", *, prefix: str = "pcrules:",
                 session_ttl_s: float = 1800.0, lock_ttl_s: float = 5.0, lock_wait_s: float = 5.0,
                 due_check_interval_s: float = 0.25, socket_timeout_s: float = 1.0,
                 connect_timeout_s: float = 0.5, cache_size: int = 100_000,
                 on_contention: Callable[[str], None] | None = None, allow_volatile: bool | None = None) -> None:
        if isinstance(url, redis.Redis):
            if not url.get_connection_kwargs().get("decode_responses"):
                raise ValueError("RedisStore: a Redis client passed in must be made with decode_responses=True")
            self._redis = url
            self.url = repr(url)
        else:
            # One quick retry (it reconnects a pooled connection that Redis closed when it restarted), no backoff:
            # an outage answers at once instead of hanging the request.
            self._redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=socket_timeout_s,
                                               socket_connect_timeout=connect_timeout_s,
                                               retry=Retry(NoBackoff(), 1), health_check_interval=30)
            self.url = _safe_url(url)
        self.prefix = prefix
        self.session_ttl_s = float(session_ttl_s)
        self.lock_ttl_s = float(lock_ttl_s)
        self.lock_wait_s = float(lock_wait_s)
        self.due_check_interval_s = float(due_check_interval_s)
        self._due_key = prefix + "due"
        self._queue_key = prefix + "q"
        self._queue_version_key = prefix + "qv"
        self._offer_prefix = prefix + "o:"
        self._acquire_script = self._redis.register_script(_ACQUIRE)
        self._commit_script = self._redis.register_script(_COMMIT)
        self._check_and_commit_script = self._redis.register_script(_CHECK_AND_COMMIT)
        self._set_queue_script = self._redis.register_script(_SET_QUEUE)
        self._release_script = self._redis.register_script(_RELEASE)
        self._due_script = self._redis.register_script(_DUE)
        self._adopt_script = self._redis.register_script(_ADOPT)
        # The state marker: adopted (created when absent) at the first contact, checked by every script that
        # decides or writes; gone means Redis lost our state (see _lost). None: not adopted yet, or lost.
        self._epoch_key = prefix + "epoch"
        self._epoch: str | None = None
        self.epoch_created = False  # whether this process created the marker (a new Redis, or a loss before)
        self._lost_since: float | None = None
        self.data_losses = 0  # losses detected (the server counts them as store_contention{kind="data_lost"})
        self._epoch_lock = threading.Lock()
        # None: persistence is not checked (call check_persistence); False: checked at the first contact and a
        # volatile Redis refused; True: checked and only warned about.
        self.allow_volatile = allow_volatile
        self._persistence: str | None = None
        self._refused: VolatileRedis | None = None
        self._local = threading.local()
        self._connections: list[Any] = []  # one per thread for the hot path, closed by close()
        self._connections_lock = threading.Lock()
        self._last_due_check = -math.inf
        self.lock_waits = 0  # times a lock was found taken (contention between processes), for tests and metrics
        # Told "lock_wait" or "stale_read" each time (the server counts them in /metrics): many stale reads mean
        # a visitor's requests are spread over workers.
        self._on_contention = on_contention
        # What this process last read or wrote of each session and visitor ("" = no such key), least recently
        # used first, and the queue status with its version: observe_lock decides on these and Redis checks
        # them when it commits. Never trusted without that check, so a stale entry costs a retry, nothing more.
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._queues_read: tuple[str, dict[str, QueueStatus]] = ("\0unread", {})
        self.stale_reads = 0  # commits refused because something read had changed (then decided again)

    # ------------------------------------------------------------------ keys

    def _session_key(self, visitor_id: str, session_id: str) -> str:
        return f"{self.prefix}s:{len(visitor_id)}:{visitor_id}{session_id}"  # length-prefixed: no ambiguity

    def _visitor_key(self, visitor_id: str) -> str:
        return f"{self.prefix}v:{visitor_id}"

    def _current(self, key: str) -> _Held | None:
        held: _Held | None = getattr(self._local, "held", None)
        return held if held is not None and held.key == key else None

    # ------------------------------------------------------------------ the hot path: a thread's own connection

    def _eval(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA on this thread's own connection: half the client CPU of a pooled call (it is every request).

        One retry after a broken connection (Redis restarted) or a script Redis forgot (NOSCRIPT), as redis-py's
        own Script does; an outage is StoreUnavailable.
        """
        epoch = self._epoch or self._adopt()
        conn = self._connection()
        reconnect = reload = True
        while True:
            try:
                _send_evalsha(conn, script.sha, [(keys, args)], self._epoch_key, epoch)
                return conn.read_response()
            except NoScriptError:
                if not reload:
                    raise
                reload = False
                self._call("script_load", script.script)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                conn.disconnect()
                if not reconnect:
                    raise _unavailable(exc) from None
                reconnect = False
            except redis.RedisError as exc:
                raise self._script_error(exc) from None

    def _script_error(self, exc: redis.RedisError) -> Exception:
        """What a script's error means to the caller: a loss of state, an outage, or itself (a bug)."""
        current = _epoch_reply(exc)
        if current is not None:
            return self._lost(current)
        return _unavailable(exc) if _is_outage(exc) else exc

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._redis.connection_pool.make_connection()
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    # ------------------------------------------------------------------ the session lock

    def session_lock(self, visitor_id: str, session_id: str) -> _SessionLock:
        return _SessionLock(self, visitor_id, session_id)

    def observe_lock(self, visitor_id: str, session_id: str) -> _SessionLock:
        """Like session_lock, but decided on this process's cache and checked by Redis in the one commit.

        One round trip instead of two while the cache is right (a session served by this process, as a sticky
        load balancer makes it); when it is not, nothing is written, the cache learns the current values and
        :class:`pcrules.stores.StaleRead` tells the runtime to decide again.
        """
        return _SessionLock(self, visitor_id, session_id, optimistic=True)

    def _cached(self, key: str) -> str:
        raw = self._cache.get(key)
        if raw is None:
            return ""
        try:
            self._cache.move_to_end(key)
        except KeyError:  # dropped by another thread meanwhile: a hint either way
            pass
        return raw

    def _remember(self, key: str, raw: str | None) -> None:
        cache = self._cache
        try:
            cache[key] = raw or ""
            cache.move_to_end(key)
            if len(cache) > self.cache_size:
                cache.popitem(last=False)
        except KeyError:  # another thread changed it meanwhile: a hint either way
            pass

    def _remember_queues(self, version: str | None, flat: list[str]) -> None:
        self._queues_read = (version or "", _load_queues(flat))

    def _acquire(self, visitor_id: str, session_id: str, optimistic: bool = False) -> _Held:
        key = self._session_key(visitor_id, session_id)
        outer: _Held | None = getattr(self._local, "held", None)
        if outer is not None:
            if outer.key == key and not optimistic and outer.token:
                outer.depth += 1
                return outer
            raise RuntimeError("RedisStore: one thread may hold one session lock at a time")
        lock_key = self.prefix + "lock:" + key[len(self.prefix) + 2:]
        visitor_key = self._visitor_key(visitor_id)
        if optimistic:
            held = _Held(key, visitor_id, session_id, lock_key, "")
            session_raw, visitor_raw = self._cached(key), self._cached(visitor_key)
            version, held.queues = self._queues_read
        else:
            held = _Held(key, visitor_id, session_id, lock_key, os.urandom(16).hex())
            keys = [lock_key, key, visitor_key, self._queue_key, self._queue_version_key]
            args = [held.token, _ms(self.lock_ttl_s)]
            deadline = time.monotonic() + self.lock_wait_s
            delay = 0.0005
            while True:
                reply = self._eval(self._acquire_script, keys, args)
                if reply[0] == 1:
                    break
                self.lock_waits += 1
                if self._on_contention is not None:
                    self._on_contention("lock_wait")
                if time.monotonic() >= deadline:
                    raise StoreBusy(f"session {session_id!r} of visitor {visitor_id!r} is locked by another process "
                                    f"for more than {self.lock_wait_s:g} s; try again")
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.02)
            session_raw, visitor_raw = reply[1] or "", reply[2] or ""
            self._remember(key, session_raw)
            self._remember(visitor_key, visitor_raw)
            self._remember_queues(reply[4], reply[3])
            version, held.queues = self._queues_read
        held.read = (session_raw, visitor_raw, version)
        held.session = _load_session(session_raw or None)
        held.visitor = held.visitor_read = _load_visitor(visitor_raw or None)
        self._local.held = held
        return held

    def _commit(self, held: _Held) -> None:
        args: list[Any] = [held.token] if held.token else list(held.read)
        written: str | None = None
        cooldown: str | None = None
        if held.dirty and held.session is not None:
            written = _dump_session(held.session)
            args += ["set", held.key, written, _ms(self.session_ttl_s)]
            visitor = held.visitor
            if visitor is not None and visitor != held.visitor_read and visitor.cooldown_until > -math.inf:
                left = visitor.cooldown_until - held.session.last_seen  # event time; the key lives as long
                if left > 0:
                    cooldown = _num(visitor.cooldown_until)
                    args += ["max", self._visitor_key(held.visitor_id), cooldown, _ms(left + 60)]
        for record in held.offers.values():
            args += self._offer_ops(record)
        if held.token:
            if not self._eval(self._commit_script, [held.lock_key], args):
                raise LockLost(f"the lock on session {held.session_id!r} of visitor {held.visitor_id!r} expired "
                               f"(held longer than {self.lock_ttl_s:g} s); nothing was written, try again")
            self._written(held, written, cooldown)
            return
        keys = [held.lock_key, held.key, self._visitor_key(held.visitor_id), self._queue_key, self._queue_version_key]
        batch = getattr(self._local, "batch", None)
        if batch is not None:
            batch.pending.append((held, keys, args, written, cooldown))
            return
        if not self._checked(held, self._eval(self._check_and_commit_script, keys, args), written, cooldown):
            raise StaleRead(f"session {held.session_id!r} of visitor {held.visitor_id!r} changed meanwhile")

    def _checked(self, held: _Held, reply: Any, written: str | None, cooldown: str | None) -> bool:
        """Whether a check-and-commit was applied; the cache learns what Redis holds either way."""
        if reply[0] == 1:
            self._written(held, written, cooldown)
            return True
        self.stale_reads += 1
        if self._on_contention is not None:
            self._on_contention("stale_read")
        if reply[0] == 2:
            self._remember(held.key, reply[1])
            self._remember(self._visitor_key(held.visitor_id), reply[2])
            if reply[3] != held.read[2]:
                self._remember_queues(reply[3], reply[4])
        return False

    def _written(self, held: _Held, written: str | None, cooldown: str | None) -> None:
        if written is not None:
            self._remember(held.key, written)
        if cooldown is not None:  # what Redis holds unless another session set a later one (then: a stale read)
            self._remember(self._visitor_key(held.visitor_id), cooldown)

    # ------------------------------------------------------------------ observations committed together

    @contextmanager
    def batch(self) -> Iterator[_Batch]:
        """Observations committed inside (observe_lock) are sent together when it ends: one write, one round trip.

        The yielded batch's ``written[k]`` then says whether its ``k``-th staged commit was applied; one that
        was not (a stale read, a locked session, a connection lost) wrote nothing: decide it again.
        """
        if getattr(self._local, "batch", None) is not None:
            raise RuntimeError("RedisStore: batches do not nest")
        batch = self._local.batch = _Batch()
        try:
            yield batch
        finally:
            self._local.batch = None
        batch.written = self._send(batch.pending)

    def _send(self, pending: list[tuple[Any, ...]]) -> list[bool]:
        if not pending:
            return []
        try:
            epoch = self._epoch or self._adopt()
        except StoreUnavailable:
            return [False] * len(pending)  # each is decided again on its own, which reports it
        conn = self._connection()
        try:
            _send_evalsha(conn, self._check_and_commit_script.sha, [(keys, args) for _, keys, args, _, _ in pending],
                          self._epoch_key, epoch)
            replies: list[Any] = []
            for _ in pending:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:  # NOSCRIPT after a restart, say: that one is decided again
                    if _epoch_reply(exc) is not None:
                        self._lost(_epoch_reply(exc) or "")  # each is then refused when decided again
                    replies.append(exc)
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()
            return [False] * len(pending)  # each is decided again on its own, which reconnects or reports it
        return [not isinstance(reply, Exception) and self._checked(held, reply, written, cooldown)
                for (held, _, _, written, cooldown), reply in zip(pending, replies)]

    def _release_quietly(self, held: _Held) -> None:
        try:
            self._release_script(keys=[held.lock_key], args=[held.token])
        except redis.RedisError:
            pass  # it expires by itself

    def _offer_ops(self, record: OfferRecord) -> list[Any]:
        ttl = _ms(self.session_ttl_s + max(0.0, record.expires_at - record.offered_at))
        ops: list[Any] = ["set", self._offer_prefix + record.offer_id, _dump_offer(record), ttl]
        if record.status == OfferStatus.OFFERED:
            ops += ["zadd", self._due_key, _num(record.expires_at), record.offer_id]
        else:
            ops += ["zrem", self._due_key, record.offer_id, "-"]
        return ops

    def _write(self, args: list[Any]) -> None:
        """Writes outside any session lock (the runtime makes none; kept for direct use and tests)."""
        epoch = self._epoch or self._adopt()
        try:
            self._commit_script(keys=[self._epoch_key], args=["", *args, epoch])
        except redis.RedisError as exc:
            raise self._script_error(exc) from None

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._redis, method)(*args)
        except redis.RedisError as exc:
            if _is_outage(exc):
                raise _unavailable(exc) from None
            raise

    def _scan(self, pattern: str) -> list[str]:
        try:
            return list(self._redis.scan_iter(pattern, 1000))
        except redis.RedisError as exc:
            if _is_outage(exc):
                raise _unavailable(exc) from None
            raise

    # ------------------------------------------------------------------ StateStore

    def session(self, visitor_id: str, session_id: str) -> SessionState | None:
        key = self._session_key(visitor_id, session_id)
        held = self._current(key)
        if held is not None:
            return held.session
        return _load_session(self._call("get", key))

    def visitor(self, visitor_id: str) -> VisitorState | None:
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None and held.visitor_id == visitor_id:
            return held.visitor
        return _load_visitor(self._call("get", self._visitor_key(visitor_id)))

    def save(self, visitor_id: str, session_id: str, session: SessionState, visitor: VisitorState) -> None:
        key = self._session_key(visitor_id, session_id)
        held = self._current(key)
        if held is not None:
            held.session, held.visitor, held.dirty = session, visitor, True
            return
        args: list[Any] = ["set", key, _dump_session(session), _ms(self.session_ttl_s)]
        if visitor.cooldown_until > session.last_seen:
            args += ["max", self._visitor_key(visitor_id), _num(visitor.cooldown_until),
                     _ms(visitor.cooldown_until - session.last_seen + 60)]
        self._write(args)

    def offer(self, offer_id: str) -> OfferRecord | None:
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None and offer_id in held.offers:
            return held.offers[offer_id]
        record = _load_offer(self._call("get", self._offer_prefix + offer_id))
        if record is None:
            self.ping()  # an unknown offer (rare): a 503 rather than a 404 if Redis lost them all
        return record

    def save_offer(self, record: OfferRecord) -> None:
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None:
            held.offers[record.offer_id] = record
            return
        self._write(self._offer_ops(record))

    def due_offers(self, now: float) -> list[OfferRecord]:
        tick = time.monotonic()
        if tick - self._last_due_check < self.due_check_interval_s:
            return []
        self._last_due_check = tick
        try:
            raw = self._due_script(keys=[self._due_key], args=[_num(now), 200, self._offer_prefix])
        except redis.RedisError as exc:
            if _is_outage(exc):
                raise _unavailable(exc) from None
            raise
        due = []
        for item in raw:
            record = _load_offer(item)
            if record is None:
                continue
            if record.status == OfferStatus.OFFERED:
                due.append(record)
            else:  # closed, but its entry survived (a commit that failed half-way cannot happen; a crash can)
                self._call("zrem", self._due_key, record.offer_id)
        if len(raw) >= 200:
            self._last_due_check = -math.inf  # more are due: look again on the next call
        return due

    def evict_idle(self, before: float) -> list[Evicted]:
        return []  # sessions, cooldowns and offers expire in Redis; open offers are closed by due_offers

    def queue_status(self) -> dict[str, QueueStatus]:
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None:
            return held.queues
        return _load_queues([x for kv in self._call("hgetall", self._queue_key).items() for x in kv])

    def set_queue_status(self, name: str, status: QueueStatus) -> None:
        # With a new version: every process's cached queue status is then refused at its next commit.
        epoch = self._epoch or self._adopt()
        try:
            version = self._set_queue_script(keys=[self._queue_key, self._queue_version_key, self._epoch_key],
                                             args=[name, _dump_queue(status), epoch])
        except redis.RedisError as exc:
            raise self._script_error(exc) from None
        read_version, queues = self._queues_read
        if read_version == str(version - 1) or (read_version == "" and version == 1):  # nobody else changed it
            self._queues_read = (str(version), {**queues, name: status})

    def __len__(self) -> int:
        """Sessions remembered (a scan: for tests and operators, not the request path)."""
        return len(self._scan(f"{self.prefix}s:*"))

    # ------------------------------------------------------------------ persistence and the state marker

    def check_persistence(self, allow_volatile: bool = False) -> str:
        """Read Redis' persistence settings; refuse one that a crash or restart makes forget caps and cooldowns.

        Accepted: an append-only file synced always or every second. Otherwise :class:`VolatileRedis`, one line
        naming the URL (without its password) and the setting to change, unless ``allow_volatile`` (then the
        returned line says so). Returns what a crash costs; :class:`StoreUnavailable` when Redis is down.
        """
        def read(fn: Callable[..., Any], arg: str) -> Any:
            try:
                return fn(arg)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise _unavailable(exc) from None
            except redis.ResponseError:  # disabled, renamed or not permitted (managed services, ACLs)
                return None

        config: dict[str, Any] | None = {}
        for name in ("appendonly", "appendfsync", "save"):
            got = read(self._redis.config_get, name)
            if got is None:
                config = None
                break
            config.update(got)  # type: ignore[union-attr]
        info = read(self._redis.info, "persistence") if config is None else None
        ok, why = persistence_verdict(config, info)
        if ok:
            self._persistence = why
        elif allow_volatile:
            self._persistence = f"VOLATILE, allowed: {why}"
        else:
            raise VolatileRedis(f"refusing Redis at {self.url}: {why}; to run on it anyway, pass "
                                f"--allow-volatile-redis (server config redis_allow_volatile)")
        return self._persistence

    @property
    def epoch_key(self) -> str:
        """The state marker's key: ``<prefix>epoch``."""
        return self._epoch_key

    @property
    def epoch(self) -> str | None:
        """The state marker's value this process adopted (None before the first contact, or after a loss)."""
        return self._epoch

    def _adopt(self) -> str:
        """First contact: adopt the state marker, created when there is none. After a loss: adopt it only once
        someone re-created it (the acknowledgement); until then every call is refused with DataLost."""
        with self._epoch_lock:
            if self._epoch is not None:
                return self._epoch
            if self._refused is not None:
                raise self._refused
            if self.allow_volatile is not None and self._persistence is None:
                try:
                    self.check_persistence(self.allow_volatile)
                except VolatileRedis as exc:
                    self._refused = exc
                    log.error("%s", exc)
                    raise
            lost = self._lost_since is not None
            mine = f"{int(time.time())}:{os.urandom(8).hex()}"
            try:
                reply: Any = (self._redis.get(self._epoch_key) if lost
                              else self._adopt_script(keys=[self._epoch_key], args=[mine]))
            except redis.RedisError as exc:
                raise (_unavailable(exc) if _is_outage(exc) else exc) from None
            current: str | None = reply  # the client decodes replies (decode_responses=True): text
            if current is None:
                raise DataLost(self._lost_message())
            if lost:
                log.warning("Redis at %s: the state marker %s was re-created (%s): resuming; sessions active "
                            "before the loss may get a second offer", self.url, self._epoch_key, current)
                self._lost_since = None
                self._cache.clear()
                self._queues_read = ("\0unread", {})
            elif current == mine:
                self.epoch_created = True
                log.info("Redis at %s had no state marker: created %s", self.url, self._epoch_key)
            self._epoch = current
            return current

    def _lost(self, current: str) -> DataLost:
        """A script found the marker gone or changed: from now on refuse (see _adopt); logged and counted once."""
        first = False
        with self._epoch_lock:
            if self._epoch is not None and current != self._epoch:
                first = True
                self._epoch, self._lost_since = None, time.time()
                self.data_losses += 1
        if first:
            log.error("%s", self._lost_message(current))
            if self._on_contention is not None:
                self._on_contention("data_lost")
        return DataLost(self._lost_message(current))

    def _lost_message(self, current: str = "") -> str:
        what = (f"the state marker {self._epoch_key} was replaced by {current!r}" if current
                else f"the state marker {self._epoch_key} is gone")
        return (f"Redis at {self.url} lost pcrules' state ({what}: restarted without persistence, or flushed); "
                f"refusing to decide on it, which would make second offers and forget cooldowns; to accept the "
                f"loss and resume, re-create the marker (redis-cli -u {self.url} SET {self._epoch_key} ack) "
                f"or restart pcrules serve")

    def acknowledge_loss(self) -> str:
        """Accept that Redis lost pcrules' state and resume: a new marker, adopted by every process on it."""
        self._call("set", self._epoch_key, f"{int(time.time())}:ack:{os.urandom(8).hex()}")
        with self._epoch_lock:
            if self._epoch is not None:
                self._epoch, self._lost_since = None, time.time()
        return self._adopt()

    # ------------------------------------------------------------------ operations

    def ping(self) -> bool:
        """True when Redis answers and holds our state; StoreUnavailable (DataLost when it lost it) otherwise."""
        epoch = self._epoch or self._adopt()
        current = self._call("get", self._epoch_key)
        if current != epoch:
            raise self._lost(current or "")
        return True

    def configure(self, *, session_ttl_s: float | None = None) -> None:
        if session_ttl_s is not None:
            self.session_ttl_s = float(session_ttl_s)

    def clear(self) -> int:
        """Delete every key under this store's prefix (tests, a fresh demo); returns how many."""
        keys = [k for k in self._scan(self.prefix + "*") if k != self._epoch_key]  # others still share it
        self._cache.clear()
        self._queues_read = ("\0unread", {})
        for i in range(0, len(keys), 500):
            self._call("delete", *keys[i:i + 500])
        return len(keys)

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.disconnect()
            self._connections.clear()
        self._redis.close()
