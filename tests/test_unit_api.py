"""exporter/serve/api.py: the JSON API's formats survive encoding and decoding, and an answer
not in the format is one clear error (ApiError, ConnectError for `top --connect`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from httpserver_helpers import serve, synthetic_view
from pageheat.serve import api
from pageheat.top.feed import ConnectError, RemoteFeed


def _wire(obj: object) -> object:
    """What a client gets: the encoder's output through JSON text."""
    return json.loads(json.dumps(obj))


@pytest.mark.parametrize("expose", [False, True])
def test_heat_round_trip_keeps_every_view_field(expose: bool) -> None:
    views = [synthetic_view(100, nodes=2), synthetic_view(200, seed=1, n_bins=16)]
    heat = api.Heat("synthetic", expose, tuple(api.HeatTarget.of(v, 0.25 * i, expose)
                                               for i, v in enumerate(views)))
    back = api.decode_heat(_wire(api.encode_heat(heat)))
    assert back.source == "synthetic" and back.expose_addresses is expose
    for i, (v, t) in enumerate(zip(views, back.targets, strict=True)):
        assert (t.pid, t.comm, t.time, t.interval, t.harvests, t.rebins) == \
            (v.pid, v.comm, v.time, v.interval, v.harvests, v.rebins)
        assert t.bins == v.bins.n and t.labels == v.bins.labels
        assert t.mapped_pages == v.bins.mapped_pages and t.combos == v.combos
        assert t.accessed_cum.shape == (len(v.combos), v.bins.n)
        assert (t.accessed_cum == v.accessed_cum.astype(np.int64)).all()
        assert (t.resident == v.resident).all()
        assert t.never_accessed == v.never_accessed
        assert (t.wss_pages, t.resident_pages, t.cold_pages) == \
            (v.wss_pages, v.resident_pages, v.cold_pages)
        assert t.cost_s == 0.25 * i
        if expose:
            assert t.addrs == tuple(int(e) * 4096 for e in v.bins.edges[:-1])
        else:
            assert t.addrs is None


def test_targets_round_trip() -> None:
    views = [synthetic_view(100), synthetic_view(200, seed=1)]
    back = api.decode_targets(_wire(api.encode_targets([api.TargetSummary.of(v) for v in views])))
    assert [(t.pid, t.comm, t.resident_pages, t.working_set_pages, t.cold_pages, t.bins)
            for t in back] == [(v.pid, v.comm, v.resident_pages, v.wss_pages, v.cold_pages,
                                v.bins.n) for v in views]


def test_optional_fields_of_older_servers_default() -> None:
    t = _wire(api.encode_heat_target(api.HeatTarget.of(synthetic_view(7), 0.0, False)))
    for key in ("comm", "rebins", "addrs", "cost_s"):
        del t[key]
    d = api.decode_heat_target(t)
    assert (d.comm, d.rebins, d.addrs, d.cost_s) == ("", 0, None, 0.0)
    assert api.decode_heat({}).targets == () and api.decode_heat({}).source == "remote"


def _target() -> dict:
    return _wire(api.encode_heat_target(api.HeatTarget.of(synthetic_view(7, n_bins=4), 0.0, True)))


BROKEN = {
    "no pid": (lambda t: t.pop("pid"), "missing field 'pid'"),
    "pid a string": (lambda t: t.update(pid="7"), "field 'pid': expected int"),
    "harvests a bool": (lambda t: t.update(harvests=True), "field 'harvests': expected int"),
    "labels too few": (lambda t: t["labels"].pop(), "field 'labels': expected 4 strings"),
    "addrs not hex": (lambda t: t["addrs"].__setitem__(0, "zz"), "field 'addrs'"),
    "addrs too many": (lambda t: t["addrs"].append("0x1000"), "expected 4 addresses"),
    "combo a triple": (lambda t: t["combos"][0].append(0), "field 'combos'"),
    "ragged accessed": (lambda t: t["accessed_cum"][0].pop(), "field 'accessed_cum'"),
    "resident too big": (lambda t: t["resident"][0].__setitem__(0, 2**70), "field 'resident'"),
    "never_accessed a list": (lambda t: t.update(never_accessed=[]), "field 'never_accessed'"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_broken_target_is_one_api_error(name: str) -> None:
    change, message = BROKEN[name]
    t = _target()
    change(t)
    with pytest.raises(api.ApiError, match=message):
        api.decode_heat({"source": "x", "targets": [t]})


@pytest.mark.parametrize("body", [[], "x", {"targets": {}}, {"targets": [1]}, {"source": 3}])
def test_broken_answer_is_one_api_error(body: object) -> None:
    with pytest.raises(api.ApiError):
        api.decode_heat(body)


@pytest.mark.parametrize("value", ["abc", "-1", "0", "1e3", "", "99999999999", "9" * 5000])
def test_bad_pid_query_is_a_bad_request(value: str) -> None:
    from pageheat.serve.http import BadRequest

    with pytest.raises(BadRequest, match="pid: expected a process id"):
        api.selected_pid({"pid": value})
    assert api.selected_pid({}) is None and api.selected_pid({"pid": "42"}) == 42


def test_remote_feed_says_why_an_answer_is_not_pageheat_s() -> None:
    """A server answering JSON in another format: one ConnectError line, not a KeyError."""
    target = _target()
    del target["harvests"]

    async def heat(query):
        return {"source": "ptwalk", "targets": [target]}

    with serve({}, api={api.HEAT_PATH: heat}) as s:
        feed = RemoteFeed(s.url, 7)
        with pytest.raises(ConnectError) as e:
            feed.attach()
    assert str(e.value) == "/api/v1/heat: not a pageheat answer: missing field 'harvests'"
