#!/usr/bin/env python3
"""Load clients for scripts/load.sh that wrk cannot play (standard library only).

  load_client.py chat HOST:PORT KEY N        N concurrent chat completions; one JSON line of results
  load_client.py slow HOST:PORT N SECONDS    N clients that send half a request and stall; one JSON line
  load_client.py healthz HOST:PORT SECONDS   GET /healthz every 50 ms until SECONDS pass or SIGTERM; one JSON line
                                             (with the 5 slowest probes: milliseconds, Unix time they started;
                                             and the prober's own worst wake-up delay, to tell it from the server's)

Every client speaks HTTP/1.1 over its own connection (Connection: close), so N means N sockets at once.
"""

import asyncio
import json
import signal
import sys
import time


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


async def request(host, port, method, path, body=b"", headers=None, timeout=600):
    """One request; returns (status, headers, body, milliseconds). Status 0 means the connection failed."""
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
                f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
        writer.close()
    except (OSError, asyncio.TimeoutError) as e:
        return 0, {}, str(e).encode(), (time.perf_counter() - started) * 1000
    ms = (time.perf_counter() - started) * 1000
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return 0, {}, raw[:200], ms
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return status, {k.lower(): v for k, v in fields.items()}, payload, ms


async def chat(addr, key, n):
    host, port = addr.rsplit(":", 1)
    body = json.dumps({
        "messages": [{"role": "user", "content": "Name three rivers of Europe."}],
        "max_tokens": 16,
        "temperature": 0,
    }).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    started = time.perf_counter()
    results = await asyncio.gather(*[request(host, int(port), "POST", "/v1/chat/completions", body, headers)
                                     for _ in range(n)])
    wall = time.perf_counter() - started
    statuses = {}
    for status, _, _, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    ok_ms = [ms for status, _, _, ms in results if status == 200]
    retry_after = all("retry-after" in h for status, h, _, _ in results if status == 429)
    codes = sorted({json.loads(b).get("error", {}).get("code", "?") for s, _, b, _ in results
                    if 400 <= s < 600 and b.startswith(b"{")})
    print(json.dumps({"clients": n, "wall_s": round(wall, 2), "statuses": statuses, "error_codes": codes,
                      "429_have_retry_after": retry_after, "ok_p50_ms": percentile(ok_ms, 0.5),
                      "ok_p99_ms": percentile(ok_ms, 0.99)}))


async def slow(addr, n, seconds):
    """Opens n connections that send a request line and one header, then nothing; counts how many the server
    has closed by the end of `seconds`."""
    host, port = addr.rsplit(":", 1)
    conns, refused = [], 0
    for _ in range(n):
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /v1/retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"query\":")
            await writer.drain()
            conns.append((reader, writer))
        except OSError:
            refused += 1
    await asyncio.sleep(seconds)
    closed = 0
    for reader, writer in conns:
        try:
            data = await asyncio.wait_for(reader.read(), 0.5)
            closed += 1 if data is not None else 0
        except (asyncio.TimeoutError, OSError):
            pass
        writer.close()
    print(json.dumps({"slow_clients": n, "refused": refused, "held_s": seconds, "closed_by_server": closed}))


async def healthz(addr, seconds):
    """Probes until `seconds` pass or SIGTERM comes, then prints."""
    host, port = addr.rsplit(":", 1)
    deadline, latencies, failures = time.perf_counter() + seconds, [], 0
    slowest = []  # (ms, wall-clock second the probe started), the 5 slowest
    lag = (0.0, None)  # the prober's own worst delay: how late a 50 ms sleep woke up (ms, when)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while time.perf_counter() < deadline and not stop.is_set():
        started_at = time.time()
        status, _, _, ms = await request(host, int(port), "GET", "/healthz", timeout=5)
        if status == 200:
            latencies.append(ms)
            slowest = sorted(slowest + [(round(ms, 2), round(started_at, 3))], reverse=True)[:5]
        else:
            failures += 1
        slept = time.perf_counter()
        await asyncio.sleep(0.05)
        late = (time.perf_counter() - slept - 0.05) * 1000
        if late > lag[0]:
            lag = (round(late, 2), round(time.time(), 3))
    print(json.dumps({"healthz_probes": len(latencies) + failures, "failures": failures,
                      "p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99),
                      "max_ms": round(max(latencies), 2) if latencies else None,
                      "slowest_ms_at": [list(p) for p in slowest], "prober_max_lag_ms_at": list(lag)}))


def main():
    mode, addr = sys.argv[1], sys.argv[2]
    if mode == "chat":
        asyncio.run(chat(addr, sys.argv[3], int(sys.argv[4])))
    elif mode == "slow":
        asyncio.run(slow(addr, int(sys.argv[3]), float(sys.argv[4])))
    elif mode == "healthz":
        asyncio.run(healthz(addr, float(sys.argv[3])))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
