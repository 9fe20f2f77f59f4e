"""The commercial core in the admin, for finance staff.

Every write goes through ``billing.services`` and so, for money, through the ledger:
customers are created with their wallet, top-ups and adjustments are ledger transactions
(recording the staff user), plans are published as new versions and never edited, API key
secrets are shown once and never stored. What a service owns cannot be edited here.
Expected failures (``BillingError``, ``LedgerError``) are shown on the form that caused them.

One module per model family, each registering its own admins on import:

- ``common``: money and time display, the form fields that read input as the API does,
  ``ServiceFormMixin`` (also used by the metering and invoicing admins);
- ``customers``: customers, with their wallets (``wallets``: balances, top-ups,
  adjustments), credit grants (``credit_grants``, also the grants' own admin) and portal
  users (``portal_users``: invitations) on their page;
- ``plans``: plan versions and publishing;
- ``currencies``: per-currency settings (the rounding rule of invoices whose plan names none);
- ``subscriptions``: subscribing and canceling;
- ``api_keys``: API keys and the API's idempotency records;
- ``webhooks``: webhook endpoints, deliveries with their attempt log, outbound events.
- ``alerts``: alert definitions, their states and their history (and the customer's
  alerts on its page).
- ``projects``: customers' projects and their budgets (``billing.projects``), and the
  customer's projects on its page (a read-only list);
- ``approvals``: large manual adjustments waiting for a second staff user's approval;
- ``audit``: the audit trail (django-pghistory's events), registered by pghistory's admin;
- ``staff_security``: two-factor sign-in (django-otp) and its self-enrolment page;
- ``auto_top_up``: wallets' auto top-ups (``billing.services.set_auto_top_up``) and their
  attempts, read-only.
"""

from billing.admin import (  # noqa: F401 - imported to register their admins
    alerts,
    api_keys,
    approvals,
    auto_top_up,
    credit_grants,
    currencies,
    customers,
    plans,
    portal_users,
    projects,
    staff_security,  # noqa: F401, I001 - the two-factor sign-in form
    subscriptions,
    wallets,
    webhooks,
)
