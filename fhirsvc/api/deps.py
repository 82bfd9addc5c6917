"""The request-scoped dependencies of the routes: what the app made once (settings, mappings, pools, store) and
who calls."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated

from fastapi import Depends, Request

from fhirsvc.api.client_jwt import CdsClientIdentity, cds_client, discovery_client
from fhirsvc.config import Settings
from fhirsvc.fhir.client import FhirClientPool
from fhirsvc.store.db import Store
from fhirsvc.terminology.knowledge import Knowledge


# Dependencies are `async def` although they never wait: FastAPI runs a plain `def` dependency in the thread pool,
# one hand-off per dependency per call (bench/README.md).
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_knowledge(request: Request) -> Knowledge:
    knowledge: Knowledge = request.app.state.knowledge
    return knowledge


async def get_pool(request: Request) -> FhirClientPool:
    pool: FhirClientPool = request.app.state.fhir_pool
    return pool


async def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def today(request: Request) -> date:
    """The evaluation date: FHIRSVC_TODAY when set (demos), else the current UTC date."""
    pinned: date | None = request.app.state.settings.today
    return pinned or datetime.now(UTC).date()


SettingsDep = Annotated[Settings, Depends(get_settings)]
KnowledgeDep = Annotated[Knowledge, Depends(get_knowledge)]
PoolDep = Annotated[FhirClientPool, Depends(get_pool)]
TodayDep = Annotated[date, Depends(today)]
StoreDep = Annotated[Store, Depends(get_store)]
ClientDep = Annotated[CdsClientIdentity | None, Depends(cds_client)]
DiscoveryClientDep = Annotated[CdsClientIdentity | None, Depends(discovery_client)]
