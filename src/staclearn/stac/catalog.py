"""Write STAC Items into a self-contained, relocatable static catalog.

:func:`write_catalog` lays out ``catalog.json`` → Collection → Items on a local folder or any
fsspec URL, copies the asset files in, makes every href between the catalog's objects
relative and every link to outside sources either canonical (http(s), unsigned) or relative
(same filesystem), so the catalog can be moved, copied or uploaded as it is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import pystac
from pystac.utils import make_relative_href

from staclearn._io import FsspecStacIO, copy_file, is_url, join_href, local_path
from staclearn.errors import PublishError
from staclearn.stac.items import unsigned_href

__all__ = ["write_catalog"]


def _strip_secrets(item: pystac.Item) -> None:
    """Unsign every asset and link href of ``item`` (in place)."""
    for asset in item.assets.values():
        asset.href = unsigned_href(asset.href)
    for link in item.links:
        if isinstance(link.target, str):
            link.target = unsigned_href(link.target)


_STRUCTURAL = frozenset({"self", "root", "parent", "child", "item", "collection"})


def _absolute_links(obj: pystac.STACObject) -> None:
    """Resolve the non-structural link hrefs of ``obj`` against its current self href (in
    place), so they survive the move of ``obj`` into another catalog."""
    from pystac.utils import make_absolute_href

    start = obj.get_self_href()
    for link in obj.links:
        if link.rel in _STRUCTURAL or not isinstance(link.target, str):
            continue
        href = link.target
        if start is not None and not is_url(href) and not os.path.isabs(local_path(href)):
            href = make_absolute_href(href, start)
        link.target = unsigned_href(href)


def _portable_href(href: str, start: str, local_start: str | None) -> str:
    """The href a published object at ``start`` writes for a link to ``href``.

    http(s) targets keep their canonical (unsigned) absolute URL; targets on the same object
    store or filesystem root as ``start`` become relative, so the catalog can be moved or
    copied along with its neighbours; a local target seen from an object-store ``start``
    is made relative to ``local_start`` (where that object lies in the local layout the
    catalog was copied from), else kept as a ``file://`` URI.
    """
    href = unsigned_href(href)
    if href.startswith(("http://", "https://")):
        return href
    if is_url(href):
        same_store = is_url(start) and urlsplit(href)[:2] == urlsplit(start)[:2]
        return make_relative_href(href, start) if same_store else href
    path = Path(local_path(href))
    if not path.is_absolute():  # relative to an object without a self href: nothing to resolve it against
        return href
    if is_url(start):
        if local_start is None:
            return path.resolve().as_uri()
        start = local_start
    start_dir = Path(local_path(start)).parent
    if path.anchor != start_dir.anchor:  # another drive: no relative path exists
        return path.as_uri()
    return Path(os.path.relpath(path, start_dir)).as_posix()


def _portable_links(obj: pystac.STACObject, root: str, base: Path | None) -> None:
    """Rewrite the non-structural links of ``obj`` (already at its final self href under
    ``root``) with :func:`_portable_href`."""
    start = obj.get_self_href()
    if start is None:
        return
    local_start = None
    if is_url(start) and base is not None and start.startswith(root.rstrip("/") + "/"):
        local_start = str(base / start[len(root.rstrip("/")) + 1 :])
    for link in obj.links:
        if link.rel in _STRUCTURAL:
            continue
        target = link.target
        href = target if isinstance(target, str) else target.get_self_href()
        if href is None:
            continue
        link.target = _portable_href(href, start, local_start)


def write_catalog(
    items: Sequence[pystac.Item],
    target: str | os.PathLike[str],
    *,
    id: str = "staclearn-run",
    description: str = "Outputs of a staclearn run",
    collection_id: str | None = None,
    license: str = "other",
    asset_root: str | os.PathLike[str] | None = None,
    children: Sequence[pystac.Collection] = (),
) -> pystac.Catalog:
    """Write Items into a self-contained static catalog: ``catalog.json`` → one Collection
    (``<collection_id>/collection.json``) → ``<collection_id>/<item id>/<item id>.json``.

    ``target`` is a local folder or any fsspec URL (``memory://``, ``s3://bucket/prefix``,
    ``file:///...``). Asset files that are local and not already under ``target`` are copied
    there, so the catalog stands on its own: under ``asset_root`` they keep their relative
    path, elsewhere they go next to their Item. The catalog is relocatable: every href
    between its own objects and to its assets is relative, and links to sources outside it
    (``derived_from`` the imagery, the model card) are their canonical absolute URL when
    remote (http(s), unsigned) and relative when local (same filesystem root), never an
    absolute machine path; from an object-store ``target`` a local source is linked relative
    to where the object lies under ``asset_root`` (a ``file://`` URI without one). Every
    href is unsigned first (query strings such as Planetary Computer SAS tokens are dropped)
    so no secret is published. Local JSON and copied files are written to a temporary name
    and renamed, so an interrupted run leaves no truncated output.

    Args:
        items: Items to publish (model card, predictions...). Their ``collection`` is set.
        target: catalog root folder or fsspec URL.
        id: catalog id.
        description: catalog and collection description.
        collection_id: id of the Collection; default ``id``.
        license: SPDX id or ``"other"`` for the Collection (the source data's licence rules).
        asset_root: local folder the Items' asset files are laid out under; default:
            ``target`` when it is local.
        children: further Collections to list in the root catalog (e.g. the chip index from
            :func:`chips_collection`); their assets are placed like the Items'.

    Returns:
        The saved root catalog.

    Raises:
        PublishError: ``target`` is an http(s) URL (read-only; use :func:`publish_to_api`).
    """
    root = os.fspath(target)
    if root.startswith(("http://", "https://")):
        raise PublishError(
            f"Cannot write a static catalog to {root}: http(s) is read-only. Use publish_to_api() "
            "for a STAC API, or a local folder / object-store URL (s3://, gs://, az://, memory://)."
        )
    if not is_url(root):
        root = str(Path(local_path(root)).resolve())
    base = Path(asset_root).resolve() if asset_root is not None else (None if is_url(root) else Path(root))
    cat = pystac.Catalog(id=id, description=description)
    cid = collection_id or id

    def place(owner: str, folder: str, assets: Mapping[str, pystac.Asset]) -> None:
        for key, asset in assets.items():
            asset.href = unsigned_href(asset.get_absolute_href() or asset.href)
            href = local_path(asset.href)
            if is_url(href):
                continue
            src = Path(href if os.path.isabs(href) else (base or Path.cwd()) / href).resolve()
            inside = base is not None and src.is_relative_to(base)
            rel = src.relative_to(base).as_posix() if inside else f"{folder}/{src.name}"
            dst = join_href(root, rel)
            if not (inside and not is_url(root) and base == Path(root)):
                if not src.is_file():
                    raise PublishError(
                        f"Asset {key!r} of {owner!r} points to {src}, which does not exist; "
                        "write the file before publishing or fix the href."
                    )
                copy_file(str(src), dst)
            asset.href = dst

    for item in items:
        _strip_secrets(item)
        _absolute_links(item)
        for rel in ("root", "parent", "collection"):  # re-parented below; stale ones may not resolve
            item.remove_links(rel)
    # a link to another Item being published follows it to its new place
    by_href = {os.path.normpath(local_path(h)): i for i in items if (h := i.get_self_href())}
    for item in items:
        for link in item.links:
            if link.rel not in _STRUCTURAL and isinstance(link.target, str):
                link.target = by_href.get(os.path.normpath(local_path(link.target)), link.target)
        place(item.id, f"{cid}/{item.id}", item.assets)
        item.collection_id = cid
    for child in children:
        _absolute_links(child)
        place(child.id, child.id, child.assets)
        cat.add_child(child)
    extent = pystac.Extent.from_items(items) if items else pystac.Extent(
        pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]), pystac.TemporalExtent([[None, None]])
    )
    col = pystac.Collection(id=cid, description=description, extent=extent, license=license)
    cat.add_child(col)
    col.add_items(items)
    cat.normalize_hrefs(root)
    cat.make_all_asset_hrefs_relative()
    for child in children:
        child.make_all_asset_hrefs_relative()
    for obj in [*items, *children]:  # derived_from and other links: relative, or canonical URLs
        _portable_links(obj, root, base)
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED, stac_io=FsspecStacIO())
    return cat
