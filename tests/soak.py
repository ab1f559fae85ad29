"""Soak: the real bot for minutes against both fakes, faults on both sides, and SIGKILLs.

    .venv/bin/python -m tests.soak --minutes 30
    .venv/bin/python -m tests.soak --minutes 1 --rate 3 --kill-every 20   # a quick look

Simulated users send text messages at `--rate` a second through the fake Bot API server
(tests/fakes/telegram_api.py); the bot (`python -m bot`, a subprocess) answers through the
fake chatinfo server (bot/upstream/sandbox.py). A share of calls fails at random on both sides,
and the bot is SIGKILLed and restarted every `--kill-every` seconds or so. When the time
is up, no more messages come and the bot gets `--drain` seconds (without kills) to finish
what it accepted; then it is stopped with SIGTERM and the run is judged from what the
fakes recorded, not from what the bot believes. Everything listens on 127.0.0.1, and the
run stops by itself. Exit status 0 when nothing was lost, wasted or duplicated.

The figures, precisely:

- messages sent: text messages the simulated users sent.
- requests accepted: jobs the bot stored for those messages (rows in its database with
  the message's id). A message sent but not accepted was refused (quota, pending limit;
  the soak sets both out of the way) or fetched and confirmed by a bot that was killed
  before storing it; reported beside it.
- answers delivered: accepted requests whose whole answer (every part, by text) is in
  the user's chat as the fake Bot API holds it at the end.
- users told of a failure: accepted requests not delivered whose placeholder (or, if the
  user deleted it, a new message in the chat) shows one of the bot's failure texts;
  "unknowable" are those told that something went wrong while create_request was sent,
  so the bot could not know whether it counted.
- units spent: create_request calls the fake accepted (each made a request and took a
  unit), including those whose reply the bot never saw.
- units wasted: spent units whose answer was never delivered.
- units whose id was lost: spent units (the fake's record) whose id no job of the bot's
  holds: the reply carrying it was lost (a fault, a SIGKILL). Nothing can fetch their
  answers, so they are the least a run can waste. Goal: units wasted equal these.
- reconciled, from the bot's log: failed creates the balance settled, as sent again
  safely (they spent nothing), confirmed spent (the unit went, its id was lost) or
  assumed spent (the balance could not tell: e.g. two failed creates in the time of one
  unreported debit). Goal: every unit wasted is one whose id was lost and whose user was told
  so, and no unit is spent twice (no content created twice).
- units of unknowable outcome: spent units whose user was told the outcome was unknowable
  (the honest answer when a reply is lost; the user may send again).
- told unknowable, unspent: users told "may have counted" when nothing was spent (the
  price of assuming spent when the balance cannot tell).
- double taps: answers whose ✂️ button a user tapped twice in a row; each must make one
  request, never two.
- 429 storms: every `--storm-every` seconds or so, create_request (and now and then
  get_response) answers 429 for `--storm-seconds`. Requests wait; none fails for it.
- answers lost: accepted requests that ended neither delivered nor told. Goal: 0.
- duplicate parts: answer parts shown in more than one message. Those "from a kill
  mid-send" are sent again by the next start because a SIGKILL came between Telegram
  taking the message and the bot storing that it did (Telegram has no idempotent send);
  each is proven so: the earlier copy was sent at most MID_SEND seconds before a SIGKILL
  and the later one after it. Other duplicate parts: goal 0.
- stale placeholders: "⏳" messages left as they were (a kill between sending one and
  storing its id; the job then got a new one). Cosmetic.
- own 429s: rate-limit refusals the fake chatinfo produced itself (not injected). Goal: 0.
- memory: the bot's resident set size (VmRSS) sampled every `--sample-every` seconds, per
  start; within a start it should stay flat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import random
import re
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bot.jobs.failures import Failure, failure_text
from bot.telegram.i18n import make_i18n
from bot.telegram.render import render
from bot.upstream.client import CREATE_TIMEOUT
from bot.upstream.sandbox import FakeChatinfo, standard_faults
from tests.botprocess import BOT_TOKEN, BotProcess
from tests.fakes.telegram_api import Call, callback_update, message_update
from tests.harness import FakeTelegram

API_KEY = "soak-key"
CLIENT_TIMEOUT = 20.0  # the bot's read timeout of polls (bot/upstream/client.py default)
PLACEHOLDER_MARK = "⏳"
SORRY = "😔 Something went wrong. Please try again."  # handlers/fallback.py on_error
WARM_UP = 10.0  # seconds after a start before memory is sampled
# A part sent this long before a SIGKILL may not have been stored as sent: the bot stores
# it right after Telegram's reply (milliseconds; the margin is for a loaded machine).
MID_SEND = 2.0


@dataclass(frozen=True)
class Options:
    minutes: float
    rate: float
    users: int
    chatinfo_faults: float
    replied_create_faults: bool
    telegram_faults: float
    kill_every: float
    long_share: float
    drain: float
    sample_every: float
    storm_every: float
    storm_seconds: float
    double_taps: float
    seed: int
    workdir: Path | None


def parse_options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m tests.soak",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long users send")
    parser.add_argument("--rate", type=float, default=2.0, help="messages a second")
    parser.add_argument("--users", type=int, default=40, help="simulated users")
    parser.add_argument("--chatinfo-faults", type=float, default=0.05,
                        help="share of chatinfo calls that fail, of every kind")
    parser.add_argument("--replied-create-faults", action="store_true",
                        help="create_request fails only with the API's own reply (a 500, a "
                             "garbled body, a 429): no timeouts, drops or gateway errors, "
                             "whose unit the balance can place only within 60 s")
    parser.add_argument("--telegram-faults", type=float, default=0.05,
                        help="share of sendMessage/editMessageText/getUpdates calls that fail")
    parser.add_argument("--kill-every", type=float, default=60.0,
                        help="mean seconds between SIGKILLs (0: never)")
    parser.add_argument("--long-share", type=float, default=0.1,
                        help="share of answers long enough for several messages")
    parser.add_argument("--drain", type=float, default=180.0,
                        help="seconds the bot gets to finish after the last message")
    parser.add_argument("--sample-every", type=float, default=10.0, help="memory sampling")
    parser.add_argument("--storm-every", type=float, default=120.0,
                        help="mean seconds between 429 storms (0: none)")
    parser.add_argument("--storm-seconds", type=float, default=30.0,
                        help="how long each 429 storm lasts")
    parser.add_argument("--double-taps", type=float, default=0.1,
                        help="double taps on an answer's ✂️ button, per message sent")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the bot's database and log go (default: a new temp dir)")
    args = parser.parse_args(argv)
    return Options(**vars(args))


class ChaoticTelegram(FakeTelegram):
    """The fake Bot API, failing a share of message calls and of long polls at random, and
    now and then losing a placeholder as if the user had deleted it."""

    KINDS: ClassVar[dict[str, tuple[tuple[int, str, int | None], ...]]] = {
        "sendMessage": ((429, "Too Many Requests: retry after 1", 1),
                        (500, "Internal Server Error", None), (502, "Bad Gateway", None)),
        "editMessageText": ((429, "Too Many Requests: retry after 1", 1),
                            (502, "Bad Gateway", None)),
    }

    def __init__(self, rate: float, seed: int) -> None:
        super().__init__(valid_token=BOT_TOKEN)
        self.rate = rate
        self.rng = random.Random(f"{seed}/telegram")
        self.injected: Counter[str] = Counter()

    def _take_fault(self, call: Call) -> Any:
        if call.method in ("sendMessage", "editMessageText", "getUpdates") and \
                self.rng.random() < self.rate:
            self._inject_random(call)
        return super()._take_fault(call)

    def _inject_random(self, call: Call) -> None:
        method = call.method
        choice = self.rng.random()
        if method == "getUpdates" or choice < 0.25:
            self.inject_disconnect(method)
            self.injected[f"{method} dropped"] += 1
        elif method == "editMessageText" and choice < 0.35:
            key = (int(call.params.get("chat_id", 0)), int(call.params.get("message_id", 0)))
            self.messages.pop(key, None)  # the user deleted the placeholder
            self.injected["placeholder deleted"] += 1
        else:
            status, description, retry_after = self.rng.choice(self.KINDS[method])
            self.inject(method, status=status, description=description,
                        retry_after=retry_after, chat_id=call.params.get("chat_id"))
            self.injected[f"{method} {status}"] += 1


@dataclass
class Sample:
    at: float
    rss_kb: int


@dataclass
class Incarnation:
    process: asyncio.subprocess.Process
    started: float
    samples: list[Sample] = field(default_factory=list)
    killed: bool = False
    killed_at: float = 0.0  # time.time(), as the fake Bot API stamps its calls


class SoakBot:
    """`python -m bot` with BotProcess's environment, logging to a file instead of pipes
    (a pipe nobody reads for half an hour fills up and stalls the bot)."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.template = BotProcess(workdir, env)
        self.workdir = workdir
        self.log_path = workdir / "bot.log"
        self.lives: list[Incarnation] = []

    @property
    def current(self) -> Incarnation | None:
        live = self.lives[-1] if self.lives else None
        return live if live is not None and live.process.returncode is None else None

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", cwd=self.workdir, env=self.template.env,
                stdout=log, stderr=log)
        self.lives.append(Incarnation(process, time.monotonic()))

    async def kill(self) -> None:
        if (life := self.current) is not None:
            life.killed = True
            life.killed_at = time.time()
            life.process.send_signal(signal.SIGKILL)
            await life.process.wait()

    async def stop(self, timeout: float = 30.0) -> int | None:
        life = self.current
        if life is None:
            return self.lives[-1].process.returncode if self.lives else None
        life.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(life.process.wait(), timeout)
        except TimeoutError:
            await self.kill()
            return None

    def sample_memory(self) -> None:
        life = self.current
        # The first seconds are imports (a few MB growing to the working size): not a trend.
        if life is None or time.monotonic() - life.started < WARM_UP:
            return
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{life.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    life.samples.append(Sample(time.monotonic(), int(line.split()[1])))

    def unfinished_jobs(self) -> int:
        # An ending is stored before its user is told: not finished until told.
        rows = self.query("SELECT count(*) FROM jobs WHERE state IN "
                          "('new', 'creating', 'pending', 'answered') "
                          "OR (state IN ('failed', 'unknown') AND told = 0)")
        return int(rows[0]["count(*)"]) if rows else 0

    def query(self, sql: str) -> list[dict[str, Any]]:
        if not self.template.database.exists():
            return []
        with sqlite3.connect(self.template.database, timeout=10) as db:
            db.row_factory = sqlite3.Row
            try:
                return [dict(row) for row in db.execute(sql)]
            except sqlite3.OperationalError:  # the schema is not there yet
                return []


@dataclass
class Sent:
    user: int
    message_id: int
    text: str


@dataclass(frozen=True)
class DoubleTap:
    user: int
    job_id: int  # the answer whose ✂️ was tapped twice


class Answers:
    """What the fake chatinfo answers: deterministic in the content, sometimes long.

    An answer names its content by a digest, never quotes it: a content carries the
    conversation before it (up to 5000 characters), and a ✂️ request's content is the
    answer it shortens, so quoting would repeat text across answers and contents."""

    def __init__(self, long_share: float, seed: int) -> None:
        self.long_share = long_share
        self.seed = seed

    def __call__(self, mode: str, content: str) -> str:
        rng = random.Random(f"{self.seed}/{content}")
        digest = hashlib.sha256(content.encode()).hexdigest()[:16]
        if rng.random() >= self.long_share:
            return f"answer to {digest}"
        return "\n\n".join(f"{digest} part {n}: " + " ".join(f"w{n}x{i}" for i in range(200))
                           for n in range(7))  # about 9000 characters: three messages

    def solve_time(self, mode: str, content: str) -> float:
        return random.Random(f"{self.seed}/solve/{content}").uniform(0.5, 8.0)


async def drive(options: Options, workdir: Path) -> int:
    answers = Answers(options.long_share, options.seed)
    rng = random.Random(f"{options.seed}/driver")
    telegram = ChaoticTelegram(options.telegram_faults, options.seed)
    async with (FakeChatinfo({API_KEY: "prestige"}, units=10_000_000, answer=answers,
                             solve_time=answers.solve_time) as chatinfo, telegram):
        faults = standard_faults(CLIENT_TIMEOUT + 5, hung_create=CREATE_TIMEOUT + 5)
        if options.replied_create_faults:
            faults["create_request"] = [fault for fault in faults["create_request"]
                                        if fault.status in (200, 429, 500)]
        chatinfo.inject_random(faults, options.chatinfo_faults, seed=options.seed)
        bot = SoakBot(workdir, {
            "CHATINFO_API_KEY": API_KEY, "CHATINFO_BASE_URL": chatinfo.base_url,
            "TELEGRAM_API_URL": telegram.base_url, "DAILY_QUOTA": "0",
            "MAX_PENDING_PER_USER": "50", "MAX_WAIT_SECONDS": "150", "LOG_LEVEL": "INFO"})
        sent: list[Sent] = []
        taps: list[DoubleTap] = []
        started = time.monotonic()
        try:
            await bot.start()
            await run_load(options, rng, bot, telegram, chatinfo, sent, taps)
            print(f"load over after {(time.monotonic() - started) / 60:.1f} min; draining",
                  flush=True)
            deadline = time.monotonic() + options.drain
            next_sample = time.monotonic()
            while time.monotonic() < deadline and (
                    bot.unfinished_jobs() or telegram.updates):
                if bot.current is None:  # killed just before the load ended
                    await bot.start()
                if time.monotonic() >= next_sample:
                    bot.sample_memory()
                    next_sample = time.monotonic() + options.sample_every
                await asyncio.sleep(1.0)
            code = await bot.stop()
        finally:
            if bot.current is not None:
                await bot.kill()
        report = judge(options, bot, chatinfo, telegram, sent, taps, answers)
        report.print(options, time.monotonic() - started, code, workdir)
        return 0 if report.clean else 1


async def run_load(options: Options, rng: random.Random, bot: SoakBot,
                   telegram: ChaoticTelegram, chatinfo: FakeChatinfo, sent: list[Sent],
                   taps: list[DoubleTap]) -> None:
    end = time.monotonic() + options.minutes * 60
    next_kill = next_kill_at(options, rng)
    next_storm = next_at(options.storm_every, rng)
    next_sample = time.monotonic()
    message_ids = (1_000_000 + n for n in range(10**9))
    while (now := time.monotonic()) < end:
        if now >= next_sample:
            bot.sample_memory()
            next_sample = now + options.sample_every
        if now >= next_kill:
            await bot.kill()
            await bot.start()
            next_kill = next_kill_at(options, rng)
        if now >= next_storm:
            for endpoint in ("create_request", "get_response")[:rng.choice((1, 1, 2))]:
                chatinfo.rate_limit_for(endpoint, options.storm_seconds)
            next_storm = next_at(options.storm_every, rng)
        if rng.random() < options.double_taps:
            double_tap(telegram, rng, taps)
        user = 10_000 + rng.randrange(options.users)
        message = Sent(user, next(message_ids), f"soak {len(sent)} {rng.randrange(10**6)}")
        telegram.push_update(message_update(user, message.text, message_id=message.message_id))
        sent.append(message)
        await asyncio.sleep(rng.expovariate(options.rate))


def next_kill_at(options: Options, rng: random.Random) -> float:
    return next_at(options.kill_every, rng)


def next_at(mean: float, rng: random.Random) -> float:
    if mean <= 0:
        return float("inf")
    return time.monotonic() + rng.uniform(0.5, 1.5) * mean


SHORTER = re.compile(r"^ans:s:(\d+)$")


def double_tap(telegram: ChaoticTelegram, rng: random.Random, taps: list[DoubleTap]) -> None:
    """Tap ✂️ twice on an answer not tapped before, as an impatient user would."""
    tapped = {tap.job_id for tap in taps}
    buttons = [(chat_id, message_id, int(match[1]))
               for (chat_id, message_id), message in list(telegram.messages.items())
               for row in message.get("reply_markup", {}).get("inline_keyboard", [])
               for button in row
               if (match := SHORTER.match(button.get("callback_data", "")))]
    untapped = [button for button in buttons if button[2] not in tapped]
    if not untapped:
        return
    chat_id, message_id, job_id = rng.choice(untapped)
    for _ in range(2):
        telegram.push_update(callback_update(chat_id, f"ans:s:{job_id}", message_id=message_id))
    taps.append(DoubleTap(chat_id, job_id))


@dataclass
class Report:
    sent: int = 0
    accepted: int = 0
    delivered: int = 0
    told_unknowable: int = 0
    told_other: Counter[str] = field(default_factory=Counter)
    spent: int = 0
    spent_unknowable: int = 0
    wasted: int = 0
    ids_lost: int = 0  # spent units whose id no job of the bot's holds (the fake's record)
    reconciled: Counter[str] = field(default_factory=Counter)
    created_twice: int = 0  # contents with two requests: a unit spent twice
    told_but_unspent: int = 0  # told "may have counted" although nothing was spent
    # Those told "may have counted", by their failed create's fault ("crash": none, a
    # SIGKILL caught it): a fault without the API's reply leaves the balance a long span.
    unknowable_by_fault: Counter[str] = field(default_factory=Counter)
    taps: int = 0
    tap_requests: int = 0
    lost: list[str] = field(default_factory=list)
    duplicates: int = 0
    duplicates_mid_send: int = 0  # sent again after a SIGKILL right after the first copy
    mid_send_gap: float = 0.0  # the longest of those: first copy to the SIGKILL, seconds
    unexplained_duplicates: list[str] = field(default_factory=list)
    stale_placeholders: int = 0
    sorry_replies: int = 0
    own_429s: int = 0
    chatinfo_faults: Counter[str] = field(default_factory=Counter)
    telegram_faults: Counter[str] = field(default_factory=Counter)
    starts: int = 0
    kills: int = 0
    unexpected: int = 0  # "stopped unexpectedly" / "failed" lines in the bot's log
    tracebacks: int = 0
    memory: list[str] = field(default_factory=list)

    def count_duplicates(self, job_id: int, extra: int, shown: list[float],
                         kills: list[float]) -> None:
        """`extra` copies of a part, shown at `shown`: which of them a kill mid-send explains."""
        self.duplicates += extra
        gaps = mid_send_gaps(shown, kills)[:extra]
        self.duplicates_mid_send += len(gaps)
        self.mid_send_gap = max([self.mid_send_gap, *gaps])
        if len(gaps) < extra:  # for tracing: when each copy was shown, and the kills near
            near = [kill for kill in kills if min(shown) - 5 <= kill <= max(shown) + 5]
            self.unexplained_duplicates.append(
                f"job {job_id}: shown at {[round(t, 2) for t in sorted(shown)]}, "
                f"kills near {[round(k, 2) for k in near]}")

    @property
    def clean(self) -> bool:
        # Every unit wasted is one whose id was lost, and its user was told so.
        return not (self.lost or self.duplicates > self.duplicates_mid_send or self.own_429s
                    or self.created_twice or self.wasted != self.ids_lost
                    or self.wasted != self.spent_unknowable or self.tap_requests > self.taps)

    def print(self, options: Options, seconds: float, stop_code: int | None,
              workdir: Path) -> None:
        other = sum(self.told_other.values())
        late = Counter({verdict: self.reconciled[f"{verdict}_after_assumed"]
                        for verdict in ("spent", "unspent")})
        rows = [
            ("messages sent", self.sent, ""),
            ("requests accepted", self.accepted,
             f"{self.sent - self.accepted} not (refused, or lost in flight at a SIGKILL)"),
            ("answers delivered", self.delivered, ""),
            ("users told of a failure", self.told_unknowable + other,
             f"unknowable outcome {self.told_unknowable}; other {dict(self.told_other)}"),
            ("units spent", self.spent, ""),
            ("units of unknowable outcome", self.spent_unknowable, "told so"),
            ("units wasted", self.wasted, "spent, no answer delivered; goal: only those"),
            ("units whose id was lost", self.ids_lost,
             "spent, but no reply with the id reached the bot (the fake's record); "
             "goal: = units wasted"),
            ("reconciled: sent again safely", self.reconciled["unspent"],
             "failed creates the balance showed spent nothing"),
            ("reconciled: confirmed spent", self.reconciled["spent"] + late["spent"],
             f"the id was lost ({late['spent']} shown after the user was told)"),
            ("reconciled: assumed spent", self.reconciled["assumed_spent"] - late.total(),
             f"the balance could not tell ({late['unspent']} shown unspent after the user "
             "was told)"),
            ("told unknowable, unspent", self.told_but_unspent,
             "told 'may have counted', though nothing was"),
            ("units spent twice", self.created_twice, "goal 0"),
            ("double taps", self.taps, f"made {self.tap_requests} requests; goal: one each"),
            ("answers lost", len(self.lost), "goal 0"),
            ("duplicate parts", self.duplicates,
             f"{self.duplicates_mid_send} from a kill mid-send (each within "
             f"{self.mid_send_gap:.2f} s before a SIGKILL); other: goal 0"),
            ("stale placeholders", self.stale_placeholders, "cosmetic"),
            ("'something went wrong' replies", self.sorry_replies,
             "a failed update whose job went on anyway"),
            ("own 429s from chatinfo", self.own_429s, "goal 0"),
        ]
        print(f"\nsoak: {seconds / 60:.1f} min wall, {options.minutes} min of load at "
              f"{options.rate}/s from {options.users} users, seed {options.seed}")
        print(f"faults: chatinfo {options.chatinfo_faults:.0%}, telegram "
              f"{options.telegram_faults:.0%}; bot starts {self.starts}, SIGKILLs "
              f"{self.kills}, last stop exit {stop_code}")
        for name, value, note in rows:
            print(f"  {name:<30}{value:>8}  {note}")
        print(f"  chatinfo faults injected: {dict(self.chatinfo_faults)}")
        print(f"  telegram faults injected: {dict(self.telegram_faults)}")
        print(f"  told 'may have counted', by their create's fault: "
              f"{dict(self.unknowable_by_fault)}")
        for line in self.unexplained_duplicates:
            print(f"  DUPLICATE not explained by a kill: {line}")
        print(f"  bot log: {self.tracebacks} tracebacks, {self.unexpected} failed updates or "
              f"jobs stopped unexpectedly ({workdir / 'bot.log'})")
        print("  memory, VmRSS MB per start (first → last, max; minutes):")
        for line in self.memory:
            print(f"    {line}")
        for line in self.lost[:20]:
            print(f"  LOST: {line}")
        print("RESULT:", "clean" if self.clean else "NOT clean")


def judge(options: Options, bot: SoakBot, chatinfo: FakeChatinfo,
          telegram: ChaoticTelegram, sent: list[Sent], taps: list[DoubleTap],
          answers: Answers) -> Report:
    report = Report(sent=len(sent), spent=len(chatinfo.requests),
                    own_429s=chatinfo.generated_429s(), telegram_faults=telegram.injected,
                    starts=len(bot.lives), kills=sum(life.killed for life in bot.lives))
    report.chatinfo_faults = Counter(f"{c.endpoint} {c.fault.kind}" for c in chatinfo.served
                                     if c.fault is not None)
    failure_texts = english_failure_texts()
    chats: dict[int, list[str]] = {}
    for (chat_id, _), message in telegram.messages.items():
        chats.setdefault(chat_id, []).append(str(message.get("text", "")))
    by_message = {m.message_id: m for m in sent}
    jobs = [job for job in bot.query("SELECT * FROM jobs WHERE source_message_id IS NOT NULL")
            if job["source_message_id"] in by_message]
    report.accepted = len(jobs)
    tapped = {tap.job_id for tap in taps}
    tap_jobs = [job for job in bot.query("SELECT * FROM jobs WHERE action = 's'")
                if job["parent_id"] in tapped]
    report.taps, report.tap_requests = len(taps), len(tap_jobs)
    jobs += tap_jobs
    told_unknowable_contents: set[str] = set()
    delivered_contents: set[str] = set()
    shown_at = show_times(telegram)
    kills = sorted(life.killed_at for life in bot.lives if life.killed)
    for job in jobs:
        texts = chats.get(job["chat_id"], [])
        parts = [part.text for part in render(answers("chat", job["content"]))]
        copies = [texts.count(part) for part in parts]
        for part, n in zip(parts, copies, strict=True):
            if n > 1:
                report.count_duplicates(job["id"], n - 1,
                                        shown_at.get((job["chat_id"], part), []), kills)
        if all(copies):
            report.delivered += 1
            delivered_contents.add(job["content"])
            continue
        shown = shown_text(telegram, job, texts, failure_texts)
        told = next((failure for failure, text in failure_texts.items() if shown == text), None)
        if told is Failure.UNKNOWN_OUTCOME:
            report.told_unknowable += 1
            told_unknowable_contents.add(job["content"])
        elif told is not None:
            report.told_other[str(told)] += 1
        else:
            report.lost.append(f"job {job['id']} ({job['state']}, {job['error']}): "
                               f"{job['content']!r} shows {shown!r}")
    count_units(report, bot, chatinfo, delivered_contents, told_unknowable_contents)
    report.stale_placeholders = sum(
        1 for texts in chats.values() for text in texts if text.startswith(PLACEHOLDER_MARK))
    report.sorry_replies = sum(texts.count(SORRY) for texts in chats.values())
    log = bot.log_path.read_text(errors="replace") if bot.log_path.exists() else ""
    report.tracebacks = log.count("Traceback")
    report.unexpected = len(re.findall(r"stopped unexpectedly|update \d+ failed", log))
    report.reconciled = reconciled_in(log)
    report.memory = [memory_line(n, life) for n, life in enumerate(bot.lives, 1)
                     if life.samples]
    return report


def count_units(report: Report, bot: SoakBot, chatinfo: FakeChatinfo, delivered: set[str],
                told_unknowable: set[str]) -> None:
    """Where the units the fake debited went: spent twice, wasted, ids lost."""
    created = Counter(request.content for request in chatinfo.requests)
    report.created_twice = sum(n - 1 for n in created.values())
    report.told_but_unspent = len(told_unknowable - set(created))
    report.unknowable_by_fault = unknowable_by_fault(chatinfo, told_unknowable)
    known_ids = {job["upstream_id"] for job in bot.query(
        "SELECT upstream_id FROM jobs WHERE upstream_id IS NOT NULL")}
    report.ids_lost = sum(1 for request in chatinfo.requests if request.id not in known_ids)
    for request in chatinfo.requests:
        if request.content in delivered:
            continue
        report.wasted += 1
        if request.content in told_unknowable:
            report.spent_unknowable += 1


def unknowable_by_fault(chatinfo: FakeChatinfo, contents: set[str]) -> Counter[str]:
    last_fault: dict[str, str] = {}
    for call in chatinfo.served:
        if call.endpoint == "create_request" and call.content in contents:
            kind = call.fault.kind if call.fault is not None else "crash"
            last_fault[call.content] = "429" if kind.endswith("429") else kind
    return Counter(last_fault.get(content, "crash") for content in contents)


def show_times(telegram: ChaoticTelegram) -> dict[tuple[int, str], list[float]]:
    """When each text was shown in each chat: every message sent with it, and the first
    edit that put it in a message (repeating an edit changes nothing)."""
    shown: dict[tuple[int, str], list[float]] = {}
    edited: set[tuple[int, str]] = set()
    for call in telegram.calls:
        if call.failed or call.method not in ("sendMessage", "editMessageText"):
            continue
        key = (int(call.params.get("chat_id", 0)), str(call.params.get("text", "")))
        if call.method == "editMessageText":
            if key in edited:
                continue
            edited.add(key)
        shown.setdefault(key, []).append(call.at)
    return shown


def mid_send_gaps(times: list[float], kills: list[float]) -> list[float]:
    """For each copy after the first: how long before a SIGKILL the copy before it was
    shown, if a SIGKILL came within MID_SEND seconds of it and before this copy."""
    gaps = []
    ordered = sorted(times)
    for earlier, later in itertools.pairwise(ordered):
        killed = [kill - earlier for kill in kills if earlier <= kill <= later]
        if killed and killed[0] <= MID_SEND:
            gaps.append(killed[0])
    return gaps


def reconciled_in(log: str) -> Counter[str]:
    """The verdicts on failed creates (bot/jobs/runner.py `_decide`), from its log."""
    verdicts: Counter[str] = Counter()
    for line in re.findall(r"balances of key \w+: .*$", log, re.MULTILINE):
        for count, verdict in re.findall(
                r"(\d+) (unspent|spent|assumed_spent|spent_after_assumed|unspent_after_assumed)\b",
                line):
            verdicts[verdict] += int(count)
    return verdicts


def shown_text(telegram: ChaoticTelegram, job: dict[str, Any], texts: list[str],
               failure_texts: dict[Failure, str]) -> str | None:
    """What the job's placeholder shows now; if the user deleted it, a failure text sent
    instead into the chat (failure texts are the same for every job, so this is the
    closest attribution the chat allows)."""
    placeholder = telegram.messages.get((job["chat_id"], job["placeholder_id"] or 0))
    if placeholder is not None:
        return str(placeholder.get("text", ""))
    try:
        wanted = failure_texts[Failure(job["error"])]
    except ValueError:  # no failure recorded (or not one of ours)
        return None
    return wanted if wanted in texts else None


def english_failure_texts() -> dict[Failure, str]:
    i18n = make_i18n()
    with i18n.context(), i18n.use_locale("en"):
        return {failure: failure_text(failure) for failure in Failure}


def memory_line(number: int, life: Incarnation) -> str:
    megabytes = [sample.rss_kb / 1024 for sample in life.samples]
    minutes = (life.samples[-1].at - life.samples[0].at) / 60
    end = "SIGKILL" if life.killed else "SIGTERM"
    line = (f"#{number}: {megabytes[0]:.1f} → {megabytes[-1]:.1f}, max {max(megabytes):.1f}; "
            f"{minutes:.1f} min, {len(megabytes)} samples, ended by {end}")
    if len(megabytes) >= 6:  # long enough for a trend: show it, thinned to 12 points
        step = max(1, len(megabytes) // 12)
        line += "\n      " + " ".join(f"{mb:.0f}" for mb in megabytes[::step])
    return line


@contextlib.contextmanager
def work_folder(chosen: Path | None) -> Iterator[Path]:
    if chosen is not None:
        chosen.mkdir(parents=True, exist_ok=True)
        yield chosen
        return
    yield Path(tempfile.mkdtemp(prefix="chatinfo-soak-"))  # kept: the log is worth reading


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    with work_folder(options.workdir) as workdir:
        print(f"soak in {workdir}: {options}", flush=True)
        try:
            return asyncio.run(drive(options, workdir))
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    sys.exit(main())
