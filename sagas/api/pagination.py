"""Page numbers of the API's lists, documented as they behave."""
from rest_framework.exceptions import NotFound
from rest_framework.pagination import PageNumberPagination


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
