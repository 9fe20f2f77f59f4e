"""Migration operations that change a foreign key's index without touching the key: Django's
own AlterField of ``db_index`` drops and re-adds the foreign key constraint, which re-checks
every row of the table under lock. Used by ledger's and metering's migrations."""

import django.db.models.deletion
from django.db import migrations, models


def _key(to: str, related_name: str, *, null: bool = False) -> models.ForeignKey:
    return models.ForeignKey(
        blank=null,
        db_index=False,
        null=null,
        on_delete=django.db.models.deletion.PROTECT,
        related_name=related_name,
        to=to,
    )


def _create(name: str, table: str, column: str, where: str = "") -> str:
    return f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON "{table}" ("{column}"){where}'


def _drop(name: str) -> str:
    return f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"'


def unindexed(model: str, field: str, to: str, related_name: str, *, index: str, table: str):
    """The key's own index dropped (a composite one leads with it)."""
    return migrations.SeparateDatabaseAndState(
        state_operations=[
            migrations.AlterField(model_name=model, name=field, field=_key(to, related_name))
        ],
        database_operations=[
            migrations.RunSQL(_drop(index), reverse_sql=_create(index, table, f"{field}_id"))
        ],
    )


def indexed_where_set(
    model: str, field: str, to: str, related_name: str, *, index: str, table: str, name: str
):
    """The key's own index replaced by one of the rows where it is set."""
    column = f"{field}_id"
    return migrations.SeparateDatabaseAndState(
        state_operations=[
            migrations.AlterField(
                model_name=model, name=field, field=_key(to, related_name, null=True)
            ),
            migrations.AddIndex(
                model_name=model,
                index=models.Index(
                    condition=models.Q((f"{field}__isnull", False)), fields=[field], name=name
                ),
            ),
        ],
        database_operations=[
            migrations.RunSQL(
                _create(name, table, column, f' WHERE "{column}" IS NOT NULL'),
                reverse_sql=_drop(name),
            ),
            migrations.RunSQL(_drop(index), reverse_sql=_create(index, table, column)),
        ],
    )
