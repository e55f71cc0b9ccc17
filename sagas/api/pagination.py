"""Pages of the API's lists, documented as they behave: cursors for sagas, page numbers for the rest.

The lists of one saga's events and of the steps waiting for a user are
bounded by what they show; the saga list grows with the table.
"""
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination, PageNumberPagination
from rest_framework.response import Response


class SagaPagination(PageNumberPagination):
    """DRF's page numbers; the schema says they start at 1.

    A page that is not a number from 1, one past the last, or a blank
    ``?page=`` answers 404 (DRF's answer to a page it cannot serve): the
    list views document that 404.
    """

    def get_page_number(self, request, paginator):
        if request.query_params.get(self.page_query_param, None) == "":
            raise NotFound(self.invalid_page_message)
        return super().get_page_number(request, paginator)

    def get_schema_operation_parameters(self, view) -> list[dict]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_query_param:
                parameter["schema"] = {**parameter["schema"], "minimum": 1}
        return parameters


class SagaCursorPagination(CursorPagination):
    """The saga list: cursors over ``created_at`` (newest first), with no count.

    Page numbers need ``COUNT(*)`` of every matching saga on every page, and a
    deep page an ``OFFSET`` that reads every row before it: both grow with the
    table. A cursor reads one page through the ``created_at`` index. The
    answer keeps the keys of the page-number answers (``count``, ``next``,
    ``previous``, ``results``); ``count`` is always null. An old client's
    ``?page=1`` is the first page; any other page number answers 404, so a
    client counting pages stops instead of reading the first page forever.
    """

    ordering = ("-created_at", "-id")
    page_size_query_param = None
    invalid_cursor_message = "Invalid cursor: follow the `next` and `previous` links of a page."
    retired_page_message = "Page numbers are retired on this list: follow `next` (a cursor) instead."

    def paginate_queryset(self, queryset, request, view=None):
        page = request.query_params.get("page")
        if page is not None and page != "1":
            raise NotFound(self.retired_page_message, code="page_numbers_retired")
        return super().paginate_queryset(queryset, request, view)

    def get_paginated_response(self, data) -> Response:
        return Response({"count": None, "next": self.get_next_link(), "previous": self.get_previous_link(),
                         "results": data})

    def get_paginated_response_schema(self, schema: dict) -> dict:
        answer = super().get_paginated_response_schema(schema)
        answer["properties"] = {"count": {"type": "integer", "nullable": True, "description": (
            "Always null: the list is not counted (it was the number of matching sagas).")},
            **answer["properties"]}
        answer["required"] = ["count", *answer.get("required", [])]
        return answer

    def get_schema_operation_parameters(self, view) -> list[dict]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.cursor_query_param:
                parameter["schema"] = {**parameter["schema"], "pattern": r"^[^\x00]*$"}  # empty: the first page
        return parameters
