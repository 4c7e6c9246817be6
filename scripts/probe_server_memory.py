#!/usr/bin/env python3
"""Peak RSS of `deberta-embed serve` under hostile request mixes (BENCHMARKS.md, memory).

Starts the release binary on a free loopback port and, per case, sends 32 concurrent requests
whose bodies are just under the 2 MiB limit, sampling the server's RSS every 10 ms:

  * one ~2 MB string on /v1/embeddings, and on /embed with truncate
  * one ~2 MB string on /tokenize with truncate false (every token of it)
  * 2,000 inputs of 990 characters on /embed with truncate

    python3 scripts/probe_server_memory.py --model path/to/model [--bin target/release/deberta-embed]
"""
import argparse
import json
import random
import re
import socket
import subprocess
import threading
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--bin", default="target/release/deberta-embed")
    ap.add_argument("--clients", type=int, default=32)
    a = ap.parse_args()
    p = subprocess.Popen([a.bin, "serve", "--model", a.model, "--port", "0", "--threads", "2"],
                         stderr=subprocess.PIPE, text=True)
    port = int(re.search(r":(\d+)$", p.stderr.readline().strip()).group(1))
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "naive", "fine", "ok", "x" * 30]
    text = " ".join(rng.choice(words) for _ in range(400_000))[:2_000_000]

    def post(path, obj):
        body = json.dumps(obj).encode()
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(300)
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        data = b""
        while chunk := s.recv(1 << 20):
            data += chunk
        return data.split(b" ", 2)[1].decode()

    peak, stop = [0], [False]

    def watch():
        while not stop[0]:
            try:
                with open(f"/proc/{p.pid}/status") as f:
                    rss = int(next(l for l in f if l.startswith("VmRSS")).split()[1])
                peak[0] = max(peak[0], rss)
            except (OSError, StopIteration):
                pass
            time.sleep(0.01)

    w = threading.Thread(target=watch)
    w.start()
    cases = [
        ("/v1/embeddings", {"input": text}, "1 x 2 MB string"),
        ("/embed", {"inputs": text, "truncate": True}, "1 x 2 MB string, truncate"),
        ("/tokenize", {"inputs": text, "truncate": False}, "1 x 2 MB string, every token"),
        ("/embed", {"inputs": [text[:990]] * 2000, "truncate": True}, "2,000 x 990 chars"),
    ]
    print(f"| route | request | {a.clients} concurrent: statuses | peak RSS | time |")
    print("|---|---|---|---|---|")
    for path, obj, what in cases:
        peak[0] = 0
        res = [None] * a.clients
        t = time.time()

        def run(i, path=path, obj=obj):
            res[i] = post(path, obj)

        ts = [threading.Thread(target=run, args=(i,)) for i in range(a.clients)]
        for x in ts:
            x.start()
        for x in ts:
            x.join()
        print(f"| `{path}` | {what} | {','.join(sorted(set(res)))} | {peak[0] // 1024} MB "
              f"| {time.time() - t:.1f} s |", flush=True)
    stop[0] = True
    w.join()
    p.terminate()
    p.wait()


if __name__ == "__main__":
    main()
