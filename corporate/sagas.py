"""The corporate sagas, registered at start-up (autodiscovered like admin.py)."""
from sagas import registry

from .workflows import budget_approval, employee_onboarding, order_fulfillment, system_deployment

EMPLOYEE_ONBOARDING = employee_onboarding.NAME
ORDER_FULFILLMENT = order_fulfillment.NAME
BUDGET_APPROVAL = budget_approval.NAME
SYSTEM_DEPLOYMENT = system_deployment.NAME
SAGA_TYPES = (EMPLOYEE_ONBOARDING, ORDER_FULFILLMENT, BUDGET_APPROVAL, SYSTEM_DEPLOYMENT)

for _module in (employee_onboarding, order_fulfillment, budget_approval, system_deployment):
    registry.register(_module.saga)
# The gated sagas' rehearsal versions (same flow, deadlines of seconds): saga_demo --short-deadlines.
GATED_TYPES = (EMPLOYEE_ONBOARDING, BUDGET_APPROVAL, SYSTEM_DEPLOYMENT)
for _module in (employee_onboarding, budget_approval, system_deployment):
    registry.register(_module.rehearsal)
