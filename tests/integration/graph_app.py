"""An engine module for ``flowctl graph`` tests: one built flow and one raw body."""

from iterflow import Engine
from tests.replay.flows import ONBOARD, ORDER

engine = Engine()
engine.register(ONBOARD)
engine.register(ORDER)
