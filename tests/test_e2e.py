"""The real bot process against a fake chatinfo server and a fake Telegram Bot API server."""

from __future__ import annotations

import itertools
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.upstream.sandbox import FakeChatinfo
from tests.botprocess import BOT_TOKEN, STARTUP_TIMEOUT, BotProcess
from tests.fakes.telegram_api import (
    Call,
    FakeTelegramAPI,
    callback_update,
    chosen_inline_result_update,
    inline_query_update,
    message_update,
)

API_KEY = "e2e-KEY-do-not-leak"
WEBHOOK_URL = "https://bot.example.test/telegram/updates"
WEBHOOK_PATH = "/telegram/updates"
WEBHOOK_SECRET = "e2e-webhook-SECRET_do-not-leak"
MODES = ("polling", "webhook")
_update_ids = itertools.count(10_000)


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegramAPI]:
    async with FakeTelegramAPI(valid_token=BOT_TOKEN) as server:
        yield server


def bot_process(tmp_path: Path, chatinfo: FakeChatinfo, telegram: FakeTelegramAPI,
                mode: str = "polling") -> BotProcess:
    env = {"CHATINFO_API_KEY": API_KEY, "CHATINFO_BASE_URL": chatinfo.base_url,
           "TELEGRAM_API_URL": telegram.base_url}
    if mode == "webhook":
        env |= {"WEBHOOK_URL": WEBHOOK_URL, "WEBHOOK_SECRET": WEBHOOK_SECRET}
    return BotProcess(tmp_path, env)


class Updates:
    """Updates reach the bot as in its mode: queued for getUpdates, or posted to its webhook
    with the secret, as Telegram does once setWebhook is called."""

    def __init__(self, telegram: FakeTelegramAPI, bot: BotProcess, mode: str) -> None:
        self.telegram, self.bot, self.mode = telegram, bot, mode

    async def ready(self) -> None:
        """The bot is serving: its import and start-up, slow on a busy machine, are over."""
        method = "setWebhook" if self.mode == "webhook" else "getUpdates"
        await self.telegram.wait_calls(method, 1, timeout=STARTUP_TIMEOUT)

    async def send(self, update: dict[str, Any]) -> None:
        if self.mode == "polling":
            self.telegram.push_update(update)
            return
        update = {"update_id": next(_update_ids), **update}
        assert await self.bot.post_update(WEBHOOK_PATH, update, WEBHOOK_SECRET) == 200


def metric_samples(page: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(page) for sample in family.samples}


def answers(telegram: FakeTelegramAPI, prefix: str) -> list[Call]:
    return [call for call in telegram.calls_of("editMessageText")
            if not call.failed and str(call.params.get("text", "")).startswith(prefix)]


@pytest.mark.parametrize("mode", MODES)
async def test_conversation_then_clean_shutdown(tmp_path: Path, telegram: FakeTelegramAPI,
                                                mode: str) -> None:
    async with FakeChatinfo(keys={API_KEY: "prestige"}, solve_time=0.5) as chatinfo:
        bot = bot_process(tmp_path, chatinfo, telegram, mode)
        updates = Updates(telegram, bot, mode)
        await bot.start()
        try:
            await updates.ready()
            await updates.send(message_update(501, "/start", language_code="en"))
            [greeting] = await telegram.wait_calls("sendMessage", 1, timeout=20)
            assert str(greeting.params["text"]).startswith("👋 Hi!")
            assert greeting.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == (
                "mode:chat")

            await updates.send(callback_update(501, "mode:poems", message_id=1000))
            [ack] = await telegram.wait_calls("answerCallbackQuery", 1)
            assert ack.params["text"] == "Mode: Poems"

            await updates.send(message_update(501, "a cat on the roof"))
            await telegram.wait_for(lambda: len(answers(telegram, "[poems]")) == 1)
            placeholder = telegram.calls_of("sendMessage")[1]
            assert placeholder.params["text"] == "⏳ Got it, one moment…"
            [answer] = answers(telegram, "[poems]")
            assert answer.params["text"] == "[poems] a cat on the roof"
            assert answer.params["message_id"] == 1001
            assert telegram.calls_of("sendChatAction")
            assert chatinfo.calls["create_request"] == 1
            # The edit reaches Telegram a moment before the job is marked delivered.
            await telegram.wait_for(lambda: bot.count_jobs("delivered") == 1)

            status, health = await bot.get("/healthz")
            assert status == 200, health
            assert set(json.loads(health)["checks"].values()) == {"ok"}
            status, page = await bot.get("/metrics")
            assert status == 200
            (tmp_path / f"metrics-{mode}.txt").write_text(page)  # for a reader of a failure
            samples = metric_samples(page)
            assert samples[("chatinfo_bot_requests_total",
                            frozenset({("mode", "poems"), ("outcome", "delivered")}))] == 1
            assert samples[("chatinfo_bot_upstream_requests_total",
                            frozenset({("endpoint", "create_request"), ("status", "200")}))] == 1
            assert samples[("chatinfo_bot_updates_info", frozenset({("source", mode)}))] == 1
        finally:
            code = await bot.stop(signal.SIGTERM)
        assert code == 0
        log = bot.stderr.decode()
        assert "Task was destroyed" not in log and "Traceback" not in log
        for secret in (BOT_TOKEN, API_KEY, WEBHOOK_SECRET):
            assert secret not in log
        for secret in (BOT_TOKEN, API_KEY):
            assert all(secret not in str(call.params) for call in telegram.calls)

    if mode == "webhook":
        [registered] = telegram.calls_of("setWebhook")
        assert registered.params["url"] == WEBHOOK_URL
        assert registered.params["secret_token"] == WEBHOOK_SECRET
        assert telegram.calls_of("getUpdates") == []
        assert telegram.calls_of("deleteWebhook") == []  # Telegram keeps updates for next start
    else:
        assert telegram.calls_of("deleteWebhook")  # in case the last run used a webhook
        assert telegram.calls_of("setWebhook") == []


@pytest.mark.parametrize("mode", MODES)
async def test_inline_mode_over_the_wire(tmp_path: Path, telegram: FakeTelegramAPI,
                                         mode: str) -> None:
    async with FakeChatinfo(keys={API_KEY: "prestige"}, solve_time=0.3) as chatinfo:
        bot = bot_process(tmp_path, chatinfo, telegram, mode)
        updates = Updates(telegram, bot, mode)
        await bot.start()
        try:
            await updates.ready()
            await updates.send(inline_query_update(901, "what is a black hole"))
            [offer] = await telegram.wait_calls("answerInlineQuery", 1, timeout=20)
            assert [r["id"] for r in offer.params["results"]] == [
                "ask:chat", "ask:shorter", "ask:rewrite"]
            assert offer.params["is_personal"] in (True, "true", "True")

            await updates.send(chosen_inline_result_update(
                901, "ask:chat", "what is a black hole", inline_message_id="AgAAAInline"))
            await telegram.wait_for(lambda: bot.count_jobs("delivered") == 1, timeout=20)
            assert telegram.inline_messages["AgAAAInline"] == {
                "text": "[chat] what is a black hole", "reply_markup": None}
        finally:
            assert await bot.stop() == 0
    # Telegram sends only the update types the bot asks for.
    asked = (telegram.calls_of("setWebhook") if mode == "webhook"
             else telegram.calls_of("getUpdates"))[0].params["allowed_updates"]
    assert {"message", "callback_query", "inline_query", "chosen_inline_result"} <= set(asked)


async def test_webhook_refuses_updates_without_the_secret(
    tmp_path: Path, telegram: FakeTelegramAPI,
) -> None:
    async with FakeChatinfo(keys={API_KEY: "prestige"}, solve_time=0.5) as chatinfo:
        bot = bot_process(tmp_path, chatinfo, telegram, "webhook")
        await bot.start()
        try:
            await Updates(telegram, bot, "webhook").ready()
            request = {"update_id": next(_update_ids), **message_update(701, "spend a unit")}
            assert await bot.post_update(WEBHOOK_PATH, request, "a-wrong-secret") in (401, 403)
            start = {"update_id": next(_update_ids), **message_update(702, "/start")}
            assert await bot.post_update(WEBHOOK_PATH, start, None) in (401, 403)

            accepted = {"update_id": next(_update_ids), **message_update(703, "/start")}
            assert await bot.post_update(WEBHOOK_PATH, accepted, WEBHOOK_SECRET) == 200
            # The webhook answers once an update is handled, so the refused ones, sent
            # before, would have left their traces by now.
            sent = [call for call in telegram.calls_of("sendMessage") if not call.failed]
            assert [call.params["chat_id"] for call in sent] == [703]
            assert bot.count_jobs("new") + bot.count_jobs("creating") == 0
            assert chatinfo.calls["create_request"] == 0
        finally:
            assert await bot.stop() == 0


@pytest.mark.parametrize("mode", MODES)
async def test_sigterm_with_jobs_pending_exits_within_10s_and_keeps_them(
    tmp_path: Path, telegram: FakeTelegramAPI, mode: str,
) -> None:
    async with FakeChatinfo(keys={API_KEY: "prestige"}, solve_time=120.0) as chatinfo:
        bot = bot_process(tmp_path, chatinfo, telegram, mode)
        updates = Updates(telegram, bot, mode)
        await bot.start()
        await updates.ready()
        for n in range(3):
            await updates.send(message_update(800 + n, f"a long question {n}"))
        await telegram.wait_for(lambda: bot.count_jobs("pending") == 3, timeout=20)

        asked_at = time.monotonic()
        code = await bot.stop(signal.SIGTERM, timeout=15)
        took = time.monotonic() - asked_at

    assert code == 0
    assert took < 10, f"stopped in {took:.1f}s"
    assert bot.count_jobs("pending") == 3  # left for the next start
    log = bot.stderr.decode()
    assert "Traceback" not in log and "Task was destroyed" not in log


async def test_sigkill_with_pending_jobs_then_restart_delivers_each_once(
    tmp_path: Path, telegram: FakeTelegramAPI,
) -> None:
    async with FakeChatinfo(keys={API_KEY: "prestige"}, solve_time=3.0) as chatinfo:
        first = bot_process(tmp_path, chatinfo, telegram)
        await first.start()
        texts = [f"question {n}" for n in range(6)]
        for n, text in enumerate(texts):
            # A user each: a second question of one user would carry the first as
            # context, or not, as the two happen to be handled.
            telegram.push_update(message_update(600 + n, text))
        await telegram.wait_for(lambda: first.count_jobs("pending") == len(texts), timeout=20)
        assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
        assert answers(telegram, "[chat]") == []

        second = bot_process(tmp_path, chatinfo, telegram)
        await second.start()
        try:
            await telegram.wait_for(lambda: second.count_jobs("delivered") == len(texts),
                                    timeout=30)
        finally:
            assert await second.stop() == 0

    delivered = answers(telegram, "[chat]")
    assert sorted(str(call.params["text"]) for call in delivered) == sorted(
        f"[chat] {text}" for text in texts)
    edited = {(call.params["chat_id"], call.params["message_id"]) for call in delivered}
    assert len(edited) == len(texts)  # each placeholder edited once, none twice
    assert chatinfo.calls["create_request"] == len(texts)
    placeholders = [c for c in telegram.calls_of("sendMessage") if not c.failed]
    assert len(placeholders) == len(texts)
