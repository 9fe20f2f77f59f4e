import decimal

from django.apps import AppConfig

# Ledger amounts have 38 significant digits (26 + 12 places); Python's default decimal
# context keeps 28 and would round sums of large amounts silently. Every thread created
# after this starts from DefaultContext, so widen both it and the current context.
DECIMAL_PRECISION = 60


class LedgerConfig(AppConfig):
    name = "ledger"
    verbose_name = "Ledger"

    def ready(self) -> None:
        decimal.DefaultContext.prec = DECIMAL_PRECISION
        decimal.getcontext().prec = DECIMAL_PRECISION
