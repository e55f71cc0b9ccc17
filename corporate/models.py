"""The corporate domain: the rows the four corporate sagas read and write.

Rows are never deleted to undo a step: a compensation writes what semantically
undoes it (a refund row, an account disabled, a laptop returned, a deployment
rolled back), so the history stays readable in the admin. Domain rows point
at their saga by ``saga_id`` (a plain UUID, not a foreign key): business
records outlive the orchestrator's bookkeeping.
"""
from decimal import Decimal

from django.db import models
from django.db.models import F, Q


# --- reference data shared by several sagas ---------------------------------------------


class Department(models.Model):
    code = models.CharField(max_length=20, unique=True)
    name = models.CharField(max_length=200)
    budget = models.DecimalField(max_digits=14, decimal_places=2, help_text="the department's yearly budget")
    reserved = models.DecimalField(
        max_digits=14, decimal_places=2, default=0, help_text="funds reserved by approved or pending requests"
    )
    salary_cap = models.DecimalField(
        max_digits=12, decimal_places=2, default=200000, help_text="payroll refuses salaries above this band"
    )
    frozen = models.BooleanField(default=False, help_text="a frozen department accepts no new budget requests")
    executive_threshold = models.DecimalField(
        max_digits=14, decimal_places=2, default=Decimal("10000.00"),
        help_text="budget requests above this amount need an executive's sign-off (set by finance, never by "
                  "the request)")

    class Meta:
        ordering = ["code"]
        constraints = [
            models.CheckConstraint(condition=Q(reserved__gte=0), name="department_reserved_not_negative"),
            models.CheckConstraint(condition=Q(reserved__lte=F("budget")), name="department_reserved_within_budget"),
        ]

    def __str__(self) -> str:
        return f"{self.code} {self.name}"


# --- order fulfillment ------------------------------------------------------------------


class Product(models.Model):
    """Stock moves between ``on_hand`` and ``reserved``; their sum is every unit ever received."""

    sku = models.CharField(max_length=40, unique=True)
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=12, decimal_places=2)
    initial_stock = models.PositiveIntegerField(help_text="units received; always on hand + reserved")
    on_hand = models.PositiveIntegerField(help_text="units free to sell")
    reserved = models.PositiveIntegerField(default=0, help_text="units held by orders, shipped or not")

    class Meta:
        ordering = ["sku"]
        constraints = [
            models.CheckConstraint(condition=Q(initial_stock=F("on_hand") + F("reserved")),
                                   name="product_stock_balances"),
        ]

    def __str__(self) -> str:
        return f"{self.sku} ({self.on_hand} on hand)"


class Customer(models.Model):
    name = models.CharField(max_length=200)
    email = models.EmailField()
    credit_limit = models.DecimalField(max_digits=12, decimal_places=2, default=5000)
    card_blocked = models.BooleanField(default=False, help_text="the payment provider declines every charge")
    gateway_glitches = models.PositiveSmallIntegerField(
        default=0, help_text="the payment gateway times out on this many attempts before it answers"
    )
    email_bounces = models.BooleanField(default=False, help_text="the mail server rejects messages to this customer")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class OrderStatus(models.TextChoices):
    RESERVED = "reserved", "stock reserved"
    PAID = "paid", "paid"
    SHIPPING = "shipping", "shipment scheduled"
    CONFIRMED = "confirmed", "confirmed to the customer"
    CANCELLED = "cancelled", "cancelled"


class Order(models.Model):
    saga_id = models.UUIDField(unique=True)
    reference = models.CharField(max_length=60, blank=True)
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="orders")
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="orders")
    quantity = models.PositiveIntegerField()
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    ship_to = models.CharField(max_length=2)
    status = models.CharField(max_length=20, choices=OrderStatus.choices, default=OrderStatus.RESERVED)
    stock_released_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"order {self.pk} {self.reference}".strip()


class Payment(models.Model):
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="payments")
    idempotency_key = models.CharField(max_length=255, unique=True)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="payment_amount_positive")]

    def __str__(self) -> str:
        return f"payment {self.pk}: {self.amount}"


class Refund(models.Model):
    payment = models.OneToOneField(Payment, on_delete=models.PROTECT, related_name="refund")
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"refund of payment {self.payment_id}: {self.amount}"


class ShipmentStatus(models.TextChoices):
    SCHEDULED = "scheduled", "scheduled"
    CANCELLED = "cancelled", "cancelled"


class Shipment(models.Model):
    order = models.OneToOneField(Order, on_delete=models.PROTECT, related_name="shipment")
    carrier = models.CharField(max_length=50)
    status = models.CharField(max_length=20, choices=ShipmentStatus.choices, default=ShipmentStatus.SCHEDULED)
    created_at = models.DateTimeField(auto_now_add=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"shipment of order {self.order_id} by {self.carrier} ({self.status})"


class Notification(models.Model):
    """A message sent to a customer. Once sent it cannot be unsent: nothing compensates it."""

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="notifications")
    idempotency_key = models.CharField(max_length=255, unique=True)
    recipient = models.EmailField()
    message = models.TextField()
    sent_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"message to {self.recipient}"


# --- employee onboarding ----------------------------------------------------------------


class EmployeeStatus(models.TextChoices):
    ONBOARDING = "onboarding", "onboarding"
    ACTIVE = "active", "active"
    WITHDRAWN = "withdrawn", "offer withdrawn"


class Employee(models.Model):
    saga_id = models.UUIDField(unique=True)
    name = models.CharField(max_length=200)
    email = models.EmailField()
    department = models.ForeignKey(Department, on_delete=models.PROTECT, related_name="employees")
    role = models.CharField(max_length=100, blank=True)
    salary = models.DecimalField(max_digits=12, decimal_places=2)
    status = models.CharField(max_length=20, choices=EmployeeStatus.choices, default=EmployeeStatus.ONBOARDING)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["email"], condition=~Q(status="withdrawn"),
                                    name="employee_email_unique_unless_withdrawn"),
        ]

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"


class AccountSystem(models.TextChoices):
    EMAIL = "email", "e-mail"
    SSO = "sso", "single sign-on"


class Account(models.Model):
    """An IT account; an active one holds a software licence seat."""

    employee = models.ForeignKey(Employee, on_delete=models.PROTECT, related_name="accounts")
    system = models.CharField(max_length=20, choices=AccountSystem.choices)
    username = models.CharField(max_length=100)
    active = models.BooleanField(default=True)
    holds_licence = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    disabled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["employee", "system"], name="account_one_per_system_per_employee"),
        ]

    def __str__(self) -> str:
        return f"{self.system}:{self.username}"


class Laptop(models.Model):
    asset_tag = models.CharField(max_length=40, unique=True)
    model = models.CharField(max_length=100, default="ThinkPad T14")

    class Meta:
        ordering = ["asset_tag"]

    def __str__(self) -> str:
        return self.asset_tag


class Desk(models.Model):
    code = models.CharField(max_length=40, unique=True)
    floor = models.PositiveSmallIntegerField(default=1)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


class Assignment(models.Model):
    """An asset handed to an employee; ``returned_at`` set means it is back in the pool."""

    employee = models.ForeignKey(Employee, on_delete=models.PROTECT, related_name="%(class)ss")
    assigned_at = models.DateTimeField(auto_now_add=True)
    returned_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True
        ordering = ["id"]

    @property
    def is_open(self) -> bool:
        return self.returned_at is None


class LaptopAssignment(Assignment):
    laptop = models.ForeignKey(Laptop, on_delete=models.PROTECT, related_name="assignments")

    class Meta(Assignment.Meta):
        constraints = [
            models.UniqueConstraint(fields=["laptop"], condition=Q(returned_at__isnull=True),
                                    name="laptop_one_open_assignment"),
            models.UniqueConstraint(fields=["employee"], condition=Q(returned_at__isnull=True),
                                    name="laptop_one_per_employee"),
        ]


class DeskAssignment(Assignment):
    desk = models.ForeignKey(Desk, on_delete=models.PROTECT, related_name="assignments")

    class Meta(Assignment.Meta):
        constraints = [
            models.UniqueConstraint(fields=["desk"], condition=Q(returned_at__isnull=True),
                                    name="desk_one_open_assignment"),
            models.UniqueConstraint(fields=["employee"], condition=Q(returned_at__isnull=True),
                                    name="desk_one_per_employee"),
        ]


class PayrollRecord(models.Model):
    employee = models.OneToOneField(Employee, on_delete=models.PROTECT, related_name="payroll")
    salary = models.DecimalField(max_digits=12, decimal_places=2)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"payroll of {self.employee}"


class ContractStatus(models.TextChoices):
    SENT = "sent", "sent for signature"
    SIGNED = "signed", "signed"
    DECLINED = "declined", "declined"
    VOIDED = "voided", "voided (offer withdrawn)"


class ContractRequest(models.Model):
    """An employment contract sent to the e-signature service: what our side keeps.

    The service answers through the wait's one-time callback
    (``/api/signals/{token}/complete/``); the token travels only to the
    service (``SignatureEnvelope``), never into this row or the logs.
    """

    saga_id = models.UUIDField(unique=True)
    employee = models.ForeignKey(Employee, on_delete=models.PROTECT, related_name="contracts")
    envelope_id = models.CharField(max_length=64, unique=True, help_text="the e-signature service's reference")
    status = models.CharField(max_length=20, choices=ContractStatus.choices, default=ContractStatus.SENT)
    sent_at = models.DateTimeField(auto_now_add=True)
    voided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-sent_at"]
        permissions = [("record_signed_contract", "Can record a contract signed on paper (the contract gate)")]

    def __str__(self) -> str:
        return f"contract {self.envelope_id} for {self.employee} ({self.status})"


class SignatureEnvelope(models.Model):
    """The simulated e-signature service's own record (it stands in for DocuSign and the like).

    It holds the callback URL it was handed, one-time token included, as the
    real service would; ``corporate.esignature`` plays the service's side.
    """

    envelope_id = models.CharField(max_length=64, unique=True)
    signer = models.EmailField()
    document = models.CharField(max_length=200)
    callback_url = models.CharField(max_length=300)
    status = models.CharField(max_length=20, choices=ContractStatus.choices, default=ContractStatus.SENT)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"envelope {self.envelope_id} for {self.signer} ({self.status})"


# --- budget approval --------------------------------------------------------------------


class BudgetRequestStatus(models.TextChoices):
    SUBMITTED = "submitted", "submitted"
    APPROVED = "approved", "approved"
    WITHDRAWN = "withdrawn", "withdrawn"


class BudgetRequest(models.Model):
    saga_id = models.UUIDField(unique=True)
    department = models.ForeignKey(Department, on_delete=models.PROTECT, related_name="budget_requests")
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    purpose = models.CharField(max_length=200)
    status = models.CharField(max_length=20, choices=BudgetRequestStatus.choices,
                              default=BudgetRequestStatus.SUBMITTED)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        # Who may signal the saga's gates (the steps' ``signal_permission``).
        permissions = [
            ("approve_budget", "Can approve budget requests as the department's manager"),
            ("sign_off_budget", "Can sign off budget requests above the threshold as an executive"),
        ]

    def __str__(self) -> str:
        return f"{self.department.code}: {self.amount} for {self.purpose}"


class ApprovalLevel(models.TextChoices):
    MANAGER = "manager", "manager"
    EXECUTIVE = "executive", "executive"


class Approval(models.Model):
    request = models.ForeignKey(BudgetRequest, on_delete=models.PROTECT, related_name="approvals")
    level = models.CharField(max_length=20, choices=ApprovalLevel.choices)
    approver = models.CharField(max_length=100)
    comment = models.CharField(max_length=500, blank=True, help_text="what the approver wrote with the signal")
    approved_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["request", "level"], name="approval_one_per_level")]

    def __str__(self) -> str:
        return f"{self.level} approval of request {self.request_id}"


class FundReservation(models.Model):
    request = models.OneToOneField(BudgetRequest, on_delete=models.PROTECT, related_name="reservation")
    department = models.ForeignKey(Department, on_delete=models.PROTECT, related_name="reservations")
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    created_at = models.DateTimeField(auto_now_add=True)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="reservation_amount_positive")]

    def __str__(self) -> str:
        return f"{self.amount} reserved from {self.department.code}"


# --- system deployment ------------------------------------------------------------------


class Service(models.Model):
    name = models.CharField(max_length=100, unique=True)
    live_version = models.CharField(max_length=50)
    frozen = models.BooleanField(default=False, help_text="change freeze: deployments are refused")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} @ {self.live_version}"


class BuildStatus(models.TextChoices):
    BUILT = "built", "built"
    DISCARDED = "discarded", "discarded"


class Build(models.Model):
    saga_id = models.UUIDField(unique=True)
    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="builds")
    version = models.CharField(max_length=50)
    artifact = models.CharField(max_length=200)
    status = models.CharField(max_length=20, choices=BuildStatus.choices, default=BuildStatus.BUILT)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.artifact


class TestRunStatus(models.TextChoices):
    PASSED = "passed", "passed"
    INVALIDATED = "invalidated", "invalidated (release abandoned)"


class TestRun(models.Model):
    __test__ = False  # not a pytest test class

    build = models.OneToOneField(Build, on_delete=models.PROTECT, related_name="test_run")
    tests_run = models.PositiveIntegerField()
    status = models.CharField(max_length=20, choices=TestRunStatus.choices, default=TestRunStatus.PASSED)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"tests of {self.build}: {self.status}"


class DeploymentStatus(models.TextChoices):
    DEPLOYED = "deployed", "deployed, being verified"
    VERIFIED = "verified", "verified"
    ROLLED_BACK = "rolled_back", "rolled back"


class Deployment(models.Model):
    saga_id = models.UUIDField(unique=True)
    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="deployments")
    from_version = models.CharField(max_length=50)
    to_version = models.CharField(max_length=50)
    status = models.CharField(max_length=20, choices=DeploymentStatus.choices, default=DeploymentStatus.DEPLOYED)
    created_at = models.DateTimeField(auto_now_add=True)
    rolled_back_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        # Who may open the release gate before a production deploy (the step's ``signal_permission``).
        permissions = [("release_deploy", "Can approve a release for production (the release gate)")]
        constraints = [
            # One release at a time per service: the next waits until this one is verified or rolled back.
            models.UniqueConstraint(fields=["service"], condition=Q(status="deployed"),
                                    name="deployment_one_unverified_per_service"),
        ]

    def __str__(self) -> str:
        return f"{self.service.name} {self.from_version} -> {self.to_version} ({self.status})"


class HealthCheck(models.Model):
    deployment = models.ForeignKey(Deployment, on_delete=models.PROTECT, related_name="health_checks")
    attempt = models.PositiveIntegerField()
    healthy = models.BooleanField()
    detail = models.CharField(max_length=200, blank=True)
    checked_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["deployment", "attempt"], name="health_check_per_attempt")]


# --- failure injection at run time ------------------------------------------------------


class FailureInjectionRule(models.Model):
    """Failure rates the workers read at run time (``sagas.failure_injection``).

    ``saga_type`` and ``step`` may be ``*``. Written by ``saga_demo
    --failure-rate`` or by hand in the admin; ignored unless failure injection
    is switched on in the workers' settings.
    """

    saga_type = models.CharField(max_length=200, default="*")
    step = models.CharField(max_length=200, default="*")
    transient = models.FloatField(default=0.0, help_text="probability that an attempt fails and is retried")
    permanent = models.FloatField(default=0.0, help_text="probability that an attempt fails the step for good")
    seed = models.BigIntegerField(null=True, blank=True,
                                  help_text="makes each decision a hash of seed, saga input, step and attempt")
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["saga_type", "step"]
        constraints = [
            models.UniqueConstraint(fields=["saga_type", "step"], name="failure_rule_one_per_step"),
            models.CheckConstraint(
                condition=Q(transient__gte=0, permanent__gte=0, transient__lte=1, permanent__lte=1),
                name="failure_rule_rates_are_probabilities",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.saga_type}.{self.step}: transient {self.transient:g}, permanent {self.permanent:g}"
