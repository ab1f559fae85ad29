"""End-to-end load benchmark: the real `python -m bot` process over HTTP on both sides.

    python -m tests.benchmarks.e2e --rate 25 --duration 120 --noise 0.9     # one run
    python -m tests.benchmarks.e2e --sweep --duration 60                     # the whole table

The bot runs as operators run it (webhook mode), the fake Bot API and the fake chatinfo
server each in their own process, so the CPU seconds and peak RSS reported are the bot's
alone, read from /proc just before it is stopped. Updates are POSTed to the webhook at
`--rate` a second. "Ready" is when the fake chatinfo had the answer; "delivered" is when
the fake Bot API first received a message or edit carrying it, so the lag includes the
bot's Telegram throttle, as users see it. "One-message answers" came as a new message, with
no placeholder before them (the throttle's pressure at level 2, bot/telegram/throttle.py);
below the table, the bot's own /metrics says what each level of pressure left out.

Beside each run, the spec's sample loop (tests/benchmarks/load.py's baseline) faces the
same messages and solve times. The sweep runs σ 0.1, 0.3, 0.6 and 0.9, each cold (an empty
database) and warm (a database of answered jobs whose solve times had another σ, as after
the model's regime changes), and the default throttle on and off. Not part of the test
suite: a sweep takes most of an hour.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp

from storage.conversations import ConversationRepo
from storage.db import open_database
from storage.users import UserRepo
from tests.benchmarks.load import (
    add_load_arguments,
    percentile,
    plan_messages,
    seed_history,
    user_modes,
)
from tests.benchmarks.upstream import UpstreamProcess, bench_keys, per_key_text
from tests.botprocess import STARTUP_TIMEOUT, BotProcess
from tests.fakes.telegram_api import FakeTelegramAPI, message_update

WEBHOOK_URL = "https://bench.example.test/telegram/updates"
WEBHOOK_PATH = "/telegram/updates"
WEBHOOK_SECRET = "bench-webhook-secret"
UNTHROTTLED = 100_000  # messages a second: Telegram's budget out of the picture
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sent:
    """One message the bot sent or edited: when (monotonic), and the answer tag it carried."""

    at: float
    method: str
    tag: str | None  # "#17" for the answer to message 17; None for placeholders and the like


def answer_tag(text: str) -> str | None:
    """The fake chatinfo answers "[mode] content", and every content starts with "#n "."""
    if not text.startswith("["):
        return None
    _, _, rest = text.partition("] ")
    tag = rest.split(" ", 1)[0]
    return tag if tag.startswith("#") else None


def _serve_telegram(conn: Connection) -> None:
    async def main() -> None:
        api = FakeTelegramAPI()
        conn.send(await api.start())
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        offset = time.time() - time.monotonic()
        conn.send([Sent(call.at - offset, call.method, answer_tag(str(call.params.get("text", ""))))
                   for call in api.calls if call.method in ("sendMessage", "editMessageText")])
        await api.stop()

    asyncio.run(main())


class TelegramProcess:
    """The fake Bot API in its own process, so its CPU is not counted as the bot's."""

    def __init__(self) -> None:
        self._conn, child = multiprocessing.Pipe()
        self._process = multiprocessing.get_context("fork").Process(
            target=_serve_telegram, args=(child,), daemon=True)

    def start(self) -> str:
        self._process.start()
        url: str = self._conn.recv()
        return url

    def finish(self) -> list[Sent]:
        self._conn.send("records")
        sent: list[Sent] = self._conn.recv()
        self._process.join(timeout=10)
        return sent


def process_usage(pid: int) -> tuple[float, float]:
    """CPU seconds and peak RSS (MB) of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    status = Path(f"/proc/{pid}/status").read_text()
    peak_kb = next(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith("VmHWM:"))
    return cpu, peak_kb / 1024


async def prepare_database(args: argparse.Namespace, path: Path) -> None:
    """The users with their modes, and for a warm start the jobs of an earlier run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = await open_database(path)
    users = UserRepo(db)
    for user_id, mode in user_modes(args.seed).items():
        await users.touch(user_id, "en")
        await users.set_mode(user_id, mode)
        # Both variants must send the same text: the loop knows no conversations.
        await ConversationRepo(db).set_memory(user_id, mode, remembers=False)
    if args.history:
        await seed_history(db, argparse.Namespace(
            seed=args.seed, rate=args.rate, history=args.history, noise=args.history_noise))
    await db.close()


async def wait_healthy(bot: BotProcess, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (await bot.get("/healthz"))[0] == 200:
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("the bot did not become healthy")


async def feed(bot: BotProcess, args: argparse.Namespace) -> float:
    """POST every planned message at its moment; the seconds it took."""
    headers = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
    url = bot.web_url + WEBHOOK_PATH
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def post(update: dict[str, Any]) -> None:
            async with session.post(url, json=update, headers=headers) as reply:
                if reply.status != 200:
                    raise RuntimeError(f"webhook answered {reply.status}")

        started = time.monotonic()
        posts = []
        for n, (at, user_id, text) in enumerate(plan_messages(args.seed, args.rate,
                                                              args.duration)):
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            posts.append(asyncio.create_task(post({"update_id": n + 1,
                                                   **message_update(user_id, text)})))
        await asyncio.gather(*posts)
        return time.monotonic() - started


async def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    bot = BotProcess(workdir, {})
    await prepare_database(args, bot.database)
    upstream = UpstreamProcess(args.seed, args.noise, keys=args.keys)
    telegram = TelegramProcess()
    bot.env |= {
        "CHATINFO_API_KEYS": ",".join(bench_keys(args.keys)),
        "CHATINFO_BASE_URL": upstream.start(),
        "TELEGRAM_API_URL": telegram.start(), "WEBHOOK_URL": WEBHOOK_URL,
        "WEBHOOK_SECRET": WEBHOOK_SECRET, "DAILY_QUOTA": "0", "MAX_PENDING_PER_USER": "10000",
        "TELEGRAM_MESSAGES_PER_SECOND": str(args.telegram_rate), "LOG_LEVEL": "WARNING",
    }
    if args.profile:
        # py-spy starts the bot as its child: no ptrace rights needed.
        bot.launcher = ["py-spy", "record", "--format", "raw", "--rate", "200",
                        "--output", str(args.profile), "--"]
    await bot.start()
    await wait_healthy(bot)
    pid = bot_pid(bot)
    cpu_at_start, _ = process_usage(pid)
    sent_for = await feed(bot, args)
    deadline = time.monotonic() + args.drain
    jobs = int(args.rate * args.duration)
    # The history's jobs are finished from the start: only this run's count.
    while (time.monotonic() < deadline  # noqa: ASYNC110
           and finished_jobs(bot) - args.history < jobs):
        await asyncio.sleep(0.5)  # another process's database: nothing to await but time
    cpu, rss = process_usage(pid)
    degraded = await degraded_counts(bot)
    if bot.launcher:  # the bot stops; the profiler writes its file and follows
        os.kill(pid, signal.SIGTERM)
    await bot.stop(signal.SIGCONT if bot.launcher else signal.SIGTERM, timeout=60)
    records, statuses, polls = upstream.finish()
    sent = telegram.finish()
    return {**summarise(args, jobs, sent_for, records, statuses, polls, sent,
                        cpu - cpu_at_start, rss),
            "per_key": per_key_text(upstream.per_key), "degraded": degraded}


async def degraded_counts(bot: BotProcess) -> dict[str, int]:
    """What Telegram's pressure left out, by level, as the bot's /metrics counts it."""
    _, page = await bot.get("/metrics")
    prefix = "chatinfo_bot_telegram_degraded_total{level=\""
    return {line[len(prefix)]: int(float(line.split()[-1])) for line in page.splitlines()
            if line.startswith(prefix)}


def bot_pid(bot: BotProcess) -> int:
    """The bot's own process: the launched one, or its only child under a profiler."""
    assert bot.process is not None
    if not bot.launcher:
        return bot.process.pid
    children = Path(f"/proc/{bot.process.pid}/task/{bot.process.pid}/children").read_text()
    return int(children.split()[0])


def finished_jobs(bot: BotProcess) -> int:
    return sum(bot.count_jobs(state) for state in ("delivered", "failed", "unknown"))


def summarise(args: argparse.Namespace, jobs: int, sent_for: float, records: list[Any],
              statuses: dict[tuple[str, int], int], polls: Counter[int], sent: list[Sent],
              cpu: float, rss: float) -> dict[str, Any]:
    delivered: dict[str, float] = {}
    methods: dict[str, str] = {}
    one_message = 0
    for message in sent:
        if message.tag and message.tag not in delivered:
            delivered[message.tag] = message.at
            methods[message.tag] = message.method
            one_message += message.method == "sendMessage"
    by_tag = {r.tag: r for r in records}
    lags = [at - by_tag[tag].ready_at for tag, at in delivered.items() if tag in by_tag]
    per_job = [polls[by_tag[tag].id] for tag in delivered if tag in by_tag]
    # The lag in two: waiting for a poll to find the answer, then the bot and Telegram.
    found = [(r.found_at - r.ready_at, delivered[tag] - r.found_at)
             for tag, r in by_tag.items() if tag in delivered and r.found_at is not None]
    if args.details:
        with args.details.open("a") as out:
            for tag, at in delivered.items():
                if (record := by_tag.get(tag)) is not None:
                    out.write(json.dumps({
                        "noise": args.noise, "history": args.history, "tag": tag,
                        "solve": record.ready_at - record.created_at,
                        "first_poll": (record.first_polled_at or at) - record.created_at,
                        "polls": polls[record.id], "lag": at - record.ready_at,
                        "found": (record.found_at or at) - record.ready_at,
                        "method": methods[tag]}) + "\n")
    return {
        "variant": "ours", "jobs": jobs, "delivered": len(delivered),
        "created_per_s": len(records) / sent_for,
        "http_429": sum(n for (_, status), n in statuses.items() if status == 429),
        "polls_per_job_mean": sum(per_job) / max(1, len(per_job)),
        "lag_p50": percentile(lags, 0.5), "lag_p99": percentile(lags, 0.99),
        "lag_max": max(lags, default=float("nan")),
        "late_over_5s": sum(1 for lag in lags if lag > 5.0),
        "found_p50": percentile([f for f, _ in found], 0.5),
        "found_p99": percentile([f for f, _ in found], 0.99),
        "inside_p50": percentile([i for _, i in found], 0.5),
        "inside_p99": percentile([i for _, i in found], 0.99),
        "one_message_answers": one_message,
        "telegram_messages": len(sent),
        "cpu_s": cpu, "cpu_ms_per_request": 1000 * cpu / max(1, jobs), "peak_rss_mb": rss,
    }


def run_loop(args: argparse.Namespace) -> dict[str, Any]:
    """The spec's sample loop on the same messages and solve times (load.py's baseline)."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.load", "--variant", "baseline",
         "--rate", str(args.rate), "--duration", str(args.duration), "--drain",
         str(args.drain), "--seed", str(args.seed), "--noise", str(args.noise),
         "--history", "0"], check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


ROWS = (
    ("answers delivered", "delivered", "{:.0f}"), ("HTTP 429", "http_429", "{:.0f}"),
    ("polls per job", "polls_per_job_mean", "{:.2f}"),
    ("lag p50 (s)", "lag_p50", "{:.2f}"), ("lag p99 (s)", "lag_p99", "{:.2f}"),
    ("lag worst (s)", "lag_max", "{:.1f}"),
)


def degraded_note(label: str, ours: dict[str, Any]) -> str:
    counts = ours["degraded"]
    return (f"{label}: the bot's pressure left out {counts.get('1', 0)} typing actions and "
            f"progress edits, answered {counts.get('2', 0)} requests in one message (no "
            f"placeholder), and held {counts.get('3', 0)} requests' create_request.")


def lag_note(ours: dict[str, Any]) -> str:
    return (f" Of the lag, a poll found the answer after p50 {ours['found_p50']:.2f} s, "
            f"p99 {ours['found_p99']:.2f} s; the bot and Telegram took p50 "
            f"{ours['inside_p50']:.2f} s, p99 {ours['inside_p99']:.2f} s more.")


def row(label: str, ours: dict[str, Any], loop: dict[str, Any] | None) -> str:
    cells = [label, str(ours["jobs"])]
    for _, key, fmt in ROWS:
        cells.append(fmt.format(ours[key]) + (" / " + fmt.format(loop[key]) if loop else ""))
    cells += [str(ours["late_over_5s"]), str(ours["one_message_answers"]),
              f"{ours['cpu_ms_per_request']:.1f}", f"{ours['peak_rss_mb']:.0f}"]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| run | jobs | delivered (ours / loop) | 429 | polls per job | lag p50 | lag p99 "
          "| lag worst | answers > 5 s late | one-message answers | CPU ms per request "
          "| peak RSS MB |\n" + "|---" * 12 + "|")


def runs(args: argparse.Namespace) -> list[tuple[str, argparse.Namespace]]:
    if not args.sweep:
        return [(f"σ {args.noise}", args)]
    plans = []
    for noise in (0.1, 0.3, 0.6, 0.9):
        other = 0.9 if noise < 0.5 else 0.1  # the warm start learned another regime
        plans.append((f"σ {noise} cold", argparse.Namespace(
            **{**vars(args), "noise": noise, "history": 0})))
        plans.append((f"σ {noise} warm (σ {other} before)", argparse.Namespace(
            **{**vars(args), "noise": noise, "history": 2000, "history_noise": other})))
    plans.append(("σ 0.9 cold, throttle off", argparse.Namespace(
        **{**vars(args), "noise": 0.9, "history": 0, "telegram_rate": UNTHROTTLED})))
    return plans


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_arguments(parser, noise=0.9)
    parser.add_argument("--history", type=int, default=0,
                        help="answered jobs in the database before the start (0: cold)")
    parser.add_argument("--history-noise", type=float, default=0.1,
                        help="the spread the history's solve times had")
    parser.add_argument("--telegram-rate", type=int, default=30,
                        help="TELEGRAM_MESSAGES_PER_SECOND for the bot")
    parser.add_argument("--sweep", action="store_true",
                        help="σ 0.1-0.9, cold and warm, throttle on and off")
    parser.add_argument("--no-loop", action="store_true", help="skip the sample loop runs")
    parser.add_argument("--keys", type=int, default=1,
                        help="API keys in the bot's pool (CHATINFO_API_KEYS), each an "
                             "account of the fake's")
    parser.add_argument("--details", type=Path, default=None,
                        help="append a JSON line per delivered answer to this file: its "
                             "solve time, first poll, polls and lag")
    parser.add_argument("--profile", type=Path, default=None,
                        help="record the bot with py-spy (pip install py-spy) into this file "
                             "of collapsed stacks; see tests/benchmarks/hotspots.py")
    args = parser.parse_args()
    lines, notes = [HEADER], []
    for label, plan in runs(args):
        print(f"running {label} ({plan.rate}/s for {plan.duration:.0f} s)…", file=sys.stderr)
        ours = asyncio.run(run_ours(plan))
        loop = None if args.no_loop else run_loop(plan)
        lines.append(row(label, ours, loop))
        notes.append(degraded_note(label, ours) + lag_note(ours))
        print(lines[-1], notes[-1], sep="\n", file=sys.stderr)
        print(f"per API key: {ours['per_key']}", file=sys.stderr)
    print("\n".join(lines))
    print("\n" + "\n".join(notes))
    print("\nCells with two figures are ours / the sample loop's; the loop's polls are "
          "unlimited and never throttled by Telegram.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
