"""Operator-supplied rewards that misbehave, for tests/integration/test_serving_hostile.py.

The hostile-client module starts its server with ``--set function=tests.data.hostile_rewards:exit_now``: an
operator-enabled callable reward that raises SystemExit must end the request that used it, never the server.
"""


def exit_now(text: str) -> float:
    import sys

    sys.exit(3)
