"""PostgREST started before the extension exists: its schema cache knows no eventstore function
until it is told to reload (NOTIFY pgrst, 'reload schema'); privileges given by grant_access
need no reload. This database also takes the tenant from another claim: a DBA sets
eventstore.tenant_claim on the authenticator role (the role PostgREST logs in as)."""

import time

from conftest import RELOAD_TIMEOUT, admin_connect, create_database, drop_database

import pytest

APPEND = {"aggregate_type": "order", "aggregate_id": "1", "event_type": "Placed", "payload": {"n": 1}}


@pytest.fixture
def empty_database():
    db = create_database(extension=False)
    with admin_connect() as conn:
        conn.execute(f'ALTER ROLE authenticator IN DATABASE "{db}" SET eventstore.tenant_claim = \'app_metadata.org_id\'')
        # PostgREST applies the settings of the role it switches to only where that role may set
        # them itself: superuser settings on `authenticated` are skipped (the claim stays the above)
        conn.execute(f'ALTER ROLE authenticated IN DATABASE "{db}" SET eventstore.tenant_claim = \'not_this_claim\'')
    yield db
    drop_database(db)


def wait_for_status(call, unwanted, timeout=RELOAD_TIMEOUT):
    """Repeats `call` until its status is not `unwanted`; returns the last response."""
    deadline = time.monotonic() + timeout
    while True:
        r = call()
        if r.status != unwanted or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


def test_reload_after_create_extension_and_grant_access(start_postgrest, empty_database):
    pgrst = start_postgrest(empty_database)
    tok = pgrst.token(None, app_metadata={"org_id": "org-7"}, tenant_id="not-this-one", not_this_claim="nor-this")

    def append():
        return pgrst.rpc("append_event", APPEND, tok)

    r = append()
    assert (r.status, r.body["code"]) == (404, "PGRST202"), r
    with admin_connect(empty_database) as conn:
        conn.execute("CREATE EXTENSION eventstore")
    # the schema cache is PostgREST's: a new function is unknown to it until the reload
    r = append()
    assert (r.status, r.body["code"]) == (404, "PGRST202"), r
    pgrst.reload_schema()
    r = wait_for_status(append, 404)
    # known now, but `authenticated` may not use the schema yet
    assert (r.status, r.body["code"], r.body["message"]) == (403, "42501", "permission denied for schema eventstore"), r
    with admin_connect(empty_database) as conn:
        conn.execute("SELECT eventstore.grant_access('authenticated', 'writer')")
    # privileges are checked when the call runs: no reload needed
    r = append()
    assert r.status == 200 and r.body["aggregate_version"] == 1, r
    events = pgrst.table("events", "select=tenant_id,payload", tok)
    assert (events.status, events.body) == (200, [{"tenant_id": "org-7", "payload": {"n": 1}}]), events
    assert pgrst.get_rpc("current_tenant", None, tok).body == "org-7"
    # a token without that claim has no tenant; require_tenant is on for the authenticator
    r = pgrst.get_rpc("current_tenant", None, pgrst.token("t-from-the-default-claim"))
    assert (r.status, r.body["code"]) == (403, "42501"), r
