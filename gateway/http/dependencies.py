"""What the route handlers need, as FastAPI dependencies over the app's state.

``create_app`` builds every object once, from the settings it is given, and puts it on
``app.state``; each dependency here only reads it back. They are ``async`` so that FastAPI
calls them in the event loop instead of handing each to its thread pool: a request pays
for an attribute read, nothing more.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from canary.settings import Settings
from gateway.events import EventIngestor
from gateway.experiment_source import ExperimentSource
from gateway.key_limits import RequestRateLimiter
from gateway.service import Gateway
from storage.objects import ObjectStore


async def app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


async def database(request: Request) -> Engine:
    """The database engine of those settings."""
    engine: Engine = request.app.state.engine
    return engine


async def object_store(request: Request) -> ObjectStore:
    """Where images are stored (S3 or a local directory)."""
    store: ObjectStore = request.app.state.store
    return store


async def job_gateway(request: Request) -> Gateway:
    """Submission: assignment, idempotency, the render queue."""
    gateway: Gateway = request.app.state.gateway
    return gateway


async def experiment_source(request: Request) -> ExperimentSource:
    """The experiment configuration the gateway assigns with."""
    experiments: ExperimentSource = request.app.state.experiments
    return experiments


async def event_ingestor(request: Request) -> EventIngestor:
    """Checks and stores client events."""
    ingestor: EventIngestor = request.app.state.event_ingestor
    return ingestor


async def rate_limiter(request: Request) -> RequestRateLimiter:
    """The per-key request rate (kept in Redis) and the count of refused requests."""
    limiter: RequestRateLimiter = request.app.state.rate_limiter
    return limiter


async def metrics_registry(request: Request) -> CollectorRegistry:
    """The Prometheus registry that ``GET /metrics`` exports (one collector, one broker
    probe per app)."""
    registry: CollectorRegistry = request.app.state.metrics_registry
    return registry


AppSettings = Annotated[Settings, Depends(app_settings)]
Database = Annotated[Engine, Depends(database)]
Store = Annotated[ObjectStore, Depends(object_store)]
JobGateway = Annotated[Gateway, Depends(job_gateway)]
Experiments = Annotated[ExperimentSource, Depends(experiment_source)]
Ingestor = Annotated[EventIngestor, Depends(event_ingestor)]
MetricsRegistry = Annotated[CollectorRegistry, Depends(metrics_registry)]
Limiter = Annotated[RequestRateLimiter, Depends(rate_limiter)]
