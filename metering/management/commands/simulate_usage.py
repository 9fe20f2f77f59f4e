"""manage.py simulate_usage: a small product backend for the demo.

Sends realistic LLM usage for the demo customers to the running API, the way a product
backend would: one ``llm.completion`` event per call, carrying the provider's own raw
usage object (OpenAI Chat Completions and Responses, Anthropic Messages, Gemini
``usageMetadata``), now and then a batch, an ``/authorize`` before an expensive call and a
hold settled with the actual usage. Prepaid customers that run low are topped up, so the
demo keeps moving. ``make run`` starts it beside the web server; Ctrl-C stops it.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from django.core.management.base import BaseCommand

from billing import services
from billing.models import APIKey

# (provider, model, usage shape) — models the demo catalog prices.
CALLS = [
    ("openai", "gpt-4o", "chat"),
    ("openai", "gpt-4o-mini", "chat"),
    ("openai", "gpt-4.1", "responses"),
    ("openai", "o4-mini", "responses"),
    ("anthropic", "claude-sonnet-4-5", "anthropic"),
    ("anthropic", "claude-haiku-4-5", "anthropic"),
    ("google", "gemini-2.5-flash", "gemini"),
    ("google", "gemini-2.5-pro", "gemini"),
]
CUSTOMERS = ["acme", "globex", "initech", "hooli"]
KEY_NAME = "demo usage simulator"
PAY_PER_CALL = {"acme", "initech"}  # prepaid money: worth reserving before a long call


# The demo's projects (budgets inside a customer, docs/budgets.md): key → (name, spend limit
# per period in the customer's currency). seed_demo creates them; the simulator names one in
# most of that customer's calls, so one budget fills up and its usage is refused (402).
PROJECTS: dict[str, dict[str, tuple[str, str]]] = {
    "acme": {"search-api": ("Search API", "40.00"), "chat-assistant": ("Chat assistant", "1.50")},
}


def raw_usage(shape: str, rng: random.Random) -> dict:
    """A provider usage object as the provider's API returns it."""
    prompt = rng.randint(200, 6000)
    cached = rng.choice([0, 0, prompt // 2, prompt - 100]) if prompt > 100 else 0
    output = rng.randint(20, 1500)
    reasoning = rng.choice([0, 0, output // 3])
    if shape == "chat":
        return {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }
    if shape == "responses":
        return {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + output,
        }
    if shape == "anthropic":
        written = rng.choice([0, 0, 1024])
        return {
            "input_tokens": max(prompt - cached - written, 1),
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": written,
            "output_tokens": output,
        }
    return {
        "promptTokenCount": prompt,
        "cachedContentTokenCount": cached,
        "candidatesTokenCount": output,
        "thoughtsTokenCount": reasoning,
        "totalTokenCount": prompt + output + reasoning,
    }


class Command(BaseCommand):
    help = "Send realistic LLM usage for the demo customers to the running API."

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000")
        parser.add_argument("--interval", type=float, default=1.0, help="Seconds between rounds.")
        parser.add_argument("--rounds", type=int, default=0, help="Stop after N rounds (0: never).")
        parser.add_argument("--seed", type=int, default=None)

    def handle(self, *args, url, interval, rounds, seed, **options):
        rng = random.Random(seed)
        APIKey.objects.filter(name=KEY_NAME, revoked_at__isnull=True).update(
            revoked_at=datetime.now(UTC)
        )
        _, secret = services.create_api_key(name=KEY_NAME, scopes=["read", "ingest"])
        self.url, self.secret = url.rstrip("/"), secret
        self._wait_for_server()
        self.stdout.write(f"simulating usage for {', '.join(CUSTOMERS)} every {interval}s")
        done = 0
        while not rounds or done < rounds:
            for customer in CUSTOMERS:
                try:
                    self._round(customer, rng)
                except (OSError, ValueError) as error:  # the server restarting: next round
                    self.stderr.write(f"simulator: {error}")
            done += 1
            time.sleep(interval)

    def _round(self, customer: str, rng: random.Random) -> None:
        roll = rng.random()
        if roll < 0.15:
            self._batch(customer, rng)
        elif roll < 0.25 and customer in PAY_PER_CALL:
            self._held_call(customer, rng)
        else:
            status, body = self._post("/api/v1/events", self._event(customer, rng))
            if status == 402 and body.get("error", {}).get("code") != "budget_exceeded":
                self._refill(customer)

    def _event(self, customer: str, rng: random.Random) -> dict:
        provider, model, shape = rng.choice(CALLS)
        event = {
            "idempotency_key": f"sim_{uuid.uuid4().hex}",
            "customer": customer,
            "event_name": "llm.completion",
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "properties": {"model": model, "provider": provider, "usage": raw_usage(shape, rng)},
        }
        project = rng.choice([*PROJECTS.get(customer, {}), None])
        if project is not None:
            event["project"] = project
        return event

    def _batch(self, customer: str, rng: random.Random) -> None:
        events = [self._event(customer, rng) for _ in range(rng.randint(5, 40))]
        status, body = self._post("/api/v1/events/batch", {"events": events})
        if status == 200 and body.get("rejected"):
            self._refill(customer)

    def _held_call(self, customer: str, rng: random.Random) -> None:
        """Reserve the worst case before a long call, then settle with what it used."""
        event = self._event(customer, rng)
        model = event["properties"]["model"]
        status, hold = self._post(
            "/api/v1/holds",
            {
                "customer": customer,
                "model": model,
                "input_tokens": 8000,
                "max_output_tokens": 4000,
                "expires_in": 300,
            },
        )
        if status == 402:
            self._refill(customer)
            return
        if status in (200, 201):
            self._post(f"/api/v1/holds/{hold['id']}/settle", {"event": event})
        else:  # inside the allowance, nothing to hold: just send the usage
            self._post("/api/v1/events", event)

    def _refill(self, customer: str) -> None:
        from billing.models import Customer

        found = Customer.objects.filter(external_id=customer).first()
        if found is None:
            return
        currency = "CREDITS" if customer == "hooli" else found.currency
        amount = "250000" if currency == "CREDITS" else "100.00"
        services.top_up(
            customer=found,
            amount=Decimal(amount),
            currency=currency,
            description="Demo: automatic refill",
        )
        self.stdout.write(f"refilled {customer} with {amount} {currency}")

    def _post(self, path: str, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {self.secret}",
                "Content-Type": "application/json",
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def _wait_for_server(self) -> None:
        for _ in range(120):
            try:
                urllib.request.urlopen(self.url + "/api/schema/", timeout=2)
                return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                time.sleep(0.5)
