"""Template filters for the saga's run page (``sagas.run_page``)."""
from __future__ import annotations

import json
from typing import Any

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString

from .. import run_page

register = template.Library()


@register.filter
def when(at) -> SafeString | str:
    """A time as the run page shows every time: in the browser's zone, UTC on hover."""
    return run_page.when(at)


@register.filter
def pretty_json(value: Any) -> SafeString:
    return format_html("<pre class=\"json\">{}</pre>",
                       json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False))
