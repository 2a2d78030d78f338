"""Counts the primes below six limits on two processes, the stdlib way.

    python demo/moving/stdlib_primes.py

docs/moving.md sets it beside fanout_primes.py, the same program on fanout.
"""

import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import Pool

from fanout.examples import count_primes

LIMITS = [20_000_000 + 2_500_000 * i for i in range(6)]


def main() -> None:
    began = time.perf_counter()
    with ProcessPoolExecutor(max_workers=2) as executor:
        futures = {executor.submit(count_primes, limit): limit for limit in LIMITS}
        for future in as_completed(futures):
            print(f"below {futures[future]:>9,}: {future.result():>7,} primes")
    with Pool(processes=2) as pool:
        print("Pool.map:", pool.map(count_primes, LIMITS))
    print(f"{time.perf_counter() - began:.2f} s")


if __name__ == "__main__":
    main()
