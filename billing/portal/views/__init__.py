"""Portal pages, one module per page family. Thin: find the signed-in member's customer,
read through ``billing.portal.selectors``, call one service, format for the template.
Every object is looked up *within the customer*, so another customer's ids answer 404 and
nothing leaks.

- ``common``: ``portal_view`` (signed in as a portal member: ``request.customer``), money
  as the pages show it;
- ``signin``: the sign-in page, sign-in links by e-mail, signing out;
- ``usage``: the overview (balances, the period at a glance), usage and its chart data,
  the usage export, the live fragments;
- ``credits``: credit grants by wallet;
- ``invoices``: the invoice list, one invoice, its PDF, paying it;
- ``plan``: the plan, changing or canceling it (now or at the period end, confirmed);
- ``account``: topping a wallet up, settings (auto top-up, the low-balance alert, a
  password).
"""
