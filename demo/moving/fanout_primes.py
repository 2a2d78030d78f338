"""Counts the primes below six limits on two processes, on fanout: stdlib_primes.py with
its constructors changed, and each result saying which process made it.

    python demo/moving/fanout_primes.py                      # local processes
    FANOUT_BACKEND=rq FANOUT_REDIS_URL=redis://host:6379/0 \\
        python demo/moving/fanout_primes.py                  # two RQ workers
"""

import time
from concurrent.futures import as_completed

import fanout
from fanout.examples import count_primes

LIMITS = [20_000_000 + 2_500_000 * i for i in range(6)]


def main() -> None:
    began = time.perf_counter()
    with fanout.Executor(max_workers=2) as executor:
        futures = {executor.submit(count_primes, limit): limit for limit in LIMITS}
        for future in as_completed(futures):
            who = future.task_result.worker
            print(f"below {futures[future]:>9,}: {future.result():>7,} primes"
                  f"  ({who.backend} {who.name}, pid {who.pid} on {who.host})")  # fmt: skip
    with fanout.Pool(processes=2) as pool:
        print("Pool.map:", pool.map(count_primes, LIMITS))
    print(f"{time.perf_counter() - began:.2f} s")


if __name__ == "__main__":
    main()
