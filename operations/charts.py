"""Charts drawn on the server as inline SVG: no script, no CDN, readable with JavaScript off."""

from __future__ import annotations

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

# One colour per status, shared by both kinds of job; anything else is grey.
STATUS_COLOURS = {
    "pending": "#9aa5b1", "running": "#2f80ed", "completed": "#27ae60", "success": "#27ae60",
    "failed": "#eb5757", "error": "#eb5757", "timeout": "#f2994a", "cancelled": "#bdbdbd",
    "interrupted": "#bdbdbd",
}
WIDTH, HEIGHT, GAP = 600, 120, 1


def stacked_bars(counts: list[dict[str, int]], statuses: list[str], *, title: str) -> SafeString:
    """One bar per slot (a minute), stacked by status in ``statuses`` order, scaled to the
    tallest; each segment has a tooltip with its count."""
    tallest = max((sum(slot.values()) for slot in counts), default=0) or 1
    bar = WIDTH / max(len(counts), 1)
    rects = []
    for index, slot in enumerate(counts):
        bottom = float(HEIGHT)
        for status in statuses:
            count = slot.get(status, 0)
            if not count:
                continue
            height = HEIGHT * count / tallest
            bottom -= height
            rects.append((
                f"{index * bar:.1f}", f"{bottom:.1f}", f"{max(bar - GAP, 1):.1f}", f"{height:.1f}",
                STATUS_COLOURS.get(status, "#828282"), f"{count} {status}, {len(counts) - index} min ago",
            ))
    body = format_html_join(
        "", '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>', rects
    )
    return format_html(
        '<svg class="ops-chart" viewBox="0 0 {} {}" width="100%" height="{}" role="img" '
        'aria-label="{}" preserveAspectRatio="none"><rect width="100%" height="100%" fill="#f8f9fa"/>'
        '{}</svg>',
        WIDTH, HEIGHT, HEIGHT, title, body or mark_safe(""),
    )


def legend(statuses: list[str]) -> SafeString:
    return format_html_join(
        " ", '<span class="ops-legend"><i style="background:{}"></i>{}</span>',
        ((STATUS_COLOURS.get(status, "#828282"), status) for status in statuses),
    )
