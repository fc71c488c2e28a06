"""A short account of what a config sets up (``resilience config check`` prints it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .schema_policies import PolicySetSection

if TYPE_CHECKING:
    from .load import Config

__all__ = ["describe_set", "summarize"]


def _seconds(value: float) -> str:
    if value >= 60 and value % 60 == 0:
        return f"{value / 60:g}m"
    if value < 1:
        return f"{value * 1000:g}ms"
    return f"{value:g}s"


def _policy(kind: str, section: Any) -> str:
    if kind in ("timeout", "attempt_timeout"):
        return f"{kind}({_seconds(section.seconds)})"
    if kind == "retry":
        return f"retry({section.attempts} attempts, {section.backoff.kind})"
    if kind == "hedge":
        when = f"p{section.percentile * 100:g}" if section.percentile is not None else _seconds(section.delay)
        return f"hedge(after {when}, up to {section.max_hedges})"
    if kind == "circuit_breaker":
        if section.window_size is not None:
            how = f"{section.failure_rate or 0.5:g} of {section.window_size} calls"
        elif section.window_duration is not None:
            how = f"{section.failure_rate or 0.5:g} over {_seconds(section.window_duration)}"
        else:
            how = f"{section.failure_threshold or 5} in a row"
        return f"circuit_breaker({how}, break {_seconds(section.break_duration)})"
    if kind == "rate_limit":
        rate = section.rate if isinstance(section.rate, str) else f"{section.rate[0]} per {_seconds(section.rate[1])}"
        return f"rate_limit({rate}, {section.mode})"
    if kind == "token_bucket":
        return f"token_bucket({section.rate:g}/s, burst {section.burst}, {section.mode})"
    if kind == "bulkhead":
        return f"bulkhead({section.max_concurrent}, queue {section.max_queue})"
    if kind == "concurrency_limit":
        return f"concurrency_limit({section.algorithm.kind})"
    if kind == "fallback":
        return "fallback(handler)" if section.handler else "fallback(value)"
    return kind


def describe_set(section: PolicySetSection) -> str:
    """``timeout(5s) > retry(3 attempts, exponential_jitter) > ...``: a set's policies, outermost first."""
    kinds = section.kinds()
    return " > ".join(_policy(kind, section.section(kind)) for kind in kinds) if kinds else "(no policies)"


def summarize(config: Config) -> str:
    """Lines saying what ``config`` sets up (not yet redacted)."""
    data = config.data
    lines = [f"policy sets ({len(data.policies)}):"]
    lines += [f"  {name}: {describe_set(section)}" for name, section in data.policies.items()]
    if data.discovery:
        lines.append(f"discovery sources ({len(data.discovery)}):")
        lines += [f"  {name}: {section.uri}" for name, section in data.discovery.items()]
    if data.services:
        lines.append(f"services ({len(data.services)}):")
        for name, service in data.services.items():
            source = service.discovery
            where = f"{len(source)} static addresses" if isinstance(source, list) else (source or "no discovery")
            ejection = ", outlier ejection" if service.ejection is not None else ""
            lines.append(f"  {name}: {where}, balancer {service.balancer.kind}{ejection}")
    grpc = data.grpc
    methods = sum(len(s.methods) for s in grpc.services.values())
    lines.append(
        f"grpc: default policy set {grpc.policy or '(none)'}; {len(grpc.services)} service(s), "
        f"{methods} method(s) with settings of their own"
    )
    http = data.http
    routes = sum(len(h.routes) for h in http.hosts.values())
    lines.append(
        f"http: default policy set {http.policy or '(none)'}; {len(http.hosts)} host(s), {routes} route(s); "
        f"balancer {http.balancer.kind}"
    )
    telemetry = data.telemetry
    if telemetry.enabled:
        lines.append(
            f"telemetry: on (service {telemetry.service_name or '-'}, export {telemetry.otlp_endpoint or 'none'}, "
            f"sample {telemetry.sample_ratio:g})"
        )
    else:
        lines.append("telemetry: off")
    return "\n".join(lines)
