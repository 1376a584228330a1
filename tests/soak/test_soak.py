"""The soak at its small size (`scripts/inv soak --size small`): 150 simulated days, one scheduled run a day,
six credentials of an e-mail partner (reply mailbox) and an outbox partner, two SSH hosts plus one added and one
removed, every authority mishap and operator event of the full soak. The engine checks every simulated day and
raises with its day and seed; this test then asserts the table's loss columns, as a user reads them."""
from __future__ import annotations

import random

from tests.plugins.mailbox import require_dovecot
from tests.plugins.testhosts import require_testhosts_environment
from tests.soak.engine import SIZES, Soak


def test_150_simulated_days_of_scheduled_rotations_lose_nothing_and_never_serve_an_expired_certificate(
        tmp_path_factory):
    require_testhosts_environment()
    require_dovecot()
    seed = random.SystemRandom().randrange(1, 2**31)
    print(f"soak seed {seed} (replay: scripts/inv soak --size small --seed {seed})")
    with Soak(tmp_path_factory.mktemp("soak"), SIZES["small"], seed) as soak:
        table = soak.run()
    print(table.markdown())
    assert table.days == 150 and table.runs >= 150
    assert (table.keys_lost, table.hosts_mixed, table.expired_on_host_days) == (0, 0, 0), table.markdown()
    # The story happened: every credential renewed at least once, the operator's events all took place.
    assert table.renewals >= len(soak.creds), table.markdown()
    assert table.vault_restarts >= 1 and table.runs_killed >= 1
    assert {"rollback", "rekey", "deploy", "host removed"} <= set(table.operator), table.operator
    assert table.authority["ca_changes"] >= 1
    assert table.worst_margin_days is not None and table.worst_margin_days > 0
