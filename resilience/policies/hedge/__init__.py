"""Hedge: when an attempt is slow, send the same call again and take the first success.

The scheme of gRPC's hedging (proposal A6) and Finagle's backup requests: after a delay
without an answer, start another attempt (the balancer sends it to another endpoint);
whichever succeeds first answers the call, the others are cancelled (asyncio, trio) or
abandoned (threads). A budget keeps hedges to a small share of the load.

Four rooms: :mod:`.policy` (the policy and its options), :mod:`.race` (the race core both
executors share), :mod:`.aio` (the async executor) and :mod:`.threads` (the sync one, with
its worker pool).
"""

from .policy import Hedge, HedgeOptions
from .race import HedgeAttemptFailed, HedgeStarted, HedgeWon

__all__ = ["Hedge", "HedgeAttemptFailed", "HedgeOptions", "HedgeStarted", "HedgeWon"]
