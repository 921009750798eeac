"""`/v1/items`: catalog upserts and item-to-item neighbours."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from feature_store.catalog import Catalog, CatalogEntryError
from feature_store.schemas import Item
from services.api.deps import ItemIdPath, ReadAccess, RequestIdDep, StateDep, StoreDep, WriteAccess
from services.api.errors import NotFoundError, ServiceUnavailableError, UnprocessableError
from services.api.schemas import ItemUpsert, SimilarItem, SimilarItemsResponse, UpsertResponse
from services.recommend.similar import similar_items

router = APIRouter(prefix="/v1/items", tags=["items"])


@router.put("/{item_id:path}", response_model=UpsertResponse, dependencies=[WriteAccess])
def put_item(
    item_id: ItemIdPath, body: ItemUpsert, state: StateDep, store: StoreDep, request_id: RequestIdDep
) -> UpsertResponse:
    """Create or replace an item: availability, categories, metadata. Unavailable items are never recommended."""
    item = Item(item_id=item_id, **dict(body))  # not model_dump: it fails on metadata too deep to store
    try:
        # Written through to the Parquet catalog first: it stays the durable source of truth that
        # batch jobs and the startup catalog sync read (services/recommend/catalog_sync.py).
        Catalog.from_settings(state.settings).upsert_items([item])
    except CatalogEntryError as exc:
        raise UnprocessableError(str(exc)) from exc
    except OSError as exc:
        raise ServiceUnavailableError("catalog file write failed; retry later") from exc
    created = store.upsert_item(item)
    return UpsertResponse(id=item_id, created=created, request_id=request_id)


@router.get("/{item_id:path}/similar", response_model=SimilarItemsResponse, dependencies=[ReadAccess])
def get_similar(
    item_id: ItemIdPath, state: StateDep, request_id: RequestIdDep,
    k: Annotated[int, Query(ge=1, le=100)] = 10,
) -> SimilarItemsResponse:
    """Neighbours from the recall model's embeddings, or category neighbours for a new item."""
    found = similar_items(state.store, state.models.bundle, item_id, k)
    if found is None:
        raise NotFoundError(f"item {item_id!r} is neither in the catalog nor in the recall model")
    neighbours, source = found
    return SimilarItemsResponse(
        item_id=item_id, source=source, request_id=request_id,
        items=[SimilarItem(item_id=i, score=s) for i, s in neighbours],
    )


# After `/similar`: a path parameter takes slashes (an item id may be a URL), so the first match wins.
@router.get("/{item_id:path}", response_model=Item, dependencies=[ReadAccess])
def get_item(item_id: ItemIdPath, store: StoreDep) -> Item:
    """The catalog entry of one item."""
    item = store.get_item(item_id)
    if item is None:
        raise NotFoundError(f"item {item_id!r} is not in the catalog")
    return item
