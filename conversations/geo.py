"""Where a pin is: its mahalle, and whether it is in (or near) the district (pure; no I/O).

Points are (latitude, longitude) in degrees (WGS84), as the catalog writes them (`centre`,
`boundary`); polygons are rings of such points (closed or not). The catalog's geometry is
simplified and unofficial (see bot/catalogs/buca.toml), so every answer here is a suggestion for
the resident to confirm, never a fact stored without asking.
"""
from __future__ import annotations

import math
from enum import StrEnum
from typing import Iterable, Protocol, Sequence

from storage.reports import haversine_m

Point = tuple[float, float]
# A pin outside every mahalle polygon still gets the nearest mahalle centre up to this far away
# (the largest Buca mahalles are some 8 km across; centres of the small central ones ~500 m apart).
NEAREST_CENTRE_M = 2_500.0
# A pin this close outside the district's boundary is "near" (a street on the border, a GPS error).
NEAR_DISTRICT_M = 1_000.0


class Area(Protocol):
    key: str
    centre: Point | None
    boundary: Sequence[Point]


class Where(StrEnum):
    INSIDE = "inside"
    NEAR = "near"        # outside, within NEAR_DISTRICT_M of the boundary
    OUTSIDE = "outside"
    UNKNOWN = "unknown"  # the catalog has no district boundary


def distance_m(a: Point, b: Point) -> float:
    """Great-circle distance in metres."""
    return haversine_m(a[0], a[1], b[0], b[1])


def point_in_polygon(point: Point, ring: Sequence[Point]) -> bool:
    """Ray casting (even-odd rule) in the lat/lon plane; fine at a district's scale."""
    if len(ring) < 3:
        return False
    lat, lon = point
    inside = False
    j = len(ring) - 1
    for i in range(len(ring)):
        lat_i, lon_i = ring[i]
        lat_j, lon_j = ring[j]
        if (lat_i > lat) != (lat_j > lat):
            crossing = lon_i + (lat - lat_i) * (lon_j - lon_i) / (lat_j - lat_i)
            if lon < crossing:
                inside = not inside
        j = i
    return inside


def distance_to_ring_m(point: Point, ring: Sequence[Point]) -> float:
    """Shortest distance in metres from a point to a ring's edges (0 for a point on an edge), on
    an equirectangular projection around the point (metre-accurate at a district's scale)."""
    lat0 = math.radians(point[0])
    k_lat, k_lon = 111_320.0, 111_320.0 * math.cos(lat0)

    def xy(p: Point) -> tuple[float, float]:
        return (p[1] - point[1]) * k_lon, (p[0] - point[0]) * k_lat

    best = math.inf
    points = [xy(p) for p in ring]
    for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1]):
        dx, dy = x2 - x1, y2 - y1
        length = dx * dx + dy * dy
        t = 0.0 if length == 0 else max(0.0, min(1.0, -(x1 * dx + y1 * dy) / length))
        best = min(best, math.hypot(x1 + t * dx, y1 + t * dy))
    return best


def where_in_district(point: Point, boundary: Sequence[Point], near_m: float = NEAR_DISTRICT_M) -> Where:
    """Inside the district, near it (within `near_m` of its boundary), outside, or unknown."""
    if len(boundary) < 3:
        return Where.UNKNOWN
    if point_in_polygon(point, boundary):
        return Where.INSIDE
    return Where.NEAR if distance_to_ring_m(point, boundary) <= near_m else Where.OUTSIDE


def mahalle_of(point: Point, areas: Iterable[Area], nearest_m: float = NEAREST_CENTRE_M) -> str | None:
    """The key of the mahalle a pin is in: the one whose polygon holds it (of several overlapping,
    the one with the nearest centre); else the mahalle with the nearest centre within `nearest_m`;
    else None."""
    areas = list(areas)
    holding = [a for a in areas if a.boundary and point_in_polygon(point, a.boundary)]
    if len(holding) == 1:
        return holding[0].key
    candidates = [a for a in (holding or areas) if a.centre is not None]
    if holding and not candidates:
        return holding[0].key
    if not candidates:
        return None
    best = min(candidates, key=lambda a: distance_m(point, a.centre))
    if holding or distance_m(point, best.centre) <= nearest_m:
        return best.key
    return None
