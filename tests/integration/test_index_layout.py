"""The credential index in its own folder (layout 2, store.py): one detailed listing or one read per credential
give the same answers; a write of `current` marks the index so a crash is still found; a Vault of layout 1
(the index in the custom metadata of `current`) is moved by the first rotator run, once."""
import datetime as dt
import json

import pytest

from partnercerts import store as storemod
from partnercerts.store import Index
from tests.integration.test_store_reads import Forwarder, store_for

NOW = dt.datetime(2026, 12, 2, 9, 0, tzinfo=dt.timezone.utc)


def seed(bao, mount, n=30):
    """n credentials of three partners in layout 2: an index for most, `current` for some, a few marked
    (a write of current began after the index) of which one really is behind; the rest never indexed."""
    s = store_for(bao.addr, bao.token, mount)
    assert s.upgrade_index(NOW) == 0  # an empty Vault: the layout is recorded, nothing to move
    pairs = [(f"MZP{800000 + i % 3:06d}", f"app{i:02d}") for i in range(n)]
    kv = bao.client().secrets.kv.v2
    for i, (mzp, app) in enumerate(pairs):
        if i % 5 == 4:
            continue  # never indexed
        version = 0
        if i % 2 == 0:
            version = kv.create_or_update_secret(f"partnercerts/{mzp}/apps/{app}/current", {"serial": f"S{i}"},
                                                 mount_point=mount)["data"]["version"]
        s.write_index(mzp, app, Index(serial=f"S{i}" if version else "", client_id=f"c{i}",
                                      current_version=str(version), pending_since="2026-11-30T00:00:00Z",
                                      updated_at="2026-12-01T00:00:00Z"))
        if i % 7 == 0:  # marked: a write of current began; for i % 14 == 0 it went through
            path = s.index_path(mzp, app)
            s.write_custom(path, {**s.read_custom(path), "writing": str(version + 1)})
            if i % 14 == 0:
                kv.create_or_update_secret(f"partnercerts/{mzp}/apps/{app}/current", {"serial": f"T{i}"},
                                           mount_point=mount)
    return pairs


def shown(found):
    return [None if f is None else (f[0].serial, f[0].client_id, f[0].current_version, f[0].writing, f[1])
            for f in found]


def test_the_detailed_listing_and_one_read_per_credential_give_the_same_indexes(bao, mount, monkeypatch):
    pairs = seed(bao, mount)
    fwd = Forwarder(bao.addr, close_every=False)
    try:
        listed = store_for(fwd.addr, bao.token, mount)
        got = listed.read_indexes(pairs)
        assert listed._detailed is True
        lists = [p for _, p in fwd.requests if "/detailed-metadata/" in p]
        reads = [p for _, p in fwd.requests if "/metadata/partnercerts/index/" in p]
        assert len(lists) == 1 and not reads  # every index in one request

        one_by_one = store_for(fwd.addr, bao.token, mount)
        one_by_one._detailed = False  # what a server without the listing (HashiCorp Vault) gets
        assert one_by_one.read_indexes(pairs) == got

        # Small pages, and a subset in the middle of the folder: the same again, a page at a time.
        monkeypatch.setattr(storemod, "LIST_PAGE", 4)
        fwd.requests.clear()
        paged = store_for(fwd.addr, bao.token, mount)
        subset = sorted(pairs)[5:25]
        assert paged.read_indexes(subset) == one_by_one.read_indexes(subset)
        pages = [p for _, p in fwd.requests if "/detailed-metadata/" in p]
        assert 5 <= len(pages) <= 7  # 20 entries and those beside them, 4 a page; not the whole folder
    finally:
        fwd.close()
    # What the entries say: absent ones None, marked ones carry current's real version.
    by_pair = dict(zip(pairs, shown(got), strict=True))
    for i, pair in enumerate(pairs):
        if i % 5 == 4:
            assert by_pair[pair] is None
            continue
        serial, client_id, version, writing, real = by_pair[pair]
        assert client_id == f"c{i}"
        if i % 14 == 0:
            assert writing and real == int(version) + 1  # behind current: the plan derives it again
        else:
            assert real == int(version)


def test_the_pages_of_the_listing_go_over_two_connections_at_once_with_the_same_answers(bao, mount, monkeypatch):
    pairs = seed(bao, mount, n=60)
    one_by_one = store_for(bao.addr, bao.token, mount)
    one_by_one._detailed = False
    expected = one_by_one.read_indexes(pairs)
    monkeypatch.setattr(storemod, "LIST_PAGE", 6)  # 60 names: 10 spans of 6, some of them never indexed
    fwd = Forwarder(bao.addr, close_every=False)
    try:
        paged = store_for(fwd.addr, bao.token, mount)
        assert paged.read_indexes(pairs) == expected
        assert paged._detailed is True
        listing = [(n, p) for n, p in fwd.served if "/detailed-metadata/" in p]
        by_connection = {n for n, _ in listing}
        assert len(by_connection) == 2, listing  # the Store's connection and the one alongside
        # Every span's first page asked once; a span whose page ends before its last name (absent names,
        # so the page reaches into the next span) is continued by the connection that began it.
        starts = [p for _, p in listing]
        assert len(starts) == len(set(starts)) and 10 <= len(starts) <= 20, starts
        # Pages of a partial subset, and a subset smaller than a page: the same answers again.
        for subset in (sorted(pairs)[7:43], sorted(pairs)[20:28]):
            assert paged.read_indexes(subset) == one_by_one.read_indexes(subset)
    finally:
        fwd.close()


class Flaky(storemod.KeepAliveReader):
    """The connection alongside, with the fault a real one meets: its first page unanswered (what a denial, a
    sealed node or a broken connection hands back), or an exception in the middle of a span."""
    fault = "delegate"
    asked = 0

    def get(self, url):
        if self.keeps:  # the Store's own connection: untouched
            return super().get(url)
        Flaky.asked += 1
        if Flaky.fault == "delegate":
            return storemod.DELEGATE
        if Flaky.asked == 2:
            raise OSError("connection reset by peer")
        return super().get(url)


@pytest.mark.parametrize("fault", ["delegate", "raises"])
def test_a_page_the_second_connection_cannot_read_is_read_by_the_store(bao, mount, monkeypatch, fault):
    pairs = seed(bao, mount, n=60)
    one_by_one = store_for(bao.addr, bao.token, mount)
    one_by_one._detailed = False
    expected = one_by_one.read_indexes(pairs)
    monkeypatch.setattr(storemod, "LIST_PAGE", 3)  # a span continues past its first page where names are absent
    monkeypatch.setattr(storemod, "KeepAliveReader", Flaky)
    monkeypatch.setattr(Flaky, "fault", fault)
    monkeypatch.setattr(Flaky, "asked", 0)
    paged = store_for(bao.addr, bao.token, mount)
    assert paged.read_indexes(pairs) == expected
    assert Flaky.asked >= 1  # the connection alongside was there, and failed
    assert paged._detailed is True


@pytest.mark.parametrize("page", [1000, 4])
def test_a_policy_without_the_listing_reads_one_by_one_with_the_same_answers(bao, mount, monkeypatch, page):
    pairs = seed(bao, mount, n=12)
    client = bao.client()
    client.sys.create_or_update_policy("meta-read", f'path "{mount}/metadata/*" {{ capabilities = ["read"] }}')
    token = client.auth.token.create(policies=["meta-read"], ttl="5m")["auth"]["client_token"]
    monkeypatch.setattr(storemod, "LIST_PAGE", page)  # 4: three spans, the connection alongside tries one
    fwd = Forwarder(bao.addr, close_every=False)
    try:
        limited = store_for(fwd.addr, token, mount)
        got = limited.read_indexes(pairs)
        assert limited._detailed is False
        # The first page denied (asked again through hvac, for its error) and at most one page beside it:
        # then one read per credential, and no listing again for this Store.
        lists = len([p for _, p in fwd.requests if "/detailed-metadata/" in p])
        assert lists <= (2 if page == 1000 else 3), fwd.requests
        assert got == store_for(bao.addr, bao.token, mount).read_indexes(pairs)
        assert limited.read_indexes(pairs) == got
        assert len([p for _, p in fwd.requests if "/detailed-metadata/" in p]) == lists
    finally:
        fwd.close()


def test_status_of_a_few_credentials_reads_them_without_listing(bao, mount):
    pairs = seed(bao, mount, n=30)
    fwd = Forwarder(bao.addr, close_every=False)
    try:
        s = store_for(fwd.addr, bao.token, mount)
        s.read_indexes(pairs[:3])
        assert not [p for _, p in fwd.requests if "/detailed-metadata/" in p]
    finally:
        fwd.close()


def to_layout_1(raw, bao, mount):
    """Put the Vault back the way partnercerts wrote it before layout 2: each index in the custom metadata of its
    `current`, no index folder, no layout record."""
    kv = bao.client().secrets.kv.v2
    keys = kv.list_secrets("partnercerts/index", mount_point=mount)["data"]["keys"]
    for key in keys:
        mzp, app = key.split(".", 1)
        custom = raw.index(f"{mzp}/apps/{app}")
        custom.pop("writing", None)
        kv.update_metadata(f"partnercerts/{mzp}/apps/{app}/current", custom_metadata=custom, mount_point=mount)
        kv.delete_metadata_and_all_versions(f"partnercerts/index/{key}", mount_point=mount)
    kv.delete_metadata_and_all_versions("partnercerts/layout", mount_point=mount)
    return keys


def test_a_vault_of_layout_1_is_moved_by_the_first_rotation_once(cli, bao, mount, raw):
    cli("rotate", "--no-deploy")
    before = json.loads(cli("status", "--json").out)
    moved = to_layout_1(raw, bao, mount)
    assert sorted(moved) == ["MZP654321.big", "MZP654321.fleet"]
    assert raw.meta("layout") is None and raw.meta("index/MZP654321.fleet") is None
    # Status reads the old layout as it is, and moves nothing (it may be an auditor's).
    assert json.loads(cli("status", "--json").out) == before
    assert raw.meta("layout") is None
    # One index left behind by a crash in the old layout: its current is a version ahead.
    cur = raw.read("MZP654321/apps/fleet/current")
    bao.client().secrets.kv.v2.create_or_update_secret("partnercerts/MZP654321/apps/fleet/current", cur["data"],
                                                       cas=cur["metadata"]["version"], mount_point=mount)
    assert "index is stale" in cli("status").err
    # The first rotation moves every index, once, and repairs the stale one.
    r = cli("rotate", "--no-deploy")
    layout = raw.meta("layout")
    assert layout["custom_metadata"]["index"] == "2" and layout["custom_metadata"]["moved"] == "2"
    fleet = raw.index("MZP654321/apps/fleet")
    assert fleet["current_version"] == str(cur["metadata"]["version"] + 1) and "writing" not in fleet
    assert raw.index("MZP654321/apps/big")["serial"] == raw.read("MZP654321/apps/big/current")["data"]["serial"]
    assert "index is stale" not in r.err and "index is stale" not in cli("status").err
    after = json.loads(cli("status", "--json").out)
    assert [(a["mzp"], a["app"], a["serial"], a["client_id"], a["state"], a["not_after"]) for a in after] == \
        [(b["mzp"], b["app"], b["serial"], b["client_id"], b["state"], b["not_after"]) for b in before]
    cli("rotate", "--no-deploy")
    assert raw.meta("layout")["current_metadata_version"] == layout["current_metadata_version"]  # once


def test_a_layout_this_version_does_not_know_stops_with_the_fix(cli, bao, mount):
    bao.client().secrets.kv.v2.update_metadata("partnercerts/layout", custom_metadata={"index": "3"}, mount_point=mount)
    r = cli("status", ok=False)
    assert r.rc == 4 and r.err.count("\n") == 1, r.text
    assert "index layout is '3'" in r.err and "upgrade this one" in r.err

