"""The corporate sagas, registered at start-up (autodiscovered like admin.py)."""
from sagas import registry

from .workflows import budget_approval, employee_onboarding, it_provisioning, order_fulfillment, system_deployment

EMPLOYEE_ONBOARDING = employee_onboarding.NAME
ORDER_FULFILLMENT = order_fulfillment.NAME
BUDGET_APPROVAL = budget_approval.NAME
SYSTEM_DEPLOYMENT = system_deployment.NAME
# IT's provisioning runs as the onboarding's child saga (version 7 on), not on its own in the demo.
IT_PROVISIONING = it_provisioning.NAME
SAGA_TYPES = (EMPLOYEE_ONBOARDING, ORDER_FULFILLMENT, BUDGET_APPROVAL, SYSTEM_DEPLOYMENT)
# Every corporate type, the children included: failure injection and the invariants cover them all.
ALL_TYPES = (*SAGA_TYPES, IT_PROVISIONING)

# Every version each module defines: the latest (what start_saga runs) and the earlier ones that sagas
# already running still finish on.
for _module in (employee_onboarding, it_provisioning, order_fulfillment, budget_approval, system_deployment):
    for _definition in _module.definitions:
        registry.register(_definition)
# The gated sagas' rehearsal of their latest flow (deadlines of seconds): saga_demo --short-deadlines.
REHEARSAL_VERSIONS = {module.NAME: module.rehearsal.version
                      for module in (employee_onboarding, budget_approval, system_deployment)}
GATED_TYPES = tuple(REHEARSAL_VERSIONS)
