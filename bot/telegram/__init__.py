"""Telegram's side: retries, throttle, delivery, rendering, keyboards, filters, access, texts."""
