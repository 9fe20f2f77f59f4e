"""unique_count meters keep the distinct values of a period as rows of their own
(``PeriodDistinctValue``) instead of a JSON list in the counter, which rating read whole and
rewrote whole with every batch. The lists move into the table here (their elements are the
canonical keys rating wrote, in the order they were seen); 0011 drops the column.

Reversed, each counter's list is rebuilt from its rows in the order they were inserted."""

import django.db.models.deletion
import django.db.models.functions.datetime
from django.db import migrations, models

MOVE_LISTS = """
INSERT INTO metering_perioddistinctvalue (subscription_id, meter_id, period_start, value)
SELECT u.subscription_id, u.meter_id, u.period_start, v.value
  FROM metering_periodusage u
 CROSS JOIN LATERAL jsonb_array_elements_text(u.distinct_values) WITH ORDINALITY AS v(value, n)
 WHERE jsonb_typeof(u.distinct_values) = 'array'
 ORDER BY u.id, v.n
    ON CONFLICT DO NOTHING
"""

REBUILD_LISTS = """
UPDATE metering_periodusage u
   SET distinct_values = d.values
  FROM (SELECT subscription_id, meter_id, period_start, jsonb_agg(value ORDER BY id) AS values
          FROM metering_perioddistinctvalue
         GROUP BY subscription_id, meter_id, period_start) AS d
 WHERE u.subscription_id = d.subscription_id AND u.meter_id = d.meter_id
   AND u.period_start = d.period_start
"""


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0007_meter_moves_to_core"),
        ("metering", "0009_meter_in_core"),
    ]

    operations = [
        migrations.CreateModel(
            name="PeriodDistinctValue",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("period_start", models.DateTimeField()),
                ("value", models.TextField()),
                (
                    "created_at",
                    models.DateTimeField(db_default=django.db.models.functions.datetime.Now()),
                ),
                (
                    "meter",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="billing.meter",
                    ),
                ),
                (
                    "subscription",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="billing.subscription",
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("subscription", "meter", "period_start", "value"),
                        name="metering_period_distinct_value",
                    )
                ],
            },
        ),
        migrations.RunSQL(MOVE_LISTS, REBUILD_LISTS, elidable=False),
    ]
