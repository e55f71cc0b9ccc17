"""The corporate admin: pages render, saga-written rows are read-only, a sent message says it cannot be undone."""
import uuid

import pytest
from django.contrib import admin
from django.urls import NoReverseMatch, reverse

from corporate import fixtures, models
from corporate.fixtures import Inputs
from corporate.sagas import ORDER_FULFILLMENT
from tests.unit.test_corporate_workflows import Run


@pytest.fixture
def staff(admin_client):
    return admin_client


@pytest.fixture
def rows(db):
    fixtures.pools(laptops=1, desks=1)
    Run("corporate.employee_onboarding", Inputs.onboarding()).forward()
    Run(ORDER_FULFILLMENT, Inputs.order()).forward()
    Run("corporate.budget_approval", Inputs.budget(amount="20000")).forward()
    Run("corporate.system_deployment", Inputs.deployment()).forward()


CORPORATE_MODELS = [m for m in admin.site._registry if m._meta.app_label == "corporate"]


@pytest.mark.parametrize("model", CORPORATE_MODELS, ids=lambda m: m.__name__)
def test_changelist_and_change_page_render(staff, rows, model):
    opts = model._meta
    assert staff.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")).status_code == 200
    row = model.objects.first()
    if row is not None:
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[row.pk])
        assert staff.get(url).status_code == 200


@pytest.mark.parametrize("model", [models.Order, models.Payment, models.Employee, models.Deployment,
                                   models.Notification, models.BudgetRequest])
def test_rows_written_by_sagas_cannot_be_edited_or_deleted(rf, admin_user, model):
    model_admin = admin.site._registry[model]
    request = rf.get("/")
    request.user = admin_user
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request)
    assert not model_admin.has_delete_permission(request)


def test_notification_list_says_a_sent_message_cannot_be_unsent(staff, rows):
    page = staff.get(reverse("admin:corporate_notification_changelist")).content.decode()
    assert "not undoable" in page and "cannot be unsent" in page


def test_new_product_starts_with_its_stock_on_hand(staff, db):
    response = staff.post(reverse("admin:corporate_product_add"),
                          {"sku": "NEW-1", "name": "New", "price": "3.00", "initial_stock": "7"})
    assert response.status_code == 302
    product = models.Product.objects.get(sku="NEW-1")
    assert (product.on_hand, product.reserved, product.initial_stock) == (7, 0, 7)


def test_receive_action_adds_stock_keeping_the_balance(staff, db):
    product = fixtures.product(stock=2)
    staff.post(reverse("admin:corporate_product_changelist"),
               {"action": "receive_ten", "_selected_action": [product.pk]})
    product.refresh_from_db()
    assert (product.on_hand, product.initial_stock) == (12, 12)


def test_saga_written_rows_link_to_their_saga(staff, db):
    saga_id = uuid.uuid4()
    models.Build.objects.create(saga_id=saga_id, service=fixtures.service(), version="9", artifact="a:9")
    page = staff.get(reverse("admin:corporate_build_changelist")).content.decode()
    try:
        expected = reverse("admin:sagas_sagainstance_change", args=[saga_id])
    except NoReverseMatch:  # without the sagas admin the id is shown as text
        expected = str(saga_id)
    assert expected in page
