"""Ten thousand pending jobs at once: memory, CPU, and whether any job starves.

    python -m tests.benchmarks.pending --jobs 10000 --duration 120

As after a restart with a full backlog: the jobs are already created upstream (the fake
chatinfo server runs in its own process) and stored as pending; the runner resumes them
all at once and the poll scheduler shares the 15,000-a-minute budget among them. Solve
times are ten times the load benchmark's (a median of about 76 s), so the jobs stay
pending for minutes, as a backlog would. The bound on lag while the budget is saturated is
pending jobs / polls per second + the longest gap: 10,000 / 250 + 1.9 = 42 s, and it
shrinks as jobs finish.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import sys
import tempfile
import time
from pathlib import Path

from aiogram import Bot

from bot.app.wiring import freeze_startup_objects, make_application
from bot.config import Settings
from bot.jobs.runner import RunnerPolicy
from bot.telegram.i18n import make_i18n
from bot.upstream.client import ChatinfoClient
from storage.db import open_database
from tests.benchmarks.load import (
    CountingClient,
    TimedSession,
    peak_in_window,
    percentile,
    plan_messages,
    seed_history,
    usage,
    user_modes,
)
from tests.benchmarks.upstream import NOISE_SIGMA, UpstreamProcess


async def preload(url: str, db_path: Path, args: argparse.Namespace) -> None:
    """Create the requests upstream and store them as pending jobs, as a backlog."""
    loader = ChatinfoClient(url, "bench-key", create_per_min=10**9)
    modes = user_modes(args.seed)
    messages = plan_messages(args.seed, args.jobs / 60, 60)[: args.jobs]
    semaphore = asyncio.Semaphore(64)

    async def create(text: str, mode: str) -> int:
        async with semaphore:
            return (await loader.create_request(text, mode)).id

    ids = await asyncio.gather(*(create(text, modes[user]) for _, user, text in messages))
    await loader.close()
    db = await open_database(db_path)
    await seed_history(db, args)
    now = time.time()
    for n, ((_, user, text), upstream_id) in enumerate(zip(messages, ids, strict=True)):
        await db.execute(
            """INSERT INTO jobs (user_id, chat_id, placeholder_id, locale, mode, content,
                                 state, upstream_id, created_at, updated_at, upstream_at)
               VALUES (?, ?, ?, 'en', ?, ?, 'pending', ?, ?, ?, ?)""",
            (user, user, 10**6 + n, modes[user], text, upstream_id, now, now, now))
    await db.commit()
    await db.close()


async def measure(args: argparse.Namespace) -> None:
    upstream = UpstreamProcess(args.seed, args.noise, args.scale,
                               limits={"create_request": 10**9})
    url = upstream.start()
    db_path = Path(tempfile.mkdtemp(prefix="bench-pending-")) / "bench.sqlite3"
    # In a child process, so its allocations stay out of the memory measured here.
    loader = multiprocessing.get_context("fork").Process(
        target=lambda: asyncio.run(preload(url, db_path, args)))
    loader.start()
    loader.join()
    db = await open_database(db_path)
    client = CountingClient(url, "bench-key")
    session = TimedSession()
    bot = Bot("42:BENCH", session=session)
    settings = Settings(bot_token="42:BENCH", chatinfo_api_key="bench-key",
                        database_path=db_path)
    runner = make_application(bot, db, make_i18n(), settings, client=client,
                              policy=RunnerPolicy()).runner
    freeze_startup_objects()  # as `python -m bot` does
    runner.workers.start()
    cpu_start, rss_before = usage()
    started = time.monotonic()
    await runner.resume()
    await runner.wait_idle(args.duration)
    elapsed = time.monotonic() - started
    cpu_end, rss_peak = usage()
    records, statuses, _ = upstream.finish()
    edits = {message_id: moment for (_, message_id), moment in session.answered.items()}
    rows = await db.execute_fetchall("SELECT upstream_id, placeholder_id FROM jobs "
                                     "WHERE placeholder_id >= ?", (10**6,))
    ready = {r.id: r.ready_at for r in records}
    lags = [edits[placeholder] - ready[upstream_id] for upstream_id, placeholder in rows
            if placeholder in edits]
    print(f"jobs pending at start        {args.jobs}")
    print(f"answers delivered            {len(lags)} in {elapsed:.0f} s "
          f"({runner.active} still waiting)")
    polls = list(client.poll_times)
    print(f"get_response calls           {len(polls)}, peak {peak_in_window(polls)} in any "
          f"60 s (limit {settings.chatinfo_poll_per_min})")
    print(f"HTTP 429 responses           "
          f"{sum(n for (_, status), n in statuses.items() if status == 429)}")
    print(f"lag p50 / p99 / worst (s)    {percentile(lags, 0.5):.2f} / "
          f"{percentile(lags, 0.99):.2f} / {max(lags, default=float('nan')):.2f}")
    print(f"CPU seconds                  {cpu_end - cpu_start:.1f} "
          f"({100 * (cpu_end - cpu_start) / elapsed:.0f}% of one core on average)")
    print(f"RSS before / peak (MB)       {rss_before:.0f} / {rss_peak:.0f}")
    await runner.stop()
    await client.close()
    await db.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=120.0,
                        help="seconds to run at most")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--noise", type=float, default=NOISE_SIGMA)
    parser.add_argument("--history", type=int, default=2000)
    parser.add_argument("--scale", type=float, default=10.0,
                        help="solve times times this: answers come over minutes, so the "
                        "jobs stay pending")
    args = parser.parse_args()
    args.rate = 25.0  # for the history's plan
    random.seed(args.seed)
    asyncio.run(measure(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
