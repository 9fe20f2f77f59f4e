"""Metering: meters, usage events, the model price catalog and rating.

Arrives with issues 3 and 4. Rating posts through ``ledger.services`` only.
"""
