"""Load benchmark: our poll scheduler against the spec's sample loop, same seed and load.

    python -m tests.benchmarks.load --rate 25 --duration 120        # both, side by side
    python -m tests.benchmarks.pending --jobs 10000 --duration 60   # 10,000 jobs at once

Simulated users send messages at `--rate` a second through the real Dispatcher, job
runner and poll scheduler, with a recording Telegram session that answers at once. The
fake chatinfo server runs in its own process; its solve times depend on mode and length
(see upstream.py), so they can be learned, as GPT's can. The baseline sends the same
messages and polls like the spec's sample: wait 2 s, then every 2 s, up to 80 times,
with no rate limiter. Each variant runs in a fresh process, so CPU seconds and peak RSS
are its own. Not part of the test suite: it takes minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

from aiogram import Bot
from aiogram.methods import EditMessageText, TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.types import Update

from bot.app.wiring import freeze_startup_objects, make_application
from bot.config import Settings
from bot.jobs.runner import RunnerPolicy
from bot.telegram.i18n import make_i18n
from bot.upstream.client import ChatinfoClient, ChatinfoError
from storage.conversations import ConversationRepo
from storage.db import Database, open_database
from storage.jobs import JobState
from storage.users import UserRepo
from tests.benchmarks.upstream import (
    MODE_BASE,
    NOISE_SIGMA,
    UpstreamProcess,
    bench_keys,
    per_key_text,
    solve_seconds,
)
from tests.fakes.mocked_bot import RecordingSession
from tests.fakes.telegram_api import message_update

USERS = 300
MODE_WEIGHTS = {"chat": 30, "answer": 10, "poems": 6, "code": 8, "essay": 5, "article": 4,
                "rewrite": 5, "summary": 5, "post": 5, "task": 5, "shorter": 3, "story": 3,
                "paper": 2, "report": 2, "plan": 2, "text": 2, "synopsis": 2, "names": 1}
assert set(MODE_WEIGHTS) <= set(MODE_BASE)
SAMPLE_FIRST_WAIT, SAMPLE_EVERY, SAMPLE_ATTEMPTS = 2.0, 2.0, 80  # the spec's sample client


class TimedSession(RecordingSession):
    """Records when each answer reached a placeholder: (chat, message) -> time.

    Only that, not the calls themselves, so the benchmark's own record does not swell
    the memory it measures.
    """

    def __init__(self) -> None:
        super().__init__(keep_requests=False)
        self.answered: dict[tuple[int, int], float] = {}

    async def make_request(self, bot: Bot, method: TelegramMethod[TelegramType],
                           timeout: int | None = None) -> TelegramType:
        if isinstance(method, EditMessageText) and not (method.text or "").startswith("⏳"):
            self.answered.setdefault((int(method.chat_id or 0), int(method.message_id or 0)),
                                     time.monotonic())
        return await super().make_request(bot, method, timeout)


class CountingClient(ChatinfoClient):
    """Records every get_response call: when, and for which request.

    In flat arrays (16 bytes a call), so the record does not swell the memory measured.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.poll_times = array("d")
        self.poll_ids = array("q")

    async def get_response(self, request_id: int, *, slot_taken: bool = False) -> str | None:
        self.poll_times.append(time.monotonic())
        self.poll_ids.append(request_id)
        return await super().get_response(request_id, slot_taken=slot_taken)


def plan_messages(seed: int, rate: float, duration: float) -> list[tuple[float, int, str]]:
    """(seconds from start, user id, text) for every message of the run."""
    rng = random.Random(seed)
    count = int(rate * duration)
    messages = []
    for n in range(count):
        length = min(4900, int(rng.lognormvariate(4.6, 1.4)))
        messages.append((n / rate, 1000 + rng.randrange(USERS), f"#{n} " + "w" * length))
    return messages


def user_modes(seed: int) -> dict[int, str]:
    rng = random.Random(seed + 1)
    modes, weights = zip(*MODE_WEIGHTS.items(), strict=True)
    return {1000 + u: rng.choices(modes, weights)[0] for u in range(USERS)}


async def seed_history(db: Database, args: argparse.Namespace) -> None:
    """Answered jobs from an earlier run (another seed), as a bot that has been running has.

    The solve-time model learns from them at start; `--history 0` is a cold start.
    """
    modes = user_modes(args.seed)
    earlier = plan_messages(args.seed + 1000, args.rate, args.history / args.rate)
    # Sent as they were planned, an hour ago: the answers come in the order they would
    # have (the model weighs its latest answers most, so that order matters).
    began = time.time() - 3600
    for at, user_id, text in earlier:
        seconds = solve_seconds(args.seed + 1000, modes[user_id], text, args.noise,
                                getattr(args, "scale", 1.0))
        await db.execute(
            """INSERT INTO users (id, first_seen, last_seen) VALUES (?, ?, ?)
               ON CONFLICT DO NOTHING""", (user_id, began, began))
        await db.execute(
            """INSERT INTO jobs (user_id, chat_id, locale, mode, content, state, upstream_id,
                                 result, created_at, updated_at, upstream_at, answered_at)
               VALUES (?, ?, 'en', ?, ?, 'delivered', 0, '', ?, ?, ?, ?)""",
            (user_id, user_id, modes[user_id], text, began + at, began + at, began + at,
             began + at + seconds))
    await db.commit()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def peak_in_window(times: list[float], window: float = 60.0) -> int:
    ordered, start, best = sorted(times), 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def usage() -> tuple[float, float]:
    """CPU seconds so far and peak RSS in MB, of this process."""
    self = resource.getrusage(resource.RUSAGE_SELF)
    return self.ru_utime + self.ru_stime, self.ru_maxrss / 1024


async def run_ours(args: argparse.Namespace, url: str) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    db = await open_database(workdir / "bench.sqlite3")
    keys = bench_keys(args.keys)
    clients = [CountingClient(url, key) for key in keys]  # one per key of the pool
    session = TimedSession()
    bot = Bot("42:BENCH", session=session)
    settings = Settings(bot_token="42:BENCH", chatinfo_api_keys=",".join(keys), daily_quota=0,
                        max_pending_per_user=10_000, database_path=workdir / "bench.sqlite3")
    app = make_application(bot, db, make_i18n(), settings, client=clients,
                           policy=RunnerPolicy())
    dp, runner = app.dp, app.runner
    freeze_startup_objects()  # as `python -m bot` does
    await seed_history(db, args)
    runner.workers.start()
    await runner.resume()  # learns from the history, as at a start
    users = UserRepo(db)
    for user_id, mode in user_modes(args.seed).items():
        await users.touch(user_id, "en")
        await users.set_mode(user_id, mode)
        # Both variants must send the same text: the loop knows no conversations.
        await ConversationRepo(db).set_memory(user_id, mode, remembers=False)
    started = time.monotonic()
    feeding: list[asyncio.Task[Any]] = []
    for at, user_id, text in plan_messages(args.seed, args.rate, args.duration):
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        update = Update.model_validate({"update_id": len(feeding) + 1,
                                        **message_update(user_id, text)}, context={"bot": bot})
        feeding.append(asyncio.create_task(dp.feed_update(bot, update)))
    await asyncio.gather(*feeding)
    sent_for = time.monotonic() - started
    await runner.wait_idle(args.drain)
    rows = list(await db.execute_fetchall(
        "SELECT id, upstream_id, chat_id, placeholder_id, state FROM jobs WHERE upstream_id"))
    answer_edits = session.answered
    delivered = {row[1]: answer_edits[(row[2], row[3])] for row in rows
                 if row[4] == JobState.DELIVERED and (row[2], row[3]) in answer_edits}
    await runner.stop()
    await app.pool.close()
    await db.close()
    polls = clients[0]
    for other in clients[1:]:
        polls.poll_times.extend(other.poll_times)
        polls.poll_ids.extend(other.poll_ids)
    return {"sent_for": sent_for, "created": sum(1 for r in rows if r[1] is not None),
            "delivered": delivered, "polls": polls, "jobs": len(rows)}


async def run_baseline(args: argparse.Namespace, url: str) -> dict[str, Any]:
    client = CountingClient(url, "bench-key", create_per_min=10**9, poll_per_min=10**9,
                            units_per_min=10**9, attempts=1)
    session = TimedSession()
    bot = Bot("42:BENCH", session=session)
    modes = user_modes(args.seed)
    delivered: dict[int, float] = {}
    created = 0

    async def sample_solve(user_id: int, text: str) -> None:
        nonlocal created
        placeholder = await bot.send_message(user_id, "⏳")
        try:
            request = await client.create_request(text, modes[user_id])
        except ChatinfoError:
            return
        created += 1
        await asyncio.sleep(SAMPLE_FIRST_WAIT)
        for _ in range(SAMPLE_ATTEMPTS):
            try:
                result = await client.get_response(request.id)
            except ChatinfoError:
                return  # the sample gives up on any error
            if result is not None:
                await bot.edit_message_text(result, chat_id=user_id,
                                            message_id=placeholder.message_id)
                delivered[request.id] = time.monotonic()
                return
            await asyncio.sleep(SAMPLE_EVERY)

    started = time.monotonic()
    tasks = []
    for at, user_id, text in plan_messages(args.seed, args.rate, args.duration):
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        tasks.append(asyncio.create_task(sample_solve(user_id, text)))
    sent_for = time.monotonic() - started
    await asyncio.wait(tasks, timeout=args.drain)
    for task in tasks:
        task.cancel()
    await client.close()
    return {"sent_for": sent_for, "created": created, "delivered": delivered,
            "polls": client, "jobs": len(tasks)}


def summarise(name: str, result: dict[str, Any], records: list[Any],
              statuses: dict[tuple[str, int], int], cpu: float, rss: float) -> dict[str, Any]:
    ready = {r.id: r.ready_at for r in records}
    solve = [r.ready_at - r.created_at for r in records]
    delivered: dict[int, float] = result["delivered"]
    lags = [delivered[i] - ready[i] for i in delivered if i in ready]
    per_job = Counter(result["polls"].poll_ids)
    polls = [per_job[i] for i in delivered]
    return {
        "variant": name, "jobs": result["jobs"], "delivered": len(delivered),
        "created_per_s": result["created"] / result["sent_for"],
        "peak_polls_60s": peak_in_window(list(result["polls"].poll_times)),
        "http_429": sum(n for (_, status), n in statuses.items() if status == 429),
        "polls_per_job_mean": sum(polls) / max(1, len(polls)),
        "polls_per_job_p99": percentile([float(p) for p in polls], 0.99),
        "lag_p50": percentile(lags, 0.5), "lag_p99": percentile(lags, 0.99),
        "lag_max": max(lags, default=float("nan")),
        "solve_p50": percentile(solve, 0.5), "solve_p99": percentile(solve, 0.99),
        "cpu_s": cpu, "peak_rss_mb": rss,
    }


async def variant(args: argparse.Namespace) -> dict[str, Any]:
    upstream = UpstreamProcess(args.seed, args.noise, keys=args.keys)
    url = upstream.start()
    cpu_before, _ = usage()
    result = await (run_ours(args, url) if args.variant == "ours" else run_baseline(args, url))
    cpu_after, rss = usage()
    records, statuses, _ = upstream.finish()
    return {**summarise(args.variant, result, records, statuses, cpu_after - cpu_before, rss),
            "per_key": per_key_text(upstream.per_key)}


ROWS = (
    ("jobs sent", "jobs", "{:.0f}"), ("answers delivered", "delivered", "{:.0f}"),
    ("create_request per second", "created_per_s", "{:.1f}"),
    ("peak get_response in any 60 s (limit 15000)", "peak_polls_60s", "{:.0f}"),
    ("HTTP 429 responses", "http_429", "{:.0f}"),
    ("per API key", "per_key", "{}"),
    ("polls per job, mean", "polls_per_job_mean", "{:.2f}"),
    ("polls per job, p99", "polls_per_job_p99", "{:.0f}"),
    ("lag ready -> Telegram edit, p50 (s)", "lag_p50", "{:.2f}"),
    ("lag ready -> Telegram edit, p99 (s)", "lag_p99", "{:.2f}"),
    ("lag, worst (s)", "lag_max", "{:.2f}"),
    ("solve time p50 / p99 (s)", ("solve_p50", "solve_p99"), "{:.1f} / {:.1f}"),
    ("CPU seconds", "cpu_s", "{:.1f}"), ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
)


def table(results: list[dict[str, Any]]) -> str:
    header = "| | " + " | ".join(r["variant"] for r in results) + " |"
    lines = [header, "|---" * (len(results) + 1) + "|"]
    for label, key, fmt in ROWS:
        cells = [fmt.format(*(r[k] for k in key)) if isinstance(key, tuple)
                 else fmt.format(r[key]) for r in results]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_load_arguments(parser: argparse.ArgumentParser, *, noise: float) -> None:
    """The load every benchmark variant shares: rate, duration, drain, seed, spread."""
    parser.add_argument("--rate", type=float, default=25.0, help="messages per second")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of sending")
    parser.add_argument("--drain", type=float, default=150.0,
                        help="seconds to wait for answers after sending stops")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--noise", type=float, default=noise,
                        help="log-normal spread of solve times around their mode's line")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_arguments(parser, noise=NOISE_SIGMA)
    parser.add_argument("--history", type=int, default=2000,
                        help="answered jobs the bot has from before (0: a cold start)")
    parser.add_argument("--only", choices=("ours", "baseline"), help="run one variant")
    parser.add_argument("--keys", type=int, default=1,
                        help="API keys in the bot's pool, each an account of the fake's")
    parser.add_argument("--variant", choices=("ours", "baseline"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(asyncio.run(variant(args))))
        return 0
    results = []
    for name in (args.only,) if args.only else ("ours", "baseline"):
        print(f"running {name} ({args.rate}/s for {args.duration:.0f} s)…", file=sys.stderr)
        out = subprocess.run(
            [sys.executable, "-m", "tests.benchmarks.load", "--variant", name,
             "--rate", str(args.rate), "--duration", str(args.duration),
             "--drain", str(args.drain), "--seed", str(args.seed),
             "--noise", str(args.noise), "--history", str(args.history),
             "--keys", str(args.keys)],
            check=True, capture_output=True, text=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
