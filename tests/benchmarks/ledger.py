"""How long the balance ledger takes to judge a chain of failed creates, in CPU seconds.

    python -m tests.benchmarks.ledger

Its verdicts run on the event loop, so a long chain (a restart under SIGKILLs every 30 s
finds up to 50 creates mid-create, linked to as many failures before them) holds every
other task meanwhile. Here 600 creates are sent half a second apart; the failures among
them may each be debited for a minute, so they overlap into one chain.
"""

from __future__ import annotations

import random
import sys
import time

from bot.jobs.balance_ledger import BalanceLedger


def chain_of(failures: int, seed: int = 1) -> BalanceLedger:
    rng = random.Random(seed)
    ledger, balance, failed = BalanceLedger(), 10_000, 0
    ledger.read(balance, -1.0, -0.9)
    for job_id in range(600):
        sent = job_id * 0.5
        ledger.sending(job_id, sent)
        if failed < failures and rng.random() < failures / 400:
            failed += 1
            balance -= rng.random() < 0.5  # spent, its id lost, or not
            ledger.failed(job_id, sent, sent + 60.0)
        else:
            balance -= 1
            ledger.created(balance, sent, sent + 0.05, job_id)
    return ledger


def main() -> int:
    print("| failed creates in the chain | one round of verdicts, CPU s |\n|---|---|")
    for failures in (20, 50, 90, 130):
        ledger = chain_of(failures)
        start = time.process_time()
        ledger.decide()
        print(f"| {failures} | {time.process_time() - start:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
