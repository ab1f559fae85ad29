"""The chatinfo.ru account: HTTP client, rate limiters, unit balance, and the sandbox server."""
