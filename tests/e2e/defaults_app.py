"""Worker app at the **default** settings (``flowctl worker defaults_app:engine``).

``Engine()`` with nothing overridden: ``lease_seconds=20``, ``reconcile_every_seconds=5``,
``worker_poll_interval=0.5`` (the other e2e apps shorten them, which once hid a reconciler
schedule that only ticked in every fifth minute). It hosts flows of the other e2e apps, which
count their step executions in a file outside the workers:

* ``four-steps`` (``kill_app``): step ``s3`` blocks until a release file exists;
* ``hold`` and ``load`` (``chaos_app``): one step; steps around a durable sleep.
"""

from __future__ import annotations

from iterflow import Engine
from tests.e2e.chaos_app import hold, load
from tests.e2e.kill_app import four_steps

engine = Engine()

for handle in (four_steps, hold, load):
    engine.register(handle.definition)
