"""Charts for the admin as inline SVG, drawn on the server: no JavaScript, no CDN, nothing
the Content-Security-Policy has to allow (colours are SVG presentation attributes, not
``style``). Each chart is a small picture with ``<title>`` tooltips; the exact figures are
in the table beside it, so the picture only has to be read at a glance."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from invoicing.money import format_amount

# Colours that read on white and for the common colour blindnesses (blue / orange), and the
# aging scale from calm to alarming.
BLUE = "#3b6ea5"
ORANGE = "#e08a2c"
GREEN = "#3a8f5c"
RED = "#c0392b"
GREY = "#9aa5b1"
AGING_COLOURS = ("#3a8f5c", "#c9b63b", "#e08a2c", "#d35f2a", "#a3231b")
FONT = "font-family='system-ui, sans-serif'"


def _f(value: Decimal | int) -> str:
    """A coordinate with one decimal. Geometry is computed in Decimal like the amounts it
    draws (no binary floating point anywhere near money, even for pixels)."""
    return f"{Decimal(value):.1f}"


def compact(value: Decimal) -> str:
    """An axis label: 950, 1.2k, 3.4M (rounded; the table has the exact figures)."""
    magnitude = abs(value)
    for limit, suffix in ((Decimal(10) ** 9, "B"), (Decimal(10) ** 6, "M"), (Decimal(1000), "k")):
        if magnitude >= limit:
            return f"{value / limit:.1f}".rstrip("0").rstrip(".") + suffix
    if magnitude >= 10 or magnitude == 0:
        return f"{value:.0f}"
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _nice_max(value: Decimal) -> Decimal:
    """The smallest 1, 2, 2.5 or 5 × 10ⁿ at or above ``value`` (the top of the axis)."""
    if value <= 0:
        return Decimal(1)
    exponent = value.adjusted()
    for step in (1, 2, Decimal("2.5"), 5, 10):
        top = Decimal(step).scaleb(exponent)
        if top >= value:
            return top
    return Decimal(10).scaleb(exponent)


def grouped_bars(
    labels: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[Decimal]]],
    *,
    currency: str,
    width: int = 560,
    height: int = 220,
    title: str = "",
) -> SafeString:
    """Bars side by side for each label (e.g. rated and invoiced per month). ``series``:
    (name, colour, one value per label). Negative values are drawn as zero."""
    left, right, top, bottom = 48, 8, 24, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((max(values, default=Decimal(0)) for _n, _c, values in series), default=0)
    axis_max = _nice_max(Decimal(peak))
    group_w = Decimal(plot_w) / max(len(labels), 1)
    bar_w = group_w * Decimal("0.8") / max(len(series), 1)
    parts: list[str] = []
    for i in range(5):  # grid lines and their labels
        value = axis_max * i / 4
        y = top + plot_h - Decimal(plot_h) * i / 4
        parts.append(
            format_html(
                "<line x1='{}' x2='{}' y1='{}' y2='{}' stroke='#e3e7eb'/>"
                "<text x='{}' y='{}' text-anchor='end' font-size='11' fill='#555' {}>"
                "{}</text>",
                left,
                width - right,
                _f(y),
                _f(y),
                left - 6,
                _f(y + 4),
                mark_safe(FONT),
                compact(value),
            )
        )
    for index, label in enumerate(labels):
        x0 = left + group_w * index + group_w / 10
        for position, (name, colour, values) in enumerate(series):
            value = max(values[index], Decimal(0))
            bar_h = value / axis_max * plot_h if axis_max else Decimal(0)
            parts.append(
                format_html(
                    "<rect x='{}' y='{}' width='{}' height='{}' fill='{}'>"
                    "<title>{} {}: {}</title></rect>",
                    _f(x0 + bar_w * position),
                    _f(top + plot_h - bar_h),
                    _f(max(bar_w - 2, Decimal(1))),
                    _f(bar_h),
                    colour,
                    name,
                    label,
                    format_amount(values[index], currency),
                )
            )
        parts.append(
            format_html(
                "<text x='{}' y='{}' text-anchor='middle' font-size='11' fill='#333' {}>"
                "{}</text>",
                _f(left + group_w * index + group_w / 2),
                height - 10,
                mark_safe(FONT),
                label,
            )
        )
    legend_x = left
    for name, colour, _values in series:
        parts.append(
            format_html(
                "<rect x='{}' y='6' width='10' height='10' fill='{}'/>"
                "<text x='{}' y='15' font-size='11' fill='#333' {}>{}</text>",
                legend_x,
                colour,
                legend_x + 14,
                mark_safe(FONT),
                name,
            )
        )
        legend_x += 14 + 8 * len(name) + 16
    return _svg(width, height, title, parts)


def stacked_bar(
    segments: Sequence[tuple[str, str, Decimal]],
    *,
    currency: str,
    width: int = 560,
    height: int = 28,
    title: str = "",
) -> SafeString:
    """One horizontal bar split in proportion to ``segments`` (label, colour, value): the
    receivables by age. An empty total draws a grey bar."""
    total = sum((max(v, Decimal(0)) for _l, _c, v in segments), Decimal(0))
    parts: list[str] = []
    if not total:
        parts.append(format_html("<rect x='0' y='0' width='{}' height='{}' fill='#eef1f4'/>",
                                 width, height))
        return _svg(width, height, title, parts)
    x = Decimal(0)
    for label, colour, value in segments:
        if value <= 0:
            continue
        w = value / total * width
        parts.append(
            format_html(
                "<rect x='{}' y='0' width='{}' height='{}' fill='{}'>"
                "<title>{}: {}</title></rect>",
                _f(x),
                _f(w),
                height,
                colour,
                label,
                format_amount(value, currency),
            )
        )
        x += w
    return _svg(width, height, title, parts)


def diverging_bar(value: Decimal, scale: Decimal, *, width: int = 80, height: int = 12) -> (
    SafeString
):
    """A bar from the middle, right and green for a positive ``value``, left and red for a
    negative one, its length ``value / scale`` of the half width (a margin in a table)."""
    half = Decimal(width) / 2
    share = min(abs(value) / scale, Decimal(1)) if scale else Decimal(0)
    w = share * half
    x = half if value >= 0 else half - w
    colour = GREEN if value >= 0 else RED
    parts = [
        format_html(
            "<rect x='{}' y='1' width='{}' height='{}' fill='{}'/>", _f(x), _f(w), height - 2,
            colour,
        ),
        format_html(
            "<line x1='{}' x2='{}' y1='0' y2='{}' stroke='#777'/>", half, half, height
        ),
    ]
    return _svg(width, height, "", parts)


def sparkline(values: Sequence[Decimal], *, width: int = 240, height: int = 40, title: str = ""
              ) -> SafeString:
    """Daily values as small bars (a customer's recent usage)."""
    peak = max(values, default=Decimal(0))
    parts: list[str] = []
    if values:
        step = Decimal(width) / len(values)
        for index, value in enumerate(values):
            h = value / peak * (height - 2) if peak > 0 else Decimal(0)
            parts.append(
                format_html(
                    "<rect x='{}' y='{}' width='{}' height='{}' fill='{}'/>",
                    _f(step * index),
                    _f(height - h),
                    _f(max(step - 1, Decimal(1))),
                    _f(h),
                    BLUE,
                )
            )
    parts.append(
        format_html("<line x1='0' x2='{}' y1='{}' y2='{}' stroke='#ccc'/>", width, height, height)
    )
    return _svg(width, height, title, parts)


def _svg(width: int, height: int, title: str, parts: Sequence[str]) -> SafeString:
    return format_html(
        "<svg xmlns='http://www.w3.org/2000/svg' class='chart' viewBox='0 0 {} {}' width='{}' "
        "height='{}' role='img' aria-label='{}'>{}{}</svg>",
        width,
        height,
        width,
        height,
        title,
        format_html("<title>{}</title>", title) if title else "",
        format_html_join("", "{}", ((mark_safe(p),) for p in parts)),
    )
