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
time); :meth:`RedisStore.due_offers` looks for the due ones at most every
``due_check_interval_s`` per process and hands them out a few at a time
(:data:`DUE_PER_CALL`), those of sessions it has not seen only once they are
:data:`OTHERS_DUE_AFTER_S` overdue (the process that made them goes first).
Inside a batch the runtime closes each like an observation, on the cache, and
its commit also checks that the offer is still as it was found
(:meth:`RedisStore.expect_offer`): no lock, no extra round trip; outside one,
under its session's lock after re-reading it. Either way two processes never
both expire one offer. Nothing is lost if a process dies meanwhile: the offer stays in the set
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

**Keys, and Redis Cluster.** Every key but the state marker carries a hash tag, ``<prefix>{<tag>}``, one of
:data:`SHARDS` fixed tags (store format: changing them is a new key layout); a visitor's tag is a CRC-32 of its id
modulo :data:`SHARDS`, so a visitor's sessions, cooldown, offers, locks, and the shard's ``due`` set, queue status
copy and marker copy all hash to one slot: every script is given keys of one slot only (a cluster's node runs it
whole; redis-py refuses anything else with "keys must map to the same key slot"). Per tag ``T``:
``{T}s:<n>:<visitor><session>`` a session, ``{T}v:<visitor>`` a cooldown, ``{T}o:<offer id>`` an offer,
``{T}due`` the sorted set of the shard's open offers (:meth:`due_offers` reads every shard's in one round trip per
node), ``{T}q`` / ``{T}qv`` the shard's copy of the queue status and its version (:meth:`set_queue_status` writes
every copy, one script per shard; a commit is checked against its own shard's copy), ``{T}lock:<...>`` the locks
and ``{T}done:<...>`` a committed lock's token for a few seconds (a commit resent after its reply was lost is
answered "applied", not "lock lost"), ``{T}epoch`` the shard's copy of the state marker ``<prefix>epoch``
(created from it; the scripts check the copy of their shard). The tags are chosen so that their slots fall
evenly over the 16,384 slots: three masters each hold about a third of the shards. An answer given without the
visitor (``offer(offer_id)``) looks in every shard at once (MGET; per slot on a cluster). One instance, a
Sentinel-managed master or a cluster share this layout (hash tags are harmless on one instance); the prefix may
not contain ``{`` or ``}``. Keys of the previous, untagged layout (``<prefix>due``, ``<prefix>qv``) are reported
once and deleted at the first contact: stop every older worker before starting this version.

URLs: ``redis://`` and ``rediss://`` (one instance), ``redis+cluster://host:port[,host:port...]`` (seed nodes of
a Redis Cluster; ``rediss+cluster://`` with TLS), ``redis+sentinel://host:port[,host:port...]/service[/db]`` (the
master Sentinel names ``service``; a failover is followed on the next connection).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ClusterDownError, NoScriptError, RedisClusterException, SlotNotCoveredError, TryAgainError
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
           "persistence_verdict", "connect", "url_kind", "shard_of", "SHARDS"]

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

# Taken, or already ours (a retry after a reply lost on a broken connection). KEYS: lock, session, visitor,
# queue status copy, its version (the shard's), marker copy.
_ACQUIRE = """
local s = redis.call('GET', KEYS[2])
if not s then""" + _EPOCH + """end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) or redis.call('GET', KEYS[1]) == ARGV[1] then
  return {1, s, redis.call('GET', KEYS[3]), redis.call('HGETALL', KEYS[4]), redis.call('GET', KEYS[5])}
end
return {0}
"""

# Ops of four arguments each from ARGV[i] up to the epoch (the last one); a key is named by its index in KEYS
# (every key a script touches is declared, all of one slot):
#   set k value px | max k number px (set when greater than the stored number) | zadd k score member | zrem k member -
_APPLY_OPS = """
while i < #ARGV do
  local op, key = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
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

# KEYS: lock, done, the ops' keys, marker copy; ARGV[1] = lock token ('' = written without a lock), then the ops.
# A lock still ours proves that nothing was lost since it was taken (a loss takes it too); without one the
# marker is checked. Once applied, the token stays in `done` for a while: the same commit sent again (its reply
# was lost with the connection, or a failover) is answered "applied" instead of "lock lost".
_COMMIT = """
local token = ARGV[1]
if token ~= '' and redis.call('GET', KEYS[1]) ~= token then
  if redis.call('GET', KEYS[2]) == token then return 1 end
  return 0
end
if token == '' then""" + _EPOCH + """end
local i = 2
""" + _APPLY_OPS + """
if token ~= '' then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], token, 'PX', 30000)
end
return 1
"""

# An observation decided on cached reads: applied only if the session is not locked and the session, the
# visitor and the queue status version are still what was read ('' = no such key), then the ops from ARGV[4].
# Otherwise nothing is written and the current values come back: {0} locked, {2, session, visitor, version,
# queue hash (only when the version moved)}. KEYS: lock, session, visitor, queue copy, its version, the ops'
# keys, marker copy.
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
if ARGV[4] ~= '' and (redis.call('GET', KEYS[6]) or '') ~= ARGV[4] then return {3} end
if s == '' then""" + _EPOCH + """end
local i = 5
""" + _APPLY_OPS + """
return {1}
"""

# One shard's copy of the queue status; KEYS: copy, version, marker copy; ARGV: queue, status, the new version
# (the same in every shard: a copy read in one shard is a good first guess for the others). Returns the copy.
_SET_QUEUE = _EPOCH + """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
return redis.call('HGETALL', KEYS[1])
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# A shard's open offers due by ARGV[1]; ids whose record is gone (expired with its session) are dropped from the
# set. ARGV[3] is the shard's offer key prefix: the records read are of the set's own slot.
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
                        "WRONGPASS", "NOPERM", "CLUSTERDOWN", "TRYAGAIN")

#: The number of hash tags (shards) keys are spread over: a store-format constant.
SHARDS = 32
DUE_PER_CALL = 4  # offers due handed out by one due_offers call
# An offer due whose session this process has not seen is left to the process that made it for this long (event
# time): closing it here would fail on the empty cache and race that process, whose cache knows the session.
OTHERS_DUE_AFTER_S = 2.0


def _shard_tags() -> tuple[str, ...]:
    """One tag per shard, the first ``"<i>.<j>"`` whose slot falls in the i-th of SHARDS equal slot ranges."""
    width = 16384 // SHARDS
    tags = []
    for i in range(SHARDS):
        j = 0
        while key_slot(f"{i}.{j}".encode()) // width != i:
            j += 1
        tags.append(f"{i}.{j}")
    return tuple(tags)


_TAGS = _shard_tags()
_SHARD_OF_TAG = {tag: k for k, tag in enumerate(_TAGS)}
_SHARD_SLOTS = [key_slot(tag.encode()) for tag in _TAGS]  # a key tagged {tag} hashes to its tag's slot


def shard_of(visitor_id: str) -> int:
    """The shard (hash tag) of a visitor's keys: the same in every process and version of this layout."""
    return zlib.crc32(visitor_id.encode("utf-8", "surrogatepass")) % SHARDS


class _Script:
    """A Lua script and its SHA-1 (EVALSHA, SCRIPT LOAD when Redis does not know it)."""

    __slots__ = ("script", "sha")

    def __init__(self, script: str) -> None:
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()


def _unavailable(exc: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"shared state store (Redis) unavailable: {str(exc).rstrip('.')}")


def _send_evalsha(conn: Any, sha: str, calls: list[tuple[list[str], list[Any]]]) -> None:
    """EVALSHA of one script for each (keys, args), in one write; the replies are read by the caller."""
    commands = [("EVALSHA", sha, len(keys), *keys, *args) for keys, args in calls]
    if getattr(conn, "_sock", None) is None:  # a Sentinel-managed connection asks the Sentinels for the master
        conn.connect()
    if _pack is None:
        conn.send_packed_command(conn.pack_commands(commands))
    else:  # what redis-py's packer does, minus a Python pass over every argument (all str or int here)
        conn.send_packed_command([b"".join(_pack(command) for command in commands)])


def _script_refusal(exc: Exception) -> bool:
    """An error the script itself raised (a lost state marker, a bug): the same whichever way it is sent."""
    return isinstance(exc, redis.ResponseError) and not isinstance(exc, NoScriptError) and not _is_outage(exc)


def _is_outage(exc: Exception) -> bool:
    # AskError (MovedError too): a node asked directly (_get_per_node) no longer serves the slot, as in a failover
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError, ClusterDownError,
                        TryAgainError, SlotNotCoveredError, redis.exceptions.AskError)):
        return True
    if isinstance(exc, RedisClusterException):  # no node reachable, or none serves the slot (a failover)
        return "slot" not in str(exc).lower() or "covered" in str(exc).lower()
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(_UNAVAILABLE_REPLIES)


def _split_nodes(netloc: str, default_port: int) -> tuple[str | None, str | None, list[tuple[str, int]]]:
    """user, password and the host:port list of a URL's authority (``h1:7000,h2:7001``, IPv6 in brackets)."""
    user = password = None
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        user, _, password = auth.partition(":")
        user, password = unquote(user) or None, unquote(password) or None
    nodes = []
    for part in netloc.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("["):
            host, _, rest = part[1:].partition("]")
            port = rest.lstrip(":")
        else:
            host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
        nodes.append((host, int(port) if port else default_port))
    if not nodes:
        raise ValueError("no host:port in the Redis URL")
    return user, password, nodes


def url_kind(url: str) -> str:
    """"cluster", "sentinel" or "single": what a Redis URL names."""
    scheme = url.split("://", 1)[0].lower()
    return {"redis+cluster": "cluster", "rediss+cluster": "cluster", "redis+sentinel": "sentinel",
            "rediss+sentinel": "sentinel"}.get(scheme, "single")


def connect(url: str, *, socket_timeout_s: float = 1.0, connect_timeout_s: float = 0.5) -> Any:
    """A redis-py client (decode_responses) for ``redis://``, ``redis+cluster://`` or ``redis+sentinel://``.

    One instance: one quick retry (it reconnects a pooled connection that Redis closed when it restarted), no
    backoff: an outage answers at once instead of hanging the request. A cluster: no retry (a stalled master
    would cost several timeouts); the client learns the topology in its constructor (a cluster that is down
    raises StoreUnavailable there) and again after a failure.
    """
    options: dict[str, Any] = {"decode_responses": True, "socket_timeout": socket_timeout_s,
                               "socket_connect_timeout": connect_timeout_s}
    kind = url_kind(url)
    if kind == "single":
        return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 1), health_check_interval=30, **options)
    parts = urlsplit(url)
    tls = parts.scheme.lower().startswith("rediss")
    user, password, nodes = _split_nodes(parts.netloc, 6379 if kind == "cluster" else 26379)
    auth: dict[str, Any] = {"username": user, "password": password}
    if kind == "cluster":
        from redis.cluster import ClusterNode, RedisCluster

        try:
            seeds = [ClusterNode(h, p) for h, p in nodes]  # type: ignore[no-untyped-call]
            # No retry of its own: a master that stalls costs one socket timeout, then StoreUnavailable (a 503)
            # while its slots move; the topology is refreshed on the next call, which follows the new master.
            return RedisCluster(startup_nodes=seeds, retry=Retry(NoBackoff(), 0),
                                ssl=tls, **auth, **options)
        except (redis.RedisError, RedisClusterException) as exc:
            raise _unavailable(exc) from None
    from redis.sentinel import Sentinel

    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("redis+sentinel:// needs the service name: redis+sentinel://host:26379/mymaster")
    db = int(path[1]) if len(path) > 1 else 0
    query = dict(parse_qsl(parts.query))
    sentinel = Sentinel(nodes, sentinel_kwargs={"socket_timeout": socket_timeout_s,
                                                "socket_connect_timeout": connect_timeout_s,
                                                "password": query.get("sentinel_password")},
                        **options)
    if tls:
        options["connection_class"] = redis.SSLConnection
    return sentinel.master_for(path[0], db=db, retry=Retry(NoBackoff(), 1), **auth, **options)


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
        netloc = parts.netloc.rsplit("@", 1)[-1]  # host:port, or a cluster's or Sentinels' list of them
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
                 "queues", "dirty", "offers", "depth", "read", "shard", "expected")

    def __init__(self, key: str, visitor_id: str, session_id: str, lock_key: str, token: str, shard: int) -> None:
        self.key, self.visitor_id, self.session_id = key, visitor_id, session_id
        self.lock_key, self.token = lock_key, token  # token "": not locked, reads checked on commit
        self.shard = shard
        self.session: SessionState | None = None
        self.visitor: VisitorState | None = None
        self.visitor_read: VisitorState | None = None
        self.queues: dict[str, QueueStatus] = {}
        self.dirty = False
        self.offers: dict[str, OfferRecord] = {}
        self.depth = 1
        self.read: tuple[str, str, str] = ("", "", "")  # session, visitor, queue version as read ("" = none)
        self.expected: tuple[str, str] | None = None  # (offer key, its text): the commit also checks it


class _Batch:
    __slots__ = ("pending", "written")

    def __init__(self) -> None:
        self.pending: list[tuple[Any, ...]] = []  # (held, keys, args, session written, cooldown written)
        self.written: list[bool] = []


class _Ops:
    """The keys and the ops of one commit: each op names its key by its index in KEYS (all of one slot)."""

    __slots__ = ("keys", "args", "_index")

    def __init__(self, keys: list[str], args: list[Any]) -> None:
        self.keys, self.args = keys, args
        self._index = {key: i + 1 for i, key in enumerate(keys)}

    def add(self, op: str, key: str, a: Any, b: Any) -> None:
        i = self._index.get(key)
        if i is None:
            self.keys.append(key)
            i = self._index[key] = len(self.keys)
        self.args += [op, i, a, b]


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
    """A :class:`pcrules.StateStore` in Redis, safe to share between processes (and threads).

    ``url``: ``redis://`` (one instance), ``redis+cluster://host:port[,host:port...]`` (a Redis Cluster),
    ``redis+sentinel://host:port[,...]/service`` (the master a Sentinel names), or a client made with
    ``decode_responses=True`` (``redis.Redis`` or ``redis.cluster.RedisCluster``).
    """

    def __init__(self, url: Any = "redis://127.0.0.1:6379/0", *, prefix: str = "pcrules:",
                 session_ttl_s: float = 1800.0, lock_ttl_s: float = 5.0, lock_wait_s: float = 5.0,
                 due_check_interval_s: float = 0.25, socket_timeout_s: float = 1.0,
                 connect_timeout_s: float = 0.5, cache_size: int = 100_000,
                 on_contention: Callable[[str], None] | None = None, allow_volatile: bool | None = None) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"RedisStore: the prefix may not contain '{{' or '}}' (hash tags): {prefix!r}")
        self._client: Any = None
        self._connect: Callable[[], Any] | None = None
        if isinstance(url, str):
            self.url = _safe_url(url)
            self.cluster = url_kind(url) == "cluster"
            timeouts = {"socket_timeout_s": socket_timeout_s, "connect_timeout_s": connect_timeout_s}
            if self.cluster:  # RedisCluster connects in its constructor: made at the first call (see _redis)
                self._connect = lambda: connect(url, **timeouts)
            else:
                self._client = connect(url, **timeouts)
        else:
            from redis.cluster import RedisCluster

            self.cluster = isinstance(url, RedisCluster)
            kwargs = (url.get_connection_kwargs() if not self.cluster
                      else {"decode_responses": url.get_encoder().decode_responses})
            if not kwargs.get("decode_responses"):
                raise ValueError("RedisStore: a Redis client passed in must be made with decode_responses=True")
            self._client = url
            self.url = repr(url)
        self._client_lock = threading.Lock()
        self.prefix = prefix
        self.session_ttl_s = float(session_ttl_s)
        self.lock_ttl_s = float(lock_ttl_s)
        self.lock_wait_s = float(lock_wait_s)
        self.due_check_interval_s = float(due_check_interval_s)
        # Every key but the marker is tagged with its shard's hash tag (see the module's docstring).
        self._tagged = [f"{prefix}{{{tag}}}" for tag in _TAGS]
        self._due_keys = [t + "due" for t in self._tagged]
        self._queue_keys = [t + "q" for t in self._tagged]
        self._queue_version_keys = [t + "qv" for t in self._tagged]
        self._offer_prefixes = [t + "o:" for t in self._tagged]
        self._marker_keys = [t + "epoch" for t in self._tagged]
        self._acquire_script = _Script(_ACQUIRE)
        self._commit_script = _Script(_COMMIT)
        self._check_and_commit_script = _Script(_CHECK_AND_COMMIT)
        self._set_queue_script = _Script(_SET_QUEUE)
        self._release_script = _Script(_RELEASE)
        self._due_script = _Script(_DUE)
        self._adopt_script = _Script(_ADOPT)
        self._scripts: dict[str, _Script] = {}  # run_script's, by their text
        # The state marker: adopted (created when absent) at the first contact, checked by every script that
        # decides or writes (each shard's copy by the scripts of its slot); gone means Redis lost our state
        # (see _lost). None: not adopted yet, or lost.
        self._epoch_key = prefix + "epoch"
        self._epoch: str | None = None
        self._epochs: list[str] | None = None  # the shards' copies as adopted
        self._lost_epoch: str | None = None  # the marker adopted before a loss: a new one acknowledges it
        self.epoch_created = False  # whether this process created the marker (a new Redis, or a loss before)
        self._lost_since: float | None = None
        self.data_losses = 0  # losses detected (the server counts them as store_contention{kind="data_lost"})
        self._epoch_lock = threading.RLock()
        # None: persistence is not checked (call check_persistence); False: checked at the first contact and a
        # volatile Redis refused; True: checked and only warned about.
        self.allow_volatile = allow_volatile
        self._persistence: str | None = None
        self._refused: VolatileRedis | None = None
        self._local = threading.local()
        self._connections: list[Any] = []  # one per thread for the hot path, closed by close()
        self._connections_lock = threading.Lock()
        self._last_due_check = -math.inf
        self._due_found: deque[OfferRecord] = deque()  # found due, not handed out yet (see due_offers)
        self._due_raw: dict[str, str] = {}  # the text of each offer the last look found due (expect_offer)
        self.lock_waits = 0  # times a lock was found taken (contention between processes), for tests and metrics
        # Told "lock_wait" or "stale_read" each time (the server counts them in /metrics): many stale reads mean
        # a visitor's requests are spread over workers.
        self._on_contention = on_contention
        # What this process last read or wrote of each session and visitor ("" = no such key), least recently
        # used first, and each shard's queue status with its version: observe_lock decides on these and Redis
        # checks them when it commits. Never trusted without that check, so a stale entry costs a retry.
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._queues_read: list[tuple[str, dict[str, QueueStatus]]] = [("\0unread", {})] * SHARDS
        self.stale_reads = 0  # commits refused because something read had changed (then decided again)

    @property
    def _redis(self) -> Any:
        """The redis-py client (a cluster's is made at the first call: its constructor connects)."""
        client = self._client
        if client is None:
            with self._client_lock:
                if self._client is None:
                    assert self._connect is not None
                    self._client = self._connect()
                client = self._client
        return client

    # ------------------------------------------------------------------ keys

    def _session_key(self, visitor_id: str, session_id: str, kind: str = "s") -> str:
        """A session's key (`kind` "s"), its lock's ("lock") or its last commit's token ("done")."""
        # length-prefixed: no ambiguity
        return f"{self._tagged[shard_of(visitor_id)]}{kind}:{len(visitor_id)}:{visitor_id}{session_id}"

    def _visitor_key(self, visitor_id: str) -> str:
        return f"{self._tagged[shard_of(visitor_id)]}v:{visitor_id}"

    def _offer_key(self, visitor_id: str, offer_id: str) -> str:
        return self._offer_prefixes[shard_of(visitor_id)] + offer_id

    def _due_key(self, visitor_id: str) -> str:
        return self._due_keys[shard_of(visitor_id)]

    def _shard_of_key(self, key: str) -> int:
        start = len(self.prefix) + 1
        return _SHARD_OF_TAG[key[start:key.index("}", start)]]

    def _current(self, key: str) -> _Held | None:
        held: _Held | None = getattr(self._local, "held", None)
        return held if held is not None and held.key == key else None

    # ------------------------------------------------------------------ the hot path: a thread's own connection

    def _eval(self, script: _Script, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA with the marker copy of the keys' shard appended (``keys[0]`` names the shard).

        One instance: on this thread's own connection, half the client CPU of a pooled call (it is every
        request); one retry after a broken connection (Redis restarted) or a script Redis forgot (NOSCRIPT), as
        redis-py's own Script does. A cluster: through the cluster client (it routes by the keys' slot and
        follows MOVED). An outage is StoreUnavailable.
        """
        shard = self._shard_of_key(keys[0])
        epochs = self._epochs or self._adopt()
        keys, args = [*keys, self._marker_keys[shard]], [*args, epochs[shard]]
        if self.cluster:
            # straight to the slot's master (a lock, a commit: answers and expiries); anything but a reply (a
            # redirect, NOSCRIPT, a node gone) is sent again through the cluster client, as it would have retried
            reply = self._eval_direct(script, [(keys, args)], [_SHARD_SLOTS[shard]])[0]
            if isinstance(reply, Exception) and not _script_refusal(reply):
                reply = self._eval_many(script, [(keys, args)])[0]
            if isinstance(reply, Exception):
                raise self._script_error(reply, shard) from None
            return reply
        conn = self._connection()
        reconnect = reload = True
        while True:
            try:
                _send_evalsha(conn, script.sha, [(keys, args)])
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
                raise self._script_error(exc, shard) from None

    def _eval_many(self, script: _Script, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """EVALSHA of `script` for each (keys, args) as given, sent together: one write (one per node of a
        cluster); a reply per call, an error as its exception. A script Redis does not know is loaded and its
        calls sent again; a connection lost is StoreUnavailable (nothing is known of the replies)."""
        if not calls:
            return []
        try:
            replies = self._eval_once(script, calls)
        except StoreUnavailable:
            if self.cluster:  # its client retried already
                raise
            replies = self._eval_once(script, calls)  # once more: a pooled connection Redis closed (a restart)
        again = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if again:
            self._call("script_load", script.script)  # on a cluster: every primary
            for i, reply in zip(again, self._eval_once(script, [calls[i] for i in again])):
                replies[i] = reply
        return replies

    def _eval_once(self, script: _Script, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        if self.cluster:
            try:
                pipe = self._redis.pipeline(transaction=False)
                for keys, args in calls:
                    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                return list(pipe.execute(raise_on_error=False))
            except (redis.RedisError, RedisClusterException) as exc:
                if _is_outage(exc):
                    raise _unavailable(exc) from None
                raise
        conn = self._connection()
        try:
            _send_evalsha(conn, script.sha, calls)
            replies: list[Any] = []
            for _ in calls:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
            return replies
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            conn.disconnect()
            raise _unavailable(exc) from None

    def run_script(self, source: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """EVALSHA of the Lua `source` for each (keys, args), the keys of a call in one slot: one write on one
        instance, one per master of a cluster; a reply per call, an error as its exception (StoreUnavailable
        when one instance does not answer). The server checks a batch's rate limits with it, in one round trip."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = _Script(source)
        if not self.cluster:
            return self._eval_many(script, calls)
        slots = [key_slot(keys[0].encode()) for keys, _ in calls]
        replies = self._eval_direct(script, calls, slots)
        again = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if again:
            self._call("script_load", script.script)  # every primary
            for i, reply in zip(again, self._eval_direct(script, [calls[i] for i in again], [slots[i] for i in again])):
                replies[i] = reply
        return replies

    def _eval_direct(self, script: _Script, calls: list[tuple[list[str], list[Any]]], slots: list[int]) -> list[Any]:
        """Calls on a cluster, each sent straight to the master of its slot on this thread's own connection to
        it: one write per master, all written before any reply is read.

        redis-py's ClusterPipeline costs about 90 us of CPU for one call and 130 for four, against 25 and 40 here
        (measured on the development machine): it is every batch of observations. Nothing here follows a
        redirect or a failover: a call that met one (MOVED, ASK, TRYAGAIN, NOSCRIPT, a lost connection) has the
        error as its reply, wrote nothing (a lost connection: or was applied, which its compare-and-set makes
        harmless), and is decided again on its own through the cluster client, which does.
        """
        client = self._redis
        conns: dict[str, Any] | None = getattr(self._local, "nodes", None)
        if conns is None:
            conns = self._local.nodes = {}
        groups: dict[str, tuple[Any, list[int]]] = {}
        replies: list[Any] = [None] * len(calls)
        for i, slot in enumerate(slots):
            try:
                node = client.nodes_manager.get_node_from_slot(slot)
            except (redis.RedisError, RedisClusterException) as exc:
                replies[i] = exc
                continue
            groups.setdefault(node.name, (node, []))[1].append(i)
        sent = []
        for name, (node, indices) in groups.items():
            conn = conns.get(name)
            try:
                if conn is None:
                    conn = conns[name] = node.redis_connection.connection_pool.make_connection()
                    with self._connections_lock:
                        self._connections.append(conn)
                _send_evalsha(conn, script.sha, [calls[i] for i in indices])
                sent.append((conn, indices))
            except (redis.RedisError, AttributeError) as exc:  # AttributeError: a node not connected yet
                self._drop_node(name, conn)
                for i in indices:
                    replies[i] = exc
        for conn, indices in sent:
            for k, i in enumerate(indices):
                try:
                    replies[i] = conn.read_response()
                except redis.ResponseError as exc:
                    replies[i] = exc
                except redis.RedisError as exc:  # the rest of this connection's replies are lost with it
                    self._drop_node(f"{conn.host}:{conn.port}", conn)
                    for j in indices[k:]:
                        replies[j] = exc
                    break
        return replies

    def _drop_node(self, name: str, conn: Any) -> None:
        nodes = getattr(self._local, "nodes", None) or {}
        nodes.pop(name, None)
        if conn is not None:
            conn.disconnect()
            with self._connections_lock:
                if conn in self._connections:
                    self._connections.remove(conn)

    def _get_many(self, keys: list[str], partial: bool = False) -> list[Any]:
        """GET of keys of any slots: one MGET on one instance, one GET per key pipelined per node on a cluster.

        ``partial``: on a cluster, a key whose node failed has its error in its place instead of failing all
        (the other masters answer while one fails over)."""
        try:
            if not self.cluster:
                return list(self._redis.mget(keys))
            if not partial:
                return list(self._redis.mget_nonatomic(keys))
            return self._get_per_node(keys)
        except (redis.RedisError, RedisClusterException) as exc:
            if _is_outage(exc):
                raise _unavailable(exc) from None
            raise

    def _get_per_node(self, keys: list[str]) -> list[Any]:
        """A cluster's GETs grouped by the master of their slot, a pipeline per master: one that fails (or has
        moved) puts its error in its keys' places only."""
        client = self._redis
        groups: dict[str, tuple[Any, list[int]]] = {}
        for i, key in enumerate(keys):
            node = client.get_node_from_key(key)
            groups.setdefault(node.name, (node, []))[1].append(i)
        out: list[Any] = [None] * len(keys)
        for node, indices in groups.values():
            try:
                pipe = node.redis_connection.pipeline(transaction=False)
                for i in indices:
                    pipe.get(keys[i])
                for i, reply in zip(indices, pipe.execute(raise_on_error=False)):
                    out[i] = reply
            except (redis.RedisError, RedisClusterException, AttributeError) as exc:
                for i in indices:
                    out[i] = exc
        return out

    def _script_error(self, exc: Exception, shard: int | None = None) -> Exception:
        """What a script's error means to the caller: a loss of state, an outage, or itself (a bug)."""
        current = _epoch_reply(exc)
        if current is not None:
            return self._lost(current, shard)
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

    def _remember_queues(self, shard: int, version: str | None, flat: list[str]) -> None:
        read = self._queues_read
        read[shard] = (version or "", _load_queues(flat))
        for k in range(SHARDS):  # every shard's copy has the same version once an update reached them all: a
            if read[k][0] == "\0unread":  # first guess for the shards not read yet (a wrong one costs a retry)
                read[k] = read[shard]

    def _acquire(self, visitor_id: str, session_id: str, optimistic: bool = False) -> _Held:
        key = self._session_key(visitor_id, session_id)
        outer: _Held | None = getattr(self._local, "held", None)
        if outer is not None:
            if outer.key == key and not optimistic and outer.token:
                outer.depth += 1
                return outer
            raise RuntimeError("RedisStore: one thread may hold one session lock at a time")
        shard = shard_of(visitor_id)
        lock_key = self._session_key(visitor_id, session_id, "lock")
        visitor_key = self._visitor_key(visitor_id)
        if optimistic:
            held = _Held(key, visitor_id, session_id, lock_key, "", shard)
            session_raw, visitor_raw = self._cached(key), self._cached(visitor_key)
            version, held.queues = self._queues_read[shard]
        else:
            held = _Held(key, visitor_id, session_id, lock_key, os.urandom(16).hex(), shard)
            keys = [lock_key, key, visitor_key, self._queue_keys[shard], self._queue_version_keys[shard]]
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
            self._remember_queues(shard, reply[4], reply[3])
            version, held.queues = self._queues_read[shard]
        held.read = (session_raw, visitor_raw, version)
        held.session = _load_session(session_raw or None)
        held.visitor = held.visitor_read = _load_visitor(visitor_raw or None)
        self._local.held = held
        return held

    def _commit(self, held: _Held) -> None:
        if held.token:
            ops = _Ops([held.lock_key, self._session_key(held.visitor_id, held.session_id, "done")], [held.token])
        else:
            keys = [held.lock_key, held.key, self._visitor_key(held.visitor_id), self._queue_keys[held.shard],
                    self._queue_version_keys[held.shard]]
            expected = held.expected
            if expected is not None:
                keys.append(expected[0])
            ops = _Ops(keys, [*held.read, "" if expected is None else expected[1]])
        written: str | None = None
        cooldown: str | None = None
        if held.dirty and held.session is not None:
            written = _dump_session(held.session)
            ops.add("set", held.key, written, _ms(self.session_ttl_s))
            visitor = held.visitor
            if visitor is not None and visitor != held.visitor_read and visitor.cooldown_until > -math.inf:
                left = visitor.cooldown_until - held.session.last_seen  # event time; the key lives as long
                if left > 0:
                    cooldown = _num(visitor.cooldown_until)
                    ops.add("max", self._visitor_key(held.visitor_id), cooldown, _ms(left + 60))
        for record in held.offers.values():
            self._offer_ops(record, ops)
        if held.token:
            if not self._eval(self._commit_script, ops.keys, ops.args):
                raise LockLost(f"the lock on session {held.session_id!r} of visitor {held.visitor_id!r} expired "
                               f"(held longer than {self.lock_ttl_s:g} s); nothing was written, try again")
            self._written(held, written, cooldown)
            return
        batch = getattr(self._local, "batch", None)
        if batch is not None:
            batch.pending.append((held, ops.keys, ops.args, written, cooldown))
            return
        if not self._checked(held, self._eval(self._check_and_commit_script, ops.keys, ops.args), written, cooldown):
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
                self._remember_queues(held.shard, reply[3], reply[4])
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
            epochs = self._epochs or self._adopt()
            calls = [([*keys, self._marker_keys[held.shard]], [*args, epochs[held.shard]])
                     for held, keys, args, _, _ in pending]
            if self.cluster:
                replies = self._eval_direct(self._check_and_commit_script, calls,
                                            [_SHARD_SLOTS[h.shard] for h, *_ in pending])
            else:
                replies = self._eval_once(self._check_and_commit_script, calls)
        except StoreUnavailable:
            return [False] * len(pending)  # each is decided again on its own, which reconnects or reports it
        for (held, _, _, _, _), reply in zip(pending, replies):
            current = _epoch_reply(reply) if isinstance(reply, Exception) else None
            if current is not None:  # NOSCRIPT after a restart, say: that one is decided again (and reports it)
                self._lost(current, held.shard)  # each is then refused when decided again
        return [not isinstance(reply, Exception) and self._checked(held, reply, written, cooldown)
                for (held, _, _, written, cooldown), reply in zip(pending, replies)]

    def _release_quietly(self, held: _Held) -> None:
        try:
            self._eval_many(self._release_script, [([held.lock_key], [held.token])])
        except (StoreUnavailable, redis.RedisError, RedisClusterException):
            pass  # it expires by itself

    def _offer_ops(self, record: OfferRecord, ops: _Ops) -> None:
        ttl = _ms(self.session_ttl_s + max(0.0, record.expires_at - record.offered_at))
        ops.add("set", self._offer_key(record.visitor_id, record.offer_id), _dump_offer(record), ttl)
        if record.status == OfferStatus.OFFERED:
            ops.add("zadd", self._due_key(record.visitor_id), _num(record.expires_at), record.offer_id)
        else:
            ops.add("zrem", self._due_key(record.visitor_id), record.offer_id, "-")

    def _write(self, visitor_id: str, session_id: str, build: Callable[[_Ops], None]) -> None:
        """Writes outside any session lock (the runtime makes none; kept for direct use and tests)."""
        keys = [self._session_key(visitor_id, session_id, kind) for kind in ("lock", "done")]
        ops = _Ops(keys, [""])
        build(ops)
        self._eval(self._commit_script, ops.keys, ops.args)

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._redis, method)(*args)
        except (redis.RedisError, RedisClusterException) as exc:
            if _is_outage(exc):
                raise _unavailable(exc) from None
            raise

    def _scan(self, pattern: str) -> list[str]:
        try:
            return list(self._redis.scan_iter(pattern, 1000))
        except (redis.RedisError, RedisClusterException) as exc:
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

        def build(ops: _Ops) -> None:
            ops.add("set", key, _dump_session(session), _ms(self.session_ttl_s))
            if visitor.cooldown_until > session.last_seen:
                ops.add("max", self._visitor_key(visitor_id), _num(visitor.cooldown_until),
                        _ms(visitor.cooldown_until - session.last_seen + 60))

        self._write(visitor_id, session_id, build)

    def offer(self, offer_id: str) -> OfferRecord | None:
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None:
            if offer_id in held.offers:
                return held.offers[offer_id]
            raw = self._call("get", self._offer_prefixes[held.shard] + offer_id)  # the held visitor's offer
            if raw is not None:
                return _load_offer(raw)
        # Without the visitor: every shard at once (an offer id does not say whose it is). Found on a master that
        # answers, it is found, whichever other master is failing over.
        replies = self._get_many([p + offer_id for p in self._offer_prefixes], partial=True)
        found = [raw for raw in replies if isinstance(raw, str)]
        if found:
            return _load_offer(found[0])
        failed = [raw for raw in replies if isinstance(raw, Exception)]
        if failed:
            raise self._script_error(failed[0])  # it may be on the master that did not answer: not a 404
        self.ping()  # an unknown offer (rare): a 503 rather than a 404 if Redis lost them all
        return None

    def save_offer(self, record: OfferRecord) -> None:
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None:
            held.offers[record.offer_id] = record
            return
        self._write(record.visitor_id, record.session_id, lambda ops: self._offer_ops(record, ops))

    def expect_offer(self, offer_id: str) -> bool:
        held: _Held | None = getattr(self._local, "held", None)
        if held is None or held.token:
            raise RuntimeError("RedisStore.expect_offer: only inside observe_lock")
        raw = self._due_raw.pop(offer_id, None)
        if raw is None:
            return False
        held.expected = (self._offer_prefixes[held.shard] + offer_id, raw)
        return True

    def due_offers(self, now: float) -> list[OfferRecord]:
        """Offers due by `now`, at most DUE_PER_CALL at a time: each is closed while the observation that asked
        waits (in its batch, or under its session's lock outside one), and the offers made in one busy second
        all fall due in another; the rest are handed out by the next calls, without looking again."""
        found = self._due_found
        if not found:
            found.extend(self._look_for_due(now))
        out: list[OfferRecord] = []
        with contextlib.suppress(IndexError):  # another thread took the last ones
            while len(out) < DUE_PER_CALL:
                out.append(found.popleft())
        return out

    def _look_for_due(self, now: float) -> list[OfferRecord]:
        tick = time.monotonic()
        if tick - self._last_due_check < self.due_check_interval_s:
            return []
        self._last_due_check = tick
        calls: list[tuple[list[str], list[Any]]] = [([self._due_keys[k]], [_num(now), 200, self._offer_prefixes[k]])
                                                    for k in range(SHARDS)]
        try:
            replies = self._eval_many(self._due_script, calls)
        except StoreUnavailable:
            if not self.cluster:
                raise
            self._last_due_check = tick + 1.0  # a master is failing over: its offers wait, nothing is lost
            return []
        due = []
        more = False
        if len(self._due_raw) > 10_000:  # handed out, then closed under a lock instead: not asked for again
            self._due_raw.clear()
        for reply in replies:
            if isinstance(reply, Exception):
                if self.cluster and _is_outage(reply):
                    continue  # that shard's master is failing over: its offers stay in its set for the next look
                raise self._script_error(reply) from None
            more = more or len(reply) >= 200
            for item in reply:
                record = _load_offer(item)
                if record is None:
                    continue
                if record.status == OfferStatus.OFFERED:
                    if (record.expires_at > now - OTHERS_DUE_AFTER_S
                            and self._session_key(record.visitor_id, record.session_id) not in self._cache):
                        continue  # another process's session, most likely: that one closes it first, on its cache
                    due.append(record)
                    self._due_raw[record.offer_id] = item
                else:  # closed, but its entry survived (a commit that failed half-way cannot happen; a crash can)
                    self._call("zrem", self._due_key(record.visitor_id), record.offer_id)
        if more:
            self._last_due_check = -math.inf  # more are due: look again on the next call
        return due

    def evict_idle(self, before: float) -> list[Evicted]:
        return []  # sessions, cooldowns and offers expire in Redis; open offers are closed by due_offers

    def queue_status(self) -> dict[str, QueueStatus]:
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None:
            return held.queues
        return _load_queues([x for kv in self._call("hgetall", self._queue_keys[0]).items() for x in kv])

    def set_queue_status(self, name: str, status: QueueStatus) -> None:
        # Every shard's copy, each with a new version: every process's cached queue status is then refused at its
        # next commit in that shard. Not atomic across shards: for a moment some shards decide on the old status,
        # as if the update had come a little later; one that failed is refused (StoreUnavailable) and sent again
        # with the next update.
        epochs = self._epochs or self._adopt()
        value, version = _dump_queue(status), f"{time.time_ns()}:{os.urandom(6).hex()}"
        replies = self._eval_many(self._set_queue_script, [
            ([self._queue_keys[k], self._queue_version_keys[k], self._marker_keys[k]],
             [name, value, version, epochs[k]]) for k in range(SHARDS)])
        for k, reply in enumerate(replies):
            if isinstance(reply, Exception):
                raise self._script_error(reply, k) from None
            self._remember_queues(k, version, reply)  # the copy as written, with its version

    def __len__(self) -> int:
        """Sessions remembered (a scan: for tests and operators, not the request path)."""
        return len(self._scan(f"{self.prefix}{{*}}s:*"))

    # ------------------------------------------------------------------ persistence and the state marker

    def check_persistence(self, allow_volatile: bool = False) -> str:
        """Read Redis' persistence settings; refuse one that a crash or restart makes forget caps and cooldowns.

        Accepted: an append-only file synced always or every second. Otherwise :class:`VolatileRedis`, one line
        naming the URL (without its password) and the setting to change, unless ``allow_volatile`` (then the
        returned line says so). Returns what a crash costs; :class:`StoreUnavailable` when Redis is down. On a
        cluster every node is asked (a replica becomes a master in a failover) and the worst answer counts.
        """
        if self.cluster:
            try:
                clients = [node.redis_connection for node in self._redis.get_nodes()]
            except (redis.RedisError, RedisClusterException) as exc:
                raise _unavailable(exc) from None
        else:
            clients = [self._redis]
        ok, why = True, ""
        for client in clients:
            ok, why = self._verdict(client)
            if not ok:
                break
        if ok:
            self._persistence = why
        elif allow_volatile:
            self._persistence = f"VOLATILE, allowed: {why}"
        else:
            raise VolatileRedis(f"refusing Redis at {self.url}: {why}; to run on it anyway, pass "
                                f"--allow-volatile-redis (server config redis_allow_volatile)")
        return self._persistence

    @staticmethod
    def _verdict(client: Any) -> tuple[bool, str]:
        def read(fn: Callable[..., Any], arg: str) -> Any:
            try:
                return fn(arg)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise _unavailable(exc) from None
            except redis.ResponseError:  # disabled, renamed or not permitted (managed services, ACLs)
                return None

        config: dict[str, Any] | None = {}
        for name in ("appendonly", "appendfsync", "save"):
            got = read(client.config_get, name)
            if got is None:
                config = None
                break
            config.update(got)  # type: ignore[union-attr]
        info = read(client.info, "persistence") if config is None else None
        return persistence_verdict(config, info)

    @property
    def epoch_key(self) -> str:
        """The state marker's key: ``<prefix>epoch``."""
        return self._epoch_key

    @property
    def epoch(self) -> str | None:
        """The state marker's value this process adopted (None before the first contact, or after a loss)."""
        return self._epoch

    def _adopt(self) -> list[str]:
        """First contact: adopt the state marker, created when there is none, and its copy in every shard (made
        from it when absent). After a loss: adopt them only once someone acknowledged it (a new marker, or the
        copies re-created by a new start); until then every call is refused with DataLost.
        Returns the shards' copies as adopted."""
        with self._epoch_lock:
            if self._epochs is not None:
                return self._epochs
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
                if lost:
                    current: str | None = self._redis.get(self._epoch_key)
                else:
                    reply = self._eval_many(self._adopt_script, [([self._epoch_key], [mine])])[0]
                    if isinstance(reply, Exception):
                        raise reply
                    current = reply  # the client decodes replies (decode_responses=True): text
                if current is None:
                    raise DataLost(self._lost_message())
                copies = self._get_many(self._marker_keys)
                missing = [k for k, copy in enumerate(copies) if copy is None]
                if missing and lost and current == self._lost_epoch:
                    raise DataLost(self._lost_message())  # a shard lost its copy: not acknowledged yet
                if missing:
                    made = self._eval_many(self._adopt_script, [([self._marker_keys[k]], [current]) for k in missing])
                    for k, reply in zip(missing, made):
                        if isinstance(reply, Exception):
                            raise reply
                        copies[k] = reply
                    if len(missing) == SHARDS and not lost and current != mine:
                        self._previous_layout()
            except (redis.RedisError, RedisClusterException) as exc:
                raise (_unavailable(exc) if _is_outage(exc) else exc) from None
            if lost:
                log.warning("Redis at %s: the state marker %s was re-created (%s): resuming; sessions active "
                            "before the loss may get a second offer", self.url, self._epoch_key, current)
                self._lost_since = None
                self._cache.clear()
                self._queues_read = [("\0unread", {})] * SHARDS
            elif current == mine:
                self.epoch_created = True
                log.info("Redis at %s had no state marker: created %s", self.url, self._epoch_key)
            self._epoch = current
            self._epochs = [str(copy) for copy in copies]
            return self._epochs

    def _previous_layout(self) -> None:
        """A marker without shard copies: Redis may hold the previous (untagged) layout's keys. Said once, and
        its global keys deleted (older workers still running would decide on a state this version cannot see)."""
        old = [self.prefix + "due", self.prefix + "qv"]
        if self.cluster or not any(self._redis.exists(key) for key in old):
            return
        log.warning("Redis at %s holds keys of pcrules' previous key layout (%s): sessions, cooldowns and offers "
                    "written by an older version are not seen by this one (their visitors may get a second "
                    "offer); stop every older worker; deleted %s", self.url, ", ".join(old), ", ".join(old))
        self._redis.delete(*old)

    def _lost(self, current: str, shard: int | None = None) -> DataLost:
        """A script found the marker (or its shard's copy) gone or changed: from now on refuse (see _adopt);
        logged and counted once."""
        first = False
        with self._epoch_lock:
            adopted = (self._epoch if shard is None else self._epochs[shard]) if self._epochs is not None else None
            if adopted is not None and current != adopted:
                first = True
                self._lost_epoch = self._epoch
                self._epoch, self._epochs, self._lost_since = None, None, time.time()
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
            if self._epochs is not None:
                self._lost_epoch = self._epoch
                self._epoch, self._epochs, self._lost_since = None, None, time.time()
        self._adopt()
        assert self._epoch is not None
        return self._epoch

    # ------------------------------------------------------------------ operations

    def ping(self) -> bool:
        """True when Redis answers and holds our state; StoreUnavailable (DataLost when it lost it) otherwise."""
        epochs = self._epochs or self._adopt()
        current = self._get_many([self._epoch_key, *self._marker_keys])
        if current[0] != self._epoch:
            raise self._lost(current[0] or "")
        for k, copy in enumerate(current[1:]):
            if copy != epochs[k]:
                raise self._lost(copy or "", k)
        return True

    def configure(self, *, session_ttl_s: float | None = None) -> None:
        if session_ttl_s is not None:
            self.session_ttl_s = float(session_ttl_s)

    def clear(self) -> int:
        """Delete every key under this store's prefix (tests, a fresh demo); returns how many."""
        shared = {self._epoch_key, *self._marker_keys}  # others still share them
        keys = [k for k in self._scan(self.prefix + "*") if k not in shared]
        self._cache.clear()
        self._due_found.clear()
        self._queues_read = [("\0unread", {})] * SHARDS
        for i in range(0, len(keys), 500):
            self._call("delete", *keys[i:i + 500])
        return len(keys)

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.disconnect()
            self._connections.clear()
        if self._client is not None:
            self._client.close()
