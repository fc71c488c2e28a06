"""Power of two choices with a peak-sensitive EWMA of latency (after Finagle's and go-zero's).

Each pick draws two endpoints at random and sends the attempt to the cheaper one, where

    cost = EWMA latency * (attempts in flight + 1)

so a slow endpoint, or one with a queue, loses most pairings, while no endpoint is ever
scanned: a pick costs the same with 3 endpoints or 10,000. Among at most 8 candidates the
pick compares them all instead, which costs no more and closes the blind spot of two
random choices in a small pool: with three endpoints a random pair misses the best one a
third of the time, and the worse of the other two would take that third.

**The EWMA.** Each attempt's duration, on the clock the pool was given (``now`` and
``duration`` of the release: never the wall clock), is a sample. A sample above the
estimate replaces it at once (peak sensitivity: one slow answer is enough to steer away);
a sample below it pulls it down with the weight ``1 - exp(-Δt / decay)``, ``Δt`` being the
time since the endpoint's previous sample, so the estimate forgets at the same pace in
time whatever the traffic. A failed attempt is a sample of at least ``failure_penalty``
seconds, so an endpoint that fails fast (a refused connection) does not look fast. An
ignored outcome (a cancelled hedge, a local rejection) only ever raises the estimate: its
duration is a lower bound of how long the endpoint would have taken.

**No history.** An endpoint that has not answered yet costs nothing while it has nothing
in flight (a new endpoint gets an attempt soon) and ``unknown_penalty`` per attempt in
flight otherwise, so it gets one attempt at a time until its first answer comes back.

**Probes.** An endpoint that loses its pairing although it was not picked for
``probe_after`` seconds and has nothing in flight wins it anyway: a slow endpoint that
recovered is seen again. At most ``probe_share`` of the picks are such probes, which
bounds them in large pools whose endpoints are all picked rarely.

**Zones.** ``zone=`` prefers the endpoints of the local zone: see
:mod:`resilience.balancing.zones`.

Thread-safe: a pick takes no lock (its reads of another thread's updates are at worst
one sample old); the update of an estimate takes the balancer's lock briefly.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._validate import Seconds, as_seconds, number, seconds
from ..context import CallContext
from ..options import Options, Reconfigurable
from ..outcome import Outcome
from .base import Balancer, Skip, check_ejection
from .state import EndpointState
from .zones import ZoneGroups, ZonePreference, zone_preference

if TYPE_CHECKING:
    from .ejection import OutlierEjection

__all__ = ["PeakEwma", "PeakEwmaOptions"]

_SUCCESS = Outcome.SUCCESS
_FAILURE = Outcome.FAILURE
_DRAWS = 8  # random draws before a pick whose skip rules out many endpoints filters the list
_SMALL = 8  # at most this many candidates: compare them all, as cheap as two draws


@dataclass(frozen=True, slots=True)
class PeakEwmaOptions(Options):
    """How a :class:`PeakEwma` balancer weighs endpoints (see :mod:`resilience.balancing.p2c`).

    Attributes:
        decay: the EWMA's time constant: a sample ``Δt`` seconds after the previous one
            weighs ``1 - exp(-Δt / decay)``; seconds > 0 (default 2).
        probe_after: an endpoint not picked for this long, with nothing in flight, wins
            its next pairing as a probe; seconds > 0 (default 1).
        probe_share: the largest share of picks that may be probes, in [0, 1]
            (default 0.05; 0 turns probes off).
        unknown_penalty: the cost of each attempt in flight on an endpoint that has not
            answered yet, in seconds of latency, > 0 (default 10).
        failure_penalty: a failed attempt counts as taking at least this long, seconds
            >= 0 (default 1).
        zone: prefer the endpoints of this zone while it is healthy enough: a
            :class:`ZonePreference` or a zone name (default none).

    Raises:
        TypeError, ValueError: an option has the wrong type or is out of range.
    """

    decay: float = 2.0
    probe_after: float = 1.0
    probe_share: float = 0.05
    unknown_penalty: float = 10.0
    failure_penalty: float = 1.0
    zone: ZonePreference | None = None

    def __post_init__(self) -> None:
        self.set("decay", seconds("decay", self.decay))
        self.set("probe_after", seconds("probe_after", self.probe_after))
        self.set("probe_share", number("probe_share", self.probe_share, low=0.0, high=1.0))
        self.set("unknown_penalty", number("unknown_penalty", self.unknown_penalty, low=0.0, high=1e9, low_open=True))
        self.set("failure_penalty", seconds("failure_penalty", self.failure_penalty, allow_zero=True))
        self.set("zone", zone_preference(self.zone))


class _Score:
    """One endpoint's estimate: ``cost`` (seconds, < 0 before the first answer), its time, the last pick."""

    __slots__ = ("cost", "picked", "stamp")

    def __init__(self, now: float) -> None:
        self.cost = -1.0
        self.stamp = now
        self.picked = now


def _score(state: EndpointState[Any], now: float) -> _Score:
    score = state.score
    if type(score) is not _Score:
        score = state.score = _Score(now)
    return score


class PeakEwma(Reconfigurable[PeakEwmaOptions], Balancer):
    """P2C with Peak-EWMA: the cheaper of two random endpoints (see :mod:`resilience.balancing.p2c`).

    Args:
        options: the whole options object (instead of the keywords below).
        decay, probe_after, probe_share, unknown_penalty, failure_penalty, zone: see
            :class:`PeakEwmaOptions`.
        ejection: outlier ejection for the pools it serves (default none).
        rng: the random source of the draws (default a new ``random.Random()``; seed
            one for tests).

    :meth:`reconfigure` keeps every endpoint's estimate.
    """

    options_type = PeakEwmaOptions

    def __init__(
        self,
        *,
        options: PeakEwmaOptions | None = None,
        decay: Seconds = 2.0,
        probe_after: Seconds = 1.0,
        probe_share: float = 0.05,
        unknown_penalty: float = 10.0,
        failure_penalty: Seconds = 1.0,
        zone: ZonePreference | str | None = None,
        ejection: OutlierEjection | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if options is None:
            options = PeakEwmaOptions(
                decay=as_seconds(decay),
                probe_after=as_seconds(probe_after),
                probe_share=probe_share,
                unknown_penalty=unknown_penalty,
                failure_penalty=as_seconds(failure_penalty),
                zone=zone,  # type: ignore[arg-type]  # a name is turned into a ZonePreference
            )
        elif not isinstance(options, PeakEwmaOptions):
            raise TypeError(f"options must be PeakEwmaOptions, got {options!r}")
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random or None, got {rng!r}")
        self.ejection = check_ejection(ejection)
        self.rng = rng if rng is not None else random.Random()
        self._random = self.rng.random
        self._lock = threading.Lock()
        self._credit = 1.0 if options.probe_share > 0 else 0.0
        self._options = options
        self._zones = ZoneGroups(options.zone) if options.zone is not None else None

    def _reconfigure(self, options: PeakEwmaOptions) -> None:
        self._zones = ZoneGroups(options.zone) if options.zone is not None else None
        if options.probe_share == 0:
            self._credit = 0.0
        self._options = options

    # -- picks -----------------------------------------------------------------------------

    def pick(self, candidates: Sequence[EndpointState[Any]], ctx: CallContext, now: float) -> EndpointState[Any]:
        chosen = self.select(candidates, None, ctx, now)
        assert chosen is not None
        return chosen

    def select(
        self, states: Sequence[EndpointState[Any]], skip: Skip | None, ctx: CallContext, now: float
    ) -> EndpointState[Any] | None:
        zones = self._zones
        if zones is None:
            return self._two(states, skip, now)
        group = zones.candidates(states, now)
        chosen = self._two(group, skip, now)
        if chosen is None and group is not states:
            chosen = self._two(states, skip, now)  # every local endpoint ruled out: the other zones
        return chosen

    def _two(self, states: Sequence[EndpointState[Any]], skip: Skip | None, now: float) -> EndpointState[Any] | None:
        n = len(states)
        if n <= _SMALL:
            if skip is not None:
                states = [s for s in states if not skip(s)]
            return self._least(states, now)
        random_ = self._random
        if skip is None:
            i = int(random_() * n)
            j = int(random_() * (n - 1))
            return self._better(states[i], states[j + (j >= i)], now)
        first: EndpointState[Any] | None = None
        for _ in range(_DRAWS):
            state = states[int(random_() * n)]
            if state is first or skip(state):
                continue
            if first is not None:
                return self._better(first, state, now)
            first = state
        # The skip rules out much of the list: filter it (rare in a large pool).
        rest = [s for s in states if not skip(s)]
        return self._two(rest, None, now) if rest else None

    def _cost(self, state: EndpointState[Any], score: _Score) -> float:
        if score.cost < 0:
            return self._options.unknown_penalty * state.inflight
        return score.cost * (state.inflight + 1)

    def _least(self, states: Sequence[EndpointState[Any]], now: float) -> EndpointState[Any] | None:
        """The cheapest of a few endpoints (ties: the first from a random start), or a probe."""
        n = len(states)
        if n <= 1:
            if n == 0:
                return None
            _score(states[0], now).picked = now
            return states[0]
        random_ = self._random
        start = int(random_() * n)
        best, best_cost = start, math.inf
        for k in range(n):
            i = (start + k) % n
            cost = self._cost(states[i], _score(states[i], now))
            if cost < best_cost:
                best, best_cost = i, cost
        other = int(random_() * (n - 1))
        other += other >= best
        winner, loser = states[best], states[other]
        return self._finish(winner, _score(winner, now), loser, _score(loser, now), now)

    def _better(self, a: EndpointState[Any], b: EndpointState[Any], now: float) -> EndpointState[Any]:
        sa, sb = _score(a, now), _score(b, now)
        if self._cost(b, sb) < self._cost(a, sa):
            return self._finish(b, sb, a, sa, now)
        return self._finish(a, sa, b, sb, now)

    def _finish(
        self, winner: EndpointState[Any], sw: _Score, loser: EndpointState[Any], sl: _Score, now: float
    ) -> EndpointState[Any]:
        """``winner``, unless ``loser`` was left alone long enough for a probe."""
        options = self._options
        credit = self._credit + options.probe_share
        if credit >= 1.0 and loser.inflight == 0 and now - sl.picked >= options.probe_after:
            winner, sw = loser, sl
            credit -= 1.0
        self._credit = credit if credit < 1.0 else 1.0
        sw.picked = now
        return winner

    # -- learning --------------------------------------------------------------------------

    def observe(self, state: EndpointState[Any], outcome: Outcome, duration: float, now: float) -> None:
        if duration != duration or duration < 0:  # NaN or negative: a broken clock, not a sample
            return
        with self._lock:
            score = _score(state, now)
            cost = score.cost
            if outcome is _SUCCESS or outcome is _FAILURE:
                sample = duration if outcome is _SUCCESS else max(duration, self._options.failure_penalty)
                if sample >= cost:
                    score.cost = sample  # no history, or a peak: at once
                else:
                    elapsed = now - score.stamp
                    kept = math.exp(-elapsed / self._options.decay) if elapsed > 0 else 1.0
                    score.cost = cost * kept + sample * (1.0 - kept)
                score.stamp = now
            elif duration > 0 and duration > cost:
                score.cost = duration  # ignored: its duration is only a lower bound
                score.stamp = now

    def cost(self, state: EndpointState[Any]) -> float | None:
        """The cost a pick would see for ``state`` now (``None`` before its first answer)."""
        score = state.score
        if type(score) is not _Score or score.cost < 0:
            return None
        return float(score.cost * (state.inflight + 1))

    def __repr__(self) -> str:
        return f"PeakEwma({self._options!r})"
