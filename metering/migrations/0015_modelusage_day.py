"""``ModelUsage``'s rows by day: a negative_margin alert of scope all, per customer and
day, reads today's and yesterday's rows of every customer, not the table's history
(issue 17 item 8). Built CONCURRENTLY: rating's writes to the table are not blocked."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("metering", "0014_margin_usage"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="modelusage",
            index=models.Index(fields=["day"], name="metering_modelusage_day"),
        ),
    ]
