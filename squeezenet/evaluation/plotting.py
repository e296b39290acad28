"""Point labels that stay readable: placed where they cover no other label and no point.

``place_labels`` tries offsets around each point, nearest first, and keeps the first whose box
covers no label already placed, no marker and nothing outside the axes; a label that fits
nowhere becomes a number beside its point, explained in a key below the axes. ``text_overlaps``
is the check: the pairs of texts (and texts over markers) that overlap in the rendered figure.
"""
from __future__ import annotations

from itertools import combinations

# candidate offsets (points) of a label's anchor from its point, nearest first; "ha" of each
_OFFSETS = [((6, -3), "left"), ((-6, -3), "right"), ((0, 7), "center"), ((0, -14), "center"),
            ((6, 4), "left"), ((6, -10), "left"), ((-6, 4), "right"), ((-6, -10), "right")]
_RINGS = (1.0, 1.8, 2.8, 4.0)
MARKER_PAD = 2.0  # points around a marker that a label keeps clear of


def _renderer(fig):
    """The figure drawn, and its renderer (a closed figure gets an Agg canvas of its own)."""
    if not hasattr(fig.canvas, "get_renderer"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _marker_boxes(ax, renderer):
    """Display-space boxes of every line marker drawn on ``ax``."""
    from matplotlib.transforms import Bbox
    boxes = []
    scale = ax.figure.dpi / 72
    for line in ax.get_lines():
        if line.get_marker() in (None, "None", "", " "):
            continue
        half = (line.get_markersize() / 2 + MARKER_PAD) * scale
        for x, y in line.get_transform().transform(line.get_xydata()):
            boxes.append(Bbox([[x - half, y - half], [x + half, y + half]]))
    return boxes


def place_labels(ax, points: list[tuple[float, float]], labels: list[str], fontsize: float = 7,
                 key_title: str = "", key_y: float = -0.3) -> list:
    """Annotate ``points`` (data coordinates) with ``labels`` where they overlap nothing.

    Returns the annotations. Labels that fit nowhere are replaced by numbers, listed in a key under
    the axes (its top at ``key_y``, in axes fractions).
    """
    renderer = _renderer(ax.figure)
    inside = ax.get_window_extent(renderer)
    taken = _marker_boxes(ax, renderer)
    placed, keyed = [], []
    for (x, y), text in zip(points, labels):
        note = _try_place(ax, renderer, (x, y), text, fontsize, taken, inside)
        if note is None:
            keyed.append(text)
            note = _try_place(ax, renderer, (x, y), str(len(keyed)), fontsize, taken, inside, force=True)
        placed.append(note)
    if keyed:
        lines = [f"{i}: {t}" for i, t in enumerate(keyed, 1)]
        ax.text(0.0, key_y, (key_title + "\n" if key_title else "") + "\n".join(lines), transform=ax.transAxes,
                fontsize=fontsize, va="top", ha="left")
    return placed


def _try_place(ax, renderer, xy, text, fontsize, taken, inside, force=False):
    for ring in _RINGS:
        for (dx, dy), ha in _OFFSETS:
            # a label away from its point gets a thin leader line to it
            leader = dict(arrowstyle="-", lw=0.5, color="grey", shrinkA=0, shrinkB=3) if ring > 1 else None
            note = ax.annotate(text, xy, xytext=(dx * ring, dy * ring), textcoords="offset points",
                               fontsize=fontsize, ha=ha, annotation_clip=False, arrowprops=leader)
            box = _text_box(note, renderer)
            fits = (box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0 and box.y1 <= inside.y1
                    and not any(box.overlaps(t) for t in taken))
            if fits:
                taken.append(box)
                return note
            note.remove()
    if not force:
        return None
    note = ax.annotate(text, xy, xytext=_OFFSETS[0][0], textcoords="offset points", fontsize=fontsize)
    taken.append(_text_box(note, renderer))
    return note


def _text_box(text, renderer):
    """The box of a text's characters (an annotation's own extent takes in its leader line)."""
    from matplotlib.text import Annotation, Text
    if isinstance(text, Annotation):
        text.update_positions(renderer)  # where its offset puts the text
    return Text.get_window_extent(text, renderer)


def text_overlaps(fig) -> list[tuple[str, str]]:
    """Pairs of visible, non-empty texts of ``fig`` whose boxes overlap, and texts over markers
    (as ``(text, "marker")``). Tick labels count; the empty texts matplotlib keeps do not."""
    renderer = _renderer(fig)
    from matplotlib.text import Text
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    boxes = [(t.get_text(), _text_box(t, renderer)) for t in texts]
    out = [(a, b) for (a, ba), (b, bb) in combinations(boxes, 2) if ba.overlaps(bb)]
    markers = [m for ax in fig.axes for m in _marker_boxes(ax, renderer)]
    # only the labels of points keep clear of markers (tick labels sit outside the axes anyway)
    for t, (text, box) in zip(texts, boxes):
        if t.__class__.__name__ == "Annotation" and any(box.overlaps(m) for m in _shrunk(markers)):
            out.append((text, "marker"))
    return out


def _shrunk(boxes):
    """Marker boxes without their padding: touching the pad is fine, covering the marker is not."""
    from matplotlib.transforms import Bbox
    out = []
    for b in boxes:
        pad = min(b.width, b.height) * 0.25
        out.append(Bbox([[b.x0 + pad, b.y0 + pad], [b.x1 - pad, b.y1 - pad]]))
    return out
