"""Translate a rule's ``matches`` pattern (Python ``re.search``) into durable_rules' ``$mt`` dialect.

Semantics we must reproduce
---------------------------
``matches: p`` means ``python_regex(p).search(value) is not None``: Python ``re`` compiled with
``re.ASCII`` (so ``\\d`` = ``[0-9]``, ``\\w`` = ``[A-Za-z0-9_]``, ``\\s`` = ASCII whitespace) and
case-sensitive. The backtest must use :func:`python_regex` too (or pandas
``str.contains(p, regex=True, flags=re.ASCII)``); the default Unicode ``\\d``/``\\w``/``\\s`` would
differ from the runtime on strings like ``"٣"`` or ``"é"``.

What durable_rules 2.0.28 actually does (``src/rules/regex.c``)
----------------------------------------------------------------
* The pattern is compiled to a DFA that must consume the *whole* string; escapes use ``%``
  (``%.`` ``%(`` ``%%`` ...); ``^`` ``$`` ``\\`` are ordinary characters.
* Pattern and subject are decoded from UTF-8 into code points, so ``.``, classes and negated
  classes see one symbol per character, including ``é``, ``€``, ``日`` and 4-byte emoji.
* It matches the *JSON text* of the value, not the value: ``"`` and ``\\`` reach the matcher as
  the two symbols ``\\"`` and ``\\\\`` (the pattern is JSON-encoded the same way, so literals line
  up, but ``.`` and classes can also consume half of such a pair). Rulesets and facts must be
  serialised with ``ensure_ascii=False``, as :mod:`pcrules.matching.durable` does; with ``\\u``
  escapes the engine would see six symbols for one ``é``.
* The subset construction is defective. A state that holds both ``.`` and specific symbols is
  merged pairwise with no fix-point, an accepting state with a ``.`` edge deletes every *other*
  specific edge of a merged state (an index is skipped after each deletion), merged states are
  looked up by a 16-bit hash of their members, and ``[^...]`` is implemented as "this symbol
  kills the whole match", not as a character set. Consequences seen on the real engine:
  ``.*(cart|basket).*`` rejects ``"cartb"``, ``.*aca.*`` rejects ``"acac"``, ``.*[^a].*`` rejects
  ``"ab"``, and ``(a?)*`` never finishes compiling.
* Its reference counts are wrong: compiling ``.*[0-9].*`` or ``.*a.b.*`` reads states it has
  already freed (AddressSanitizer confirms), so what it builds then depends on the allocator.
* Its state counts are erratic: the equivalent ``.*xxx*y.*``, ``.*(xxx*y).*`` and ``.*xx+y.*``
  compile to 474, 69 and 6 states, and ``.*(((x)(x)(x)*)y).*`` overflows an internal list.
  Every intermediate state is a 64 KB allocation that is never freed.

How the translation stays exact
-------------------------------
The Python pattern is parsed with Python's own parser (``re._parser``), the supported subset is
rewritten into durable syntax with as few groups as possible, and then the result is *proved*
equivalent: :class:`_DurableModel` replays regex.c's compiler step for step (same state
numbering, edge order, 16-bit hashes, reference counts and bugs) and the DFA it predicts is
compared, over every JSON text of a string without control characters, with an automaton built
directly from the Python pattern. A pattern is refused if its durable form would answer
differently on any such string (the message gives one), if durable cannot compile it, or if
compiling it would touch freed memory. The real engine then compiles the result once more.

Supported: literals (any Unicode except control characters), ``.``, classes with ranges and
negation, ``\\d \\w \\s \\D \\W \\S``, groups, ``|``, ``* + ? {m,n}`` (lazy forms too), and a
leading ``^`` / trailing ``$`` on the whole pattern or on each top-level alternative.
Refused: other anchors (``\\A \\Z \\b \\B``), backreferences, look-arounds, conditionals, inline
flags, possessive quantifiers and atomic groups, oversized classes or repetitions, patterns that
can only match control characters, and whatever the proof rejects. Its usual casualties are
unanchored patterns that start with one of several characters (``cart|basket``, ``\\d{3}``,
``[Cc]heckout``), that overlap themselves (``aca``, ``/de/``), or that start with a class or
``.`` (``\\d``, ``a.b``); anchored forms (``^...``, ``...$``) fare much better.

Each durable compile leaks memory in the engine (about 100 KB of resident memory for a small
pattern), so translate a pattern once, when the spec is loaded.
"""

from __future__ import annotations

import functools
import json
import re
import re._constants as _sre
import re._parser as _sre_parse
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import durable_rules_engine as _engine

__all__ = ["UnsupportedPattern", "check_compiles", "python_regex", "to_durable"]


class UnsupportedPattern(ValueError):
    """The pattern cannot be evaluated by the runtime engine exactly as Python evaluates it."""


def python_regex(pattern: str) -> re.Pattern[str]:
    """The pattern as the backtest must run it (``.search``); raises ``re.error`` if invalid."""
    return re.compile(pattern, re.ASCII)


# Runtime strings never contain C0 controls or DEL; durable sees a JSON-escaped "\\" or '"' as two symbols.
_BACKSLASH, _QUOTE = ord("\\"), ord('"')
_MAX_CLASS = 256  # durable stores a class as one edge per character
_MAX_REPEAT = 100  # as durable's own {m,n}; we expand them, so each copy costs states
_MAX_DURABLE_LEN = 2000
_MAX_DURABLE_STATES = 600  # the engine allocates (and leaks) 64 KB per state while compiling
_MAX_PROOF_STATES = 20000
_MAX_MODEL_WORK = 2_000_000  # edges walked while replaying the engine's compiler


# re._parser's (opcode, argument) pairs; the argument's shape depends on the opcode.
_Item = tuple[Any, Any]


def _impossible(c: int) -> bool:
    return c < 0x20 or c == 0x7F


# ---------------------------------------------------------------------------------------------
# 1. Python pattern -> a small IR
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Chars:
    """One character in ``chars`` (or, if ``negated``, any character not in it)."""

    negated: bool
    chars: frozenset[int]


@dataclass(frozen=True)
class _Cat:
    items: tuple[_Node, ...]


@dataclass(frozen=True)
class _Alt:
    items: tuple[_Node, ...]


@dataclass(frozen=True)
class _Rep:
    item: _Node
    lo: int
    hi: int | None  # None: unbounded


_Node = _Chars | _Cat | _Alt | _Rep


@dataclass(frozen=True)
class _Branch:
    """A top-level alternative with its own anchoring."""

    at_start: bool
    at_end: bool
    node: _Node


_ANY = _Chars(True, frozenset())
_EMPTY = _Cat(())
_DIGIT = frozenset(range(0x30, 0x3A))
_WORD = _DIGIT | frozenset(range(0x41, 0x5B)) | frozenset(range(0x61, 0x7B)) | {ord("_")}
_SPACE = frozenset(b" \t\n\r\f\v")
_CATEGORIES = {
    _sre.CATEGORY_DIGIT: (False, _DIGIT), _sre.CATEGORY_NOT_DIGIT: (True, _DIGIT),
    _sre.CATEGORY_WORD: (False, _WORD), _sre.CATEGORY_NOT_WORD: (True, _WORD),
    _sre.CATEGORY_SPACE: (False, _SPACE), _sre.CATEGORY_NOT_SPACE: (True, _SPACE),
}
_FLAG_LETTERS = {re.IGNORECASE: "i", re.LOCALE: "L", re.MULTILINE: "m", re.DOTALL: "s",
                 re.VERBOSE: "x", re.UNICODE: "u"}
_AT_NAMES = {
    _sre.AT_BEGINNING: "'^' anchor that is not at the start of the pattern (or of a top-level alternative)",
    _sre.AT_END: "'$' anchor that is not at the end of the pattern (or of a top-level alternative)",
    _sre.AT_BEGINNING_STRING: "\\A anchor (use ^ at the start instead)",
    _sre.AT_END_STRING: "\\Z anchor (use $ at the end instead)",
    _sre.AT_BOUNDARY: "word boundary \\b",
    _sre.AT_NON_BOUNDARY: "non-boundary \\B",
}


def _flag_names(flags: int) -> str:
    return "".join(letter for flag, letter in _FLAG_LETTERS.items() if flags & flag)


def _refuse_op(op: Any, av: Any) -> UnsupportedPattern:
    if op is _sre.AT:
        what = _AT_NAMES.get(av, f"anchor {av}")
    elif op in (_sre.ASSERT, _sre.ASSERT_NOT):
        behind = av[0] < 0
        what = {(_sre.ASSERT, False): "look-ahead (?=...)", (_sre.ASSERT, True): "look-behind (?<=...)",
                (_sre.ASSERT_NOT, False): "negative look-ahead (?!...)",
                (_sre.ASSERT_NOT, True): "negative look-behind (?<!...)"}[(op, behind)]
    elif op is _sre.GROUPREF:
        what = "backreference \\N or (?P=name)"
    elif op is _sre.GROUPREF_EXISTS:
        what = "conditional group (?(id)yes|no)"
    elif op is _sre.POSSESSIVE_REPEAT:
        what = "possessive quantifier (*+, ++, ?+, {m,n}+)"
    elif op is _sre.ATOMIC_GROUP:
        what = "atomic group (?>...)"
    else:
        what = f"construct {op}"
    return UnsupportedPattern(f"{what} has no equivalent in the runtime engine")


def _chars_of_in(items: Iterable[_Item]) -> _Chars:
    negated, chars, complements = False, set[int](), list[frozenset[int]]()
    for op, av in items:
        if op is _sre.NEGATE:
            negated = True
        elif op is _sre.LITERAL:
            chars.add(av)
        elif op is _sre.RANGE:
            lo, hi = av
            if hi - lo >= 4 * _MAX_CLASS:
                raise UnsupportedPattern(f"character class range {chr(lo)!r}-{chr(hi)!r} is too large "
                                         f"for the runtime engine (limit {_MAX_CLASS} characters)")
            chars.update(range(lo, hi + 1))
        elif op is _sre.CATEGORY:
            is_complement, members = _CATEGORIES[av]
            if is_complement:
                complements.append(members)
            else:
                chars.update(members)
        else:
            raise UnsupportedPattern(f"class item {op} has no equivalent in the runtime engine")
    if not complements:
        return _Chars(negated, frozenset(chars))
    # [x\W] = everything except (word chars minus x): a complement, so the class flips.
    excluded = frozenset.intersection(*complements) - chars
    return _Chars(not negated, excluded)


def _to_ir(items: Iterable[_Item]) -> _Node:
    out: list[_Node] = []
    for op, av in items:
        if op is _sre.LITERAL:
            out.append(_Chars(False, frozenset([av])))
        elif op is _sre.NOT_LITERAL:
            out.append(_Chars(True, frozenset([av])))
        elif op is _sre.ANY:
            out.append(_Chars(True, frozenset([ord("\n")])))
        elif op is _sre.IN:
            out.append(_chars_of_in(av))
        elif op is _sre.BRANCH:
            out.append(_Alt(tuple(_to_ir(b) for b in av[1])))
        elif op is _sre.SUBPATTERN:
            _, add_flags, del_flags, sub = av
            if add_flags or del_flags:
                raise UnsupportedPattern(f"scoped inline flags (?{_flag_names(add_flags | del_flags)}:...) "
                                         "have no equivalent in the runtime engine")
            out.append(_to_ir(sub))
        elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT):  # lazy or greedy: same truth value
            lo, hi, sub = av
            if max(lo, hi if hi != _sre.MAXREPEAT else 0) > _MAX_REPEAT:
                raise UnsupportedPattern(f"repetition count {{{lo},{'' if hi == _sre.MAXREPEAT else hi}}} is too large "
                                         f"for the runtime engine (limit {_MAX_REPEAT})")
            out.append(_Rep(_to_ir(sub), lo, None if hi == _sre.MAXREPEAT else hi))
        else:
            raise _refuse_op(op, av)
    return out[0] if len(out) == 1 else _Cat(tuple(out))


def _is_any_star(item: _Item) -> bool:
    op, av = item
    if op not in (_sre.MAX_REPEAT, _sre.MIN_REPEAT) or av[0] != 0 or av[1] != _sre.MAXREPEAT:
        return False
    sub = list(av[2])
    try:
        node = _to_ir(sub) if len(sub) == 1 else None
    except UnsupportedPattern:
        return False
    return isinstance(node, _Chars) and node.negated and all(map(_impossible, node.chars))


def _branches(items: list[_Item], at_start: bool, at_end: bool) -> list[_Branch]:
    """Split off top-level alternatives; each keeps the anchors around it and adds its own."""
    begin, end = (_sre.AT, _sre.AT_BEGINNING), (_sre.AT, _sre.AT_END)
    if items and items[0] == begin:
        items, at_start = items[1:], True
    if items and items[-1] == end:
        items, at_end = items[:-1], True
    for edge in (-1, 0) if items else ():
        op, av = items[edge]
        rest = items[:-1] if edge == -1 else items[1:]
        if op is _sre.SUBPATTERN and not av[1] and not av[2]:
            inner = list(av[3])
            return _branches(rest + inner if edge == -1 else inner + rest, at_start, at_end)
        # The parser factors "^/p" out of "^/plans$|^/pricing"; put it back where anchors need it.
        anchor = end if edge == -1 else begin
        if op is _sre.BRANCH and (len(items) == 1 or any(alt and alt[edge] == anchor for alt in av[1])):
            return [b for alt in av[1]
                    for b in _branches(rest + list(alt) if edge == -1 else list(alt) + rest, at_start, at_end)]
    # A leading/trailing ".*" only restates search semantics; dropping it spares the engine.
    while items and _is_any_star(items[0]):
        items, at_start = items[1:], False
    while items and _is_any_star(items[-1]):
        items, at_end = items[:-1], False
    node = _to_ir(items) if items else _EMPTY
    return [_Branch(at_start, at_end, _trim(node, not at_start, not at_end))]


def _trim(n: _Node, free_start: bool, free_end: bool) -> _Node:
    """Search finds x{m,n} at an unanchored edge exactly where it finds x{m}: keep the cheaper."""
    items: list[_Node] = list(n.items) if isinstance(n, _Cat) else [n]
    while free_end and items and isinstance(last := items[-1], _Rep):
        items[-1:] = [last.item] * last.lo
    while free_start and items and isinstance(first := items[0], _Rep):
        items[:1] = [first.item] * first.lo
    return items[0] if len(items) == 1 else _Cat(tuple(items))


def _parse(pattern: str) -> list[_Branch]:
    try:
        tree = _sre_parse.parse(pattern, re.ASCII)
    except (re.error, OverflowError, RecursionError) as exc:  # a{4294967296}; ((((a)))) ~900 deep
        raise UnsupportedPattern(f"not a valid regular expression: {exc}") from exc
    extra = tree.state.flags & ~(re.ASCII | re.UNICODE)
    if extra:
        raise UnsupportedPattern(f"inline flags (?{_flag_names(extra)}) have no equivalent in the runtime engine")
    return _branches(list(tree), False, False)


# ---------------------------------------------------------------------------------------------
# 2. IR -> durable syntax (before JSON encoding, which turns '"' and '\\' into escaped pairs)
# ---------------------------------------------------------------------------------------------

_SPECIAL = frozenset(".|?*+()[]{}%")
_OUTSIDE_CLASS = frozenset([_BACKSLASH, _QUOTE, ord("^"), ord("-")])  # JSON pairs, or class syntax


def _nullable(n: _Node) -> bool:
    if isinstance(n, _Chars):
        return False
    if isinstance(n, _Cat):
        return all(map(_nullable, n.items))
    if isinstance(n, _Alt):
        return any(map(_nullable, n.items))
    return n.lo == 0 or _nullable(n.item)


def _non_empty(n: _Node) -> _Node | None:
    """A node for L(n) minus the empty string: durable's compiler loops forever on (a?)*."""
    if not _nullable(n):
        return n
    options: list[_Node] = []
    if isinstance(n, _Cat):
        if n.items:
            head, rest = n.items[0], _Cat(n.items[1:])
            head_ne = _non_empty(head)
            if head_ne is not None:
                options.append(_Cat((head_ne, rest)))
            rest_ne = _non_empty(rest)
            if rest_ne is not None:  # head is nullable here, or n would not be
                options.append(rest_ne)
    elif isinstance(n, _Alt):
        options = [x for x in map(_non_empty, n.items) if x is not None]
    elif isinstance(n, _Rep):
        item_ne = _non_empty(n.item)
        if item_ne is not None and n.hi != 0:
            more = _Rep(n.item, max(n.lo - 1, 0), None if n.hi is None else n.hi - 1)
            options.append(item_ne if more.hi == 0 else _Cat((item_ne, more)))
    if not options:
        return None
    return options[0] if len(options) == 1 else _Alt(tuple(options))


def _literal(c: int) -> str:
    return "%" + chr(c) if chr(c) in _SPECIAL else chr(c)


def _plain_in_class(c: int) -> bool:
    """Can stand unescaped as a range end: regex.c reads range ends raw, without % escapes."""
    return chr(c) not in "]%-^" and c not in (_BACKSLASH, _QUOTE)


def _class_body(members: Iterable[int]) -> str:
    ordered = sorted(members)
    out, i = [], 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        if j - i >= 2 and _plain_in_class(ordered[i]) and _plain_in_class(ordered[j]):
            out.append(f"{chr(ordered[i])}-{chr(ordered[j])}")
            i = j + 1
        else:
            c = ordered[i]
            out.append("%" + chr(c) if chr(c) in "]%" else chr(c))
            i += 1
    return "".join(out)


def _emit_chars(n: _Chars, plain_dot: bool) -> str:
    chars = {c for c in n.chars if not _impossible(c)}
    if not n.negated:
        if not chars:
            raise UnsupportedPattern("part of the pattern matches only control characters, "
                                     "which runtime strings never contain")
        options = [_literal(c) for c in sorted(chars & _OUTSIDE_CLASS)]
        rest = chars - _OUTSIDE_CLASS
        if len(rest) > _MAX_CLASS:
            raise UnsupportedPattern(f"character class with {len(rest)} characters is too large "
                                     f"for the runtime engine (limit {_MAX_CLASS})")
        if len(rest) == 1:
            options.append(_literal(next(iter(rest))))
        elif rest:
            options.append(f"[{_class_body(rest)}]")
    else:
        if not chars and plain_dot:
            return "."
        # '"' in our class becomes \" after JSON encoding, so the class also refuses a lone '\\'.
        options = [_literal(c) for c in (_BACKSLASH, _QUOTE) if c not in chars]
        members = chars - {_BACKSLASH, _QUOTE, ord("-")}
        if len(members) > _MAX_CLASS:
            raise UnsupportedPattern(f"negated character class with {len(members)} characters is too "
                                     f"large for the runtime engine (limit {_MAX_CLASS})")
        options.append(f"[^{_class_body(members)}\"{'-' if ord('-') in chars else ''}]")
    return options[0] if len(options) == 1 else "(" + "|".join(options) + ")"


def _emit(n: _Node, plain_dot: bool) -> tuple[str, str]:
    """(durable text, "atom" | "seq" | "alt"), with parentheses only where needed: each group
    adds states, and the engine's state count can explode on them."""
    if isinstance(n, _Chars):
        return _emit_chars(n, plain_dot), "atom"
    if isinstance(n, _Alt):
        return "|".join(_emit(x, plain_dot)[0] for x in n.items), "alt"
    if isinstance(n, _Cat):
        texts = [_emit(x, plain_dot) for x in n.items]
        if len(texts) == 1:
            return texts[0]
        return "".join(f"({t})" if kind == "alt" else t for t, kind in texts), "seq"
    text, kind = _emit(n.item, plain_dot)
    one = text if kind == "atom" else f"({text})"
    if n.hi is None:
        loop = _non_empty(n.item)  # durable's compiler never returns from (a?)*
        if loop is None:
            return one * n.lo, "seq"
        loop_text, loop_kind = _emit(loop, plain_dot)
        loop_one = loop_text if loop_kind == "atom" else f"({loop_text})"
        if n.lo and loop is n.item:
            return one * (n.lo - 1) + one + "+", "seq"
        return one * n.lo + loop_one + "*", "seq"
    optional, inner = "", f"({text})" if kind == "alt" else text
    for _ in range(n.hi - n.lo):  # x(x(x)?)? rather than x?x?x?: no ambiguity to merge
        optional = f"({inner}{optional})?" if optional else f"{one}?"
    return one * n.lo + optional, "seq"


def _size(n: _Node) -> int:
    """An upper bound on the emitted length, checked before emitting anything."""
    if isinstance(n, _Chars):
        return 1
    if isinstance(n, (_Cat, _Alt)):
        return 2 + sum(map(_size, n.items))
    return 4 * (_size(n.item) + 4) * (max(n.lo, 1) + (n.hi or n.lo) - n.lo + 1)


def _emit_all(branches: list[_Branch], plain_dot: bool) -> str:
    if any(not (b.at_start and b.at_end) and _nullable(b.node) for b in branches):
        return ".*"  # some alternative matches an empty string in every string
    parts = []
    for b in branches:
        if b.node == _EMPTY:  # "^$": durable refuses an empty pattern, and JSON text never holds \u0001
            parts.append("(\x01)?")
            continue
        text, kind = _emit(b.node, plain_dot)
        parts.append(("" if b.at_start else ".*") + (f"({text})" if kind == "alt" else text) + ("" if b.at_end else ".*"))
    return "|".join(parts)


# ---------------------------------------------------------------------------------------------
# 3. A replay of regex.c's compiler, bugs included (compileRegex / evaluateRegex, 2.0.28)
# ---------------------------------------------------------------------------------------------

_DOT, _EPSILON = 0xFFFE, 0
_C_MAX_STATES, _C_MAX_TRANSITIONS, _C_MAX_QUEUE, _C_MAX_LIST, _C_MAX_HSET = 4096, 4096, 1024, 1024, 8192


class _EngineRefuses(Exception):
    """regex.c returns an error for this pattern."""


class _OverLimit(_EngineRefuses):
    """Past a buffer regex.c does not check, a limit of ours, or outside the syntax we emit."""


class _S:
    __slots__ = ("accept", "edges", "freed", "hash", "id", "refs", "reject")

    def __init__(self, id: int):
        self.id = id
        self.accept = self.reject = self.freed = False
        self.refs = self.hash = 0
        self.edges: list[tuple[bool, int, _S]] = []  # (deterministic, symbol, target) in C order


@dataclass(frozen=True)
class _Dfa:
    accept: tuple[bool, ...]
    table: tuple[dict[int, int], ...]  # state -> symbol -> state; state 0 starts
    vocabulary: frozenset[int]

    def step(self, state: int | None, symbol: int) -> int | None:
        """evaluateRegex: a known symbol without an edge here falls back to the '.' edge."""
        if state is None:
            return None
        row = self.table[state]
        target = row.get(symbol) if symbol in self.vocabulary else None
        return row.get(_DOT) if target is None else target


class _DurableModel:
    """Mirrors createGraph, transformToDFA, expandDot and packGraph for the syntax _emit produces."""

    def __init__(self, raw: str):
        self.raw, self.pos, self.next_id, self.work = raw, 0, 0, 0

    def new_state(self) -> _S:
        if self.next_id >= min(_C_MAX_STATES, _MAX_DURABLE_STATES):
            raise _OverLimit(f"it needs more than {_MAX_DURABLE_STATES} automaton states")
        self.next_id += 1
        return _S(self.next_id - 1)

    # regex.c frees a state when its unsigned 16-bit reference count drops to 0, but its counts
    # are wrong, so it sometimes goes on using the freed state (what it then computes depends
    # on the allocator). Every read or write of a state goes through use(): if regex.c would
    # touch freed memory the pattern is refused, and otherwise freeing changes nothing we model.
    @staticmethod
    def use(state: _S) -> None:
        if state.freed:
            raise _OverLimit("regex.c would use memory it has already freed (use-after-free)")

    def scan(self, edges: list[tuple[bool, int, _S]]) -> list[tuple[bool, int, _S]]:
        """Edges regex.c is about to walk; pathological patterns cost quadratic time in C and here."""
        self.work += len(edges)
        if self.work > _MAX_MODEL_WORK:
            raise _OverLimit("its automaton is too large to check")
        return edges

    def link(self, a: _S, b: _S, symbol: int, det: bool = False) -> None:  # linkStates
        self.use(a)
        for _, sym, target in self.scan(a.edges):
            if sym == symbol:
                self.use(target)
                self.use(b)
                if target.id == b.id:
                    return
        if len(a.edges) >= _C_MAX_TRANSITIONS:
            raise _OverLimit("a state needs more edges than the runtime engine allows")
        self.use(b)
        a.edges.append((det, symbol, b))
        b.refs = (b.refs + 1) & 0xFFFF

    def delete(self, a: _S, i: int) -> None:  # deleteTransition
        target = a.edges[i][2]
        self.use(target)
        target.refs = (target.refs - 1) & 0xFFFF
        target.freed = target.refs == 0
        self.use(a)  # shifting the remaining edges reads a
        del a.edges[i]

    def unlink(self, a: _S, b: _S, symbol: int) -> None:  # unlinkStates
        self.use(b)
        self.scan(a.edges)
        i = 0
        while True:
            self.use(a)  # C re-reads the edge count every turn
            if i >= len(a.edges):
                break
            if a.edges[i][1] == symbol:  # C skips the edge after a deleted one; so do we
                self.use(a.edges[i][2])
                if a.edges[i][2].id == b.id:
                    self.delete(a, i)
            i += 1

    # -- tokens -------------------------------------------------------------------------------
    def escaped(self) -> int:
        self.pos += 2
        c = self.raw[self.pos - 1] if self.pos <= len(self.raw) else ""
        if c not in _SPECIAL:
            raise _OverLimit(f"unmodelled escape %{c}")
        return ord(c)

    def read_class(self) -> tuple[list[int], list[int]]:
        raw, members = self.raw, []
        self.pos += 1
        negated = raw.startswith("^", self.pos)
        self.pos += negated
        if raw.startswith("]", self.pos):
            raise _OverLimit("unmodelled ']' first in a class")
        in_range, last = False, 0
        while True:
            if self.pos >= len(raw):
                raise _OverLimit("unterminated class")
            c = raw[self.pos]
            if c == "]":
                break
            if in_range:
                if not last:
                    raise _OverLimit("bad class range")
                cur, self.pos = ord(c), self.pos + 1
                while cur != last:  # C enumerates hi, hi-1, ... lo+1
                    members.append(cur)
                    cur += -1 if cur > last else 1
                in_range = False
            elif c == "-":
                in_range, self.pos = True, self.pos + 1
            elif c == "%":
                members.append(self.escaped())
                last = 0
            else:
                members.append(ord(c))
                last, self.pos = ord(c), self.pos + 1
        if in_range:
            members.append(ord("-"))
        self.pos += 1
        if len(members) > _C_MAX_TRANSITIONS:
            raise _OverLimit("class overflows the runtime engine's buffer")
        return ([], members) if negated else (members, [])

    def token(self) -> tuple[str, list[int], list[int]] | None:
        if self.pos >= len(self.raw):
            return None
        c = self.raw[self.pos]
        if c in "|?*+()":
            self.pos += 1
            return c, [], []
        if c == "[":
            return ("sym", *self.read_class())
        if c == "{":
            raise _OverLimit("unmodelled interval")
        if c == "%":
            return "sym", [self.escaped()], []
        self.pos += 1
        return "sym", [_DOT if c == "." else ord(c)], []

    # -- createGraph ----------------------------------------------------------------------------
    def graph(self) -> tuple[_S, _S]:
        start, end = self.new_state(), self.new_state()
        prev = cur = start
        while (tok := self.token()) is not None and tok[0] != ")":
            kind, symbols, inverse = tok
            if kind == "sym":
                prev = cur
                if symbols:
                    cur = self.new_state()
                    for s in symbols:
                        self.link(prev, cur, s)
                if inverse:
                    cur = self.new_state()
                    cur.reject = True
                    for s in inverse:
                        self.link(prev, cur, s, True)
                    cur = self.new_state()
                    self.link(prev, cur, _DOT)
            elif kind == "|":
                self.link(cur, end, _EPSILON)
                cur, prev = self.new_state(), start
                self.link(prev, cur, _EPSILON)
            elif kind in "*+?":
                anchor = self.new_state()
                if kind != "?":
                    self.link(cur, prev, _EPSILON)
                self.link(cur, anchor, _EPSILON)
                if kind != "+":
                    self.link(prev, anchor, _EPSILON)
                prev, cur = cur, anchor
            else:  # "("
                sub_start, sub_end = self.graph()
                self.link(cur, sub_start, _EPSILON)
                prev, cur = cur, sub_end
        self.link(cur, end, _EPSILON)
        return start, end

    # -- transformToDFA / expandDot -----------------------------------------------------------
    def merged(self, members: list[_S], hset: dict[int, _S]) -> _S:
        """The state for a set of states: looked up by a 16-bit hash (HGET), else ensureState."""
        if len(members) + 1 >= _C_MAX_LIST:
            raise _OverLimit("a merged state overflows the runtime engine's list")
        for m in members:
            self.use(m)
        members = sorted(members, key=lambda s: s.id)  # stable, like C's insertion sort
        key = 5381
        for m in members:
            key = (key * 33 + m.id) & 0xFFFFFFFF
        key &= 0xFFFF  # calculateHash returns unsigned short: colliding sets share one state
        if len(hset) + 1 >= _C_MAX_HSET:
            raise _OverLimit("too many merged states for the runtime engine")
        slot = key % _C_MAX_HSET  # open addressing over 8192 slots, probed as HGET/HSET do
        while slot in hset:
            self.use(hset[slot])
            if hset[slot].hash == key:
                return hset[slot]
            slot = (slot + 1) % _C_MAX_HSET
        new, cancel = self.new_state(), False
        for m in members:  # ensureState
            for det, symbol, target in list(m.edges):
                self.link(new, target, symbol, det)
                cancel |= symbol == _DOT and m.accept
            new.accept |= m.accept
            new.reject |= m.reject
            if new.accept and new.reject:
                raise _EngineRefuses("ERR_REGEX_CONFLICT (a negated class meets an accepting state)")
        if cancel:  # "first match succeeds": drops specific edges, but skips every other one
            i = 0
            while i < len(new.edges):
                if new.edges[i][1] != _DOT:
                    self.unlink(new, new.edges[i][2], new.edges[i][1])
                i += 1
        new.hash = key
        hset[slot] = new
        return new

    def close_epsilon(self, s: _S) -> None:  # consolidateStates
        i, budget = 0, 100 * _C_MAX_TRANSITIONS
        while True:
            self.use(s)
            if i >= len(s.edges):
                break
            budget -= 1
            if budget < 0:
                raise _OverLimit("the runtime engine would loop forever (nested empty repetition)")
            _, symbol, target = s.edges[i]
            if symbol == _EPSILON:
                if target is not s:
                    self.use(target)
                    for det, symbol2, target2 in list(target.edges):
                        self.link(s, target2, symbol2, det)
                        if target.refs == 1:  # C's own (mis)accounting for the edge it will delete
                            self.use(target2)
                            target2.refs = (target2.refs - 1) & 0xFFFF
                self.use(target)
                s.accept |= target.accept
                s.reject |= target.reject
                if s.accept and s.reject:
                    raise _EngineRefuses("ERR_REGEX_CONFLICT (a negated class meets an accepting state)")
                self.delete(s, i)
                i -= 1
            i += 1

    def merge_duplicates(self, s: _S, hset: dict[int, _S]) -> None:  # consolidateTransitions
        old, new, seen = [], [], set()
        self.use(s)
        edges = s.edges
        for i, (_, symbol, target) in enumerate(edges):
            if symbol in seen:
                continue
            seen.add(symbol)
            same = [t for _, symbol2, t in edges[i + 1:] if symbol2 == symbol]
            if same:
                old += [(symbol, t) for t in [target, *same]]
                new.append((symbol, self.merged([target, *same], hset)))
        for symbol, target in old:
            self.unlink(s, target, symbol)
        for symbol, target in new:
            self.link(s, target, symbol)

    def expand_dot(self, s: _S, hset: dict[int, _S]) -> None:  # consolidateDot
        old: list[tuple[int, _S]] = []
        new: list[tuple[int, _S]] = []
        self.use(s)
        edges = s.edges
        for i, a in enumerate(edges):
            for b in edges[i + 1:]:
                dot, other = (a, b) if a[1] == _DOT else (b, a)
                if dot[1] == _DOT and other[1] != _DOT and not other[0]:
                    if len(old) >= _C_MAX_TRANSITIONS:
                        raise _OverLimit("a state overflows the runtime engine's edge buffer")
                    old.append((other[1], other[2]))
                    new.append((other[1], self.merged([a[2], b[2]], hset)))
        for symbol, target in old:
            self.unlink(s, target, symbol)
        for symbol, target in new:
            self.link(s, target, symbol, True)

    def determinize(self, s: _S, hset: dict[int, _S]) -> None:  # one step of transformToDFA
        self.close_epsilon(s)
        self.merge_duplicates(s, hset)

    def breadth_first(self, start: _S, visit: Callable[[_S, dict[int, _S]], None], hset: dict[int, _S]) -> list[_S]:
        queue, seen, order = deque([start]), {start.id}, []
        while queue:
            s = queue.popleft()
            visit(s, hset)
            self.use(s)
            order.append(s)
            for _, _, target in s.edges:
                self.use(target)
                if target.id not in seen:
                    seen.add(target.id)
                    if len(queue) + 2 >= _C_MAX_QUEUE:
                        raise _OverLimit("the runtime engine's work queue would overflow")
                    queue.append(target)
        return order

    def compile(self) -> _Dfa:
        start, end = self.graph()
        if self.pos < len(self.raw):
            raise _OverLimit("unbalanced ')'")
        end.accept = True
        start.refs += 1
        for visit in (self.determinize, self.expand_dot, self.determinize):
            self.breadth_first(start, visit, {})  # each pass starts with an empty hash set, as in C
        # packGraph numbers states breadth-first; a later edge on the same symbol wins.
        order = self.breadth_first(start, lambda s, hset: None, {})
        number = {s.id: n for n, s in enumerate(order)}
        rows = tuple({symbol: number[target.id] for _, symbol, target in s.edges} for s in order)
        vocabulary = frozenset(symbol for row in rows for symbol in row)
        if not vocabulary:
            raise _EngineRefuses("ERR_REGEX_INVALID (empty automaton)")
        return _Dfa(tuple(s.accept for s in order), rows, vocabulary)


# ---------------------------------------------------------------------------------------------
# 4. The truth: an automaton over JSON-escaped symbols, built from the Python pattern
# ---------------------------------------------------------------------------------------------


class _Reference:
    """Thompson NFA; an edge is (negated, symbols, target) over JSON-text symbols."""

    def __init__(self, branches: list[_Branch]):
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[bool, frozenset[int], int]]] = []
        self.start, self.final = self.state(), self.state()
        anywhere = _Rep(_ANY, 0, None)
        for b in branches:
            parts = ([] if b.at_start else [anywhere]) + [b.node] + ([] if b.at_end else [anywhere])
            self.build(_Cat(tuple(parts)), self.start, self.final)

    def state(self) -> int:
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1

    def build(self, n: _Node, a: int, b: int) -> None:
        if isinstance(n, _Chars):
            for c in (_BACKSLASH, _QUOTE):  # the JSON text of these characters is two symbols
                if (c in n.chars) != n.negated:
                    mid = self.state()
                    self.edges[a].append((False, frozenset([_BACKSLASH]), mid))
                    self.edges[mid].append((False, frozenset([c]), b))
            pair = frozenset([_BACKSLASH, _QUOTE])
            self.edges[a].append((True, n.chars | pair, b) if n.negated else (False, n.chars - pair, b))
        elif isinstance(n, (_Cat, _Alt)):
            cur = a
            for x in n.items:
                if isinstance(n, _Alt):
                    self.build(x, a, b)
                else:
                    nxt = self.state()
                    self.build(x, cur, nxt)
                    cur = nxt
            if isinstance(n, _Cat):
                self.eps[cur].append(b)
        else:
            cur = a
            for _ in range(n.lo):
                nxt = self.state()
                self.build(n.item, cur, nxt)
                cur = nxt
            if n.hi is None:  # loop through a fresh state: `a` may start other alternatives
                loop, body_end = self.state(), self.state()
                self.eps[cur].append(loop)
                self.eps[loop].append(b)
                self.build(n.item, loop, body_end)
                self.eps[body_end].append(loop)
            else:
                self.eps[cur].append(b)
                for _ in range(n.hi - n.lo):
                    nxt = self.state()
                    self.build(n.item, cur, nxt)
                    self.eps[nxt].append(b)
                    cur = nxt

    def closure(self, states: Iterable[int]) -> frozenset[int]:
        stack = list(states)
        seen = set(stack)
        while stack:
            for t in self.eps[stack.pop()]:
                if t not in seen:
                    seen.add(t)
                    stack.append(t)
        return frozenset(seen)

    def step(self, states: frozenset[int], symbol: int) -> frozenset[int]:
        return self.closure(t for s in states for neg, syms, t in self.edges[s] if (symbol in syms) != neg)


def _counterexample(dfa: _Dfa, ref: _Reference) -> str | None:
    """A runtime string on which durable and Python disagree, or None if there is none.

    Explores (durable state, reference states, inside an escaped pair?) over one representative
    of every class of symbols the two automata tell apart; only JSON texts of strings without
    control characters are walked.
    """
    symbols = {s for s in dfa.vocabulary if s != _DOT} | {_BACKSLASH, _QUOTE}
    for edges in ref.edges:
        for _, syms, _ in edges:
            symbols |= syms
    symbols = {s for s in symbols if not _impossible(s)}
    other = next(c for c in [*b"xzq#~", *range(0x100, 0x10000)] if c not in symbols and c != _DOT)
    alphabet = sorted(symbols) + [other]
    Where = tuple[int | None, frozenset[int], bool]
    start: Where = (0, ref.closure([ref.start]), False)
    parent: dict[Where, tuple[Where, int] | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        d, r, in_pair = node
        if not in_pair and (d is not None and dfa.accept[d]) != (ref.final in r):
            path, step = [], parent[node]
            while step is not None:
                path.append(step[1])
                step = parent[step[0]]
            witness: str = json.loads('"' + "".join(map(chr, reversed(path))) + '"')
            return witness
        for symbol in alphabet:
            if (symbol not in (_BACKSLASH, _QUOTE)) if in_pair else (symbol == _QUOTE):
                continue  # JSON text has '\\' only before '\\' or '"', and '"' only after '\\'
            nxt: Where = (dfa.step(d, symbol), ref.step(r, symbol), not in_pair and symbol == _BACKSLASH)
            if nxt[0] is None and not nxt[1]:
                continue  # both dead: they agree on every extension
            if nxt not in parent:
                if len(parent) >= _MAX_PROOF_STATES:
                    raise UnsupportedPattern("pattern is too complex to prove the runtime engine evaluates it correctly")
                parent[nxt] = (node, symbol)
                queue.append(nxt)
    return None


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _json_text(pattern: str) -> str:
    return json.dumps(pattern, ensure_ascii=False)[1:-1]


@functools.lru_cache(maxsize=1024)  # spec validation and ruleset compilation both ask; each engine compile leaks
def to_durable(pattern: str) -> str:
    """The durable ``$mt`` pattern whose truth value equals ``python_regex(pattern).search`` on
    every string the runtime passes (no control characters), or :class:`UnsupportedPattern`."""
    try:
        return _translate(pattern)
    except RecursionError as exc:  # every stage walks the pattern's nesting recursively
        raise UnsupportedPattern("the pattern is nested too deeply") from exc


def _translate(pattern: str) -> str:
    branches = _parse(pattern)
    if sum(_size(b.node) for b in branches) > 10 * _MAX_DURABLE_LEN:
        raise UnsupportedPattern(f"pattern expands beyond {_MAX_DURABLE_LEN} characters in the runtime engine's dialect")
    ref = _Reference(branches)
    problems: list[str] = []
    # '.' as durable's own '.' is smallest but can consume half of an escaped '"' or '\\';
    # the class form cannot. The proof picks whichever the engine gets right.
    for durable in dict.fromkeys(_emit_all(branches, plain_dot) for plain_dot in (True, False)):
        if len(durable) > _MAX_DURABLE_LEN:
            raise UnsupportedPattern(f"pattern expands beyond {_MAX_DURABLE_LEN} characters in the runtime engine's dialect")
        try:
            witness = _counterexample(_DurableModel(_json_text(durable)).compile(), ref)
        except _OverLimit as exc:
            problems.append(f"the pattern is beyond what pcrules lets the runtime engine compile: {exc}")
            continue
        except _EngineRefuses as exc:
            problems.append(f"the runtime engine cannot compile its translation {durable!r}: {exc}")
            continue
        if witness is None:
            check_compiles(durable)
            return durable
        says = python_regex(pattern).search(witness) is not None
        problems.insert(0, f"the runtime engine's regex compiler is defective for this pattern: on {witness!r} "
                           f"its translation {durable!r} would answer {not says} where Python answers {says}")
    raise UnsupportedPattern(problems[0])


_ENGINE_ERRORS = {
    "501": "syntax error", "502": "too many transitions", "503": "too many states",
    "504": "work queue full", "505": "state list full", "506": "state set full",
    "507": "a negated class conflicts with an accepting state", "508": "empty automaton",
}


def check_compiles(durable_pattern: str) -> None:
    """Raise :class:`UnsupportedPattern` unless durable_rules compiles this ``$mt`` pattern.

    Uses a throwaway ruleset in the real engine. Only pass patterns made by :func:`to_durable`:
    the engine never returns from some others, e.g. ``(a?)*``.
    """
    definition = {"r": {"all": [{"m": {"$and": [{"k": 1}, {"$mt": {"s": durable_pattern}}]}}]}}
    try:
        handle = _engine.create_ruleset(f"pcrules-regex-check-{uuid.uuid4().hex}",
                                        json.dumps(definition, ensure_ascii=False))
    except Exception as exc:  # the engine reports every failure as a bare error with a code
        code = re.search(r"\d{3}", str(exc))
        reason = _ENGINE_ERRORS.get(code.group() if code else "", str(exc))
        raise UnsupportedPattern(f"the runtime engine refuses the pattern {durable_pattern!r}: {reason}") from exc
    _engine.delete_ruleset(handle)
