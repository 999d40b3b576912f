"""The outline of a lesion on one slice, as a closed polygon in DICOM pixel coordinates.

The SR draws each lesion as a TID 1410 "Image Region" (SCOORD, closed
POLYLINE) on its key slice, because viewers such as OHIF show an SR only
through the spatial coordinates of its measurement groups. The outline must
enclose exactly the pixels the SEG marks there, so it follows the pixel edges
(a "crack" boundary), not a smoothed iso-line through pixel centres.

DICOM places (0, 0) at the top left corner of the top left pixel and that
pixel's centre at (0.5, 0.5) (PS3.3 C.18.6.1.2), so the corners of pixel
``(row r, column c)`` are the integer points ``(c, r)`` .. ``(c + 1, r + 1)``
and the edges traced here are exactly the pixel borders.

Hand-written because none of our dependencies traces a binary mask (scikit-image
and OpenCV would be new, heavy dependencies for one small function); the
method is the textbook one: collect every foreground pixel side that faces
background as a directed edge, with the foreground on its right, and chain
the edges into loops.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

#: A vertex on the pixel-corner lattice: (x = column, y = row).
Point = tuple[int, int]


def outer_outline(mask: np.ndarray) -> np.ndarray:
    """The outer boundary of the largest 4-connected region of ``mask``.

    Returns an ``(n, 2)`` float array of (column, row) points in DICOM pixel
    coordinates, without collinear points, whose last point repeats the first
    (a closed POLYLINE, PS3.3 C.18.6.1.2). Holes are not outlined: the polygon
    is the region's outer border. Raises ``ValueError`` on an empty mask.
    """
    if mask.ndim != 2:
        raise ValueError("the mask must be 2D (rows, columns)")
    loops = _boundary_loops(np.asarray(mask, dtype=bool))
    outer = [loop for loop in loops if _signed_area(loop) > 0]
    if not outer:
        raise ValueError("the mask has no foreground pixel: nothing to outline")
    corners = _corners(max(outer, key=_signed_area))
    return np.array([*corners, corners[0]], dtype=np.float64)


def polygon_area(points: np.ndarray) -> float:
    """The area enclosed by a closed polygon of (x, y) points (last point = first), in pixel² (shoelace)."""
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2.0)


def _boundary_edges(mask: np.ndarray) -> list[tuple[Point, Point]]:
    """Every pixel side between foreground and background, foreground on the walker's right.

    With y pointing down, "right" of east is south: the top side of a pixel
    runs east, its right side south, its bottom west and its left north, so
    an outer border runs clockwise on screen and a hole's anticlockwise.
    """
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1]
    edges: list[tuple[Point, Point]] = []
    sides = (
        (padded[:-2, 1:-1], ((0, 0), (1, 0))),  # background above: top side, east
        (padded[1:-1, 2:], ((1, 0), (1, 1))),  # background right: right side, south
        (padded[2:, 1:-1], ((1, 1), (0, 1))),  # background below: bottom side, west
        (padded[1:-1, :-2], ((0, 1), (0, 0))),  # background left: left side, north
    )
    for neighbour, ((x0, y0), (x1, y1)) in sides:
        for r, c in np.argwhere(inner & ~neighbour):
            edges.append(((int(c) + x0, int(r) + y0), (int(c) + x1, int(r) + y1)))
    return edges


def _boundary_loops(mask: np.ndarray) -> list[list[Point]]:
    """The closed loops of boundary edges, each as its list of vertices.

    Where two regions touch only at a corner, that vertex has two outgoing
    edges; the walker turns right there, which keeps going round the same
    pixel and so treats diagonal neighbours as separate regions (4-connectivity).
    """
    outgoing: dict[Point, list[Point]] = defaultdict(list)
    for start, end in _boundary_edges(mask):
        outgoing[start].append(end)
    loops = []
    while outgoing:
        first = next(iter(outgoing))
        loop, vertex, heading = [first], first, None
        while True:
            ends = outgoing[vertex]
            end = ends.pop(_choose(vertex, ends, heading))
            if not ends:
                del outgoing[vertex]
            heading = (end[0] - vertex[0], end[1] - vertex[1])
            vertex = end
            if vertex == first:
                break
            loop.append(vertex)
        loops.append(loop)
    return loops


def _choose(vertex: Point, ends: list[Point], heading: tuple[int, int] | None) -> int:
    """Index of the edge to follow: the only one, or at a pinch the right turn."""
    if len(ends) == 1 or heading is None:
        return 0
    right = (-heading[1], heading[0])
    for index, end in enumerate(ends):
        if (end[0] - vertex[0], end[1] - vertex[1]) == right:
            return index
    return 0


def _signed_area(loop: list[Point]) -> float:
    """Shoelace area; positive for an outer border (clockwise on screen, y down)."""
    xs = np.array([p[0] for p in loop], dtype=np.float64)
    ys = np.array([p[1] for p in loop], dtype=np.float64)
    return float(np.dot(xs, np.roll(ys, -1)) - np.dot(np.roll(xs, -1), ys)) / 2.0


def _corners(loop: list[Point]) -> list[Point]:
    """The loop without the vertices where it goes straight on."""
    n = len(loop)
    corners = []
    for i, point in enumerate(loop):
        before, after = loop[i - 1], loop[(i + 1) % n]
        incoming = (point[0] - before[0], point[1] - before[1])
        outgoing = (after[0] - point[0], after[1] - point[1])
        if incoming != outgoing:
            corners.append(point)
    return corners
