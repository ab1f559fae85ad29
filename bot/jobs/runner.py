"""The job runner: carries each job from its stored state to a delivered answer.

Every step is written to SQLite before the next one starts, so a restart resumes
from the last step that completed. The runner owns every task it starts and
cancels or awaits them all at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial

from aiogram.exceptions import (
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)

from bot.config import MAX_WAIT_SECONDS
from bot.jobs import crashpoints
from bot.jobs.balance_ledger import WATCHED_FOR, Verdict
from bot.jobs.create_queue import FairQueue
from bot.jobs.failures import Failure
from bot.jobs.lanes import Lane
from bot.jobs.poll_scheduler import (
    Answer,
    Expired,
    Lost,
    PollScheduler,
    PollTiming,
    wait_event,
)
from bot.jobs.solve_times import PRIOR, SolveTimes
from bot.jobs.view import JobView
from bot.logs import job_event
from bot.services import Service, Services
from bot.upstream.client import (
    CREATE,
    UNITS,
    AccessDenied,
    ChatinfoError,
    NotEnoughUnits,
    RateLimited,
    UpstreamUnavailable,
)
from bot.upstream.pool import UpstreamPool
from storage.jobs import UNFINISHED, Job, JobRepo, JobState

log = logging.getLogger(__name__)

Outcome = Answer | Exception  # what polling a job came to: its answer, or why it ended

RESUME_PAGE = 500
BALANCE_READ_PATIENCE = 5.0  # seconds a balance read may wait for the units budget
# After this, the server has surely finished a create we sent, well past the client's
# CREATE_TIMEOUT: one we gave up on is settled by the balance then.
CREATE_SETTLES_AFTER = 60.0
TELEGRAM_DOWN_FIRST_PAUSE = 5.0
TELEGRAM_DOWN_MAX_PAUSE = 300.0


@dataclass(frozen=True)
class RunnerPolicy:
    max_wait: float = float(MAX_WAIT_SECONDS)  # then the job fails with a clear message
    # A sent request's unit is spent: past max_wait its user is told, and its answer is
    # still awaited this much longer, and posted if it comes.
    late_wait: float = 3600.0
    progress_every: float = 15.0  # placeholder shows the wait; Telegram allows ~1 edit/s/chat
    timing: PollTiming = field(default_factory=PollTiming)
    prior: tuple[float, ...] = PRIOR  # solve times assumed before any is learned
    history: int = 2000  # answered jobs the solve-time model learns from at start
    # Seconds between looks at the balances while a failed create waits for its verdict
    # (and between reads of the balance, when one failed).
    balance_check_grace: float = 2.0
    create_settles_after: float = CREATE_SETTLES_AFTER
    # Past when a failed create was surely done, the balances seen get this long (for the
    # creates in flight to report theirs, and for a units read) before it is assumed spent:
    # long enough for every create in flight then to have ended, and every other failed
    # create the server may still have been working on to be done, either of whose unit
    # may be the one missing.
    verdict_patience: float = CREATE_SETTLES_AFTER + 5
    # create_request calls out at once: enough for the API's 1500 a minute at 0.6 s a
    # call, few enough that a crash or a burst of failures leaves few for the balance to
    # tell apart.
    creates_in_flight: int = 16
    # While a failed create awaits the balance's verdict, creates go out one at a time
    # (but for those out longer than `slow_create_after` s, and unless the requests
    # waiting would take `careful_backlog_seconds` so): each one's balance then tells its
    # debit apart from the others'.
    careful_creates_in_flight: int = 1
    slow_create_after: float = 3.0
    careful_backlog_seconds: float = 10.0
    # A step that raises (a bug, the database) is tried again after 1, 2, 4, 8 s; the
    # fifth failure ends the job, and its user is told.
    step_attempts: int = 5
    step_retry_pause: float = 1.0


class JobRunner:
    """Carries jobs through their steps, and stores each; `view` shows them to the user.
    Its `workers` (each key's create queue and poll scheduler among them) run as one
    service with it: `service`."""

    def __init__(
        self, jobs: JobRepo, pool: UpstreamPool, view: JobView, *, lanes: list[Lane],
        solve_times: SolveTimes, workers: Services, policy: RunnerPolicy,
    ) -> None:
        self._jobs = jobs
        self._pool = pool
        self._view = view
        self._policy = policy
        self._solve_times = solve_times
        # One per key of the pool, in its order: the first is the primary key's.
        self.lanes = {lane.key: lane for lane in lanes}
        self._primary = lanes[0]
        self.scheduler: PollScheduler = lanes[0].scheduler  # the primary key's
        self.queue: FairQueue = lanes[0].queue
        self.workers = workers
        # A job is in one of these while it is unfinished: a task carries it, or it is
        # parked with the poll scheduler until its answer starts a task again.
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._creating: dict[int, asyncio.Future[bool]] = {}
        self._quiet: set[int] = set()  # cancelled after they were sent: no signals, no posts
        # The lane (key) of each job in `_settling`: its balance decides.
        self._lane_of: dict[int, Lane] = {}
        # Creates that failed with their outcome unknown (a timeout, a gateway error, a
        # crash): job id -> when the server has surely finished with it.
        self._settling: dict[int, float] = {}
        self._verdicts: dict[int, bool] = {}  # job id -> spent nothing
        # Verdicts: unspent, spent, assumed_spent; and of those assumed spent, what the
        # balance showed later: spent_after_assumed, unspent_after_assumed.
        self.reconciled: Counter[str] = Counter()
        self._job_left = asyncio.Event()

    @property
    def active(self) -> int:
        """Jobs carried on now: with a task, or waiting for their answer."""
        return len(self._tasks) + sum(lane.scheduler.pending for lane in self.lanes.values())

    @property
    def view(self) -> JobView:
        """What users see of jobs: the submitter asks it how to show a new one."""
        return self._view

    @property
    def service(self) -> Service:
        """The runner as a service: its workers start with it, and stop after its jobs."""
        return _RunnerService(self)

    def start(self, job_id: int, outcome: Outcome | None = None) -> None:
        """Carry the job on from its stored step; `outcome` is its poll's, if it has one."""
        task = asyncio.create_task(self._run(job_id, outcome), name=f"job-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._task_done(job_id, task))

    def _task_done(self, job_id: int, task: asyncio.Task[None]) -> None:
        if self._tasks.get(job_id) is task:
            del self._tasks[job_id]
        self._job_left.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no job is running (or `timeout` passes); whether none is."""
        deadline = time.monotonic() + timeout
        while self.active and (left := deadline - time.monotonic()) > 0:
            self._job_left.clear()
            await wait_event(self._job_left, left)
        return not self.active

    async def resume(self) -> int:
        """Carry on every unfinished job after a start; how many there were."""
        self._solve_times.learn_all(await self._jobs.solve_history(self._policy.history))
        # Rows from before the pool name no key: theirs was the primary (CHATINFO_API_KEY).
        await self._jobs.adopt_unkeyed(self._primary.key)
        for lane in self.lanes.values():
            await self._recall_creates(lane)
            await self._reconcile_mid_create(lane)
        if gone := await self._jobs.mid_create(keys_except=list(self.lanes)):
            log.info("%d job(s) found mid-create with a key no longer configured", len(gone))
            self.reconciled["assumed_spent"] += len(gone)
            await self._end_unknown(gone)
        resumed, last_id = 0, 0
        # A page at a time: a backlog of thousands never sits in memory with its texts.
        while page := await self._jobs.unfinished(after=last_id, limit=RESUME_PAGE):
            for job in page:  # in id order: the create queue keeps its order
                if (job.state is JobState.PENDING
                        and (job.placeholder_id is not None or job.inline)
                        and not self._late(job) and self._lane(job) is not None):
                    self._park(job)
                else:
                    self.start(job.id)
            resumed += len(page)
            last_id = page[-1].id
        if resumed:
            log.info("resuming %d unfinished jobs", resumed)
        return resumed

    async def _recall_creates(self, lane: Lane) -> None:
        """Count the key's creates of the last window, sent before the start, in its budget:
        the server still does. After a 429 the queue then waits for the oldest of them to
        leave the window, not for a whole window from its first call of this run."""
        budget, now = lane.upstream.budget(CREATE), time.time()
        sent = await self._jobs.sent_from(now - budget.period, key=lane.key)
        budget.recall(now - moment for moment in sent)

    def _lane(self, job: Job) -> Lane | None:
        """The lane of the key the job was sent with; None if that key is no longer
        configured."""
        return self.lanes.get(job.upstream_key or self._primary.key)

    def _choose_lane(self) -> Lane:
        """The lane of the key a new request goes to (the pool decides)."""
        lanes = {lane.upstream: lane for lane in self.lanes.values()}
        chosen = self._pool.choose(lambda key: lanes[key].wait(),
                                   lambda key: lanes[key].in_flight())
        return lanes[chosen]

    async def _read_balance(self, lane: Lane) -> int | None:
        """The key's balance now; None if the API cannot say it soon (the failed creates
        waiting for it go by the balances their key's creates report)."""
        if (wait := lane.upstream.budget(UNITS).delay()) > BALANCE_READ_PATIENCE:
            log.warning("no balance read for %.0f s (the units budget is used up)", wait)
            return None
        try:
            return await lane.upstream.read_balance()
        except ChatinfoError as error:
            log.warning("could not read the balance (%s)", error)
            return None

    async def _end_unknown(self, job_ids: Iterable[int]) -> None:
        for job_id in job_ids:  # each job's task (or the next start) tells its user
            await self._jobs.end(job_id, JobState.UNKNOWN, Failure.UNKNOWN_OUTCOME)

    async def _reconcile_mid_create(self, lane: Lane) -> None:
        """Read the key's balance, and settle the jobs a crash caught mid-create with it,
        by the balances kept from before the crash (the `BalanceLedger`, as after any
        failed create): those shown to have spent nothing are sent again, those shown or
        assumed to have spent end as unknown, and the rest wait for the balances to come."""
        stuck = await self._jobs.mid_create(key=lane.key)
        # The creates taken as spent lately in doubt are watched again: the balances may
        # yet tell.
        lately = await self._jobs.taken_as_spent_from(
            time.time() - WATCHED_FOR - self._policy.create_settles_after, key=lane.key)
        sent = [job.sent for job in stuck.values()]
        sent += [job.sent for job in lately.values() if not job.shown_spent]
        if sent:
            await self._recall_balances(lane, min(sent))
        for job_id, (sent_at, failed_done_by) in stuck.items():
            # Failed and being settled before the crash, or cut off by it.
            done_by = sent_at + self._policy.create_settles_after if failed_done_by is None \
                else failed_done_by
            lane.ledger.failed(job_id, sent_at, done_by)
            self._settling[job_id] = done_by
            self._lane_of[job_id] = lane
        async with lane.reconciling:
            await self._read_into_ledger(lane)
            verdicts = await self._decide(lane)
        if stuck:
            log.info("%d job(s) of key %s found mid-create: %s", len(stuck), lane.key,
                     _counted(verdicts) or "none decided yet")
        for job_id in stuck:
            if self._verdicts.pop(job_id, False):  # those spent are told by their tasks
                await self._jobs.requeue(job_id)
                log.info("job %s found mid-create is sent again: the balance shows it spent "
                         "nothing", job_id,
                         extra={"job_id": job_id, "outcome": "reconciled_unspent"})

    async def _read_into_ledger(self, lane: Lane) -> None:
        """Read the key's balance for its ledger. Kept for the next start too when none of
        the key's creates was in flight: its ledger then begins from it, as the balance at
        the moment the read was sent."""
        quiet, sends = lane.ledger.in_flight == 0, lane.ledger.sends
        read_at = time.time()
        actual = await self._read_balance(lane)
        if actual is None:
            lane.read_failed_at = time.time()
            return
        lane.ledger.read(actual, read_at, time.time())
        await lane.upstream.observe(actual)
        if quiet and lane.ledger.sends == sends:  # none sent during the read either
            await self._jobs.set_balance_anchor(actual, read_at, key=lane.key)

    async def _decide(self, lane: Lane, *, give_up: Iterable[int] = ()) -> dict[int, Verdict]:
        """The verdicts the key's balances seen now allow (and "assumed spent" on the
        failed creates of `give_up`, if still undecided): recorded for their jobs."""
        verdicts = lane.ledger.decide()
        for job_id in give_up:
            if lane.ledger.undecided(job_id):
                verdicts.update(lane.ledger.assume_spent(job_id))
        if revised := lane.ledger.take_revised():
            # Their users were told their requests may have counted: only the figures
            # change, from "assumed spent" to what the balance shows.
            self.reconciled.update(f"{verdict.value}_after_assumed" for verdict in revised.values())
            log.info("balances of key %s: %s", lane.key, _counted(revised, "_after_assumed"))
        for job_id, verdict in (verdicts | revised).items():
            await self._jobs.set_create_verdict(job_id, verdict.value)
        if not verdicts:
            return verdicts
        self.reconciled.update(verdicts.values())
        await self._end_unknown(job for job, v in verdicts.items() if v is not Verdict.UNSPENT)
        for job_id in verdicts:
            self._settling.pop(job_id, None)
            self._lane_of.pop(job_id, None)
        log.info("balances of key %s: %s; %d left settling", lane.key, _counted(verdicts),
                 len(self._of_lane(self._settling, lane)))
        self._verdicts.update({job: v is Verdict.UNSPENT for job, v in verdicts.items()})
        return verdicts

    async def _rejudge(self, lane: Lane) -> None:
        """Now and then, with the balances a create just reported: what they show of the
        failed creates taken as spent for want of time (when no job awaits a verdict,
        nothing else asks)."""
        now = time.monotonic()
        if lane.ledger.watching() and now >= lane.rejudge_after:
            lane.rejudge_after = now + self._policy.balance_check_grace
            async with lane.reconciling:
                await self._decide(lane)

    async def _recall_balances(self, lane: Lane, since: float) -> None:
        """Give the key's ledger the balances seen before a crash, around `since`: the
        last one read, and those reported by the creates acknowledged from just before;
        and the failed creates taken as spent then, whose debits may be among them."""
        settles = self._policy.create_settles_after
        earlier = await self._jobs.taken_as_spent_from(since - settles, key=lane.key)
        for job_id, (sent, known_done_by, shown_spent) in earlier.items():
            done_by = sent + settles if known_done_by is None else known_done_by
            lane.ledger.spent_earlier(
                job_id, sent, done_by,
                watched=not shown_spent and done_by + WATCHED_FOR > time.time())
        if anchor := await self._jobs.balance_anchor(key=lane.key):
            units, read_at = anchor
            lane.ledger.read(units, read_at, read_at)
        for units_after, sent_at, acknowledged in await self._jobs.creates_from(since,
                                                                                key=lane.key):
            # Not kept for rows from before it was: at most the client's wait earlier.
            sent = acknowledged - self._policy.create_settles_after if sent_at is None \
                else sent_at
            lane.ledger.created(units_after, sent, acknowledged)

    async def stop(self) -> None:
        """Cancel the waiting, and stop the workers; let create_request calls in flight
        store their id first. The jobs stay in SQLite for the next start."""
        if self._creating:
            # Short of a graceful deploy's 10 s; a create still unanswered by then stays
            # "creating" and is offered as a retry at the next start, as after a crash.
            await asyncio.wait(self._creating.values(), timeout=5)
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.workers.stop()

    async def cancel(self, user_id: int) -> tuple[int, int]:
        """Stop waiting for the user's unfinished jobs: (how many were stopped before they
        were sent, how many had been sent and have their answers kept).

        A sent request's unit is spent, so its answer is still fetched and kept for
        /history, just not posted. Answered jobs are left to finish.
        """
        jobs = [job for job in await self._jobs.unfinished_for(user_id)
                if job.state is not JobState.ANSWERED and not job.cancelled]
        stopped = kept = 0
        for listed in jobs:
            job = await self._reload(listed)  # earlier ones awaited: it may have moved on
            if job.state is JobState.PENDING and not job.cancelled:
                if await self._keep_quietly(job):
                    kept += 1
                continue
            task = self._tasks.get(job.id)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            creating = self._creating.get(job.id)
            if creating is not None:  # a create in flight must store its id first
                await asyncio.gather(creating, return_exceptions=True)
            current = await self._reload(job)
            if current.state is JobState.PENDING:  # its create got an id meanwhile
                if await self._keep_quietly(current):
                    self._park(current)  # its task is gone: the scheduler carries it on
                    kept += 1
            elif current.state is JobState.NEW:
                await self._tell(current, Failure.CANCELLED, "cancelled by the user")
                stopped += 1
            elif current.state is JobState.CREATING:  # its create may have counted
                self._settling.pop(current.id, None)
                if (lane := self._lane_of.pop(current.id, None)) is not None:
                    self.reconciled.update(lane.ledger.assume_spent(current.id).values())
                await self._tell(current, Failure.UNKNOWN_OUTCOME, "cancelled mid-create")
        self._job_left.set()
        return stopped, kept

    async def _keep_quietly(self, job: Job) -> bool:
        """The user stopped waiting for a sent request: say so, and keep its answer.
        False if it is no longer waiting (its answer came meanwhile)."""
        if not await self._jobs.mark_cancelled(job.id):
            return False
        self._quiet.add(job.id)
        await self._view.stopped_waiting(job)
        return True

    async def _run(self, job_id: int, outcome: Outcome | None) -> None:
        pause = TELEGRAM_DOWN_FIRST_PAUSE
        failures = 0
        while True:
            try:
                await self._advance(job_id, outcome)
                return
            except (TelegramNetworkError, TelegramServerError, TelegramRetryAfter) as error:
                # Telegram is down for longer than with_retries waits. Every step is
                # stored, so going over the job again later repeats nothing.
                log.warning("job %s waits for Telegram (%s); again in %.0f s", job_id,
                            type(error).__name__, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, TELEGRAM_DOWN_MAX_PAUSE)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug, or the database failing: every step is stored, so the job is gone
                # over again from its last one, a few times, then ended.
                await self._view.forget(job_id)
                failures += 1
                if failures >= self._policy.step_attempts:
                    log.exception("job %s stopped unexpectedly: its step failed %d times",
                                  job_id, failures,
                                  extra={"job_id": job_id, "outcome": "crashed"})
                    await self._give_up(job_id)
                    return
                retry_in = self._policy.step_retry_pause * 2 ** (failures - 1)
                log.exception("job %s: its step failed (%d of %d); again in %.1f s", job_id,
                              failures, self._policy.step_attempts, retry_in,
                              extra={"job_id": job_id, "outcome": "step_failed"})
                await asyncio.sleep(retry_in)

    async def _give_up(self, job_id: int) -> None:
        """End a job whose step kept failing, and tell its user as for any failure (its
        quota given back if it was never sent). If even that fails, the job stays at its
        last step, and the next start carries it on."""
        for lane in self.lanes.values():
            lane.scheduler.drop(job_id)
        try:
            job = await self._jobs.get(job_id)
            if job is None or job.state not in UNFINISHED:
                return  # ended already: an untold ending is shown at the next start
            if job.state is JobState.CREATING:  # its create may have counted
                await self._tell(job, Failure.UNKNOWN_OUTCOME, "its step kept failing")
            else:
                await self._tell(job, Failure.INTERNAL, "its step kept failing")
        except Exception:
            log.exception("job %s could not be ended; it resumes at the next start", job_id,
                          extra={"job_id": job_id, "outcome": "crashed"})

    async def _advance(self, job_id: int, outcome: Outcome | None) -> None:
        job = await self._jobs.get(job_id)
        if job is None:
            return
        if (job.placeholder_id is None and not job.inline
                and job.state in (JobState.NEW, JobState.CREATING)
                and not self._view.one_message(job.id, job.user_id)):
            try:
                placeholder = await self._view.placeholder(job)
            except TelegramForbiddenError:
                await self._end_blocked(job)
                return
            await self._jobs.set_placeholder(job.id, placeholder)
            job = await self._reload(job)
        if job.state is JobState.CREATING and job.id in self._settling:
            if not await self._settle(job):
                return
            job = await self._reload(job)  # queued again: sent below
        if job.state is JobState.CREATING:
            await self._tell(job, Failure.UNKNOWN_OUTCOME, "found mid-create at start")
            return
        if job.state in (JobState.FAILED, JobState.UNKNOWN) and not job.told:
            # Ended, but the user has not yet seen why.
            await self._show_failure(job, Failure(job.error or Failure.UNKNOWN_OUTCOME))
            return
        if job.state is JobState.NEW:
            job = await self._send(job)
        if job.state is JobState.PENDING:
            if outcome is None:
                await self._await_answer(job)
                return
            job = await self._conclude(job, outcome)
        if job.state is JobState.ANSWERED:
            await self._deliver(job)

    async def _await_answer(self, job: Job) -> None:
        """Leave the sent job to its key's poll scheduler; if that key is no longer
        configured, nothing can fetch its answer: its user is told."""
        if self._lane(job) is None:
            await self._tell(job, Failure.KEY_REMOVED, f"its key {job.upstream_key} is gone")
            return
        if self._late(job) and time.time() < self._late_deadline(job):
            await self._show_late(job)  # resumed late: a crash may have hidden it
        self._park(job)

    async def _send(self, job: Job) -> Job:
        """Through the create queue; "working" on the placeholder once it is sent."""
        self._view.watch(job)
        self._view.sending(job.id)
        try:
            job = await self._create(job)
        finally:
            self._view.sent(job)
        return job

    async def _create(self, job: Job) -> Job:
        """Send create_request when the queue says so. A 429 spent nothing, so the job waits
        in the queue again (visibly), first among its user's; only MAX_WAIT_SECONDS ends it,
        and never after a unit is spent."""
        deadline = job.created_at + self._policy.max_wait
        first = False
        while True:
            lane = self._choose_lane()
            await self._view.queue_position(job, lane.queue)
            try:
                async with asyncio.timeout(max(0.0, deadline - time.time())):
                    await lane.queue.turn(job.user_id, job.id, first=first)
            except TimeoutError:
                await self._tell(job, Failure.BUSY, "no create slot within the maximum wait")
                return await self._reload(job)
            if not lane.upstream.usable and self._pool.others_usable(lane.upstream):
                lane.queue.give_back(job.id)  # its key ran dry meanwhile: another's turn
                first = True
                continue
            # Shielded: once create_request is sent, its id must be stored even during a
            # shutdown or a /cancel, or the unit it spent is lost to an "unknown" job.
            step = asyncio.ensure_future(self._create_step(job, lane))
            self._creating[job.id] = step
            step.add_done_callback(partial(self._creating.pop, job.id))
            again = await asyncio.shield(step)
            if job.id in self._settling or job.id in self._verdicts:  # decided at once, or not
                again = await self._settle(job)
            job = await self._reload(job)
            if not again:
                return job
            first = True

    async def _create_step(self, job: Job, lane: Lane) -> bool:
        """One create_request with the lane's key; whether it surely spent nothing and the
        job is queued again (a 429, a failure the balance shows cost nothing, or a key
        turned away while another takes requests)."""
        reported = again = False
        upstream = lane.upstream
        try:
            crashpoints.reach(crashpoints.BEFORE_CREATE)
            sent = time.time()
            await self._jobs.mark_creating(job.id, key=lane.key, sent_at=sent)
            lane.ledger.sending(job.id, sent)
            created = await upstream.create(job.content, job.mode)
            crashpoints.reach(crashpoints.AFTER_CREATE)
        except RateLimited as error:
            lane.queue.sent(job.id, rate_limited=True)  # hold the queue before anything else
            reported = again = True
            await self._jobs.requeue(job.id)  # nothing counted: sending it again is safe
            log.info("job %s waits: create_request got 429", job.id,
                     extra=job_event(job, "rate_limited"))
            await upstream.learn(error)
        except UpstreamUnavailable as error:
            again = await self._after_unavailable(job, error, lane, sent)
        except (NotEnoughUnits, AccessDenied) as error:
            await upstream.learn(error)
            again = await self._turned_away(job, lane, error)
        except ChatinfoError as error:
            await self._tell(job, Failure.REJECTED, f"{error}: {error.upstream_error}")
        else:
            lane.ledger.created(created.units, sent, time.time(), job.id)
            # The next create may go before this one's id is stored: only the calls'
            # times are to be kept apart.
            lane.queue.sent(job.id, rate_limited=False)
            reported = True
            await self._jobs.set_upstream(job.id, created.id, created.units)
            await self._rejudge(lane)
            log.info("job %s created upstream id %s (units left %s)", job.id, created.id,
                     created.units, extra=job_event(job, "created"))
            if created.units is not None:
                await upstream.observe(created.units, from_create=True)
        finally:
            lane.ledger.ended(job.id)  # nothing spent, if not recorded as created or failed
            lane.news()
            if not reported:
                lane.queue.sent(job.id, rate_limited=False)
        return again

    async def _turned_away(self, job: Job, lane: Lane,
                           error: NotEnoughUnits | AccessDenied) -> bool:
        """The key has no units, or was refused: nothing was spent. Whether the job is
        queued again for another key; if none takes requests, its user is told."""
        if self._pool.others_usable(lane.upstream):
            await self._jobs.requeue(job.id)
            log.info("job %s goes to another key: key %s turned it away (%s)", job.id,
                     lane.key, error, extra=job_event(job, "other_key"))
            return True
        if isinstance(error, NotEnoughUnits):
            await self._tell(job, Failure.NO_UNITS, str(error))
        else:
            await self._tell(job, Failure.ACCESS_DENIED, f"{error}: {error.upstream_error}")
        return False

    async def _after_unavailable(self, job: Job, error: UpstreamUnavailable,
                                 lane: Lane, sent: float) -> bool:
        """Record the failed create for the balance to settle (`_settle`); not queued
        again now (False). Not idempotent: a create that reached the server may have spent
        a unit."""
        if not error.maybe_spent:
            await self._tell(job, Failure.UNREACHABLE, str(error))
            return False
        # Once the server (or its gateway) replied or closed the connection, it is done
        # with the call: any debit of it came before. After a timeout (ours, a gateway's
        # 504) it may still be working on it.
        noticed = time.time()
        done_by = noticed if error.finished else sent + self._policy.create_settles_after
        self._settling[job.id] = done_by
        self._lane_of[job.id] = lane
        lane.ledger.failed(job.id, sent, done_by, noticed)
        await self._jobs.mark_create_failed(job.id, done_by)
        if error.finished:
            # Before the next create goes (the queue hears of this one's end only after):
            # with no balance between two failed creates, a unit missing could be either's.
            async with lane.reconciling:
                await self._read_into_ledger(lane)
        lane.news()
        log.info("job %s: create_request failed (%s); the balance settles it", job.id, error,
                 extra=job_event(job, "settling"))
        return False

    async def _requeue_unspent(self, job: Job, error: object) -> None:
        await self._jobs.requeue(job.id)
        log.info("job %s sent again: the balance shows its failed create (%s) spent nothing",
                 job.id, error, extra=job_event(job, "reconciled_unspent"))

    async def _settle(self, job: Job) -> bool:
        """Once the balances seen tell whether the job's failed create spent a unit: sent
        again if not (True), else the user is told."""
        lane = self._lane_of.get(job.id)
        if lane is not None:
            await self._await_verdict(job, lane)
        if unspent := self._verdicts.pop(job.id, False):
            await self._requeue_unspent(job, "failed create")
        else:
            await self._tell(job, Failure.UNKNOWN_OUTCOME, "the balance shows it may have spent")
        return unspent

    async def _await_verdict(self, job: Job, lane: Lane) -> None:
        """Until the key's ledger decides the job's failed create: by the balances its
        other creates report, or a units read once the server is surely done with it and
        nothing reported since. Nothing else waits meanwhile: the creates in flight only
        add sightings. Past `verdict_patience` it is assumed spent."""
        done_by = self._settling.get(job.id, time.time())
        shown = False
        while job.id not in self._verdicts:
            news = lane.news_event()
            async with lane.reconciling:
                await self._decide(lane)
                now = time.time()
                if (job.id not in self._verdicts and lane.ledger.wants_read(job.id, now)
                        and now - lane.read_failed_at >= self._policy.balance_check_grace):
                    await self._read_into_ledger(lane)
                    await self._decide(lane)
                if job.id not in self._verdicts \
                        and time.time() > done_by + self._policy.verdict_patience:
                    await self._decide(lane, give_up=[job.id])
            if job.id in self._verdicts:
                return
            # Shown unless it is a matter of a moment: a debit not in the balance yet.
            if not shown and abs(time.time() - done_by) > self._policy.balance_check_grace:
                await self._view.settling(job)
                shown = True
            wake = min(self._policy.balance_check_grace, max(0.0, done_by - time.time()))
            await wait_event(news, max(wake, 0.05))

    def _of_lane(self, job_ids: Iterable[int], lane: Lane) -> set[int]:
        return {job_id for job_id in job_ids if self._lane_of.get(job_id) is lane}

    def _park(self, job: Job) -> None:
        """Leave the pending job to its key's poll scheduler: no task waits for its answer."""
        lane = self._lane(job)
        assert job.upstream_id is not None and lane is not None
        late = self._late(job)
        if not (job.cancelled or job.id in self._quiet or late):
            self._view.watch(job)
        sent_at = job.upstream_at or job.created_at
        deadline = self._late_deadline(job) if late else job.created_at + self._policy.max_wait
        lane.scheduler.watch(
            job_id=job.id, upstream_id=job.upstream_id, mode=job.mode,
            length=len(job.content), age=time.time() - sent_at, max_wait=deadline - sent_at)

    def _late(self, job: Job) -> bool:
        """Sent, and past MAX_WAIT_SECONDS: its user has been told it is late."""
        return time.time() >= job.created_at + self._policy.max_wait

    def _late_deadline(self, job: Job) -> float:
        return job.created_at + self._policy.max_wait + self._policy.late_wait

    async def _show_late(self, job: Job) -> None:
        if not (job.cancelled or job.id in self._quiet):
            await self._view.late(job)

    async def _conclude(self, job: Job, outcome: Outcome) -> Job:
        """Store the answer the scheduler found, or end the job as its error says."""
        await self._view.forget(job.id)
        match outcome:
            case Answer(text, solved_after):
                await self._jobs.set_result(job.id, text, solved_after)
                crashpoints.reach(crashpoints.AFTER_RESULT)
            # The first expiry comes at max_wait, the second at the late deadline.
            case Expired() if time.time() < self._late_deadline(job) - self._policy.late_wait / 2:
                log.info("job %s is late: its answer is awaited %.0f s more", job.id,
                         self._policy.late_wait, extra=job_event(job, "late"))
                await self._show_late(job)
                self._park(job)
            case Expired():
                await self._tell(job, Failure.TIMEOUT, "no answer in time")
            case Lost():
                await self._tell(job, Failure.LOST, str(outcome))
            case NotEnoughUnits():
                await self._learn(job, outcome)
                await self._tell(job, Failure.NO_UNITS, str(outcome))
            case ChatinfoError():
                await self._learn(job, outcome)
                await self._tell(job, Failure.ACCESS_DENIED,
                                 f"{outcome}: {outcome.upstream_error}")
            case _:
                raise outcome
        return await self._reload(job)

    async def _learn(self, job: Job, error: ChatinfoError) -> None:
        """What a poll's error tells about the job's key."""
        if (lane := self._lane(job)) is not None:
            await lane.upstream.learn(error)

    async def _deliver(self, job: Job) -> None:
        assert job.result is not None
        if job.cancelled:  # kept for /history; the user stopped waiting for it
            await self._jobs.mark_delivered(job.id, 0)
            self._quiet.discard(job.id)
            log.info("job %s answered after /cancel: kept", job.id,
                     extra=job_event(job, "kept"))
            return
        parts, keyboard = await self._view.answer(job)
        try:
            for index in range(job.parts_delivered, len(parts)):
                buttons = keyboard if index == len(parts) - 1 else None
                await self._view.show_part(job, index, parts[index], buttons)
                if index < len(parts) - 1:  # the last is stored with the delivery
                    await self._jobs.set_parts_delivered(job.id, index + 1)
                    crashpoints.reach(crashpoints.BETWEEN_PARTS)
        except TelegramForbiddenError:
            await self._end_blocked(job)
            return
        await self._jobs.mark_delivered(job.id, len(parts))
        log.info("job %s delivered in %d part(s)", job.id, len(parts),
                 extra=job_event(job, "delivered"))

    async def _end_blocked(self, job: Job) -> None:
        """The user blocked the bot: nobody to tell, nothing to retry."""
        await self._jobs.end(job.id, JobState.FAILED, Failure.BLOCKED, told=True)
        if job.upstream_id is None:  # never sent
            await self._view.refund(job)
        log.info("job %s ended: the user blocked the bot", job.id,
                 extra=job_event(job, Failure.BLOCKED))

    async def _tell(self, job: Job, failure: Failure, detail: str) -> None:
        """End the job and tell the user why, on its placeholder."""
        await self._view.forget(job.id)
        if job.cancelled:  # the user stopped waiting for it and was told so then
            await self._jobs.end(job.id, JobState.FAILED, failure, told=True)
            self._quiet.discard(job.id)
            return
        log.warning("job %s ended: %s (%s)", job.id, failure, detail,
                    extra=job_event(job, failure))
        state = (JobState.UNKNOWN if failure in (Failure.UNKNOWN_OUTCOME, Failure.KEY_REMOVED)
                 else JobState.FAILED)
        # Stored before it is shown, and marked told only after: a crash or an outage in
        # between leaves an untold ending, which the next go at the job shows again.
        await self._jobs.end(job.id, state, failure)
        never_sent = job.upstream_id is None and failure is not Failure.UNKNOWN_OUTCOME
        if never_sent:
            await self._view.refund(job)  # no unit was spent
        await self._show_failure(job, failure)

    async def _show_failure(self, job: Job, failure: Failure) -> None:
        await self._view.failure(job, failure)
        await self._jobs.mark_told(job.id)

    def progress_text(self, job_id: int, locale: str, seconds: float) -> str:
        """The placeholder's text while the job waits (the waiting indicators ask)."""
        return self._view.progress_text(job_id, locale, seconds,
                                        settling=job_id in self._settling)

    async def _reload(self, job: Job) -> Job:
        fresh = await self._jobs.get(job.id)
        assert fresh is not None
        return fresh


@dataclass(frozen=True)
class _RunnerService:
    runner: JobRunner

    def start(self) -> None:
        self.runner.workers.start()

    async def stop(self) -> None:
        await self.runner.stop()  # its jobs, then its workers

    def alive(self) -> bool:
        return self.runner.workers.alive()


def _counted(verdicts: dict[int, Verdict], suffix: str = "") -> str:
    """"2 unspent, 1 assumed_spent", for the log."""
    return ", ".join(f"{n} {v.value}{suffix}" for v, n in Counter(verdicts.values()).items())
