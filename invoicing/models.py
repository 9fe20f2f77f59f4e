"""Invoicing: period close, invoices, credit notes, PDFs and payments.

Arrives with issue 5. Invoices post through ``ledger.services`` only.
"""
