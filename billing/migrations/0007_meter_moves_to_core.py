"""Meters move from metering to the commercial core (issue 15): the model's state moves, its
table (``metering_meter``) and every foreign key to it stay as they are. The content type
is renamed so the admin permissions granted on meters carry over."""

import django.db.models.deletion
import django.db.models.functions.datetime
from django.db import migrations, models


def rename_content_type(apps, schema_editor):
    content_type = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    if not content_type.objects.using(db).filter(app_label="billing", model="meter").exists():
        content_type.objects.using(db).filter(app_label="metering", model="meter").update(
            app_label="billing"
        )


def restore_content_type(apps, schema_editor):
    content_type = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    if not content_type.objects.using(db).filter(app_label="metering", model="meter").exists():
        content_type.objects.using(db).filter(app_label="billing", model="meter").update(
            app_label="metering"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0006_async_ingest"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("metering", "0008_sums_rule_index_only"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Meter",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("code", models.SlugField(max_length=100, unique=True)),
                        ("name", models.CharField(blank=True, default="", max_length=200)),
                        ("event_name", models.CharField(db_index=True, max_length=200)),
                        (
                            "aggregation",
                            models.CharField(
                                choices=[
                                    ("sum", "Sum of the property"),
                                    ("count", "Count of events"),
                                    ("max", "Maximum of the property"),
                                    ("unique_count", "Count of distinct property values"),
                                    ("latest", "Latest value of the property"),
                                ],
                                max_length=20,
                            ),
                        ),
                        (
                            "property",
                            models.CharField(
                                blank=True,
                                default="",
                                help_text="Dotted path into the event's properties; empty for count.",
                                max_length=200,
                            ),
                        ),
                        (
                            "filters",
                            models.JSONField(
                                blank=True,
                                default=dict,
                                help_text='Property path → allowed values, e.g. {"tier": ["pro"]}',
                            ),
                        ),
                        (
                            "group_by",
                            models.JSONField(
                                blank=True,
                                default=list,
                                help_text='Dimensions usage is split by, e.g. ["model"]',
                            ),
                        ),
                        (
                            "unit",
                            models.CharField(
                                blank=True, default="", help_text="e.g. tokens", max_length=30
                            ),
                        ),
                        (
                            "created_at",
                            models.DateTimeField(
                                db_default=django.db.models.functions.datetime.Now()
                            ),
                        ),
                    ],
                    options={
                        "db_table": "metering_meter",
                        "constraints": [
                            models.CheckConstraint(
                                condition=models.Q(
                                    ("aggregation", "count"),
                                    models.Q(("property", ""), _negated=True),
                                    _connector="OR",
                                ),
                                name="metering_meter_property_required",
                            )
                        ],
                    },
                ),
                migrations.AlterField(
                    model_name="marginoverride",
                    name="meter",
                    field=models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="billing.meter",
                    ),
                ),
                migrations.AlterField(
                    model_name="plancharge",
                    name="meter",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="billing.meter",
                    ),
                ),
            ],
        ),
        migrations.RunPython(rename_content_type, restore_content_type),
    ]
