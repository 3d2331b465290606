"""Offers bound to their owner, and pseudonymous visitor ids (issue 9, runtime side)."""

from __future__ import annotations

import sqlite3

import pytest

from helpers import T0, ev, holdout_ids, make_runtime, not_holdout, row_counts, snapshot, spec_dict
from pcrules import Action, OfferNotFound, OfferStatus, Reason, Runtime, SpecError, SQLiteDecisionLog
from pcrules.pseudonym import Pseudonymizer
from pcrules.spec import load_spec

KEY = b"k" * 32


@pytest.fixture
def offered(tmp_path):
    rt = make_runtime(log=SQLiteDecisionLog(tmp_path / "log.sqlite"))
    d = rt.observe(ev(visitor="v1", session="s1"))
    assert d.action == Action.OFFER
    yield rt, d, tmp_path / "log.sqlite"
    rt.close()


@pytest.mark.parametrize("answer", ["accept", "decline", "expire"])
@pytest.mark.parametrize("who", [{"visitor_id": "v2", "session_id": "s1"},   # another visitor
                                 {"visitor_id": "v1", "session_id": "s2"},   # another session of the owner
                                 {"visitor_id": "v2"}, {"session_id": "s2"}])
def test_a_foreign_answer_is_refused_like_an_unknown_offer_and_changes_nothing(offered, answer, who):
    rt, d, path = offered
    before, rows = snapshot(rt, [d.offer_id], ["v1", "v2"]), row_counts(path, rt)
    with pytest.raises(OfferNotFound) as foreign:
        getattr(rt, answer)(d.offer_id, ts=T0 + 1, **who)
    with pytest.raises(OfferNotFound) as unknown:
        getattr(rt, answer)("no-such-offer", ts=T0 + 1, **who)
    # the same kind of error either way: a guess cannot tell "exists, not yours" from "does not exist"
    assert type(foreign.value) is type(unknown.value) and str(foreign.value).replace(d.offer_id, "X") == \
        str(unknown.value).replace("no-such-offer", "X")
    assert snapshot(rt, [d.offer_id], ["v1", "v2"]) == before and row_counts(path, rt) == rows
    # the owner can still answer
    assert getattr(rt, answer)(d.offer_id, ts=T0 + 1, visitor_id="v1", session_id="s1").offer_id == d.offer_id


def test_the_owner_answers_with_bound_ids(offered):
    rt, d, _ = offered
    out = rt.accept(d.offer_id, ts=T0 + 2, visitor_id="v1", session_id="s1")
    assert out.status == OfferStatus.ACCEPTED and rt.store.offer(d.offer_id).status == OfferStatus.ACCEPTED


def test_offer_ids_carry_128_random_bits():
    rt = Runtime(load_spec(spec_dict()), clock=lambda: T0)
    ids = {rt.observe(ev(visitor=f"x{i}", session="s")).offer_id for i in range(200)}
    ids.discard(None)  # holdout visitors get no offer id
    assert len(ids) > 150
    assert all(len(i) >= 22 for i in ids)  # token_urlsafe(16): 16 bytes -> 22 base64url characters


# ----------------------------------------------------------------------------- pseudonymous visitor ids


def test_the_log_and_the_store_never_see_a_raw_visitor_id(tmp_path):
    path = tmp_path / "log.sqlite"
    rt = Runtime(load_spec(spec_dict(holdout=0.2)), log=SQLiteDecisionLog(path), clock=lambda: T0,
                 visitor_id_key=KEY)
    raws = [f"alice-{i}@example.com" for i in range(40)]
    offers = [rt.observe(ev(visitor=v, session="s")) for v in raws]
    for v, d in zip(raws, offers):
        if d.offer_id is not None:
            rt.decline(d.offer_id, ts=T0 + 1, visitor_id=v, session_id="s")  # the raw id still proves ownership
    rt.record_goal(raws[0], "s", "bill_paid", ts=T0 + 5)
    stored = [visitor for (visitor, _session), _state in rt.store.sessions()]
    rt.close()
    with open(path, "rb") as f:
        blob = f.read()
    for suffix in ("-wal",):
        try:
            blob += open(str(path) + suffix, "rb").read()
        except FileNotFoundError:
            pass
    assert not any(v.encode() in blob for v in raws) and b"alice" not in blob
    with sqlite3.connect(path) as db:
        ids = {r[0] for r in db.execute("SELECT visitor_id FROM decisions UNION SELECT visitor_id FROM goals")}
    alias = Pseudonymizer(KEY)
    assert ids == {alias(v) for v in raws}
    assert len(stored) == len(raws) and set(stored) <= {alias(v) for v in raws}


def test_the_holdout_group_does_not_move_when_pseudonyms_are_switched_on():
    share = 0.3
    spec = load_spec(spec_dict(holdout=share))
    ins, outs = holdout_ids(share, "h", 15), not_holdout(share, "h", 15)
    plain = Runtime(spec, clock=lambda: T0)
    keyed = Runtime(spec, clock=lambda: T0, visitor_id_key=KEY)
    other_key = Runtime(spec, clock=lambda: T0, visitor_id_key=b"another key of 32 bytes, secret!")
    for rt in (plain, keyed, other_key):
        got = {v: rt.observe(ev(visitor=v, session="s")).reason == Reason.HOLDOUT for v in ins + outs}
        assert got == {**{v: True for v in ins}, **{v: False for v in outs}}


def test_the_same_key_gives_the_same_pseudonym_in_every_runtime_and_a_different_key_another():
    a, b, c = Pseudonymizer(KEY), Pseudonymizer(KEY.decode()), Pseudonymizer(b"z" * 16)
    assert a("v1") == b("v1") != c("v1") and a("v1") != a("v2")
    assert a("v1").startswith("p_") and len(a("v1")) == 34
    assert "k" * 16 not in repr(a)


def test_a_short_key_is_refused_naming_the_setting():
    with pytest.raises(SpecError, match="visitor_id_key"):
        Runtime(load_spec(spec_dict()), visitor_id_key=b"short")


def test_pseudonymised_runtime_keeps_visitor_state_across_sessions():
    rt = Runtime(load_spec(spec_dict(decline_cooldown_s=600)), clock=lambda: T0, visitor_id_key=KEY)
    v = not_holdout(0.0, "c")[0]
    d = rt.observe(ev(visitor=v, session="s1"))
    rt.decline(d.offer_id, ts=T0 + 1, visitor_id=v, session_id="s1")
    later = rt.observe(ev(visitor=v, session="s2", ts=T0 + 60))
    assert later.action == Action.NONE and later.reason == Reason.COOLDOWN
