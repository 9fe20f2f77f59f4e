"""Alerts (billing.models.alerts), and the portal's low-balance setting moved into them: a
customer with a threshold gets a ``balance_below`` alert in its own currency (source
``portal``, the address as its recipient); one alerted already (``low_balance_alerted_at``)
starts triggered, with its crossing recorded as e-mailed, so the migration sends nothing
twice. Then the three customer fields go. Reversible: the portal alert goes back into them."""

import django.db.models.deletion
import django.db.models.functions.datetime
from django.db import migrations, models


def low_balance_settings_to_alerts(apps, schema_editor):
    Customer = apps.get_model("billing", "Customer")
    Alert = apps.get_model("billing", "Alert")
    AlertState = apps.get_model("billing", "AlertState")
    AlertFiring = apps.get_model("billing", "AlertFiring")
    customers = Customer.objects.filter(low_balance_threshold__isnull=False).order_by("pk")
    for customer in customers.iterator():
        email = (customer.low_balance_email or "").strip()
        alert = Alert.objects.create(
            name="Low balance",
            kind="balance_below",
            scope="customer",
            customer=customer,
            threshold=customer.low_balance_threshold,
            currency="",
            recipients=[email] if email else [],
            enabled=True,
            source="portal",
        )
        if customer.low_balance_alerted_at is not None:
            state = AlertState.objects.create(
                alert=alert,
                customer=customer,
                subject_key="",
                status="triggered",
                crossings=1,
                limit=customer.low_balance_threshold,
                triggered_at=customer.low_balance_alerted_at,
            )
            AlertFiring.objects.create(
                state=state,
                alert=alert,
                customer=customer,
                crossing=1,
                action="triggered",
                value=customer.low_balance_threshold,  # below it; the exact value was not kept
                limit=customer.low_balance_threshold,
                unit=customer.currency,
                emailed_at=customer.low_balance_alerted_at,
            )


def alerts_to_low_balance_settings(apps, schema_editor):
    Customer = apps.get_model("billing", "Customer")
    Alert = apps.get_model("billing", "Alert")
    for alert in Alert.objects.filter(source="portal").prefetch_related("states"):
        triggered = [s for s in alert.states.all() if s.status == "triggered"]
        Customer.objects.filter(pk=alert.customer_id).update(
            low_balance_threshold=alert.threshold,
            low_balance_email=(alert.recipients or [""])[0],
            low_balance_alerted_at=triggered[0].triggered_at if triggered else None,
        )


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0010_webhooks"),
    ]

    operations = [
        migrations.CreateModel(
            name="Alert",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("name", models.CharField(blank=True, default="", max_length=200)),
                (
                    "kind",
                    models.CharField(
                        choices=[
                            ("balance_below", "Balance below an amount"),
                            ("credits_below", "Credits below a number"),
                            ("spend_above", "Spend this period above an amount"),
                            (
                                "usage_above_share",
                                "Usage of a meter above a share of its allowance",
                            ),
                            ("negative_margin", "Provider cost above the price charged (per day)"),
                        ],
                        max_length=20,
                    ),
                ),
                (
                    "scope",
                    models.CharField(
                        choices=[
                            ("customer", "One customer"),
                            ("plan", "Every subscriber of a plan"),
                            ("all", "Every customer (negative margin only)"),
                        ],
                        max_length=10,
                    ),
                ),
                ("plan_code", models.SlugField(blank=True, default="", max_length=100)),
                (
                    "plan_version",
                    models.PositiveIntegerField(
                        blank=True, help_text="Empty: every version of the plan.", null=True
                    ),
                ),
                (
                    "threshold",
                    models.DecimalField(
                        decimal_places=12,
                        help_text="An amount, a number of credits or a share (0.8 = 80 %); 0 for margins.",
                        max_digits=30,
                    ),
                ),
                (
                    "currency",
                    models.CharField(
                        blank=True,
                        default="",
                        help_text="Empty: the customer's own currency.",
                        max_length=16,
                    ),
                ),
                (
                    "per_model",
                    models.BooleanField(default=False, help_text="Negative margin: per model."),
                ),
                (
                    "recipients",
                    models.JSONField(blank=True, default=list, help_text="E-mail addresses."),
                ),
                ("enabled", models.BooleanField(default=True)),
                (
                    "source",
                    models.CharField(
                        choices=[
                            ("api", "API"),
                            ("admin", "Admin"),
                            ("portal", "Portal (the customer's low-balance setting)"),
                        ],
                        default="api",
                        max_length=10,
                    ),
                ),
                (
                    "created_at",
                    models.DateTimeField(db_default=django.db.models.functions.datetime.Now()),
                ),
                ("updated_at", models.DateTimeField(auto_now=True)),
                (
                    "customer",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="alerts",
                        to="billing.customer",
                    ),
                ),
                (
                    "meter",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="billing.meter",
                    ),
                ),
            ],
            options={
                "ordering": ["id"],
            },
        ),
        migrations.CreateModel(
            name="AlertState",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("subject_key", models.CharField(blank=True, default="", max_length=500)),
                (
                    "status",
                    models.CharField(
                        choices=[("armed", "Armed"), ("triggered", "Triggered")],
                        default="armed",
                        max_length=10,
                    ),
                ),
                (
                    "last_value",
                    models.DecimalField(blank=True, decimal_places=24, max_digits=60, null=True),
                ),
                (
                    "limit",
                    models.DecimalField(
                        blank=True,
                        decimal_places=24,
                        help_text="What the value was compared with (e.g. share × allowance).",
                        max_digits=60,
                        null=True,
                    ),
                ),
                ("crossings", models.PositiveIntegerField(default=0)),
                ("triggered_at", models.DateTimeField(blank=True, null=True)),
                ("resolved_at", models.DateTimeField(blank=True, null=True)),
                (
                    "updated_at",
                    models.DateTimeField(db_default=django.db.models.functions.datetime.Now()),
                ),
                (
                    "alert",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="states",
                        to="billing.alert",
                    ),
                ),
                (
                    "customer",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="alert_states",
                        to="billing.customer",
                    ),
                ),
            ],
            options={
                "ordering": ["id"],
            },
        ),
        migrations.CreateModel(
            name="AlertFiring",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("crossing", models.PositiveIntegerField()),
                (
                    "action",
                    models.CharField(
                        choices=[("triggered", "Triggered"), ("resolved", "Resolved")],
                        max_length=10,
                    ),
                ),
                ("value", models.DecimalField(decimal_places=24, max_digits=60)),
                ("limit", models.DecimalField(decimal_places=24, max_digits=60)),
                (
                    "unit",
                    models.CharField(
                        blank=True, default="", help_text="USD, CREDITS, …", max_length=40
                    ),
                ),
                ("emailed_at", models.DateTimeField(blank=True, null=True)),
                (
                    "created_at",
                    models.DateTimeField(
                        db_default=django.db.models.functions.datetime.Now(), db_index=True
                    ),
                ),
                (
                    "alert",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="firings",
                        to="billing.alert",
                    ),
                ),
                (
                    "customer",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="billing.customer",
                    ),
                ),
                (
                    "state",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="firings",
                        to="billing.alertstate",
                    ),
                ),
            ],
            options={
                "ordering": ["-id"],
            },
        ),
        migrations.AddIndex(
            model_name="alert",
            index=models.Index(
                condition=models.Q(("enabled", True)),
                fields=["kind", "scope"],
                name="billing_alert_enabled",
            ),
        ),
        migrations.AddConstraint(
            model_name="alert",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("customer__isnull", False), ("plan_code", ""), ("scope", "customer")),
                    models.Q(
                        ("customer__isnull", True),
                        ("scope", "plan"),
                        models.Q(("plan_code", ""), _negated=True),
                    ),
                    models.Q(
                        ("customer__isnull", True),
                        ("kind", "negative_margin"),
                        ("plan_code", ""),
                        ("scope", "all"),
                    ),
                    _connector="OR",
                ),
                name="billing_alert_scope",
            ),
        ),
        migrations.AddConstraint(
            model_name="alert",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("plan_version__isnull", True), ("scope", "plan"), _connector="OR"
                ),
                name="billing_alert_version_of_plan",
            ),
        ),
        migrations.AddConstraint(
            model_name="alert",
            constraint=models.CheckConstraint(
                condition=models.Q(("threshold__gte", 0), ("kind", "balance_below"), _connector="OR"),
                name="billing_alert_threshold_positive",
            ),
        ),
        migrations.AddConstraint(
            model_name="alert",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(
                        ("kind", "usage_above_share"),
                        ("meter__isnull", False),
                        ("threshold__gt", 0),
                    ),
                    models.Q(
                        models.Q(("kind", "usage_above_share"), _negated=True),
                        ("meter__isnull", True),
                    ),
                    _connector="OR",
                ),
                name="billing_alert_meter_for_usage",
            ),
        ),
        migrations.AddConstraint(
            model_name="alert",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("kind", "negative_margin"), _negated=True),
                    ("threshold", 0),
                    _connector="OR",
                ),
                name="billing_alert_margin_threshold_zero",
            ),
        ),
        migrations.AddConstraint(
            model_name="alert",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("per_model", False), ("kind", "negative_margin"), _connector="OR"
                ),
                name="billing_alert_per_model_margin_only",
            ),
        ),
        migrations.AddConstraint(
            model_name="alert",
            constraint=models.UniqueConstraint(
                condition=models.Q(("source", "portal")),
                fields=("customer",),
                name="billing_alert_one_portal_setting",
            ),
        ),
        migrations.AddIndex(
            model_name="alertstate",
            index=models.Index(
                condition=models.Q(("status", "triggered")),
                fields=["customer"],
                name="billing_alert_state_triggered",
            ),
        ),
        migrations.AddConstraint(
            model_name="alertstate",
            constraint=models.UniqueConstraint(
                fields=("alert", "customer", "subject_key"),
                name="billing_alert_state_subject",
                nulls_distinct=False,
            ),
        ),
        migrations.AddConstraint(
            model_name="alertfiring",
            constraint=models.UniqueConstraint(
                fields=("state", "crossing", "action"), name="billing_alert_firing_once"
            ),
        ),
        migrations.RunPython(low_balance_settings_to_alerts, alerts_to_low_balance_settings),
        migrations.RemoveField(
            model_name="customer",
            name="low_balance_alerted_at",
        ),
        migrations.RemoveField(
            model_name="customer",
            name="low_balance_email",
        ),
        migrations.RemoveField(
            model_name="customer",
            name="low_balance_threshold",
        ),
    ]
