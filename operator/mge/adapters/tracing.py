"""OpenTelemetry spans for atom attempts and LLM calls, under the Masterplan's trace_id; OTLP export opt-in."""

import atexit
import contextlib
import os
import uuid
from collections.abc import Iterator, Mapping
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, TraceFlags

TRACEPARENT_HEADER: Final = "traceparent"

# An SDK provider even when nothing is exported: span ids are then real and the same ids land in Postgres,
# in the LLM request headers and (when enabled) in Jaeger/Tempo. Without a processor a span costs ~µs.
_provider = TracerProvider(
    resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "mge")})
)
atexit.register(_provider.shutdown)  # flushes what the batch processor still holds
# Processors added later apply to it too; asking the provider for it per span cost as much as the span.
_tracer = _provider.get_tracer("mge")


def enable_export(processor: SpanProcessor) -> None:
    _provider.add_span_processor(processor)


def enable_otlp(endpoint: str) -> None:
    """Export spans to an OTLP/HTTP collector (e.g. http://otel-collector:4318/v1/traces)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    enable_export(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))


def _plan_context(trace_id: str) -> Context | None:
    """The Masterplan as a remote parent: its uuid is the OpenTelemetry trace id, so one plan = one trace.
    None (a trace of its own) for work outside a Masterplan."""
    try:
        plan = uuid.UUID(trace_id)
    except ValueError:
        return None
    root = SpanContext(
        trace_id=plan.int,
        span_id=(plan.int & 0xFFFFFFFFFFFFFFFF) or 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(root))


@contextlib.contextmanager
def span(name: str, trace_id: str, attributes: Mapping[str, str | int] | None = None) -> Iterator[Span]:
    """A span in the plan's trace; nested spans (an LLM call inside an attempt) become its children."""
    inherited = trace.get_current_span().get_span_context()
    same_plan = inherited.is_valid and f"{inherited.trace_id:032x}" == trace_id.replace("-", "")
    context = None if same_plan else _plan_context(trace_id)
    with _tracer.start_as_current_span(name, context=context, attributes=attributes) as current_span:
        yield current_span


def span_id_hex(current: Span) -> str:
    return f"{current.get_span_context().span_id:016x}"


def traceparent(current: Span) -> str:
    """W3C Trace Context header value for an outgoing request made inside `current`."""
    context = current.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-01"
